"""The etcd error mapper tells a host that cannot be reached from a TLS failure (issue 19 #5).

gRPC's TCP connect failure reads "tcp handshaker shutdown"; matched as a word, "handshake"
made a plain-http etcd that was down look like a certificate problem.
"""

from __future__ import annotations

import grpc
import pytest

from pyflannel.errors import EtcdAuthError, EtcdUnavailable
from pyflannel.subnet.registry import EtcdRegistry


class _Rpc(grpc.RpcError):
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


def _map(endpoint: str, details: str, **kw: str) -> Exception:
    reg = EtcdRegistry(endpoint, "/coreos.com/network", **kw)
    try:
        return reg._map_error("get config", _Rpc(grpc.StatusCode.UNAVAILABLE, details))
    finally:
        reg.close()


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
