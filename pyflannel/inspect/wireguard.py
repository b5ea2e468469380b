"""WireGuard peers judged for ``status`` and ``doctor``: one finding per peer lease (is its peer
on a device, how old is its last handshake) and one per device peer no lease explains.

The readings come from :mod:`pyflannel.backend.wireguard.inspect` (the devices themselves, so
the tools work without the daemon); the verdicts are :class:`~.findings.Finding` values like
every other check's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from pyflannel.inspect.findings import Finding, Level

if TYPE_CHECKING:
    from pyflannel.backend.wireguard.inspect import PeerStat
    from pyflannel.lease import Lease

__all__ = ["STALE_HANDSHAKE", "peer_checks", "wireguard_findings"]

STALE_HANDSHAKE: Final = 180.0
"""WireGuard re-handshakes every 2 minutes while traffic flows; older means no traffic or a
peer that does not answer."""

_CHECK: Final = "wireguard"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def peer_checks(
    stats: Sequence[PeerStat], leases: Iterable[Lease], own: Lease | None
) -> list[Finding]:
    """One finding per wireguard peer lease (peer present; handshake age; counters) and one per
    device peer no lease explains (pure)."""
    out: list[Finding] = []
    by_lease: dict[str, list[PeerStat]] = {}
    for s in stats:
        if s.lease is None:
            out.append(
                Finding(
                    "WARN",
                    _CHECK,
                    f"{s.device} peer {s.public_key[:8]}…",
                    f"peer {s.public_key} on {s.device} belongs to no lease; the daemon removes "
                    "it at its next resync",
                    "systemctl restart pyflanneld",
                )
            )
        else:
            by_lease.setdefault(s.lease, []).append(s)
    for le in leases:
        if le.attrs.backend_type != "wireguard":
            continue
        if own is not None and le.key_suffix == own.key_suffix:
            continue
        got = by_lease.get(le.key_suffix)
        if not got:
            out.append(
                Finding(
                    "FAIL",
                    _CHECK,
                    le.key_suffix,
                    f"no WireGuard peer for lease {le.key_suffix} (its key is missing, refused or "
                    "not programmed yet)",
                    "pyflannel status --output json shows refusals; check the daemon log",
                )
            )
            continue
        for s in got:
            text = (
                f"{s.device} peer {s.endpoint or '-'}: handshake {_age(s.handshake_age)}, "
                f"rx {s.rx_bytes} B, tx {s.tx_bytes} B"
            )
            stale = s.handshake_age is None or s.handshake_age > STALE_HANDSHAKE
            level: Level = "WARN" if stale and s.tx_bytes > 0 else "OK"
            hint = (
                "check that UDP to the peer's listen port passes the firewalls in between"
                if level == "WARN"
                else None
            )
            out.append(Finding(level, _CHECK, le.key_suffix, text, hint))
    return out


def wireguard_findings(own: Lease, leases: Sequence[Lease]) -> list[Finding]:
    """One finding per peer (handshake age, rx/tx bytes), read from the devices now."""
    from pyflannel.backend.wireguard.inspect import peer_stats, read_devices

    return peer_checks(peer_stats(read_devices(), leases), leases, own)
