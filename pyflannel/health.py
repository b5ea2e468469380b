"""The ``--healthz-port`` listener: ``/healthz``, ``/readyz`` and ``/metrics``.

Same answers as flanneld (``flanneld is running``, ``flanneld is ready`` /
``flanneld is not ready yet`` with 503, 404 elsewhere) plus Prometheus metrics, which flanneld
does not have. A deliberately tiny HTTP/1.0 server on trio: scrapers and probes send one
request per connection.
"""

from __future__ import annotations

from collections.abc import Callable

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

    # (kind, name, help, value): one row per metric, read at scrape time.
    families: list[tuple[str, str, str, Callable[[Metrics], float]]] = [
        ("gauge", "pyflannel_leases_known", "Subnet leases seen in etcd", lambda m: m.leases_known),
        (
            "gauge",
            "pyflannel_peers_programmed",
            "Peers whose data-path entries are programmed",
            lambda m: m.peers_programmed,
        ),
        (
            "counter",
            "pyflannel_netlink_operations",
            "Netlink operations sent",
            lambda m: m.netlink_ops_total,
        ),
        (
            "counter",
            "pyflannel_netlink_errors",
            "Netlink operations the kernel refused",
            lambda m: m.netlink_errors_total,
        ),
        (
            "counter",
            "pyflannel_etcd_watch_restarts",
            "Times the etcd lease watch was re-created",
            lambda m: m.watch_restarts_total,
        ),
        (
            "gauge",
            "pyflannel_lease_expires_in_seconds",
            "Seconds until our subnet lease expires (+Inf for a reservation)",
            lambda m: m.lease_expires_in(),
        ),
        (
            "gauge",
            "pyflannel_last_snapshot_apply_seconds",
            "Wall time of the last full peer snapshot apply",
            lambda m: m.backend.last_snapshot_apply_seconds,
        ),
        (
            "gauge",
            "pyflannel_last_snapshot_ops",
            "Data-path operations the last full peer snapshot apply needed",
            lambda m: m.backend.last_snapshot_ops,
        ),
        (
            "counter",
            "pyflannel_leases_rejected",
            "Peer leases refused as invalid or hostile",
            lambda m: m.backend.leases_rejected_total,
        ),
        (
            "counter",
            "pyflannel_device_recreations",
            "Times the backend device was re-created",
            lambda m: m.backend.device_recreations_total,
        ),
        (
            "counter",
            "pyflannel_backend_resyncs",
            "Backend reconcile passes against the kernel",
            lambda m: m.backend.resyncs_total,
        ),
        (
            "counter",
            "pyflannel_backend_resync_repairs",
            "Backend reconcile passes that had to repair the data path",
            lambda m: m.backend.resync_repairs_total,
        ),
        (
            "counter",
            "pyflannel_masq_resyncs",
            "Traffic-rule resync passes",
            lambda m: m.masq_resyncs_total,
        ),
        (
            "counter",
            "pyflannel_masq_repairs",
            "Traffic-rule resyncs that had to repair rules",
            lambda m: m.masq_repairs_total,
        ),
        ("gauge", "pyflannel_ready", "1 once subnet.env is written", lambda m: 1 if m.ready else 0),
        (
            "gauge",
            "pyflannel_peers_failing",
            "Peer leases quarantined because the kernel refuses their entries",
            lambda m: m.peers_failing,
        ),
    ]

    class _Collector:
        def collect(self) -> list[object]:
            out: list[object] = [
                (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(
                    name, help_, value=value(m)
                )
                for kind, name, help_, value in families
            ]
            out.append(_failures(m))
            if m.extra_families is not None:
                out.extend(m.extra_families())
            return out

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
