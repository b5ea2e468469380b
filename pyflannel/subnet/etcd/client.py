"""A typed adapter over pyetcd (etcd-sdk-python): the only module that imports pyetcd or grpc.

Everything above it sees typed values (:class:`KeyValue`, :class:`RangeResult`,
:class:`TxnResult`, :class:`WatchEvents`) and one exception, :class:`~.errors.EtcdFailure`.
pyetcd is untyped (``Any`` to mypy); that ``Any`` stays inside this module.

The adapter reaches into three pyetcd internals because pyetcd has no public way to do what
flanneld's Go client does; all three are here and nowhere else, and
``tests/unit/test_etcd_client.py`` fails with a clear message if a pyetcd release changes them:

- ``MultiEndpointEtcd3Client._stubs``: peek at the watch stream without creating one, to
  replace it after the auth token was renewed (a watch stream keeps the token it was opened
  with);
- ``MultiEndpointEtcd3Client._manage_grpc_errors``: pyetcd's own error handling (it marks the
  endpoint in use failed so that the next call fails over), for the calls made on the raw gRPC
  stubs (transactions with range compares, concurrent TimeToLive futures);
- ``Endpoint.last_failed``: put every endpoint back into rotation when all failed within the
  last retry period, rather than refusing to try at all.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

# gRPC's C core logs connection and TLS handshake failures straight to stderr; they are
# reported through our own errors instead. Must be set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
import pyetcd
import pyetcd.events as pev
import pyetcd.exceptions as pexc
import pyetcd.watch as pwatch
from pyetcd import etcdrpc

from pyflannel.subnet.etcd.endpoints import EndpointSpec
from pyflannel.subnet.etcd.errors import EtcdFailure, FailureKind

__all__ = [
    "Compare",
    "Delete",
    "EtcdClient",
    "Get",
    "KeyValue",
    "OpResult",
    "Put",
    "RangeResult",
    "TlsMaterial",
    "TxnOp",
    "TxnResult",
    "WatchEvent",
    "WatchEvents",
    "WatchHandle",
    "WatchItem",
    "failure_of",
    "missing_pyetcd_internals",
    "prefix_range_end",
]

_T = TypeVar("_T")

# How long pyetcd keeps an endpoint out of rotation after a failure. Short, because with a
# single endpoint a long quarantine would turn one refused connection into minutes of
# "no endpoint available" after etcd is back.
_ENDPOINT_RETRY_SECONDS: Final = 1.0
_GRPC_OPTIONS: Final = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    # gRPC's default reconnect backoff grows to 120 s: far too slow to notice a restarted etcd.
    # 500 ms (+-20 % jitter) keeps "etcd is back" -> "watches resumed" under 2 s; the cost while
    # etcd is down is two refused TCP connects per second per endpoint.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    # Notice a dead peer under a long-lived watch stream. etcd refuses pings more often than
    # every 5 s (--grpc-keepalive-min-time) and pings without an active call.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]
# The pyetcd internals used (see the module docstring), named once: missing_pyetcd_internals()
# checks them and ruff's private-access rule does not see through getattr.
_STUBS: Final = "_stubs"
_MANAGE_GRPC_ERRORS: Final = "_manage_grpc_errors"
# Like flanneld's WithRequireLeader: a member that lost its leader fails requests and breaks
# watch streams instead of serving stale data forever.
_REQUIRE_LEADER: Final = ("hasleader", "true")


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One etcd key-value (``lease`` 0: written without an etcd lease)."""

    key: bytes
    value: bytes
    lease: int
    mod_revision: int
    create_revision: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    """A Range answer: the header revision, the key-values, whether more follow."""

    revision: int
    kvs: tuple[KeyValue, ...]
    more: bool
    count: int


@dataclass(frozen=True, slots=True)
class Compare:
    """A transaction compare: ``target(key[..range_end]) op value``."""

    key: bytes
    target: Literal["version", "value", "mod", "create"]
    op: Literal["==", "<"]
    value: int | bytes
    range_end: bytes = b""


@dataclass(frozen=True, slots=True)
class Put:
    """A put in a transaction (``lease`` 0: no etcd lease)."""

    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Get:
    """A range read in a transaction."""

    key: bytes
    range_end: bytes = b""
    min_create_revision: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """A delete of one key in a transaction."""

    key: bytes


