"""The loop that keeps a backend's device as configured; shared by the vxlan and udp networks.

Anything on the host can delete the device, set it down, or strip its address or route. The
keeper runs the network's ``check`` (which repairs what differs and says what it repaired)
first, then each time the network's ``wait`` returns (a kernel notification about the device,
or a periodic tick for what sends none). A device that is gone is re-created through
:meth:`DeviceKeeper.recreate`, which retries until it succeeds.

Every retry follows :mod:`pyflannel.retry`, the one retry policy: a failing check or
re-creation backs off from 1 s doubling to 30 s and is logged first, every 30th time, and when
it recovers; after a repair the next check comes 0.2 s later, doubling to 5 s while something
keeps undoing our work (another tool fighting us): bounded rate and log volume, never a busy
loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NoReturn, TypeVar

import structlog
import trio

from pyflannel.backend.base import BackendStats
from pyflannel.errors import InterfaceError, NetlinkError
from pyflannel.retry import Backoff, FailureLog

__all__ = ["CHECK_INTERVAL", "DEVICE_ERRORS", "DeviceKeeper"]

log = structlog.get_logger(__name__)

CHECK_INTERVAL: Final = 10.0
"""Seconds between checks when no notification comes (address changes send no link event)."""
DEVICE_ERRORS: Final = (NetlinkError, InterfaceError, OSError)
"""What a check or a re-creation may fail with; anything else is a bug and propagates."""

_FAILURE_BACKOFF_MIN: Final = 1.0
_FAILURE_BACKOFF_MAX: Final = 30.0
_REPAIR_BACKOFF_MIN: Final = 0.2
_REPAIR_BACKOFF_MAX: Final = 5.0

T = TypeVar("T")


class DeviceKeeper:
    """Keeps one network's device(s); ``backend`` prefixes the log events (``vxlan``,
    ``udp``), ``stats`` counts repairs and re-creations."""

    def __init__(self, backend: str, stats: BackendStats) -> None:
        self.backend = backend
        self.stats = stats

    async def run(
        self,
        check: Callable[[], Awaitable[Sequence[str]]],
        wait: Callable[[float], Awaitable[None]],
        device: Callable[[], str],
    ) -> NoReturn:
        """Check now, then after every ``wait(CHECK_INTERVAL)``, until cancelled. ``check``
        repairs and returns what it repaired; ``device`` names the device for the logs."""
        repair_backoff = Backoff.of(_REPAIR_BACKOFF_MIN, _REPAIR_BACKOFF_MAX)
        failure_backoff = Backoff.of(_FAILURE_BACKOFF_MIN, _FAILURE_BACKOFF_MAX)
        failures = FailureLog(log, f"{self.backend}.reconcile_failed")
        while True:
            try:
                repaired = await check()
            except DEVICE_ERRORS as exc:
                delay = failure_backoff.next()
                failures.failed(device=device(), error=str(exc), retry_in=round(delay, 2))
                await trio.sleep(delay)
                continue
            failure_backoff.reset()
            failures.resolved(device=device())
            if repaired:
                self.stats.resync_repairs_total += 1
                log.warning(f"{self.backend}.device_repaired", device=device(), repaired=repaired)
                await trio.sleep(repair_backoff.next())
                continue
            repair_backoff.reset()
            await wait(CHECK_INTERVAL)

    async def recreate(self, device: Callable[[], str], attempt: Callable[[], T]) -> T:
        """``attempt()`` (re-create and configure the device) until it succeeds; its result.
        Counts one re-creation."""
        backoff = Backoff.of(_FAILURE_BACKOFF_MIN, _FAILURE_BACKOFF_MAX)
        failures = FailureLog(log, f"{self.backend}.recreate_failed")
        while True:
            try:
                result = attempt()
                break
            except DEVICE_ERRORS as exc:
                delay = backoff.next()
                failures.failed(device=device(), error=str(exc), retry_in=round(delay, 2))
                await trio.sleep(delay)
        failures.resolved(device=device())
        self.stats.device_recreations_total += 1
        return result
