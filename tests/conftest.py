"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.etcd import EtcdServer, start_etcd
from tests.harness.kube import kube_api  # one API server per session (kube mode)
from tests.harness.threads import short_idle_workers

# Idle trio worker threads must not outlive a namespaced test (see tests/harness/threads.py).
short_idle_workers()


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    """A fresh single-member etcd on a free loopback port."""
    with start_etcd() as srv:
        yield srv


__all__ = ["etcd", "kube_api"]
