"""Fixtures for end-to-end tests: etcd variants and namespaced labs (see tests/harness)."""

from __future__ import annotations

from tests.harness.fixtures import (
    etcd_cluster,
    etcd_tls,
    etcd_v2,
    lab3,
    lab_factory,
    lab_prefix,
    netns,
)

__all__ = ["etcd_cluster", "etcd_tls", "etcd_v2", "lab3", "lab_factory", "lab_prefix", "netns"]
