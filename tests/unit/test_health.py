"""The health listener answers like flanneld and exports the metrics."""

from __future__ import annotations

import trio

from pyflannel.health import answer, serve_health
from pyflannel.metrics import BackendStats, Metrics


def test_healthz_and_readyz_follow_flanneld() -> None:
    m = Metrics()
    assert answer("/healthz", m).endswith(b"\r\n\r\nflanneld is running")
    not_ready = answer("/readyz", m)
    assert not_ready.startswith(b"HTTP/1.0 503")
    assert not_ready.endswith(b"flanneld is not ready yet")
    m.ready = True
    assert answer("/readyz", m).startswith(b"HTTP/1.0 200")
    assert answer("/nope", m).startswith(b"HTTP/1.0 404")


def test_metrics_series_and_values() -> None:
    m = Metrics(leases_known=3, peers_programmed=2, netlink_ops_total=6, masq_resyncs_total=4)
    body = answer("/metrics", m).split(b"\r\n\r\n", 1)[1].decode()
    assert "pyflannel_leases_known 3.0" in body
    assert "pyflannel_peers_programmed 2.0" in body
    assert "pyflannel_netlink_operations_total 6.0" in body
    assert "pyflannel_masq_resyncs_total 4.0" in body
    assert "pyflannel_lease_expires_in_seconds +Inf" in body


def test_metrics_export_the_running_backends_stats() -> None:
    m = Metrics()
    m.backend = BackendStats(
        leases_rejected_total=2, device_recreations_total=1, last_snapshot_apply_seconds=0.5
    )
    body = answer("/metrics", m).split(b"\r\n\r\n", 1)[1].decode()
    assert "pyflannel_leases_rejected_total 2.0" in body
    assert "pyflannel_device_recreations_total 1.0" in body
    assert "pyflannel_last_snapshot_apply_seconds 0.5" in body
    assert "pyflannel_backend_resyncs_total 0.0" in body


async def test_server_serves_over_tcp() -> None:
    m = Metrics(ready=True)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_health, "127.0.0.1", 0, m)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.0 200 OK")
        assert data.endswith(b"flanneld is ready")
        nursery.cancel_scope.cancel()
