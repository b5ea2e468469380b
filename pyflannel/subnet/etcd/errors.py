"""etcd failures → pyflannel's error tree (:mod:`pyflannel.errors`), by gRPC status *code*.

:mod:`.client` turns every pyetcd/gRPC exception into an :class:`EtcdFailure` (plain data: a
kind, the gRPC status code's name, etcd's message); :func:`map_error` turns that into a
:class:`~pyflannel.errors.RegistryError` naming the operation and the endpoints, with a hint.
Decisions are made on the code. The message is read only where etcd or gRPC give one code to
failures that need different advice (each place says so):

- a TLS failure and a refused/timed-out TCP connect are both ``UNAVAILABLE``;
- etcd answers ``INVALID_ARGUMENT`` for wrong credentials, an empty user name and an oversized
  request alike (etcd's ``api/v3rpc/rpctypes``);
- ``OUT_OF_RANGE`` is both "compacted" and "future revision".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from pyflannel.errors import EtcdAuthError, EtcdUnavailable, RegistryError

__all__ = [
    "ConfigNotFound",
    "ErrorContext",
    "EtcdFailure",
    "FailureKind",
    "WatchCompacted",
    "map_error",
]

# What failed, as far as the client library can tell:
# - "rpc": etcd (or gRPC) answered with a status, see ``code``;
# - "connection": the endpoint in use failed (UNAVAILABLE/DEADLINE_EXCEEDED); try the next one;
# - "no_server": every endpoint failed within the last retry period;
# - "compacted": a watch's start revision was compacted (``compact_revision`` is set);
# - "watch_timeout": etcd did not confirm a new watch in time;
# - "other": not an etcd error at all (``code`` is the exception's type name).
FailureKind = Literal["rpc", "connection", "no_server", "compacted", "watch_timeout", "other"]

UNAVAILABLE: Final = "UNAVAILABLE"
DEADLINE_EXCEEDED: Final = "DEADLINE_EXCEEDED"
UNAUTHENTICATED: Final = "UNAUTHENTICATED"
PERMISSION_DENIED: Final = "PERMISSION_DENIED"
INVALID_ARGUMENT: Final = "INVALID_ARGUMENT"
OUT_OF_RANGE: Final = "OUT_OF_RANGE"

_TLS_WORDS: Final = ("ssl", "handshake", "certificate", "tls", "x509", "tsi_", "unwrap failed")


class ConfigNotFound(RegistryError):
    """``<prefix>/config`` does not exist (flanneld's errConfigNotFound)."""


class WatchCompacted(RegistryError):
    """The watch start revision was compacted away; the caller must re-list."""

    def __init__(self, message: str, *, compact_revision: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.compact_revision = compact_revision


class EtcdFailure(Exception):
    """A failed etcd call as plain data (no gRPC types); only :mod:`.client` raises it."""

    def __init__(
        self, kind: FailureKind, code: str, details: str, *, compact_revision: int = 0
    ) -> None:
        super().__init__(f"{code}: {details}")
        self.kind: FailureKind = kind
        self.code = code  # a grpc.StatusCode name, e.g. "UNAVAILABLE"
        self.details = details
        self.compact_revision = compact_revision

    @property
    def invalid_token(self) -> bool:
        """etcd refused our auth token (expired after ``--auth-token-ttl``): authenticate again.

        etcd's only ``UNAUTHENTICATED`` answer is ``ErrGRPCInvalidAuthToken``.
        """
        return self.code == UNAUTHENTICATED

    @property
    def compacted(self) -> bool:
        """A read at a revision that was compacted meanwhile (not "future revision", which
        shares the code: hence the message)."""
        return self.kind == "compacted" or (
            self.code == OUT_OF_RANGE and "compacted" in self.details
        )


@dataclass(frozen=True, slots=True)
class ErrorContext:
    """What the messages name and what the advice depends on."""

    endpoints_text: str
    prefix: str
    username: str
    uses_tls: bool
    timeout: float


def map_error(op: str, exc: BaseException, ctx: ErrorContext) -> RegistryError:
    """Turn any error of an etcd call into our error tree, naming ``op`` and the endpoints."""
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, EtcdFailure):
        failure = exc
    else:
        failure = EtcdFailure("other", type(exc).__name__, str(exc) or type(exc).__name__)
    eps = ctx.endpoints_text
    if failure.kind == "compacted":
        return WatchCompacted(
            f"etcd {op}: the start revision was compacted "
            f"(compact revision {failure.compact_revision})",
            compact_revision=failure.compact_revision,
            hint="re-list and resume from the new revision",
        )
    if failure.kind == "watch_timeout":
        return EtcdUnavailable(
            f"etcd {op} failed: {eps} did not confirm the watch within {ctx.timeout:g}s",
            hint="check that etcd is healthy and not overloaded",
        )
    code, details = failure.code, failure.details
    if failure.kind == "no_server":
        code, details = UNAVAILABLE, "every endpoint failed"
    if code == UNAVAILABLE and ctx.uses_tls and _tls_failure(details):
        return EtcdAuthError(
            f"etcd {op} failed: TLS handshake with {eps} failed: {details}",
            hint=(
                "check --etcd-cafile (the CA that signed etcd's server certificate), "
                "--etcd-certfile/--etcd-keyfile (a client certificate signed by a CA in "
                "etcd's --trusted-ca-file) and that the endpoints use https://"
            ),
        )
    if code in (UNAVAILABLE, DEADLINE_EXCEEDED) or failure.kind == "connection":
        what = (
            f"timed out at {eps}"
            if code == DEADLINE_EXCEEDED
            else f"could not reach etcd at {eps}: cannot connect"
        )
        return EtcdUnavailable(
            f"etcd {op} failed: {what}: {details or code}",
            hint=(
                "check that etcd is running and reachable from this host at "
                "--etcd-endpoints (and whether it expects https://)"
            ),
        )
    return _answered(op, code, details, ctx)


def _tls_failure(details: str) -> bool:
    # gRPC reports a server that rejects our client certificate as "Unwrap failed
    # (TSI_DATA_CORRUPTED)", a server certificate we do not trust as a handshake failure, both
    # as UNAVAILABLE like a refused connect: only the message tells them apart. gRPC's TCP
    # connect timeout reads "tcp handshaker shutdown": a host that cannot be reached, not TLS.
    low = details.lower().replace("tcp handshaker", "")
    return any(w in low for w in _TLS_WORDS)


def _answered(op: str, code: str, details: str, ctx: ErrorContext) -> RegistryError:
    """An error etcd answered with (the endpoint is reachable)."""
    eps = ctx.endpoints_text
    # INVALID_ARGUMENT covers several of etcd's errors: the message says which (see above).
    low = details.lower() if code == INVALID_ARGUMENT else ""
    if "authentication failed" in low or "invalid user id or password" in low:
        return EtcdAuthError(
            f"etcd {op} failed at {eps}: {details}",
            hint="check --etcd-username and --etcd-password",
        )
    denied = code in (PERMISSION_DENIED, UNAUTHENTICATED)
    if "user name is empty" in low or (denied and not ctx.username):
        return EtcdAuthError(
            f"etcd {op} failed at {eps}: {details}",
            hint=(
                "etcd has authentication enabled: pass --etcd-username and --etcd-password "
                f"of a user with read/write access to {ctx.prefix}/"
            ),
        )
    if denied:
        return EtcdAuthError(
            f"etcd {op} failed at {eps}: {details}",
            hint=(
                f"grant the etcd user {ctx.username} read/write access to "
                f"{ctx.prefix}/ (etcdctl role grant-permission --prefix=true ...)"
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
