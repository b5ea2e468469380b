"""Backend type names resolve lazily to their classes."""

from __future__ import annotations

import pytest

from pyflannel.backend.registry import backend_class, make_backend
from pyflannel.errors import ConfigError


def test_known_types() -> None:
    assert backend_class("vxlan").__name__ == "VxlanBackend"
    assert backend_class("Host-GW").__name__ == "HostGwBackend"
    be = make_backend("host-gw", resync_interval=1.0)
    assert be.backend_type == "host-gw"


def test_unknown_type() -> None:
    with pytest.raises(ConfigError, match="unknown backend type: ipip"):
        backend_class("ipip")
