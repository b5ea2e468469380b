"""Fixtures for end-to-end tests: etcd variants and namespaced labs (see tests/harness)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyflannel.lab.command import down
from tests.harness.fixtures import (
    etcd_cluster,
    etcd_tls,
    etcd_v2,
    lab3,
    lab_factory,
    lab_prefix,
    netns,
    require_root,
)
from tests.harness.lab import new_prefix

__all__ = ["etcd_cluster", "etcd_tls", "etcd_v2", "lab3", "lab_factory", "lab_prefix", "netns"]


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh prefix for a ``pyflannel lab`` sandbox; ``lab down`` removes it after the test
    (test_kube_lab.py overrides it to also stop its API server)."""
    require_root()
    p = new_prefix()
    try:
        yield p
    finally:
        down(p)
