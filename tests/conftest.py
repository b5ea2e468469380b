"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.etcd import EtcdServer, start_etcd


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    """A fresh single-member etcd on a free loopback port."""
    with start_etcd() as srv:
        yield srv