TxnOp = Put | Get | Delete


@dataclass(frozen=True, slots=True)
class OpResult:
    """One transaction op's answer: the key-values read (Get), the count deleted (Delete)."""

    kvs: tuple[KeyValue, ...] = ()
    deleted: int = 0


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A transaction's answer: which branch ran, at which revision, and its ops' answers."""

    succeeded: bool
    revision: int
    responses: tuple[OpResult, ...]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One watch event (a delete carries only the key and its revisions)."""

    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchEvents:
    """One watch response: the header revision and the events in etcd's order."""

    revision: int
    events: tuple[WatchEvent, ...]


# What a watch callback receives: events, the failure that ended the watch, or None when the
# stream was closed.
WatchItem = WatchEvents | EtcdFailure | None


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """PEM bytes for a TLS channel (``key``/``cert``: a client certificate, if any)."""

    ca: bytes | None = None
    key: bytes | None = None
    cert: bytes | None = None


def prefix_range_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix`` (etcd's ``--prefix``;
    computed as pyetcd does: our keys are ASCII, so no byte is ever 0xff)."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            break
    return bytes(end)


def _code_details(exc: BaseException) -> tuple[str, str] | None:
    """(status code name, details) of the gRPC error behind ``exc`` (pyetcd raises its own
    exceptions inside ``except grpc.RpcError``, so the gRPC error is in ``__context__``)."""
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, grpc.RpcError):
            try:
                code = cur.code()
                details = cur.details() or ""
            except Exception:  # a bare RpcError without status
                return "UNKNOWN", str(cur)
            return str(getattr(code, "name", code)), str(details)
        cur = cur.__context__
    return None


def failure_of(exc: BaseException) -> EtcdFailure:
    """``exc`` (a pyetcd or gRPC exception, or anything else) as an :class:`EtcdFailure`."""
    if isinstance(exc, EtcdFailure):
        return exc
    if isinstance(exc, pexc.RevisionCompactedError):
        return EtcdFailure(
            "compacted",
            "OUT_OF_RANGE",
            "required revision has been compacted",
            compact_revision=int(exc.compacted_revision),
        )
    kind: FailureKind = "other"
    if isinstance(exc, pexc.WatchTimedOut):
        kind = "watch_timeout"
    elif isinstance(exc, pexc.NoServerAvailableError):
        kind = "no_server"
    elif isinstance(exc, pexc.ConnectionFailedError | pexc.ConnectionTimeoutError):
        kind = "connection"
    elif isinstance(exc, grpc.RpcError | pexc.Etcd3Exception):
        kind = "rpc"
    found = _code_details(exc)
    if found is None:
        return EtcdFailure(kind, type(exc).__name__, str(exc) or type(exc).__name__)
    return EtcdFailure(kind, found[0], found[1])


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        key=bytes(kv.key),
        value=bytes(kv.value),
        lease=int(kv.lease),
        mod_revision=int(kv.mod_revision),
        create_revision=int(kv.create_revision),
    )


def _compare(c: Compare) -> Any:
    msg = etcdrpc.Compare(key=c.key)
    if c.range_end:
        msg.range_end = c.range_end
    msg.result = etcdrpc.Compare.EQUAL if c.op == "==" else etcdrpc.Compare.LESS
    if c.target == "value":
        msg.target = etcdrpc.Compare.VALUE
        msg.value = c.value if isinstance(c.value, bytes) else str(c.value).encode()
    else:
        if not isinstance(c.value, int):
            raise TypeError(f"compare of {c.target} needs an int, not {c.value!r}")
        number = c.value
        if c.target == "version":
            msg.target, msg.version = etcdrpc.Compare.VERSION, number
        elif c.target == "mod":
            msg.target, msg.mod_revision = etcdrpc.Compare.MOD, number
        else:
            msg.target, msg.create_revision = etcdrpc.Compare.CREATE, number
    return msg


def _request_op(op: TxnOp) -> Any:
    if isinstance(op, Put):
        return etcdrpc.RequestOp(
            request_put=etcdrpc.PutRequest(key=op.key, value=op.value, lease=op.lease)
        )
    if isinstance(op, Get):
        read = etcdrpc.RangeRequest(key=op.key, min_create_revision=op.min_create_revision)
        if op.range_end:
            read.range_end = op.range_end
        return etcdrpc.RequestOp(request_range=read)
    return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=op.key))


