"""Did anything change that peer programming depends on? A cheap test for periodic resyncs.

A reconcile of 10,000 peers (three table dumps and a full plan) costs about a second of CPU;
doing it every minute on an idle node was most of the daemon's idle CPU. This monitor subscribes
to the kernel's link, address, route and neighbour notifications of the current network
namespace; :meth:`ChangeMonitor.changed` drains what arrived since the last call and says
whether any of it could have touched what we program:

* any link or address change (a device going down flushes its IPv4 routes *without* route
  notifications, so link events must count);
* any route change in the main table;
* a neighbour or FDB change on one of the given devices (the vxlan device); neighbour churn on
  other devices (ARP of the underlay) is ignored;
* a receive-buffer overflow (``ENOBUFS``: notifications were lost).

Standard library only, non-blocking, never raises on a closed socket.
"""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Collection
from dataclasses import dataclass

from pyflannel.netlink import consts as c
from pyflannel.netlink.nlsocket import iter_messages
from pyflannel.netlink.subscription import Subscription

__all__ = ["ChangeMonitor", "KernelChanges"]

GROUPS = (
    c.RTMGRP_LINK
    | c.RTMGRP_NEIGH
    | c.RTMGRP_IPV4_IFADDR
    | c.RTMGRP_IPV4_ROUTE
    | c.RTMGRP_IPV6_IFADDR
    | c.RTMGRP_IPV6_ROUTE
)
_LINK_OR_ADDR = (c.RTM_NEWLINK, c.RTM_DELLINK, c.RTM_NEWADDR, c.RTM_DELADDR)
_ROUTE = (c.RTM_NEWROUTE, c.RTM_DELROUTE)
_NEIGH = (c.RTM_NEWNEIGH, c.RTM_DELNEIGH)


def _route_table(buf: bytes, start: int, end: int) -> int:
    table = buf[start + 4]
    if table != c.RT_TABLE_COMPAT:
        return table
    off = start + 12  # struct rtmsg, then attributes
    while off + 4 <= end:
        alen, atype = c.RTATTR.unpack_from(buf, off)
        if alen < 4:
            break
        if atype == c.RTA_TABLE and alen >= 8:
            return int(c.U32.unpack_from(buf, off + 4)[0])
        off += (alen + 3) & ~3
    return table


@dataclass(frozen=True, slots=True)
class KernelChanges:
    """What :meth:`ChangeMonitor.drain` saw: ``relevant`` — something a peer reconcile could
    repair; ``node`` — a link or address changed (what a refused next hop depends on)."""

    relevant: bool
    node: bool


class ChangeMonitor(Subscription):
    """Link/address/route/neighbour notifications of the current thread's network namespace."""

    def __init__(self, bufsize: int = 1 << 20) -> None:
        super().__init__(GROUPS, bufsize)

    def changed(self, neigh_ifindexes: Collection[int]) -> bool:
        """Drain every queued notification; True if one of them is relevant (see the module
        docstring) or some were lost. Neighbour/FDB changes count only on ``neigh_ifindexes``."""
        return self.drain(neigh_ifindexes).relevant

    def drain(self, neigh_ifindexes: Collection[int]) -> KernelChanges:
        """Drain every queued notification and say what kind of change arrived (lost
        notifications count as every kind)."""
        relevant = node = False
        try:
            for buf in self.pending():
                if buf is None:
                    relevant = node = True
                    continue
                if node:
                    continue  # keep draining; the answer is already "everything"
                for mtype, _flags, _seq, start, end in iter_messages(buf):
                    if mtype in _LINK_OR_ADDR:
                        relevant = node = True
                        break
                    if relevant:
                        continue
                    if mtype in _ROUTE:
                        relevant = _route_table(buf, start, end) == c.RT_TABLE_MAIN
                    elif mtype in _NEIGH and end - start >= 10:
                        # The kernel's own NOARP entries (IPv6 multicast groups of the device's
                        # link-local address) come and go with neighbour GC, about a minute after
                        # start: never ours (we program PERMANENT entries), so no full reconcile.
                        relevant = c.I32.unpack_from(buf, start + 4)[0] in neigh_ifindexes and (
                            c.U16.unpack_from(buf, start + 8)[0] != c.NUD_NOARP
                        )
        except OSError as exc:
            if exc.errno != errno_mod.EBADF:
                raise
            return KernelChanges(True, True)  # closed: never raises, everything may have changed
        return KernelChanges(relevant, node)
