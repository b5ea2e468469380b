"""The real kube-apiserver for tests: ONE per test session (it takes ~6 s and ~340 MB), with its
own etcd, inside a namespace ``pf<hex>-kapi`` on 127.0.0.1 (see pyflannel/lab/kube.py).

Tests that need it skip with one line when the binary is absent (a fresh clone has no
../shared) and $PYFLANNEL_KUBE_APISERVER is unset. Tests share the server, so each one uses
node names of its own (:func:`unique`) and looks only at those.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyflannel.lab.kube import KubeApiServer, locate_apiserver, unpack_apiserver
from pyflannel.lab.netns import delete_netns, ip_batch

__all__ = ["kube_api", "require_kube", "unique"]


def require_kube() -> Path:
    """The apiserver binary, or skip the test with the reason."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the API server runs in a network namespace")
    src = locate_apiserver()
    if src is None:
        pytest.skip(
            "kube-apiserver not found: no ../shared/tools/kube and $PYFLANNEL_KUBE_APISERVER unset"
        )
    if shutil.which("xz") is None or shutil.which("openssl") is None:
        pytest.skip("needs xz and openssl (scripts/setup installs them)")
    return unpack_apiserver(src)


def unique(stem: str = "n") -> str:
    """A node name no other test uses."""
    return f"{stem}-{secrets.token_hex(3)}"


@pytest.fixture(scope="session")
def kube_api() -> Iterator[KubeApiServer]:
    """The session's API server (flannel's RBAC applied; ``.call(fn)`` runs a KubeClient)."""
    binary = require_kube()
    ns = f"pf{secrets.token_hex(3)}-kapi"
    state = Path(tempfile.mkdtemp(prefix="pyflannel-kube-"))
    ip_batch([f"netns add {ns}"])
    srv = KubeApiServer(ns, "127.0.0.1", state, binary, watch_cache=False)
    try:
        ip_batch(["link set lo up"], ns)
        srv.start()
        srv.apply_flannel_rbac()
        yield srv
    finally:
        srv.stop()
        delete_netns([ns])
        shutil.rmtree(state, ignore_errors=True)
