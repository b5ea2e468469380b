"""Link event monitor: ``RTM_NEWLINK``/``RTM_DELLINK`` multicast (``RTMGRP_LINK``).

flanneld ≥ 0.27.4 re-creates its vxlan device when it sees the device's ``RTM_DELLINK``. This is
the event source for that: a non-blocking socket that trio can wait on with
``trio.lowlevel.wait_readable`` (see :meth:`LinkMonitor.next_events`), or that a thread can wait
on with :meth:`LinkMonitor.wait`.

When the kernel drops notifications because the socket buffer filled up (``ENOBUFS``), an
``"overflow"`` event is returned: the caller must re-check the state it cares about with
:func:`pyflannel.netlink.links.get_link`.
"""

from __future__ import annotations

import select
import time
from dataclasses import dataclass
from typing import Literal

from pyflannel.netlink import consts as c
from pyflannel.netlink.links import parse_link
from pyflannel.netlink.nlsocket import iter_messages
from pyflannel.netlink.subscription import Subscription

__all__ = ["LinkEvent", "LinkMonitor"]

EventKind = Literal["new", "deleted", "overflow"]


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """A device appeared/changed (``"new"``), vanished (``"deleted"``) or events were lost."""

    kind: EventKind
    ifindex: int = 0
    name: str = ""
    flags: int = 0


class LinkMonitor(Subscription):
    """Subscribes to link events in the current thread's network namespace."""

    def __init__(self) -> None:
        super().__init__(c.RTMGRP_LINK, 4 << 20)

    def poll(self) -> list[LinkEvent]:
        """Every event queued right now (possibly none); never blocks."""
        events: list[LinkEvent] = []
        for buf in self.pending():
            if buf is None:
                events.append(LinkEvent("overflow"))
                continue
            for mtype, _flags, _seq, start, end in iter_messages(buf):
                if mtype not in (c.RTM_NEWLINK, c.RTM_DELLINK):
                    continue
                link = parse_link(buf, start, end)
                kind: EventKind = "new" if mtype == c.RTM_NEWLINK else "deleted"
                events.append(LinkEvent(kind, link.ifindex, link.name, link.flags))
        return events

    def wait(self, timeout: float | None = None) -> list[LinkEvent]:
        """Block (in a thread) until at least one event arrives or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            events = self.poll()
            if events:
                return events
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            select.select([self.sock], [], [], remaining)

    async def next_events(self) -> list[LinkEvent]:
        """Wait (trio) until at least one event is available and return all queued ones."""
        import trio

        while True:
            events = self.poll()
            if events:
                return events
            await trio.lowlevel.wait_readable(self.sock)
