"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.etcd import EtcdServer, reap_orphans, start_etcd
from tests.harness.isolation import enter_private_netns
from tests.harness.kube import kube_api  # one API server per session (kube mode)
from tests.harness.threads import send_idle_workers_home


def pytest_configure(config: pytest.Config) -> None:
    """As root, the session leaves the host's network namespace before any test runs (see
    tests/harness/isolation.py), after reaping etcd members an earlier, killed session left."""
    reap_orphans()
    enter_private_netns()


@pytest.fixture(autouse=True)
def _workers_at_home() -> Iterator[None]:
    """No test starts with trio worker threads left in another test's network namespace (see
    tests/harness/threads.py)."""
    send_idle_workers_home()
    yield


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    """A fresh single-member etcd on a free loopback port."""
    with start_etcd() as srv:
        yield srv


__all__ = ["etcd", "kube_api"]
