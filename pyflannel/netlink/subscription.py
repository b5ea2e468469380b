"""A netlink socket subscribed to multicast groups: what the notification monitors share.

The socket is non-blocking, so trio can wait on :attr:`Subscription.sock` with
``trio.lowlevel.wait_readable`` and a thread with ``select``; :meth:`Subscription.pending`
drains what is queued. Standard library only.
"""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Iterator

from pyflannel.netlink.nlsocket import NetlinkSocket

__all__ = ["Subscription"]


class Subscription(NetlinkSocket):
    """Notifications of ``groups`` (``RTMGRP_*`` bits) in the current thread's namespace, on a
    non-blocking socket (``fileno``, ``close`` and the ``with`` form are the socket's)."""

    def __init__(self, groups: int, bufsize: int) -> None:
        super().__init__(groups=groups, bufsize=bufsize, timeout=None)
        self.sock.setblocking(False)

    def pending(self) -> Iterator[bytes | None]:
        """Each datagram queued right now, never blocking; ``None`` where the kernel dropped
        notifications because the receive buffer was full (``ENOBUFS``): the caller must
        re-read the state it cares about. Other socket errors (e.g. ``EBADF`` once closed)
        are raised."""
        while True:
            try:
                buf = self.recv_nowait()
            except OSError as exc:
                if exc.errno != errno_mod.ENOBUFS:
                    raise
                yield None
                continue
            if buf is None:
                return
            yield buf
