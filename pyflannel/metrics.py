"""Process-wide counters and gauges, kept as plain numbers.

Modules on hot paths bump these fields directly (no Prometheus import there); the health
server turns them into Prometheus series only when ``/metrics`` is scraped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["METRICS", "BackendStats", "Metrics"]


@dataclass
class BackendStats:
    """One backend's counters (each backend object has its own, so tests can run several).

    The daemon's backend publishes its own as :attr:`Metrics.backend`, exported on /metrics.
    The peer programmer is the one writer of the ``last_snapshot_*`` fields.
    """

    leases_rejected_total: int = 0
    device_recreations_total: int = 0
    resyncs_total: int = 0
    resync_repairs_total: int = 0
    last_snapshot_ops: int = 0
    last_snapshot_apply_seconds: float = 0.0


@dataclass
class Metrics:
    """What ``/metrics`` exports; every field is read at scrape time."""

    leases_known: int = 0
    peers_programmed: int = 0
    netlink_ops_total: int = 0
    netlink_errors_total: int = 0
    watch_restarts_total: int = 0
    lease_expiration: float | None = None  # UNIX time; None for a reservation
    masq_resyncs_total: int = 0
    masq_repairs_total: int = 0
    ready: bool = False
    peers_failing: int = 0
    # Kernel refusals of peer entries by errno name (ENETUNREACH, EBUSY, ...).
    peer_apply_failures: dict[str, int] = field(default_factory=dict)
    # The running backend's counters (the daemon sets it once the backend is configured).
    backend: BackendStats = field(default_factory=BackendStats)
    # Backend-specific Prometheus metric families, built at scrape time (wireguard: per-peer
    # handshake age and byte counters, see pyflannel.backend.wireguard.inspect).
    extra_families: Callable[[], list[object]] | None = None

    def count_peer_failure(self, reason: str) -> None:
        """Count one refused peer operation under ``reason``."""
        self.peer_apply_failures[reason] = self.peer_apply_failures.get(reason, 0) + 1

    def lease_expires_in(self, now: float | None = None) -> float:
        """Seconds until our lease expires (+Inf for a reservation or before we hold one)."""
        if self.lease_expiration is None:
            return float("inf")
        return self.lease_expiration - (time.time() if now is None else now)


METRICS = Metrics()
