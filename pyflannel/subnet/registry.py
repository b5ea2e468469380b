"""The etcd v3 registry: the only module that talks to etcd.

Blocking ``pyetcd`` (etcd-sdk-python) calls run in worker threads via ``trio.to_thread``; watch
callbacks, which ``pyetcd`` runs on its own watcher thread, are bridged into trio memory
channels. Every failure leaves this module as :class:`~pyflannel.errors.RegistryError`,
:class:`~pyflannel.errors.EtcdUnavailable` or :class:`~pyflannel.errors.EtcdAuthError` with a
message naming the operation and the endpoints, and a hint; no gRPC traceback escapes.

Keys and values use flanneld's codecs (:mod:`pyflannel.lease`), so flanneld and pyflannel nodes
can share one etcd. What this module adds on top of flanneld's registry:

- all ``--etcd-endpoints`` are used: a request that fails on one endpoint is retried on the
  next (flanneld's Go client balances, ``pyetcd`` only marks the endpoint failed);
- an expired auth token (etcd's simple tokens die after ``--auth-token-ttl`` of idleness) is
  renewed transparently;
- leases are listed in pages at one revision and their TTLs are fetched concurrently and
  cached by etcd lease ID, instead of one sequential ``TimeToLive`` per key;
- every write that could race is a transaction whose outcome is read back in the same round
  trip, so a retried request can tell "I already did this" from "someone else did".
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import math
import os
import posixpath
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import structlog
import trio

from pyflannel.errors import (
    ConfigError,
    EtcdAuthError,
    EtcdUnavailable,
    FlannelError,
    RegistryError,
)
from pyflannel.lease import (
    Event,
    EventKind,
    Lease,
    LeaseAttrs,
    LeaseDecodeError,
    decode_attrs,
    encode_attrs,
    make_subnet_key,
    parse_subnet_key,
)
from pyflannel.netlink.nsenter import NetnsPin

# gRPC's C core logs connection and TLS handshake failures straight to stderr; they are
# reported through our own errors instead. Must be set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

__all__ = [
    "DEFAULT_ENDPOINTS",
    "DEFAULT_PREFIX",
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_LEASE_VALUE_BYTES",
    "ConfigNotFound",
    "CreateResult",
    "EndpointSpec",
    "EtcdRegistry",
    "Unreadable",
    "WatchBatch",
    "WatchCompacted",
    "WatchStream",
    "parse_endpoints",
]

log = structlog.get_logger(__name__)

DEFAULT_PREFIX: Final = "/coreos.com/network"
DEFAULT_ENDPOINTS: Final = "http://127.0.0.1:4001,http://127.0.0.1:2379"
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
# Real lease values are ~150 bytes; anything this big is garbage and is skipped with a warning
# rather than decoded (flanneld would try to decode it).
MAX_LEASE_VALUE_BYTES: Final = 64 * 1024
_PAGE_SIZE: Final = 2000
# A dual-stack create retried because other keys were created meanwhile (none holding our
# subnets): each retry means another node made progress, so this bounds only the pathological
# case; the caller then lists again.
_CREATE_RETRIES: Final = 500
_TTL_BATCH: Final = 512
# Watch responses up to this many events are decoded on the trio thread when no etcd call is
# needed for them (see _convert_watch_response).
_INLINE_WATCH_EVENTS: Final = 16
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
_CONFIG_EXAMPLE: Final = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'

_T = TypeVar("_T")
# One etcd key-value as the lease code needs it: (key, value, etcd lease ID, mod_revision).
_KeyValue = tuple[bytes, bytes, int, int]
_Client = Any  # pyetcd.MultiEndpointEtcd3Client (untyped library)


class ConfigNotFound(RegistryError):
    """``<prefix>/config`` does not exist (flanneld's errConfigNotFound)."""


class WatchCompacted(RegistryError):
    """The watch start revision was compacted away; the caller must re-list."""

    def __init__(self, message: str, *, compact_revision: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One ``--etcd-endpoints`` entry."""

    url: str
    scheme: str  # "http" or "https"
    host: str  # as in a gRPC target: an IPv6 literal keeps its brackets
    port: int


def parse_endpoints(spec: str | Sequence[str]) -> list[EndpointSpec]:
    """Parse ``http(s)://host:port`` endpoints (a comma-separated string or a list).

    A missing scheme means ``http``, a missing port 2379. Raises :class:`ConfigError` naming
    the bad entry.
    """
    items = spec.split(",") if isinstance(spec, str) else [s for e in spec for s in e.split(",")]
    out: list[EndpointSpec] = []
    for raw in items:
        text = raw.strip()
        if not text:
            continue
        url = text if "://" in text else f"http://{text}"
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or 2379
        except ValueError as exc:
            raise ConfigError(
                f"invalid etcd endpoint {text!r}: {exc}",
                hint="use --etcd-endpoints=http://HOST:PORT[,https://HOST:PORT...]",
            ) from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"invalid etcd endpoint {text!r}: only http://HOST:PORT and https://HOST:PORT "
                "are supported",
                hint="use --etcd-endpoints=http://HOST:PORT[,https://HOST:PORT...]",
            )
        host = parts.hostname
        if ":" in host:
            host = f"[{host}]"
        url = f"{scheme}://{host}:{port}"
        out.append(EndpointSpec(url=url, scheme=scheme, host=host, port=port))
    if not out:
        raise ConfigError(
            "no etcd endpoint given",
            hint="use --etcd-endpoints=http://HOST:PORT[,https://HOST:PORT...]",
        )
    return out


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A lease key that exists but whose value (or key) cannot be decoded.

    It is not "absent": the key still blocks a create and still carries ``etcd_lease_id``
    (0 when written without a lease). ``error`` says why it could not be decoded.
    """

    key: str
    etcd_lease_id: int
    mod_revision: int
    error: str


@dataclass(frozen=True, slots=True)
class CreateResult:
    """Outcome of a conditional write: ``lease`` when ours; otherwise what stood in the way.

    - ``existing``: the key itself holds this (decodable) lease;
    - ``unreadable``: the key itself exists but its value cannot be decoded;
    - ``conflict``: (create only) another key holds one of our subnets, e.g. the same IPv4
      subnet paired with another IPv6 subnet; the text is that key;
    - none of them: the key was gone again when the failed write was read back, or unrelated
      creates kept invalidating a dual-stack create (the caller lists again and retries).
    """

    lease: Lease | None
    existing: Lease | None = None
    unreadable: Unreadable | None = None
    conflict: str | None = None

    @property
    def ok(self) -> bool:
        """True when the write happened."""
        return self.lease is not None


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One etcd watch response: the changes in order and the response's header revision.

    ``ADDED`` events carry the decoded lease (with expiration), ``REMOVED`` events only the
    subnets (etcd's DELETE has no value). ``resume_revision`` is where a new watch continues
    after this batch: one past its last event (unparsable ones included), else past the header.
    """

    revision: int
    events: tuple[Event, ...]
    resume_revision: int


def _clean_prefix(prefix: str) -> str:
    # flanneld builds keys with Go's path.Join, which cleans the prefix.
    cleaned = posixpath.normpath(prefix) if prefix else ""
    return "" if cleaned in ("/", ".") else cleaned


def _grpc_error(exc: BaseException) -> Any:
    """The gRPC error behind a pyetcd exception (pyetcd raises its own inside ``except``)."""
    import grpc

    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, grpc.RpcError):
            return cur
        cur = cur.__context__
    return None


def _code_details(exc: BaseException) -> tuple[str, str]:
    err = _grpc_error(exc)
    if err is None:
        return type(exc).__name__, str(exc) or type(exc).__name__
    try:
        code = err.code()
        details = err.details() or ""
    except Exception:  # a bare RpcError without status
        return "UNKNOWN", str(err)
    return getattr(code, "name", str(code)), details


def _is_invalid_token(exc: BaseException) -> bool:
    code, details = _code_details(exc)
    return code == "UNAUTHENTICATED" and "invalid auth token" in details


def _is_compacted(exc: BaseException) -> bool:
    code, details = _code_details(exc)
    return code == "OUT_OF_RANGE" and "compacted" in details


def _holding_our_subnets(
    keys: Iterable[str],
    subnet: ipaddress.IPv4Network | None,
    ipv6_subnet: ipaddress.IPv6Network | None,
) -> str | None:
    """The first lease key among ``keys`` whose IPv4 or IPv6 subnet overlaps ours."""
    for key in keys:
        try:
            v4, v6 = parse_subnet_key(key)
        except LeaseDecodeError:
            continue  # not a lease key: cannot hold a subnet
        if (subnet is not None and v4 is not None and v4.overlaps(subnet)) or (
            ipv6_subnet is not None and v6 is not None and v6.overlaps(ipv6_subnet)
        ):
            return key
    return None


class WatchStream:
    """Async iterator of :class:`WatchBatch`; raises when the underlying stream dies.

    - :class:`WatchCompacted` when the start revision is no longer available;
    - :class:`~pyflannel.errors.EtcdUnavailable` (or another ``RegistryError``) when the stream
      broke, e.g. because etcd restarted. ``pyetcd`` delivers exactly one error and the watch
      is then dead: the caller resumes with a new watch from the last revision + 1.
    """

    def __init__(
        self, registry: EtcdRegistry, recv: trio.MemoryReceiveChannel[object], op: str
    ) -> None:
        self._registry = registry
        self._recv = recv
        self._op = op

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchBatch:
        import pyetcd.exceptions as pexc
        import pyetcd.watch as pwatch

        try:
            item = await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        if isinstance(item, pwatch.WatchResponse):
            return await self._registry._convert_watch_response(item, self._op)
        if isinstance(item, pexc.RevisionCompactedError):
            raise WatchCompacted(
                f"etcd {self._op}: the start revision was compacted "
                f"(compact revision {item.compacted_revision})",
                compact_revision=int(item.compacted_revision),
                hint="re-list and resume from the new revision",
            )
        if item is None:
            raise EtcdUnavailable(
                f"etcd {self._op}: the watch stream to {self._registry.endpoints_text} was closed",
                hint="it is re-created from the last revision seen",
            )
        if isinstance(item, BaseException):
            raise self._registry._map_error(self._op, item)
        raise RegistryError(f"etcd {self._op}: unexpected watch item {item!r}")


class EtcdRegistry:
    """Lease storage in etcd v3 under ``<prefix>/subnets/`` plus the network config.

    All I/O methods are async; construction does no I/O (the client connects and, with a
    username, authenticates on first use). TLS follows flanneld: it is used when both
    ``keyfile`` and ``certfile`` are given (``cafile`` verifies the server then); otherwise a
    warning says the connection is insecure. ``https://`` endpoints without a client
    certificate still use TLS (verified with ``cafile`` if given, else the system roots), as
    etcd's Go client does.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINTS,
        prefix: str = DEFAULT_PREFIX,
        *,
        keyfile: str = "",
        certfile: str = "",
        cafile: str = "",
        username: str = "",
        password: str = "",
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self._endpoints = parse_endpoints(endpoints)
        self._prefix = _clean_prefix(prefix)
        self._keyfile = keyfile
        self._certfile = certfile
        self._cafile = cafile
        self._username = username
        self._password = password
        self._timeout = request_timeout
        self._client: _Client | None = None
        self._client_lock = threading.Lock()
        self._auth_lock = threading.Lock()
        # pyetcd creates its watcher (a gRPC stream and stub) lazily on the first watch; two
        # threads creating watches at once (own-key and peer watch at start-up) crashed the
        # interpreter inside grpc. Watch creation is rare, so it is simply serialised.
        self._watch_lock = threading.Lock()
        self._closed = False
        # gRPC connects from the calling thread: keep every call in the namespace we were made in.
        self._netns = NetnsPin()
        # etcd lease ID -> wall-clock expiration. flannel never keeps leases alive, so an ID's
        # expiration is fixed once granted; this spares a TimeToLive per key on every re-list.
        self._expiry_cache: dict[int, float] = {}
        # The last listing's leases by (key, mod_revision): a key-value that has not changed
        # since is not parsed again. At start-up the peer snapshot re-lists what the lease
        # allocation just listed; with 10k peers that saved ~0.5 s and 10k duplicate objects.
        self._listed: dict[tuple[bytes, int], Lease] = {}
        # Listing revision -> the keys it could not decode (last few listings). A caller that
        # planned from a listing never saw these, yet their keys hold subnets: create_lease
        # checks them (see there).
        self._unreadable_at: dict[int, tuple[str, ...]] = {}

    # ----------------------------------------------------------------- naming
    @property
    def prefix(self) -> str:
        """The cleaned ``--etcd-prefix``."""
        return self._prefix

    @property
    def config_key(self) -> str:
        """``<prefix>/config``."""
        return f"{self._prefix}/config"

    @property
    def subnets_prefix(self) -> str:
        """``<prefix>/subnets/`` (with the slash; flanneld lists without it)."""
        return f"{self._prefix}/subnets/"

    @property
    def endpoints_text(self) -> str:
        """The endpoints, comma-separated, for messages."""
        return ",".join(e.url for e in self._endpoints)

    def lease_key(
        self, subnet: ipaddress.IPv4Network | None, ipv6_subnet: ipaddress.IPv6Network | None
    ) -> str:
        """The etcd key of a lease."""
        return make_subnet_key(self._prefix, subnet, ipv6_subnet)

    # ----------------------------------------------------------------- client
    def _read_file(self, path: str, flag: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {flag} {path!r}: {exc.strerror or exc}",
                hint=f"check the path given to {flag} and its permissions",
            ) from None

    def _credentials(self) -> Any:
        import grpc

        if self._keyfile and self._certfile:
            key = self._read_file(self._keyfile, "--etcd-keyfile")
            cert = self._read_file(self._certfile, "--etcd-certfile")
            ca = self._read_file(self._cafile, "--etcd-cafile") if self._cafile else None
            return grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
        if any(e.scheme == "https" for e in self._endpoints):
            log.warning(
                "no client certificate provided: connecting to https etcd endpoints without one",
                endpoints=self.endpoints_text,
            )
            ca = self._read_file(self._cafile, "--etcd-cafile") if self._cafile else None
            return grpc.ssl_channel_credentials(root_certificates=ca)
        log.warning("no certificate provided: connecting to etcd with http. This is insecure")
        return None

    def _connect(self) -> _Client:
        import pyetcd

        creds = self._credentials()
        eps = [
            pyetcd.Endpoint(
                e.host,
                e.port,
                secure=creds is not None,
                creds=creds,
                time_retry=_ENDPOINT_RETRY_SECONDS,
                opts=list(_GRPC_OPTIONS),
            )
            for e in self._endpoints
        ]
        # Authentication is done here, not by pyetcd: pyetcd also attaches the token as gRPC
        # call credentials, which gRPC refuses on plain-http channels.
        client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=eps, timeout=self._timeout, failover=True
        )
        # Like flanneld's WithRequireLeader: a member that lost its leader fails requests and
        # breaks watch streams instead of serving stale data forever.
        client.metadata = (("hasleader", "true"),)
        return client

    def _authenticate(self, client: _Client) -> None:
        from pyetcd import etcdrpc

        resp = client.authstub.Authenticate(
            etcdrpc.AuthenticateRequest(name=self._username, password=self._password),
            self._timeout,
        )
        client.metadata = (("token", resp.token), ("hasleader", "true"))

    def _reauthenticate(self, client: _Client) -> None:
        with self._auth_lock:
            self._authenticate(client)
            # Watch streams carry the token they were opened with: new watches need a new
            # stream. Existing watches on the old stream are ended and resume on their own.
            # (_stubs: peek without creating one; pyetcd has no public accessor for that.)
            old = client._stubs.get("watcher")
            client.watcher = client.get_watcher()
            if old is not None:
                old.close()
        log.info("etcd auth token renewed", endpoints=self.endpoints_text)

    def _get_client(self) -> _Client:
        if self._closed:
            raise RegistryError(
                "etcd registry is closed", hint="this is a bug: the manager was used after close()"
            )
        with self._client_lock:
            if self._client is None:
                client = self._connect()
                if self._username:
                    try:
                        self._with_failover(client, lambda: self._authenticate(client))
                    except BaseException:
                        client.close()
                        raise
                self._client = client
            return self._client

    def _with_failover(self, client: _Client, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` once per endpoint (+1) until one answers.

        pyetcd fails over but never retries: a failed request only marks its endpoint failed
        so that the next request goes elsewhere.
        """
        import pyetcd.exceptions as pexc

        budget = len(self._endpoints) + 1
        failures = 0
        last: BaseException | None = None
        for _ in range(2 * budget + 1):
            try:
                return fn()
            except pexc.NoServerAvailableError as exc:
                last = last or exc
                # Every endpoint failed within the last second: give each one another go
                # rather than refusing to try at all.
                for ep in client.endpoints.values():
                    ep.last_failed = 0
            except (pexc.ConnectionFailedError, pexc.ConnectionTimeoutError) as exc:
                last = exc  # keeps gRPC's details (e.g. a TLS handshake failure) for the message
                failures += 1
                if failures >= budget:
                    break
        assert last is not None
        raise last

    def _call_sync(self, op: str, fn: Callable[[_Client], _T]) -> _T:
        with self._netns.entered():
            return self._call_sync_here(op, fn)

    def _call_sync_here(self, op: str, fn: Callable[[_Client], _T]) -> _T:
        import grpc
        import pyetcd.exceptions as pexc

        reauthed = False
        while True:
            try:
                client = self._get_client()
                return self._with_failover(client, functools.partial(fn, client))
            except FlannelError:
                raise
            except (grpc.RpcError, pexc.Etcd3Exception) as exc:
                if self._username and not reauthed and _is_invalid_token(exc):
                    reauthed = True
                    try:
                        self._reauthenticate(self._get_client())
                    except (grpc.RpcError, pexc.Etcd3Exception) as auth_exc:
                        raise self._map_error(op, auth_exc) from None
                    continue
                raise self._map_error(op, exc) from None
            except Exception as exc:
                raise self._map_error(op, exc) from None

    async def _call(self, op: str, fn: Callable[[_Client], _T]) -> _T:
        # abandon_on_cancel: a cancelled caller does not wait for the gRPC deadline; the
        # thread finishes (bounded by request_timeout) in the background.
        return await trio.to_thread.run_sync(self._call_sync, op, fn, abandon_on_cancel=True)

    def _map_error(self, op: str, exc: BaseException) -> RegistryError:
        """Turn any client error into our error tree, naming the op and the endpoints."""
        import pyetcd.exceptions as pexc

        if isinstance(exc, RegistryError):
            return exc
        eps = self.endpoints_text
        if isinstance(exc, pexc.RevisionCompactedError):
            return WatchCompacted(
                f"etcd {op}: the start revision was compacted "
                f"(compact revision {exc.compacted_revision})",
                compact_revision=int(exc.compacted_revision),
                hint="re-list and resume from the new revision",
            )
        if isinstance(exc, pexc.WatchTimedOut):
            return EtcdUnavailable(
                f"etcd {op} failed: {eps} did not confirm the watch within {self._timeout:g}s",
                hint="check that etcd is healthy and not overloaded",
            )
        code, details = _code_details(exc)
        low = details.lower()
        if isinstance(exc, pexc.NoServerAvailableError):
            code, details = "UNAVAILABLE", "every endpoint failed"
        # gRPC reports a server that rejects our client certificate as "Unwrap failed
        # (TSI_DATA_CORRUPTED)", a server certificate we do not trust as a handshake failure.
        # Only a TLS channel can fail that way: gRPC's TCP connect timeout reads "tcp
        # handshaker shutdown", which on a plain-http channel (or before TLS even starts) is a
        # host that cannot be reached, not a certificate problem.
        uses_tls = bool(self._keyfile and self._certfile) or any(
            e.scheme == "https" for e in self._endpoints
        )
        tls_words = ("ssl", "handshake", "certificate", "tls", "x509", "tsi_", "unwrap failed")
        tls_failure = any(w in low.replace("tcp handshaker", "") for w in tls_words)
        if code == "UNAVAILABLE" and uses_tls and tls_failure:
            return EtcdAuthError(
                f"etcd {op} failed: TLS handshake with {eps} failed: {details}",
                hint=(
                    "check --etcd-cafile (the CA that signed etcd's server certificate), "
                    "--etcd-certfile/--etcd-keyfile (a client certificate signed by a CA in "
                    "etcd's --trusted-ca-file) and that the endpoints use https://"
                ),
            )
        if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") or isinstance(
            exc, pexc.ConnectionFailedError | pexc.ConnectionTimeoutError
        ):
            what = (
                f"timed out at {eps}"
                if code == "DEADLINE_EXCEEDED"
                else f"could not reach etcd at {eps}: cannot connect"
            )
            return EtcdUnavailable(
                f"etcd {op} failed: {what}: {details or type(exc).__name__}",
                hint=(
                    "check that etcd is running and reachable from this host at "
                    "--etcd-endpoints (and whether it expects https://)"
                ),
            )
        if "authentication failed" in low or "invalid user id or password" in low:
            return EtcdAuthError(
                f"etcd {op} failed at {eps}: {details}",
                hint="check --etcd-username and --etcd-password",
            )
        denied = code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or "permission denied" in low
        if "user name is empty" in low or (denied and not self._username):
            return EtcdAuthError(
                f"etcd {op} failed at {eps}: {details}",
                hint=(
                    "etcd has authentication enabled: pass --etcd-username and --etcd-password "
                    f"of a user with read/write access to {self._prefix}/"
                ),
            )
        if denied:
            return EtcdAuthError(
                f"etcd {op} failed at {eps}: {details}",
                hint=(
                    f"grant the etcd user {self._username or '(none)'} read/write access to "
                    f"{self._prefix}/ (etcdctl role grant-permission --prefix=true ...)"
                ),
            )
        if "request is too large" in low:
            return RegistryError(
                f"etcd {op} failed at {eps}: {details}",
                hint="the value exceeds etcd's --max-request-bytes",
            )
        return RegistryError(
            f"etcd {op} failed at {eps}: {code}: {details}",
            hint="see the etcd server log for the cause",
        )

    def close(self) -> None:
        """Close the gRPC channels and watch streams (idempotent)."""
        self._closed = True
        self._netns.close()
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing must never fail the caller
                log.debug("error closing etcd client", error=str(exc))

    async def aclose(self) -> None:
        """Async spelling of :meth:`close`."""
        self.close()

    async def __aenter__(self) -> EtcdRegistry:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- decoding
    def _decode(
        self,
        key: bytes,
        value: bytes,
        lease_id: int,
        mod_revision: int,
        expiration: float | None,
        create_revision: int = 0,
    ) -> Lease | None:
        """A lease from one key-value, or ``None`` (logged) when flanneld would skip it too."""
        parsed = self._parse(
            (key, value, int(lease_id), int(mod_revision)), expiration, create_revision
        )
        if isinstance(parsed, Lease):
            return parsed
        log.warning("ignoring bad lease", key=parsed.key, error=parsed.error)
        return None

    def _parse(
        self, kv: _KeyValue, expiration: float | None, create_revision: int = 0
    ) -> Lease | Unreadable:
        """A lease from one key-value, or what makes it :class:`Unreadable` (not logged)."""
        key, value, lease_id, mod_revision = kv
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError:
            return Unreadable(repr(key), int(lease_id), int(mod_revision), "non-UTF-8 key")
        if len(value) > MAX_LEASE_VALUE_BYTES:
            return Unreadable(
                key_text,
                int(lease_id),
                int(mod_revision),
                f"oversized value ({len(value)} bytes, limit {MAX_LEASE_VALUE_BYTES})",
            )
        try:
            subnet, ipv6_subnet = parse_subnet_key(key_text)
            attrs = decode_attrs(value, key=key_text)
        except LeaseDecodeError as exc:
            return Unreadable(key_text, int(lease_id), int(mod_revision), exc.message)
        return Lease(
            subnet=subnet,
            attrs=attrs,
            ipv6_subnet=ipv6_subnet,
            expiration=expiration,
            etcd_lease_id=lease_id,
            mod_revision=mod_revision,
            create_revision=create_revision,
        )

    def _expirations(self, client: _Client, lease_ids: Iterable[int]) -> dict[int, float]:
        """Wall-clock expiration per etcd lease ID, from the cache or TimeToLive.

        Uncached IDs are asked concurrently (gRPC futures, ``_TTL_BATCH`` in flight): about
        3x faster than one call after the other.
        """
        import grpc
        from pyetcd import etcdrpc

        out: dict[int, float] = {}
        todo: list[int] = []
        for lid in set(lease_ids):
            if lid == 0:
                continue
            cached = self._expiry_cache.get(lid)
            if cached is not None:
                out[lid] = cached
            else:
                todo.append(lid)
        stub = client.leasestub
        for start in range(0, len(todo), _TTL_BATCH):
            chunk = todo[start : start + _TTL_BATCH]
            now = time.time()
            futures = [
                (
                    lid,
                    stub.LeaseTimeToLive.future(
                        etcdrpc.LeaseTimeToLiveRequest(ID=lid),
                        self._timeout,
                        metadata=client.metadata,
                    ),
                )
                for lid in chunk
            ]
            for lid, fut in futures:
                try:
                    resp = fut.result()
                except grpc.RpcError as exc:
                    for _, other in futures:
                        other.cancel()
                    # Marks the endpoint failed and maps the error like every pyetcd call.
                    client._manage_grpc_errors(exc)
                    raise
                if resp.TTL >= 0:
                    out[lid] = now + resp.TTL
                    self._expiry_cache[lid] = out[lid]
                else:
                    out[lid] = now  # expired: etcd deletes the key any moment now
        return out

    def _range_all(self, client: _Client, prefix: str) -> tuple[list[Any], int]:
        """All key-values under ``prefix`` at one revision, fetched in pages."""
        from pyetcd import utils

        start = prefix.encode()
        end = utils.prefix_range_end(start)
        for _ in range(3):
            try:
                resp = client.get_range_response(start, end, limit=_PAGE_SIZE)
                revision = int(resp.header.revision)
                kvs = list(resp.kvs)
                while resp.more and kvs:
                    resp = client.get_range_response(
                        kvs[-1].key + b"\0", end, limit=_PAGE_SIZE, revision=revision
                    )
                    kvs.extend(resp.kvs)
                return kvs, revision
            except Exception as exc:
                if not _is_compacted(exc):
                    raise
                log.info("revision compacted while paging through leases; listing again")
        raise RegistryError(
            f"etcd list {prefix} failed: etcd compacted the listing revision three times in a row",
            hint="etcd auto-compaction is extremely aggressive; retry later",
        )

    # ----------------------------------------------------------------- operations
    async def get_config(self) -> str:
        """The raw network config JSON at ``<prefix>/config``.

        Raises :class:`ConfigNotFound` with flanneld's message and the command that creates it.
        """
        key = self.config_key
        resp = await self._call(f"get {key}", lambda c: c.get_response(key))
        if not resp.kvs:
            raise ConfigNotFound(
                "flannel config not found in etcd store. Did you create your config using "
                f"etcdv3 API? (looked for {key} at {self.endpoints_text})",
                hint=f"create it with: ETCDCTL_API=3 etcdctl put {key} '{_CONFIG_EXAMPLE}'",
            )
        value: bytes = resp.kvs[0].value
        return value.decode("utf-8", errors="replace")

    async def put_config(self, value: str, *, expected: str | None) -> bool:
        """Write ``<prefix>/config`` only if it still holds ``expected`` (None: still absent).

        For ``pyflannel config set`` (the daemon never writes the config). False when someone
        changed the key since ``expected`` was read.
        """
        key = self.config_key

        def run(client: _Client) -> bool:
            tx = client.transactions
            cmp = [tx.version(key) == 0] if expected is None else [tx.value(key) == expected]
            ok, _ = client.transaction(compare=cmp, success=[tx.put(key, value)], failure=[])
            return bool(ok)

        return await self._call(f"put {key}", run)

    async def list_leases(self, *, with_ttl: bool = True) -> tuple[list[Lease], int]:
        """All parsable leases under ``<prefix>/subnets/`` and the revision they were read at.

        Keys without an etcd lease are reservations (``etcd_lease_id == 0``, ``expiration``
        ``None``). With ``with_ttl=False`` no TimeToLive is asked and ``expiration`` stays
        ``None`` for every lease (allocation needs only subnets and attrs).
        """
        prefix = self.subnets_prefix

        def run(client: _Client) -> tuple[list[Lease], int]:
            kvs, revision = self._range_all(client, prefix)
            expiry = self._expirations(client, (kv.lease for kv in kvs)) if with_ttl else {}
            if with_ttl:
                live = {kv.lease for kv in kvs}
                # list() first: other worker threads may add entries meanwhile.
                for lid in list(self._expiry_cache):
                    if lid not in live:
                        self._expiry_cache.pop(lid, None)
            leases = []
            previous = self._listed
            listed: dict[tuple[bytes, int], Lease] = {}
            unreadable: list[str] = []
            for kv in kvs:
                lease_id, mod_revision = int(kv.lease), int(kv.mod_revision)
                expiration = expiry.get(kv.lease)
                known = previous.get((kv.key, mod_revision))
                if known is not None and known.etcd_lease_id == lease_id:
                    lease: Lease | None = known
                    if known.expiration != expiration:
                        lease = Lease(
                            subnet=known.subnet,
                            attrs=known.attrs,
                            ipv6_subnet=known.ipv6_subnet,
                            expiration=expiration,
                            etcd_lease_id=lease_id,
                            mod_revision=mod_revision,
                            create_revision=known.create_revision,
                        )
                else:
                    lease = self._decode(
                        kv.key,
                        kv.value,
                        lease_id,
                        mod_revision,
                        expiration,
                        int(kv.create_revision),
                    )
                    if lease is None:
                        unreadable.append(kv.key.decode("utf-8", errors="replace"))
                if lease is not None:
                    leases.append(lease)
                    listed[(kv.key, mod_revision)] = lease
            self._listed = listed
            self._unreadable_at[revision] = tuple(unreadable)
            while len(self._unreadable_at) > 4:
                del self._unreadable_at[next(iter(self._unreadable_at))]
            return leases, revision

        return await self._call(f"list {prefix}", run)

    async def get_lease(
        self, subnet: ipaddress.IPv4Network | None, ipv6_subnet: ipaddress.IPv6Network | None
    ) -> tuple[Lease | None, int]:
        """The lease under one key (``None`` if absent or unparsable) and the read revision."""
        key = self.lease_key(subnet, ipv6_subnet)

        def run(client: _Client) -> tuple[Lease | None, int]:
            resp = client.get_response(key)
            revision = int(resp.header.revision)
            if not resp.kvs:
                return None, revision
            kv = resp.kvs[0]
            expiry = self._expirations(client, [kv.lease])
            return (
                self._decode(kv.key, kv.value, kv.lease, kv.mod_revision, expiry.get(kv.lease)),
                revision,
            )

        return await self._call(f"get {key}", run)

    async def grant(self, ttl: int) -> tuple[int, float]:
        """A new etcd lease: ``(lease_id, wall-clock expiration)``."""

        def run(client: _Client) -> tuple[int, float]:
            now = time.time()
            granted = client.lease(int(ttl))
            expiration = now + int(granted.ttl)
            self._expiry_cache[int(granted.id)] = expiration
            return int(granted.id), expiration

        return await self._call(f"grant lease (TTL {ttl}s)", run)

    async def revoke(self, lease_id: int) -> None:
        """Revoke an etcd lease, ignoring "not found"; failures are only logged."""
        try:
            await self._call(f"revoke lease {lease_id:x}", lambda c: c.revoke_lease(lease_id))
        except RegistryError as exc:
            log.warning("could not revoke unused etcd lease", lease_id=lease_id, error=str(exc))
        self._expiry_cache.pop(lease_id, None)

    def _result_from_kv(
        self, kv: _KeyValue | None, lease_id: int, expiration: float | None
    ) -> CreateResult:
        """A write's outcome from the key read back: ours when it carries ``lease_id``.

        ``kv`` is ``(key, value, etcd lease, mod_revision)`` or ``None`` (key absent).
        """
        if kv is None:
            return CreateResult(lease=None)
        kv_lease = kv[2]
        current = self._parse(kv, self._expiry_cache.get(kv_lease))
        if isinstance(current, Unreadable):
            return CreateResult(lease=None, unreadable=current)
        if lease_id and kv_lease == lease_id:
            # Our own grant's expiration (no TimeToLive round trip needed).
            return CreateResult(lease=dataclasses.replace(current, expiration=expiration))
        return CreateResult(lease=None, existing=current)

    async def _txn_put(
        self,
        op: str,
        key: str,
        value: str,
        lease_id: int,
        expiration: float | None,
        compare: Callable[[_Client], list[Any]],
    ) -> CreateResult:
        def run(client: _Client) -> CreateResult:
            tx = client.transactions
            ok, responses = client.transaction(
                compare=compare(client),
                success=[tx.put(key, value, lease=lease_id), tx.get(key)],
                failure=[tx.get(key)],
            )
            kvs = responses[-1] if responses else []
            if not kvs:
                return CreateResult(lease=None)
            cur_value, meta = kvs[0]
            kv = (meta.key, cur_value, int(meta.lease_id), int(meta.mod_revision))
            if ok and lease_id == 0:  # a reservation: no lease ID to recognise our write by
                result = self._result_from_kv(kv, 0, None)
                if result.existing is not None:
                    return CreateResult(lease=result.existing)
                return result
            # Failed but carrying our fresh lease: a retried request whose first attempt was
            # applied (failover after a lost reply). The lease ID is ours alone, so it is ours.
            return self._result_from_kv(kv, lease_id, expiration)

        return await self._call(op, run)

    async def _read_back(self, key: str) -> _KeyValue | None:
        """``(key, value, etcd lease, mod_revision)`` of one key, or ``None`` when absent."""

        def run(client: _Client) -> _KeyValue | None:
            resp = client.get_response(key)
            if not resp.kvs:
                return None
            kv = resp.kvs[0]
            return kv.key, kv.value, int(kv.lease), int(kv.mod_revision)

        return await self._call(f"read back {key}", run)

    async def _settle_lost_reply(
        self, key: str, lease_id: int, expiration: float | None, error: RegistryError
    ) -> CreateResult:
        """The outcome of a write whose reply was lost (``error``), without making it worse.

        The write may have been applied (a timeout after etcd committed it) or may still be
        applied later (it is in the raft log). Revoking the fresh lease now would delete our
        key in the first case and race with the commit in the second, so the lease is never
        revoked here: the key is read back, and if it carries the lease the write is ours;
        otherwise ``error`` is raised and the unused lease simply expires after its TTL.
        """
        try:
            kv = await self._read_back(key)
        except RegistryError:
            kv = None
        result = None if kv is None else self._result_from_kv(kv, lease_id, expiration)
        if result is not None and result.ok:
            log.info("the reply to a write was lost, but the write was applied", key=key)
            return result
        log.info(
            "the outcome of a write is unknown; its fresh etcd lease is left to expire",
            key=key,
            lease_id=f"{lease_id:x}",
            error=str(error),
        )
        raise error

    async def create_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        attrs: LeaseAttrs,
        ttl: int,
        *,
        known_revision: int = 0,
    ) -> CreateResult:
        """flanneld's ``createSubnet``: Grant(ttl), then put the key only if no key holds either
        of its subnets.

        flanneld only requires the exact key to be absent, so in dual stack two nodes that
        pick the same IPv4 subnet with different IPv6 subnets (or the reverse) both succeed.
        Here the transaction compares (see :meth:`_create_request`):

        - IPv4 half: the key ``<v4>`` and the key range ``[<v4>&, <v4>')`` -- exactly the keys
          whose IPv4 half is ours (``'`` follows ``&``; ``<v4>0`` as in ``-240`` lies
          outside) -- must be empty;
        - IPv6 half (dual stack only): keys with our IPv6 half are spread over the whole
          ``subnets/`` range, so no key range holds exactly them. Instead no key in
          ``subnets/`` may have been created after ``known_revision``, the revision of the
          listing the caller checked the subnets against (renewals keep a key's create
          revision, so they do not interfere). When that compare fails because of an
          *unrelated* create, the keys created since are read in the same transaction; if
          none of them holds our subnets the create is retried at once against the new
          revision (bounded), so a busy cluster costs retries, not wrongly "lost" subnets.
          This needs the caller to have seen every key at ``known_revision``: keys that our
          listing at that revision could not decode are checked here first, and a revision
          that is not one of our recent listings is treated as 0 (the first attempt then
          reads every key).
        - IPv6-only keys (``0.0.0.0-0&<v6>``): the exact key. Nodes of one network write keys
          of one shape, so a concurrent creator of the same subnet writes the same key.

        The result is ``existing``/``unreadable`` when the key itself exists, ``conflict``
        when another key holds one of our subnets. The grant is revoked when the key was not
        written; after a lost reply see :meth:`_settle_lost_reply`. A cancelled call leaves
        the grant to expire too: the abandoned request may still be applied.
        """
        key = self.lease_key(subnet, ipv6_subnet)
        seen = known_revision
        hidden = self._unreadable_at.get(known_revision)
        if hidden is None:
            seen = 0  # not a listing of ours: the first attempt checks every key
        else:
            # The caller's listing skipped these keys (values it cannot decode), so it could
            # not avoid their subnets; the revision compare alone would let us share one.
            blocking = _holding_our_subnets(hidden, subnet, ipv6_subnet)
            if blocking is not None:
                return CreateResult(lease=None, conflict=blocking)
        lease_id, expiration = await self.grant(ttl)
        value = encode_attrs(attrs)
        try:
            for _ in range(_CREATE_RETRIES):
                result, seen = await self._create_once(
                    key, subnet, ipv6_subnet, value, lease_id, expiration, seen
                )
                if result is not None:
                    break
            else:
                result = CreateResult(lease=None)
        except RegistryError as exc:
            return await self._settle_lost_reply(key, lease_id, expiration, exc)
        if not result.ok:
            await self.revoke(lease_id)
        return result

    def _create_request(
        self,
        key: str,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        value: str,
        lease_id: int,
        seen: int,
    ) -> Any:
        """The create transaction (see :meth:`create_lease`): compares, put, and on failure
        reads of the key, of every key with our IPv4 half and of the keys created after
        ``seen``."""
        from pyetcd import etcdrpc, utils

        compares: list[Any] = []
        reads: list[Any] = []

        def absent(start: bytes, end: bytes | None = None) -> None:
            cmp = etcdrpc.Compare(
                key=start,
                target=etcdrpc.Compare.VERSION,
                result=etcdrpc.Compare.EQUAL,
                version=0,
            )
            read = etcdrpc.RangeRequest(key=start)
            if end is not None:
                cmp.range_end = end
                read.range_end = end
            compares.append(cmp)
            reads.append(read)

        key_bytes = key.encode()
        if subnet is None:
            absent(key_bytes)
        else:
            v4_key = self.lease_key(subnet, None).encode()
            absent(v4_key)
            paired = v4_key + b"&"
            absent(paired, utils.prefix_range_end(paired))
        if subnet is not None and ipv6_subnet is not None:
            start = self.subnets_prefix.encode()
            end = utils.prefix_range_end(start)
            compares.append(
                etcdrpc.Compare(
                    key=start,
                    range_end=end,
                    target=etcdrpc.Compare.CREATE,
                    result=etcdrpc.Compare.LESS,
                    create_revision=seen + 1,
                )
            )
            reads.append(
                etcdrpc.RangeRequest(key=start, range_end=end, min_create_revision=seen + 1)
            )
        return etcdrpc.TxnRequest(
            compare=compares,
            success=[
                etcdrpc.RequestOp(
                    request_put=etcdrpc.PutRequest(
                        key=key_bytes, value=value.encode(), lease=lease_id
                    )
                ),
                etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key_bytes)),
            ],
            failure=[etcdrpc.RequestOp(request_range=r) for r in reads],
        )

    async def _create_once(
        self,
        key: str,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        value: str,
        lease_id: int,
        expiration: float | None,
        seen: int,
    ) -> tuple[CreateResult | None, int]:
        """One create transaction: its result (``None``: only unrelated keys were created
        since ``seen``, retry) and the revision it was evaluated at."""
        request = self._create_request(key, subnet, ipv6_subnet, value, lease_id, seen)
        key_bytes = key.encode()

        def run(client: _Client) -> tuple[CreateResult | None, int]:
            import grpc

            try:
                resp = client.kvstub.Txn(
                    request,
                    self._timeout,
                    credentials=client.call_credentials,
                    metadata=client.metadata,
                )
            except grpc.RpcError as exc:
                # Marks the endpoint failed and maps the error like every pyetcd call.
                client._manage_grpc_errors(exc)
                raise
            revision = int(resp.header.revision)
            kvs = [kv for r in resp.responses for kv in r.response_range.kvs]
            own = next((kv for kv in kvs if kv.key == key_bytes), None)
            if resp.succeeded or own is not None:
                if own is None:
                    return CreateResult(lease=None), revision
                kv = (own.key, own.value, int(own.lease), int(own.mod_revision))
                return self._result_from_kv(kv, lease_id, expiration), revision
            other = _holding_our_subnets(
                (kv.key.decode("utf-8", errors="replace") for kv in kvs), subnet, ipv6_subnet
            )
            if other is not None:
                return CreateResult(lease=None, conflict=other), revision
            return None, revision

        return await self._call(f"create {key}", run)

    async def put_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        attrs: LeaseAttrs,
        ttl: int | None,
        *,
        if_mod_revision: int | None = None,
    ) -> CreateResult:
        """flanneld's ``updateSubnet``: Grant(ttl) + Put; ``ttl=None`` puts a reservation.

        A reservation is written without an etcd lease, so it never expires (flannel #1329).
        With ``if_mod_revision`` the put only happens if the key is unchanged since that
        revision; otherwise ``existing`` (or ``unreadable``) holds what is there now
        (flanneld's put is unconditional and can overwrite another node's fresh lease). The
        fresh grant is revoked only when etcd answered that the put did not happen; after a
        lost reply see :meth:`_settle_lost_reply`.
        """
        key = self.lease_key(subnet, ipv6_subnet)
        lease_id, expiration = (0, None) if ttl is None else await self.grant(ttl)

        def compare(client: _Client) -> list[Any]:
            if if_mod_revision is None:
                return []
            return [client.transactions.mod(key) == if_mod_revision]

        try:
            result = await self._txn_put(
                f"put {key}", key, encode_attrs(attrs), lease_id, expiration, compare
            )
        except RegistryError as exc:
            if not lease_id:
                raise
            return await self._settle_lost_reply(key, lease_id, expiration, exc)
        if not result.ok and lease_id:
            await self.revoke(lease_id)
        return result

    async def delete_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        *,
        if_mod_revision: int | None = None,
    ) -> bool:
        """Delete a lease key; with ``if_mod_revision`` only if unchanged. True if deleted."""
        key = self.lease_key(subnet, ipv6_subnet)

        def run(client: _Client) -> bool:
            tx = client.transactions
            compare = [] if if_mod_revision is None else [tx.mod(key) == if_mod_revision]
            ok, responses = client.transaction(
                compare=compare, success=[tx.delete(key)], failure=[]
            )
            if not ok or not responses:
                return False
            return bool(responses[0].response_delete_range.deleted)

        return bool(await self._call(f"delete {key}", run))

    async def lease_time_to_live(self, lease_id: int) -> float | None:
        """Seconds left on an etcd lease (``None`` if it expired or never existed)."""

        def run(client: _Client) -> float | None:
            resp = client.get_lease_info(lease_id)
            return None if resp.TTL < 0 else float(resp.TTL)

        return await self._call(f"time-to-live of lease {lease_id:x}", run)

    # ----------------------------------------------------------------- watching
    def watch_leases(self, start_revision: int) -> AbstractAsyncContextManager[WatchStream]:
        """Watch every lease key from ``start_revision`` (see :class:`WatchStream`)."""
        return self._watch(self.subnets_prefix, True, start_revision)

    def watch_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        start_revision: int,
    ) -> AbstractAsyncContextManager[WatchStream]:
        """Watch one lease key (exactly; flanneld's prefix watch would also match
        ``<ours>&<ipv6>`` and longer prefix lengths)."""
        return self._watch(self.lease_key(subnet, ipv6_subnet), False, start_revision)

    @asynccontextmanager
    async def _watch(
        self, key: str, is_prefix: bool, start_revision: int
    ) -> AsyncIterator[WatchStream]:
        op = f"watch {key} from revision {start_revision}"
        send, recv = trio.open_memory_channel[object](math.inf)
        token = trio.lowlevel.current_trio_token()

        def on_response(item: object) -> None:
            # Runs on pyetcd's watcher thread, in etcd's order.
            with contextlib.suppress(
                trio.RunFinishedError, trio.BrokenResourceError, trio.ClosedResourceError
            ):
                trio.from_thread.run_sync(send.send_nowait, item, trio_token=token)

        def create(client: _Client) -> int:
            # A cheap authenticated read first: it renews an expired auth token (and with it
            # the watch stream), because pyetcd silently drops a watch that etcd refuses.
            client.get_response(key, count_only=True)
            # progress_notify: etcd sends an empty response now and then (every 10 min by
            # default), which moves an idle watch's resume revision forward, so a later
            # reconnect does not land on a compacted revision and force a full re-list.
            with self._watch_lock:
                if is_prefix:
                    wid = client.add_watch_prefix_callback(
                        key, on_response, start_revision=start_revision, progress_notify=True
                    )
                else:
                    wid = client.add_watch_callback(
                        key, on_response, start_revision=start_revision, progress_notify=True
                    )
            return int(wid)

        watch_id = await self._call(op, create)
        try:
            async with recv:
                yield WatchStream(self, recv, op)
        finally:
            send.close()
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await trio.to_thread.run_sync(
                    self._cancel_watch_quietly, watch_id, abandon_on_cancel=True
                )

    def _cancel_watch_quietly(self, watch_id: int) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.cancel_watch(watch_id)
        except Exception as exc:  # the stream may already be gone
            log.debug("cancelling etcd watch failed", watch_id=watch_id, error=str(exc))

    async def _convert_watch_response(self, resp: Any, op: str) -> WatchBatch:
        import pyetcd.events as pev

        def convert(expiry: dict[int, float]) -> WatchBatch:
            events: list[Event] = []
            for ev in resp.events:
                if isinstance(ev, pev.DeleteEvent):
                    try:
                        subnet, ipv6_subnet = parse_subnet_key(ev.key.decode("utf-8"))
                    except (LeaseDecodeError, UnicodeDecodeError):
                        log.warning("ignoring delete of a non-lease key", key=repr(ev.key))
                        continue
                    lease = Lease(
                        subnet=subnet,
                        attrs=LeaseAttrs(),
                        ipv6_subnet=ipv6_subnet,
                        mod_revision=int(ev.mod_revision),
                    )
                    events.append(Event(EventKind.REMOVED, lease))
                    continue
                decoded = self._decode(
                    ev.key,
                    ev.value,
                    int(ev.lease),
                    int(ev.mod_revision),
                    expiry.get(ev.lease),
                    int(ev.create_revision),
                )
                if decoded is not None:
                    events.append(Event(EventKind.ADDED, decoded))
            revisions = [int(ev.mod_revision) for ev in resp.events]
            header = int(resp.header.revision)
            return WatchBatch(
                revision=header,
                events=tuple(events),
                resume_revision=(max(revisions) if revisions else header) + 1,
            )

        puts = [int(ev.lease) for ev in resp.events if isinstance(ev, pev.PutEvent)]
        if len(resp.events) <= _INLINE_WATCH_EVENTS:
            # Expirations all known (the usual case: a peer's lease ID is cached from the
            # listing or an earlier event): no etcd round trip is needed, so decode right here
            # instead of in a worker thread -- one thread hand-off less per peer event.
            cached = {lid: self._expiry_cache.get(lid) for lid in set(puts) if lid}
            if all(v is not None for v in cached.values()):
                return convert({k: v for k, v in cached.items() if v is not None})

        def run(client: _Client) -> WatchBatch:
            return convert(self._expirations(client, puts))

        return await self._call(op, run)