def _op_result(resp: Any) -> OpResult:
    which = resp.WhichOneof("response")
    if which == "response_range":
        return OpResult(kvs=tuple(_kv(kv) for kv in resp.response_range.kvs))
    if which == "response_delete_range":
        return OpResult(deleted=int(resp.response_delete_range.deleted))
    return OpResult()


class EtcdClient:
    """One pyetcd multi-endpoint client with failover marking, typed.

    Construction does no I/O (gRPC connects on the first call, from the calling thread). Every
    method raises only :class:`~.errors.EtcdFailure`; none retries: the caller fails over by
    calling again (pyetcd then picks an endpoint that has not just failed).
    """

    def __init__(
        self, endpoints: Sequence[EndpointSpec], *, tls: TlsMaterial | None, timeout: float
    ) -> None:
        creds = None
        if tls is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
            )
        eps = [
            pyetcd.Endpoint(
                e.host,
                e.port,
                secure=creds is not None,
                creds=creds,
                time_retry=_ENDPOINT_RETRY_SECONDS,
                opts=list(_GRPC_OPTIONS),
            )
            for e in endpoints
        ]
        self._timeout = timeout
        # Authentication is done by authenticate(), not by pyetcd: pyetcd also attaches the
        # token as gRPC call credentials, which gRPC refuses on plain-http channels.
        self._raw: Any = pyetcd.MultiEndpointEtcd3Client(
            endpoints=eps, timeout=timeout, failover=True
        )
        self._raw.metadata = (_REQUIRE_LEADER,)
        # pyetcd creates its gRPC stubs lazily, from whichever thread asks first, and creating
        # one registers its methods on the channel: grpc says that is not thread-safe, and on a
        # closed channel it is a segfault (reproduced: close(), then get_watcher()). A daemon
        # stopping closes the client while a cancelled worker thread may still be about to
        # watch. So every stub is fetched through _stub(), under this lock, which close() also
        # takes; after close() it raises EtcdFailure instead. RPCs run outside the lock (on a
        # closed channel grpc raises ValueError, which _guarded maps).
        self._stub_lock = threading.Lock()
        self._closed = False
        # Only one watch creation may be pending on a stream at a time (pyetcd waits for the
        # created response under its own lock); creations are rare, so they are serialised.
        self._watch_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    def _closed_failure(self) -> EtcdFailure:
        return EtcdFailure("other", "CANCELLED", "the etcd client was closed (pyflannel stopping)")

    def _stub(self, name: str) -> Any:
        """pyetcd's stub ``name`` (created on first use), or EtcdFailure once closed."""
        with self._stub_lock:
            if self._closed:
                raise self._closed_failure()
            return getattr(self._raw, name)

    def _guarded(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except (grpc.RpcError, pexc.Etcd3Exception) as exc:
            if self._closed:  # e.g. a watch whose stream close() ended while it was created
                raise self._closed_failure() from exc
            raise failure_of(exc) from exc
        except ValueError as exc:
            # grpc's "Cannot invoke RPC on closed channel!": close() won a race with a call.
            if self._closed:
                raise self._closed_failure() from exc
            raise

    def _unary(self, stub: str, method: str, request: Any, *, auth: bool = True) -> Any:
        def call() -> Any:
            try:
                rpc = getattr(self._stub(stub), method)
                if not auth:
                    return rpc(request, self._timeout)
                return rpc(
                    request,
                    self._timeout,
                    credentials=self._raw.call_credentials,
                    metadata=self._raw.metadata,
                )
            except grpc.RpcError as exc:
                # pyetcd's handling (marks the endpoint failed on UNAVAILABLE & co., raises its
                # own exception) like for every call pyetcd makes itself.
                getattr(self._raw, _MANAGE_GRPC_ERRORS)(exc)
                raise

        return self._guarded(call)

    # ------------------------------------------------------------------ session
    def authenticate(self, username: str, password: str) -> None:
        """Get an auth token; every later request (and new watch stream) carries it."""
        resp = self._unary(
            "authstub",
            "Authenticate",
            etcdrpc.AuthenticateRequest(name=username, password=password),
            auth=False,
        )
        self._raw.metadata = (("token", str(resp.token)), _REQUIRE_LEADER)

    def renew_watch_stream(self) -> None:
        """Open a new watch stream for new watches (after :meth:`authenticate`): a stream keeps
        the token it was opened with. Watches on the old stream end and resume on their own."""
        with self._stub_lock:
            if self._closed:
                return
            # _stubs: peek without creating a stream; pyetcd has no public accessor for that.
            old = getattr(self._raw, _STUBS).get("watcher")
            self._raw.watcher = self._raw.get_watcher()
        if old is not None:
            old.close()

    @property
    def endpoint_in_use(self) -> str:
        """``host:port`` of the endpoint requests currently go to."""
        return str(self._raw.endpoint_in_use.netloc)

    def retry_failed_endpoints(self) -> None:
        """Put every endpoint back into rotation (all failed within the last retry period)."""
        for ep in self._raw.endpoints.values():
            ep.last_failed = 0

    def close(self) -> None:
        """Close the gRPC channels and the watch stream; later calls raise EtcdFailure."""
        # The flag is set under the lock (so no stub is being created once it is set), the
        # channels are closed outside it: closing takes pyetcd's watcher lock, which a watch
        # creation may hold for a while.
        with self._stub_lock:
            if self._closed:
                return
            self._closed = True
        self._raw.close()

    # ------------------------------------------------------------------ KV
    def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        limit: int = 0,
        revision: int = 0,
        count_only: bool = False,
    ) -> RangeResult:
        """Read ``key`` (or ``[key, range_end)``), at ``revision`` if given (0: the latest)."""
        request = etcdrpc.RangeRequest(
            key=key, limit=limit, revision=revision, count_only=count_only
        )
        if range_end:
            request.range_end = range_end
        resp = self._unary("kvstub", "Range", request)
        return RangeResult(
            revision=int(resp.header.revision),
            kvs=tuple(_kv(kv) for kv in resp.kvs),
            more=bool(resp.more),
            count=int(resp.count),
        )

    def txn(
        self, compare: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp]
    ) -> TxnResult:
        """One transaction: ``success`` ops if every compare holds, else ``failure`` ops."""
        request = etcdrpc.TxnRequest(
            compare=[_compare(c) for c in compare],
            success=[_request_op(op) for op in success],
            failure=[_request_op(op) for op in failure],
        )
        resp = self._unary("kvstub", "Txn", request)
        return TxnResult(
            succeeded=bool(resp.succeeded),
            revision=int(resp.header.revision),
            responses=tuple(_op_result(r) for r in resp.responses),
        )

    # ------------------------------------------------------------------ leases
    def grant(self, ttl: int) -> tuple[int, int]:
        """A new etcd lease: ``(lease ID, granted TTL in seconds)``."""
        resp = self._unary("leasestub", "LeaseGrant", etcdrpc.LeaseGrantRequest(TTL=ttl, ID=0))
        return int(resp.ID), int(resp.TTL)

    def revoke(self, lease_id: int) -> None:
        """Revoke an etcd lease (deleting its keys)."""
        self._unary("leasestub", "LeaseRevoke", etcdrpc.LeaseRevokeRequest(ID=lease_id))

    def time_to_live(self, lease_id: int) -> int:
        """Seconds left on an etcd lease; negative when it expired or never existed."""
        request = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id)
        return int(self._unary("leasestub", "LeaseTimeToLive", request).TTL)

    def time_to_live_many(self, lease_ids: Sequence[int]) -> dict[int, int]:
        """:meth:`time_to_live` of every ID, all requests in flight at once (gRPC futures)."""

        def run() -> dict[int, int]:
            stub = self._stub("leasestub")
            futures = [
                (
                    lid,
                    stub.LeaseTimeToLive.future(
                        etcdrpc.LeaseTimeToLiveRequest(ID=lid),
                        self._timeout,
                        metadata=self._raw.metadata,
                    ),
                )
                for lid in lease_ids
            ]
            out: dict[int, int] = {}
            for lid, fut in futures:
                try:
                    out[lid] = int(fut.result().TTL)
                except grpc.RpcError as exc:
                    for _, other in futures:
                        other.cancel()
                    getattr(self._raw, _MANAGE_GRPC_ERRORS)(exc)
                    raise
            return out

        return self._guarded(run)

    # ------------------------------------------------------------------ watches
    def add_watch(
        self,
        key: bytes,
        range_end: bytes,
        callback: Callable[[WatchItem], None],
        *,
        start_revision: int,
    ) -> WatchHandle:
        """Watch ``key`` (or ``[key, range_end)``) from ``start_revision``; returns the handle
        :meth:`cancel_watch` takes. ``callback`` runs on pyetcd's watcher thread, in etcd's
        order, with :data:`WatchItem` values; after an :class:`~.errors.EtcdFailure` or ``None``
        the watch is dead. It must not block: the watcher thread holds pyetcd's locks meanwhile.

        progress_notify: etcd sends an empty response now and then (every 10 min by default),
        which moves an idle watch's resume revision forward, so a later reconnect does not land
        on a compacted revision and force a full re-list.
        """

        def on_item(item: object) -> None:
            callback(_watch_item(item))

        kwargs: dict[str, Any] = {"start_revision": start_revision, "progress_notify": True}
        if range_end:
            kwargs["range_end"] = range_end

        def create() -> WatchHandle:
            watcher = self._stub("watcher")
            try:
                return WatchHandle(int(watcher.add_callback(key, on_item, **kwargs)), watcher)
            except grpc.RpcError as exc:
                # The stream died while the watch was being created: pyetcd's handling marks
                # the endpoint failed (and drops its stubs), so the caller fails over.
                getattr(self._raw, _MANAGE_GRPC_ERRORS)(exc)
                raise

        with self._watch_lock:
            return self._guarded(create)

    def cancel_watch(self, handle: WatchHandle) -> None:
        """Stop a watch, on the stream that created it: watch IDs are numbered per stream, so
        after a failover or a token renewal the same ID on the current stream is another
        watch."""
        if self._closed:
            return  # its stream is closed, and the watch with it
        self._guarded(lambda: handle.stream.cancel(handle.watch_id))


