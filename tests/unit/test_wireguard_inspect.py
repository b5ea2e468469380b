"""Per-peer WireGuard facts: which lease a device peer belongs to, the status/doctor checks
(missing peer, stale handshake, foreign peer) and the /metrics families."""

from __future__ import annotations

import ipaddress

from pyflannel.backend.wireguard.inspect import metric_families, peer_stats
from pyflannel.backend.wireguard.keys import encode_key
from pyflannel.backend.wireguard.uapi import DeviceState, PeerState
from pyflannel.health import render_metrics
from pyflannel.inspect.wireguard import peer_checks
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.metrics import Metrics

ip = ipaddress.ip_address
V4 = ipaddress.IPv4Address
NOW = 1_800_000_000.0


def key(i: int) -> bytes:
    return bytes([i]) * 32


def lease(n: int) -> Lease:
    return Lease(
        subnet=ipaddress.IPv4Network(f"10.5.{n}.0/24"),
        attrs=LeaseAttrs(
            public_ip=V4(f"198.51.100.{n}"),
            backend_type="wireguard",
            backend_data={"PublicKey": encode_key(key(n)), "Port": 51820},
        ),
    )


LEASES = [lease(1), lease(2), lease(3), lease(4)]
STATE = {
    "flannel-wg": DeviceState(
        peers=(
            PeerState(key(2), endpoint=(ip("198.51.100.2"), 51820), last_handshake=NOW - 30,
                      rx_bytes=100, tx_bytes=200),
            PeerState(key(3), endpoint=(ip("198.51.100.3"), 51820), last_handshake=NOW - 600,
                      rx_bytes=0, tx_bytes=999),
            PeerState(key(9)),
        )
    )
}  # fmt: skip


def test_stats_name_the_lease() -> None:
    stats = peer_stats(STATE, LEASES, NOW)
    assert [(s.lease, s.handshake_age, s.rx_bytes, s.tx_bytes) for s in stats] == [
        ("10.5.2.0-24", 30.0, 100, 200),
        ("10.5.3.0-24", 600.0, 0, 999),
        (None, None, 0, 0),
    ]
    assert stats[0].as_dict()["endpoint"] == "198.51.100.2:51820"


def test_checks() -> None:
    checks = peer_checks(peer_stats(STATE, LEASES, NOW), LEASES, own=LEASES[0])
    by = {(c.subject, c.level): c.message for c in checks}
    assert "handshake 30s ago, rx 100 B, tx 200 B" in by[("10.5.2.0-24", "OK")]
    assert "handshake 10m ago" in by[("10.5.3.0-24", "WARN")]  # sending, nothing comes back
    assert "no WireGuard peer for lease 10.5.4.0-24" in by[("10.5.4.0-24", "FAIL")]
    assert any(c.level == "WARN" and "belongs to no lease" in c.message for c in checks)
    assert not any(c.subject == "10.5.1.0-24" for c in checks)  # our own lease


def test_metrics_families() -> None:
    m = Metrics()
    m.extra_families = metric_families(lambda: peer_stats(STATE, LEASES, NOW))
    text = render_metrics(m).decode()
    k2 = encode_key(key(2))
    assert (
        "pyflannel_wireguard_peer_handshake_age_seconds"
        f'{{device="flannel-wg",lease="10.5.2.0-24",public_key="{k2}"}} 30.0'
    ) in text
    assert (
        f'pyflannel_wireguard_peer_receive_bytes_total{{device="flannel-wg",lease="10.5.2.0-24",'
        f'public_key="{k2}"}} 100.0'
    ) in text
    assert "+Inf" in text  # a peer that never completed a handshake
