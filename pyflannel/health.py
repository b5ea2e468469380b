"""The ``--healthz-port`` listener: ``/healthz``, ``/readyz`` and ``/metrics``.

Same answers as flanneld (``flanneld is running``, ``flanneld is ready`` /
``flanneld is not ready yet`` with 503, 404 elsewhere) plus Prometheus metrics, which flanneld
does not have. A deliberately tiny HTTP/1.0 server on trio: scrapers and probes send one
request per connection.
"""

from __future__ import annotations

import structlog
import trio

from pyflannel.errors import ConfigError
from pyflannel.metrics import METRICS, Metrics

__all__ = ["answer", "render_metrics", "serve_health"]

log = structlog.get_logger(__name__)

_MAX_REQUEST = 8192


def render_metrics(m: Metrics) -> bytes:
    """The Prometheus text exposition of ``m`` (via prometheus-client)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> list[object]:
            expires = m.lease_expires_in()
            b = m.backend
            return [
                GaugeMetricFamily(
                    "pyflannel_leases_known", "Subnet leases seen in etcd", value=m.leases_known
                ),
                GaugeMetricFamily(
                    "pyflannel_peers_programmed",
                    "Peers whose data-path entries are programmed",
                    value=m.peers_programmed,
                ),
                CounterMetricFamily(
                    "pyflannel_netlink_operations", "Netlink operations sent",
                    value=m.netlink_ops_total,
                ),
                CounterMetricFamily(
                    "pyflannel_netlink_errors", "Netlink operations the kernel refused",
                    value=m.netlink_errors_total,
                ),
                CounterMetricFamily(
                    "pyflannel_etcd_watch_restarts", "Times the etcd lease watch was re-created",
                    value=m.watch_restarts_total,
                ),
                GaugeMetricFamily(
                    "pyflannel_lease_expires_in_seconds",
                    "Seconds until our subnet lease expires (+Inf for a reservation)",
                    value=expires,
                ),
                GaugeMetricFamily(
                    "pyflannel_last_snapshot_apply_seconds",
                    "Wall time of the last full peer snapshot apply",
                    value=b.last_snapshot_apply_seconds,
                ),
                GaugeMetricFamily(
                    "pyflannel_last_snapshot_ops",
                    "Data-path operations the last full peer snapshot apply needed",
                    value=b.last_snapshot_ops,
                ),
                CounterMetricFamily(
                    "pyflannel_leases_rejected", "Peer leases refused as invalid or hostile",
                    value=b.leases_rejected_total,
                ),
                CounterMetricFamily(
                    "pyflannel_device_recreations", "Times the backend device was re-created",
                    value=b.device_recreations_total,
                ),
                CounterMetricFamily(
                    "pyflannel_backend_resyncs", "Backend reconcile passes against the kernel",
                    value=b.resyncs_total,
                ),
                CounterMetricFamily(
                    "pyflannel_backend_resync_repairs",
                    "Backend reconcile passes that had to repair the data path",
                    value=b.resync_repairs_total,
                ),
                CounterMetricFamily(
                    "pyflannel_masq_resyncs", "Traffic-rule resync passes",
                    value=m.masq_resyncs_total,
                ),
                CounterMetricFamily(
                    "pyflannel_masq_repairs", "Traffic-rule resyncs that had to repair rules",
                    value=m.masq_repairs_total,
                ),
                GaugeMetricFamily("pyflannel_ready", "1 once subnet.env is written",
                                  value=1 if m.ready else 0),
                GaugeMetricFamily(
                    "pyflannel_peers_failing",
                    "Peer leases quarantined because the kernel refuses their entries",
                    value=m.peers_failing,
                ),
                _failures(m),
                *(m.extra_families() if m.extra_families is not None else []),
            ]  # fmt: skip

    def _failures(m: Metrics) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "pyflannel_peer_apply_failures",
            "Peer data-path operations the kernel refused, by errno",
            labels=["reason"],
        )
        for reason, count in sorted(m.peer_apply_failures.items()):
            family.add_metric([reason], count)
        return family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())  # type: ignore[arg-type]
    data: bytes = generate_latest(registry)
    return data


def _response(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def answer(path: str, m: Metrics) -> bytes:
    """The full HTTP response for a GET of ``path``."""
    path = path.split("?", 1)[0]
    if path == "/healthz":
        return _response("200 OK", b"flanneld is running")
    if path == "/readyz":
        if m.ready:
            return _response("200 OK", b"flanneld is ready")
        return _response("503 Service Unavailable", b"flanneld is not ready yet")
    if path == "/metrics":
        return _response("200 OK", render_metrics(m), "text/plain; version=0.0.4; charset=utf-8")
    return _response("404 Not Found", b"404 page not found\n")


async def _handle(stream: trio.SocketStream, m: Metrics) -> None:
    try:
        data = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < _MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
        parts = data.split(b"\r\n", 1)[0].split()
        if len(parts) >= 2 and parts[0] in (b"GET", b"HEAD"):
            resp = answer(parts[1].decode("latin-1"), m)
            if parts[0] == b"HEAD":
                resp = resp.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        else:
            resp = _response("400 Bad Request", b"bad request\n")
        await stream.send_all(resp)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()


async def serve_health(
    host: str,
    port: int,
    m: Metrics = METRICS,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` receives the bound port.

    Raises :class:`~pyflannel.errors.ConfigError` naming the address and port when it cannot
    listen (port taken, address not on this host).
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        # Fails before anything is set up, so exiting is cheap; systemd restarts us once the
        # other process is gone. Exit 1 like flanneld (which panics here), but with one line.
        where = f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"
        raise ConfigError(
            f"cannot listen on {where} for --healthz-port: {exc.strerror or exc}",
            hint="stop the process using that port (ss -ltnp), or pass another "
            "--healthz-port or --healthz-ip",
        ) from None
    bound = listeners[0].socket.getsockname()[1]
    log.info("health.listening", host=host, port=bound)
    task_status.started(bound)

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, m)

    await trio.serve_listeners(handler, listeners)
