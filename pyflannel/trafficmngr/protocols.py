"""The seam between the daemon and a traffic manager (iptables or nftables mode)."""

from __future__ import annotations

from typing import Protocol

import trio

__all__ = ["TrafficManager"]


class TrafficManager(Protocol):
    """Installs flannel's masquerade/forward rules and keeps them in place.

    Daemon order (flanneld §10): ``cleanup_other_mode()`` → ``setup()`` → start
    ``resync_forever(period)`` in the nursery → write subnet.env. Nothing is removed on shutdown.
    """

    mode: str
    repairs_total: int

    async def cleanup_other_mode(self) -> None:
        """Remove the rules of the mode not in use. Logs problems, never raises."""
        ...

    async def setup(self) -> None:
        """Apply the whole rule set now. Raises TrafficRuleError on failure."""
        ...

    async def differences(self) -> list[str]:
        """What differs from the wanted rules, changing nothing. Raises TrafficRuleError."""
        ...

    async def resync_once(self) -> list[str]:
        """Repair any difference; return what was repaired. Raises TrafficRuleError."""
        ...

    async def resync_forever(
        self, period: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Resync (and keep the blackhole route) every ``period`` seconds, forever."""
        ...
