"""pytest fixtures for etcd variants and namespaced labs.

Import them into a conftest.py (tests/integration and tests/e2e do)::

    from tests.harness.fixtures import etcd_cluster, etcd_tls, lab3, ...  # noqa: F401

Every fixture tears down in ``finally``, so a failing test leaves no process or namespace.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyflannel.lab.netns import add_netns, delete_prefixed, ip_batch
from tests.harness.etcd import EtcdServer, start_etcd
from tests.harness.etcd_cluster import EtcdCluster, start_etcd_cluster
from tests.harness.etcd_tls import EtcdTLS, start_etcd_tls
from tests.harness.lab import LabEnv, new_prefix, start_lab

__all__ = [
    "etcd_cluster",
    "etcd_tls",
    "etcd_v2",
    "lab3",
    "lab_factory",
    "lab_prefix",
    "netns",
    "require_root",
]


def require_root() -> None:
    """Skip the calling test unless running as root (namespaces need CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces")


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster on loopback (``.endpoints``, ``.leader()``, ``.kill_leader()``)."""
    with start_etcd_cluster(3) as cluster:
        yield cluster


@pytest.fixture
def etcd_tls() -> Iterator[EtcdTLS]:
    """A TLS etcd with client-cert auth and etcd auth on: user ``flannel`` has readwrite on
    ``/coreos.com/network``; cert/key/CA paths and a wrong-CA set as attributes."""
    with start_etcd_tls() as tls:
        yield tls


@pytest.fixture
def etcd_v2() -> Iterator[EtcdServer]:
    """A single member started with ``--enable-v2=true`` (``.v2_set()`` / ``.v2_get()``)."""
    with start_etcd(enable_v2=True) as srv:
        yield srv


@pytest.fixture
def lab_prefix() -> Iterator[str]:
    """A fresh random name prefix; anything named with it is removed after the test."""
    prefix = new_prefix()
    try:
        yield prefix
    finally:
        delete_prefixed(prefix)


@pytest.fixture
def netns(lab_prefix: str) -> Callable[[str | None], str]:
    """Factory: ``netns("a")`` creates namespace ``<prefix>-a`` (loopback up) and returns its
    name; without a name it numbers them. All are deleted after the test."""
    require_root()
    counter = iter(range(1, 10_000))

    def make(name: str | None = None) -> str:
        ns = f"{lab_prefix}-{name or next(counter)}"
        add_netns([ns])
        ip_batch(["link set lo up"], ns)
        return ns

    return make


@pytest.fixture
def lab3(tmp_path: Path) -> Iterator[LabEnv]:
    """3 nodes + etcd in its own namespace (``lab3.topo``, ``lab3.etcd``, ``lab3.node("n1")``).

    Node state lives under the test's tmp_path (kept by pytest for post-mortems)."""
    require_root()
    with start_lab(3, state_root=tmp_path / "lab") as env:
        yield env


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[Callable[..., LabEnv]]:
    """Factory for custom labs: ``lab_factory(nodes=2, ipv6=True, etcd_tls=True, ...)`` takes
    :func:`tests.harness.lab.start_lab`'s arguments; all are torn down after the test."""
    require_root()
    stack: list[Any] = []

    def make(nodes: int = 3, **kwargs: Any) -> LabEnv:
        kwargs.setdefault("state_root", tmp_path / f"lab{len(stack)}")
        cm = start_lab(nodes, **kwargs)
        env = cm.__enter__()
        stack.append(cm)
        return env

    try:
        yield make
    finally:
        while stack:
            stack.pop().__exit__(None, None, None)
