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


# Run in a child: before the fix these were segfaults (a gRPC stub created on a closed channel),
# which would take pytest down with them. 127.0.0.1:1: nothing listens, nothing leaves the host.
_CLOSED_CALLS = """
import sys, threading, time
from pyflannel.subnet.etcd.client import EtcdClient
from pyflannel.subnet.etcd.endpoints import parse_endpoints
from pyflannel.subnet.etcd.errors import EtcdFailure

def client():
    return EtcdClient(parse_endpoints("http://127.0.0.1:1"), tls=None, timeout=1)

c = client()
c.close()
c.close()  # twice is fine
c.renew_watch_stream()  # nothing to renew once closed
calls = {
    "add_watch": lambda: c.add_watch(b"k", b"", lambda item: None, start_revision=1),
    "cancel_watch": lambda: c.cancel_watch(1),
    "range": lambda: c.range(b"k"),
    "grant": lambda: c.grant(60),
    "time_to_live_many": lambda: c.time_to_live_many([1, 2]),
}
for name, call in calls.items():
    try:
        call()
    except EtcdFailure as exc:
        assert exc.code == "CANCELLED" and "closed" in exc.details, (name, exc)
    else:
        raise AssertionError(f"{name} on a closed client returned")

# close() racing with threads that create stubs (cancel_watch creates the watcher; no I/O).
for round in range(int(sys.argv[1])):
    c = client()
    stop = threading.Event()
    def hammer():
        while not stop.is_set():
            try:
                c.cancel_watch(1)
            except EtcdFailure:
                return
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.001 * (round % 5))
    c.close()
    stop.set()
    for t in threads:
        t.join()
print("ok")
"""


def test_a_closed_client_refuses_calls_instead_of_crashing() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _CLOSED_CALLS, "40"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout == "ok\n", (out.returncode, out.stderr[-2000:])
