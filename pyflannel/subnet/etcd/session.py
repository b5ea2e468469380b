"""One etcd connection for the registry: TLS, authentication, token renewal, failover, threads.

Blocking client calls run in worker threads via ``trio.to_thread``. A call is a function of
the :class:`~.client.EtcdClient`; :meth:`EtcdSession.call` runs it with

- failover: all ``--etcd-endpoints`` are used: a request that fails on one endpoint is retried
  on the next (flanneld's Go client balances, pyetcd only marks the endpoint failed);
- token renewal: an expired auth token (etcd's simple tokens die after ``--auth-token-ttl`` of
  idleness) is renewed transparently, once per call;
- error mapping: whatever fails leaves as a :class:`~pyflannel.errors.RegistryError` naming the
  operation and the endpoints (:func:`.errors.map_error`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, TypeVar

import structlog
import trio

from pyflannel.errors import ConfigError, FlannelError, RegistryError
from pyflannel.subnet.etcd.endpoints import EndpointSpec
from pyflannel.subnet.etcd.errors import ErrorContext, EtcdFailure, map_error

if TYPE_CHECKING:
    from pyflannel.subnet.etcd.client import EtcdClient, TlsMaterial

__all__ = ["EtcdSession"]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


class EtcdCredentials(TypedDict, total=False):
    """flanneld's ``--etcd-keyfile/-certfile/-cafile/-username/-password`` (empty: not used);
    the keyword arguments the registry and the subnet manager pass down to the session."""

    keyfile: str
    certfile: str
    cafile: str
    username: str
    password: str


class EtcdSession:
    """Lazily connected etcd client plus the policy around every call (see module doc).

    TLS follows flanneld: it is used when both ``keyfile`` and ``certfile`` are given
    (``cafile`` verifies the server then); otherwise a warning says the connection is
    insecure. ``https://`` endpoints without a client certificate still use TLS (verified with
    ``cafile`` if given, else the system roots), as etcd's Go client does.
    """

    def __init__(
        self,
        endpoints: Sequence[EndpointSpec],
        *,
        prefix: str,
        timeout: float,
        keyfile: str = "",
        certfile: str = "",
        cafile: str = "",
        username: str = "",
        password: str = "",
    ) -> None:
        self._endpoints = list(endpoints)
        self._keyfile = keyfile
        self._certfile = certfile
        self._cafile = cafile
        self._username = username
        self._password = password
        self.timeout = timeout
        self.endpoints_text = ",".join(e.url for e in self._endpoints)
        self.errors = ErrorContext(
            endpoints_text=self.endpoints_text,
            prefix=prefix,
            username=username,
            uses_tls=bool(keyfile and certfile) or any(e.scheme == "https" for e in endpoints),
            timeout=timeout,
        )
        self._client: EtcdClient | None = None
        self._client_lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._closed = False

    @property
    def client(self) -> EtcdClient | None:
        """The connected client, if any (for best-effort cleanup; no I/O)."""
        return self._client

    # ----------------------------------------------------------------- connecting
    def _read_file(self, path: str, flag: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {flag} {path!r}: {exc.strerror or exc}",
                hint=f"check the path given to {flag} and its permissions",
            ) from None

    def _tls(self) -> TlsMaterial | None:
        from pyflannel.subnet.etcd.client import TlsMaterial

        def ca() -> bytes | None:
            return self._read_file(self._cafile, "--etcd-cafile") if self._cafile else None

        if self._keyfile and self._certfile:
            key = self._read_file(self._keyfile, "--etcd-keyfile")
            cert = self._read_file(self._certfile, "--etcd-certfile")
            return TlsMaterial(ca=ca(), key=key, cert=cert)
        if any(e.scheme == "https" for e in self._endpoints):
            log.warning(
                "etcd.no_client_certificate",
                endpoints=self.endpoints_text,
            )
            return TlsMaterial(ca=ca())
        log.warning("etcd.insecure_http")
        return None

    def _get_client(self) -> EtcdClient:
        from pyflannel.subnet.etcd.client import EtcdClient

        if self._closed:
            raise RegistryError(
                "etcd registry is closed", hint="this is a bug: the manager was used after close()"
            )
        with self._client_lock:
            if self._client is None:
                client = EtcdClient(self._endpoints, tls=self._tls(), timeout=self.timeout)
                if self._username:
                    try:
                        self._with_failover(
                            client,
                            lambda: client.authenticate(self._username, self._password),
                        )
                    except BaseException:
                        client.close()
                        raise
                self._client = client
            return self._client

    def _reauthenticate(self, client: EtcdClient) -> None:
        with self._auth_lock:
            client.authenticate(self._username, self._password)
            client.renew_watch_stream()
        log.info("etcd.auth_token_renewed", endpoints=self.endpoints_text)

    def _with_failover(self, client: EtcdClient, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` once per endpoint (+1) until one answers.

        pyetcd fails over but never retries: a failed request only marks its endpoint failed
        so that the next request goes elsewhere.
        """
        budget = len(self._endpoints) + 1
        failures = 0
        last: EtcdFailure | None = None
        for _ in range(2 * budget + 1):
            try:
                return fn()
            except EtcdFailure as exc:
                if exc.kind == "no_server":
                    last = last or exc
                    # Every endpoint failed within the last second: give each one another go
                    # rather than refusing to try at all.
                    client.retry_failed_endpoints()
                elif exc.kind == "connection":
                    last = exc  # keeps gRPC's details (e.g. a TLS handshake failure)
                    failures += 1
                    if failures >= budget:
                        break
                else:
                    raise
        assert last is not None
        raise last

    # ----------------------------------------------------------------- calling
    def call_sync(self, op: str, fn: Callable[[EtcdClient], _T]) -> _T:
        """Run ``fn(client)`` here (a worker thread) with failover and token renewal."""
        reauthed = False
        while True:
            try:
                client = self._get_client()
                return self._with_failover(client, functools.partial(fn, client))
            except FlannelError:
                raise
            except EtcdFailure as exc:
                if self._username and not reauthed and exc.invalid_token:
                    reauthed = True
                    try:
                        self._reauthenticate(self._get_client())
                    except EtcdFailure as auth_exc:
                        raise map_error(op, auth_exc, self.errors) from None
                    continue
                raise map_error(op, exc, self.errors) from None
            except Exception as exc:
                raise map_error(op, exc, self.errors) from None

    async def call(self, op: str, fn: Callable[[EtcdClient], _T]) -> _T:
        """:meth:`call_sync` in a worker thread."""
        # abandon_on_cancel: a cancelled caller does not wait for the gRPC deadline; the
        # thread finishes (bounded by request_timeout) in the background.
        return await trio.to_thread.run_sync(self.call_sync, op, fn, abandon_on_cancel=True)

    def map_error(self, op: str, exc: BaseException) -> RegistryError:
        """``exc`` in the error tree, naming ``op`` and these endpoints."""
        return map_error(op, exc, self.errors)

    def close(self) -> None:
        """Close the gRPC channels and watch streams (idempotent)."""
        self._closed = True
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing must never fail the caller
                log.debug("etcd.close_failed", error=str(exc))
