"""The etcd adapter's reach-ins into pyetcd still exist, and its typed helpers behave."""

from __future__ import annotations

import grpc
import pyetcd.utils
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.subnet.etcd.client import EtcdClient, missing_pyetcd_internals, prefix_range_end
from pyflannel.subnet.etcd.endpoints import parse_endpoints
from pyflannel.subnet.etcd.errors import EtcdFailure


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

# close() racing with threads that create stubs (renew_watch_stream creates a watcher; no I/O).
for round in range(int(sys.argv[1])):
    c = client()
    stop = threading.Event()
    def hammer():
        while not stop.is_set():
            c.renew_watch_stream()
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


class _Unavailable(grpc.RpcError):  # type: ignore[misc]  # grpc has no stubs: RpcError is Any
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"


class _FakeWatcher:
    """Stands in for pyetcd's watcher (no I/O): numbers watches from 0, like etcd per stream."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.cancelled: list[int] = []
        self.next_id = 0

    def add_callback(self, key: bytes, callback: object, **kwargs: object) -> int:
        if self.fail:
            raise _Unavailable()
        self.next_id += 1
        return self.next_id - 1

    def cancel(self, watch_id: int) -> None:
        self.cancelled.append(watch_id)

    def close(self) -> None:
        pass


def _client_with(watcher: _FakeWatcher) -> EtcdClient:
    eps = parse_endpoints("http://127.0.0.1:1,http://127.0.0.1:2")
    client = EtcdClient(eps, tls=None, timeout=1)
    client._raw._stubs["watcher"] = watcher  # the stub pyetcd would create
    return client


def test_a_watch_whose_stream_dies_while_created_fails_over() -> None:
    client = _client_with(_FakeWatcher(fail=True))
    try:
        before = client.endpoint_in_use
        with pytest.raises(EtcdFailure) as info:
            client.add_watch(b"k", b"", lambda item: None, start_revision=1)
        assert info.value.kind == "connection"  # the caller's failover retries at once
        assert client._raw.endpoints[before].is_failed()  # the next call uses another one
    finally:
        client.close()


def test_a_watch_is_cancelled_on_the_stream_that_created_it() -> None:
    # Watch IDs are per stream: after a failover or a token renewal, ID 0 on the new stream
    # is somebody else's watch, which a cancel by ID alone would silently end.
    old, new = _FakeWatcher(), _FakeWatcher()
    client = _client_with(old)
    try:
        handle = client.add_watch(b"k", b"", lambda item: None, start_revision=1)
        client._raw._stubs["watcher"] = new
        client.add_watch(b"other", b"", lambda item: None, start_revision=1)
        client.cancel_watch(handle)
        assert old.cancelled == [handle.watch_id] and new.cancelled == []
    finally:
        client.close()
