"""Netlink work off the trio loop: one socket, used by one worker thread at a time.

Planning 10,000 peers and applying their operations takes about a second of CPU; done on the
trio thread it would stall the health endpoint, the lease renewal and the watch. A
:class:`NetlinkWorker` owns its socket (opened in the caller's network namespace, which the
socket keeps for good) and runs every job that touches it in a worker thread, one job at a time
(a capacity limiter of one), so the loop only awaits results and two jobs never interleave
requests on the socket. Jobs are not abandoned on cancellation: a batch that reached the kernel
always finishes, so the caller's bookkeeping stays true.

Each user of netlink that may run concurrently (peer programming, device repair) has a worker
of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

from pyflannel.netlink.nlsocket import NetlinkSocket

__all__ = ["NetlinkWorker"]

T = TypeVar("T")


class NetlinkWorker:
    """Runs ``job(socket, *args)`` in a worker thread, one job at a time."""

    def __init__(self, sock: NetlinkSocket | None = None) -> None:
        self.sock = sock if sock is not None else NetlinkSocket()
        self._limiter: trio.CapacityLimiter | None = None

    async def run(self, job: Callable[..., T], *args: object) -> T:
        """``job(self.sock, *args)`` in a thread; the calling task waits for its result."""
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(1)
        return await trio.to_thread.run_sync(job, self.sock, *args, limiter=self._limiter)

    def close(self) -> None:
        """Close the socket (jobs still queued then fail with EBADF)."""
        self.sock.close()
