"""The etcd adapter's reach-ins into pyetcd still exist, and its typed helpers behave."""

from __future__ import annotations

import pyetcd.utils
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.subnet.etcd.client import EtcdClient, missing_pyetcd_internals, prefix_range_end
from pyflannel.subnet.etcd.endpoints import parse_endpoints


def test_pyetcd_internals_the_adapter_relies_on_still_exist() -> None:
    missing = missing_pyetcd_internals()
    assert not missing, (
        "the installed pyetcd no longer has internals pyflannel/subnet/etcd/client.py relies on: "
        f"{', '.join(missing)}. Adapt EtcdClient (renew_watch_stream, _unary, "
        "retry_failed_endpoints) to the new pyetcd before upgrading."
    )


@given(st.binary(max_size=12))
def test_prefix_range_end_matches_pyetcd(prefix: bytes) -> None:
    assert prefix_range_end(prefix) == pyetcd.utils.prefix_range_end(prefix)


def test_adapter_construction_does_no_io() -> None:
    client = EtcdClient(parse_endpoints("http://198.51.100.249:2379"), tls=None, timeout=1)
    try:
        assert client.endpoint_in_use == "198.51.100.249:2379"
        client.retry_failed_endpoints()
    finally:
        client.close()


@pytest.mark.parametrize("target", ["version", "mod", "create"])
def test_numeric_compare_refuses_bytes(target: str) -> None:
    from pyflannel.subnet.etcd.client import Compare, _compare

    with pytest.raises(TypeError):
        _compare(Compare(b"k", target, "==", b"1"))  # type: ignore[arg-type]
