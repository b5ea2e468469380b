"""How a backend reports the peer leases it refuses to program (one rule for every backend).

A refusal is logged once per lease and reason at warning level and counted in
``leases_rejected_total``; repeats (every resync plans the same leases again) and benign
refusals (our own lease, another backend's lease) go to debug only.
"""

from __future__ import annotations

import structlog

from pyflannel.backend.base import BackendStats
from pyflannel.backend.validate import Rejection
from pyflannel.lease import Lease

__all__ = ["RejectionLog"]

log = structlog.get_logger(__name__)


class RejectionLog:
    """The refusals seen so far, and the counter they go to."""

    def __init__(self, stats: BackendStats) -> None:
        self.stats = stats
        self._warned: set[tuple[str, str]] = set()

    def note(self, lease: Lease, rej: Rejection) -> None:
        """Report one refusal of ``lease`` (once per lease and reason)."""
        key = (lease.key_suffix, rej.reason)
        if rej.benign or key in self._warned:
            log.debug("backend.lease_ignored", reason=rej.reason)
            return
        self._warned.add(key)
        self.stats.leases_rejected_total += 1
        log.warning("backend.lease_rejected", reason=rej.reason)
