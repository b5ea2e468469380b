"""The etcd error mapper tells a host that cannot be reached from a TLS failure (issue 19 #5).

gRPC's TCP connect failure reads "tcp handshaker shutdown"; matched as a word, "handshake"
made a plain-http etcd that was down look like a certificate problem.
"""

from __future__ import annotations

import grpc
import pytest

from pyflannel.errors import EtcdAuthError, EtcdUnavailable
from pyflannel.subnet.etcd.client import failure_of
from pyflannel.subnet.etcd.endpoints import parse_endpoints
from pyflannel.subnet.etcd.errors import ErrorContext, map_error


# grpc ships no type stubs (ignore_missing_imports), so mypy sees RpcError as Any.
class _Rpc(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


TCP_DOWN = (
    "failed to connect to all addresses; last error: UNKNOWN: "
    "ipv4:198.51.100.249:2379: tcp handshaker shutdown"
)
TLS_BAD = "failed to connect to all addresses; last error: UNKNOWN: ssl handshake failed"


def _ctx(endpoint: str, username: str = "") -> ErrorContext:
    eps = parse_endpoints(endpoint)
    return ErrorContext(
        endpoints_text=",".join(e.url for e in eps),
        prefix="/coreos.com/network",
        username=username,
        uses_tls=any(e.scheme == "https" for e in eps),
        timeout=10.0,
    )


def _map(
    endpoint: str, details: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
) -> Exception:
    return map_error("get config", failure_of(_Rpc(code, details)), _ctx(endpoint))


@pytest.mark.parametrize("endpoint", ["http://198.51.100.249:2379", "https://198.51.100.249:2379"])
def test_tcp_handshaker_is_cannot_connect_not_tls(endpoint: str) -> None:
    err = _map(endpoint, TCP_DOWN)
    assert isinstance(err, EtcdUnavailable), err
    assert "cannot connect" in str(err) and "TLS" not in str(err) and "cafile" not in str(err)


def test_plain_http_is_never_a_tls_failure() -> None:
    assert isinstance(_map("http://198.51.100.249:2379", TLS_BAD), EtcdUnavailable)


def test_tls_failure_on_https_is_still_reported_as_tls() -> None:
    err = _map("https://198.51.100.249:2379", TLS_BAD)
    assert isinstance(err, EtcdAuthError) and "TLS handshake" in str(err)


# --------------------------------------------------------------------------- by status code


def test_permission_denied_is_decided_by_the_code_not_the_words() -> None:
    err = map_error(
        "put x",
        failure_of(_Rpc(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: whatever")),
        _ctx("http://198.51.100.249:2379", username="flannel"),
    )
    assert isinstance(err, EtcdAuthError) and "grant the etcd user flannel" in str(err)


def test_permission_words_under_another_code_are_not_an_auth_error() -> None:
    err = _map("http://198.51.100.249:2379", "permission denied", grpc.StatusCode.INTERNAL)
    assert not isinstance(err, EtcdAuthError)


def test_bad_credentials_are_invalid_argument_with_etcds_message() -> None:
    details = "etcdserver: authentication failed, invalid user ID or password"
    err = _map("http://198.51.100.249:2379", details, grpc.StatusCode.INVALID_ARGUMENT)
    assert isinstance(err, EtcdAuthError) and "--etcd-password" in str(err)


def test_an_expired_token_is_recognised_by_its_code() -> None:
    failure = failure_of(_Rpc(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token"))
    assert failure.invalid_token
    assert not failure_of(_Rpc(grpc.StatusCode.UNAVAILABLE, "invalid auth token")).invalid_token


def test_future_revision_is_not_compacted() -> None:
    future = failure_of(
        _Rpc(
            grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"
        )
    )
    compacted = failure_of(
        _Rpc(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    )
    assert compacted.compacted and not future.compacted
