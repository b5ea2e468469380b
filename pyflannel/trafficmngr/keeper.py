"""What the iptables and nftables managers share: their state, the lock, the resync loop.

Rules are never removed on shutdown (flanneld v0.27+); at start-up each mode removes the other
mode's rules (``cleanup_other_mode``). The rule work itself (``setup``, ``resync_once``,
``differences``) is the mode's own: :mod:`.iptables`, :mod:`.nftables`.
"""

from __future__ import annotations

from typing import TypedDict

import trio

from pyflannel.trafficmngr.blackhole import BlackholeRoutes, resync_loop
from pyflannel.trafficmngr.rules import PreviousNetworks, TrafficSpec
from pyflannel.trafficmngr.runner import Runner

__all__ = ["KeeperOptions", "RuleKeeper"]


class KeeperOptions(TypedDict, total=False):
    """The keyword arguments of :class:`RuleKeeper` (and of its subclasses)."""

    prev: PreviousNetworks | None
    netns: str | None
    timeout: float


class RuleKeeper:
    """The base of a :class:`~pyflannel.trafficmngr.protocols.TrafficManager`.

    ``netns``: run every command through ``ip netns exec <netns>`` (tests); None for the daemon.
    ``prev``: FLANNEL_NETWORK/FLANNEL_SUBNET of the previous run, from the old subnet.env.
    A subclass sets ``mode`` (the log event prefix) and implements :meth:`resync_once`.
    """

    mode: str

    def __init__(
        self,
        spec: TrafficSpec,
        *,
        prev: PreviousNetworks | None = None,
        netns: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.spec = spec
        self.prev = prev
        self.netns = netns
        self.repairs_total = 0
        self._runner = Runner(netns, timeout=timeout)
        # setup() and a resync must not interleave: each reads state and then changes it
        self._lock = trio.Lock()
        self._blackhole = BlackholeRoutes.for_spec(spec, prev, netns=netns)

    async def resync_once(self) -> list[str]:
        """Repair any difference; return what was repaired. Raises TrafficRuleError."""
        raise NotImplementedError

    async def resync_forever(
        self, period: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Every ``period`` seconds (first after one period): resync, and keep the blackhole
        route when ``--ip-blackhole-route``. Errors are logged and the loop goes on."""
        task_status.started()
        await resync_loop(self.resync_once, self._blackhole, period, self.mode)

    async def _ensure_blackhole(self) -> None:
        # at the end of setup(): now, not one resync period later; also drops the previous
        # lease's blackhole
        if self._blackhole is not None:
            await self._blackhole.ensure()
