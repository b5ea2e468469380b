"""Per-peer WireGuard facts for ``status``, ``doctor`` and ``/metrics``: handshake age and transfer
counters, with the lease each peer belongs to.

:func:`read_devices` asks the devices themselves (UAPI socket or generic netlink), so the CLI
tools work without the daemon; :func:`peer_stats` is pure; :func:`metric_families` turns the
daemon's last reading into Prometheus families. :mod:`pyflannel.inspect.wireguard` judges them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pyflannel.backend.wireguard.genl import GenlWireguard
from pyflannel.backend.wireguard.keys import KeyError_, decode_key, encode_key
from pyflannel.backend.wireguard.options import DEVICE_NAME, DEVICE_NAME_V6
from pyflannel.backend.wireguard.uapi import (
    SOCKET_DIR,
    DeviceState,
    UapiClient,
    UapiError,
    socket_path,
)
from pyflannel.lease import Lease

__all__ = [
    "PeerStat",
    "metric_families",
    "peer_stats",
    "read_devices",
]


@dataclass(frozen=True, slots=True)
class PeerStat:
    """One peer of one device: who it is, when it last completed a handshake, bytes moved."""

    device: str
    public_key: str
    lease: str | None  # key suffix of the lease advertising this key; None: stale/foreign
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    handshake_age: float | None  # seconds; None = never
    rx_bytes: int
    tx_bytes: int

    def as_dict(self) -> dict[str, object]:
        """JSON form (stable keys)."""
        out: dict[str, object] = asdict(self)
        out["allowed_ips"] = list(self.allowed_ips)
        if self.handshake_age is not None:
            out["handshake_age"] = round(self.handshake_age)
        return out


def read_devices(
    names: Sequence[str] = (DEVICE_NAME, DEVICE_NAME_V6), directory: Path = SOCKET_DIR
) -> dict[str, DeviceState]:
    """The state of each named device that exists (wireguard-go first, then the kernel)."""
    out: dict[str, DeviceState] = {}
    for name in names:
        try:
            if socket_path(name, directory).exists():
                out[name] = UapiClient(name, directory, timeout=2.0).get()
            else:
                out[name] = GenlWireguard(name).get()
        except UapiError:
            continue
    return out


def lease_keys(leases: Iterable[Lease]) -> dict[bytes, str]:
    """Public key → key suffix of the lease advertising it (both payloads)."""
    out: dict[bytes, str] = {}
    for le in leases:
        for data in (le.attrs.backend_data, le.attrs.backend_v6_data):
            if not isinstance(data, dict):
                continue
            raw = next((v for k, v in data.items() if str(k).lower() == "publickey"), None)
            try:
                out.setdefault(decode_key(raw), le.key_suffix)
            except KeyError_:
                continue
    return out


def _endpoint(ep: object) -> str | None:
    if not isinstance(ep, tuple):
        return None
    ip, port = ep
    return f"[{ip}]:{port}" if getattr(ip, "version", 4) == 6 else f"{ip}:{port}"


def peer_stats(
    states: Mapping[str, DeviceState], leases: Iterable[Lease], now: float | None = None
) -> list[PeerStat]:
    """Every peer of every device, with its lease (pure)."""
    when = time.time() if now is None else now
    owners = lease_keys(leases)
    out = []
    for dev, state in sorted(states.items()):
        for p in state.peers:
            out.append(
                PeerStat(
                    device=dev,
                    public_key=encode_key(p.public_key),
                    lease=owners.get(p.public_key),
                    endpoint=_endpoint(p.endpoint),
                    allowed_ips=tuple(str(n) for n in p.allowed_ips),
                    handshake_age=max(0.0, when - p.last_handshake) if p.last_handshake else None,
                    rx_bytes=p.rx_bytes,
                    tx_bytes=p.tx_bytes,
                )
            )
    return out


def metric_families(stats: Callable[[], Sequence[PeerStat]]) -> Callable[[], list[object]]:
    """A callable for :attr:`pyflannel.metrics.Metrics.extra_families`: per-peer handshake age
    and byte counters, labelled by device, public key and lease."""

    def families() -> list[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["device", "public_key", "lease"]
        age = GaugeMetricFamily(
            "pyflannel_wireguard_peer_handshake_age_seconds",
            "Seconds since the peer's last WireGuard handshake (+Inf: never)",
            labels=labels,
        )
        rx = CounterMetricFamily(
            "pyflannel_wireguard_peer_receive_bytes", "Bytes received from the peer", labels=labels
        )
        tx = CounterMetricFamily(
            "pyflannel_wireguard_peer_transmit_bytes", "Bytes sent to the peer", labels=labels
        )
        for s in stats():
            lv = [s.device, s.public_key, s.lease or ""]
            age.add_metric(lv, float("inf") if s.handshake_age is None else s.handshake_age)
            rx.add_metric(lv, s.rx_bytes)
            tx.add_metric(lv, s.tx_bytes)
        return [age, rx, tx]

    return families
