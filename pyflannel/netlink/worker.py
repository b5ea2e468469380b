"""Netlink work off the trio loop: one resource (a socket, a kernel view), one worker at a time.

Planning 10,000 peers and applying their operations takes about a second of CPU; done on the
trio thread it would stall the health endpoint, the lease renewal and the watch. A
:class:`NetlinkWorker` owns its target (e.g. a :class:`~pyflannel.backend.kernel.NetlinkKernel`
whose socket was opened in the caller's network namespace and keeps it for good) and runs every
job that touches it in a worker thread, one job at a time (a capacity limiter of one), so the
loop only awaits results and two jobs never interleave requests on one socket. Jobs are not
abandoned on cancellation: a batch that reached the kernel always finishes, so the caller's
bookkeeping stays true.

Each user of netlink that may run concurrently (peer programming, device repair) has a worker
of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import trio

__all__ = ["NetlinkWorker"]

R = TypeVar("R")
T = TypeVar("T")


class NetlinkWorker(Generic[R]):
    """Runs ``job(target, *args)`` in a worker thread, one job at a time."""

    def __init__(self, target: R) -> None:
        self.target = target
        self._limiter: trio.CapacityLimiter | None = None

    async def run(self, job: Callable[..., T], *args: object) -> T:
        """``job(self.target, *args)`` in a thread; the calling task waits for its result."""
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(1)
        return await trio.to_thread.run_sync(job, self.target, *args, limiter=self._limiter)