@dataclass(frozen=True, slots=True)
class WatchHandle:
    """One watch: its ID and the stream (pyetcd watcher, opaque here) that numbered it."""

    watch_id: int
    stream: Any = field(repr=False, compare=False)


def _watch_item(item: object) -> WatchItem:
    if item is None:
        return None
    if isinstance(item, pwatch.WatchResponse):
        events = tuple(
            WatchEvent("delete" if isinstance(ev, pev.DeleteEvent) else "put", _kv(ev))
            for ev in item.events
        )
        return WatchEvents(revision=int(item.header.revision), events=events)
    if isinstance(item, BaseException):
        return failure_of(item)
    return EtcdFailure("other", "UNKNOWN", f"unexpected watch item {item!r}")


# The pyetcd internals this adapter relies on (see the module docstring).
_CLIENT_INTERNALS: Final = (_STUBS, _MANAGE_GRPC_ERRORS, "get_watcher", "endpoints")


def missing_pyetcd_internals() -> list[str]:
    """The pyetcd internals this adapter needs that the installed pyetcd lacks (no I/O)."""
    missing: list[str] = []
    raw = pyetcd.MultiEndpointEtcd3Client(
        endpoints=[pyetcd.Endpoint("127.0.0.1", 1, secure=False)], timeout=1, failover=True
    )
    try:
        for name in _CLIENT_INTERNALS:
            if not hasattr(raw, name):
                missing.append(f"MultiEndpointEtcd3Client.{name}")
        if not isinstance(getattr(raw, _STUBS, None), dict):
            missing.append("MultiEndpointEtcd3Client._stubs (a dict of cached stubs)")
        for ep in raw.endpoints.values():
            if not isinstance(getattr(ep, "last_failed", None), int | float):
                missing.append("Endpoint.last_failed (a timestamp)")
        if not isinstance(getattr(type(raw), "watcher", None), property) or (
            type(raw).watcher.fset is None
        ):
            missing.append("MultiEndpointEtcd3Client.watcher (a settable property)")
        if not hasattr(pwatch, "WatchResponse") or not hasattr(pev, "DeleteEvent"):
            missing.append("pyetcd.watch.WatchResponse / pyetcd.events.DeleteEvent")
    finally:
        raw.close()
    return missing
