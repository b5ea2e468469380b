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
import struct
from collections.abc import Collection
from dataclasses import dataclass

from pyflannel.netlink import consts as c
from pyflannel.netlink.nlsocket import iter_messages
from pyflannel.netlink.subscription import Subscription

__all__ = ["ChangeMonitor", "KernelChanges"]

_RTMGRP_NEIGH = 0x4
_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_IFADDR = 0x100
_RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (
    c.RTMGRP_LINK
    | _RTMGRP_NEIGH
    | _RTMGRP_IPV4_IFADDR
    | _RTMGRP_IPV4_ROUTE
    | _RTMGRP_IPV6_IFADDR
    | _RTMGRP_IPV6_ROUTE
)
_RTM_NEWLINK, _RTM_DELLINK = 16, 17
_RTM_NEWADDR, _RTM_DELADDR = 20, 21
_RTM_NEWROUTE, _RTM_DELROUTE = 24, 25
_RTM_NEWNEIGH, _RTM_DELNEIGH = 28, 29
_NUD_NOARP = 0x40
_RT_TABLE_COMPAT = 252
_RT_TABLE_MAIN = 254
_RTA_TABLE = 15
_I32 = struct.Struct("=i")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_RTA = struct.Struct("=HH")


def _route_table(buf: bytes, start: int, end: int) -> int:
    table = buf[start + 4]
    if table != _RT_TABLE_COMPAT:
        return table
    off = start + 12  # struct rtmsg, then attributes
    while off + 4 <= end:
        alen, atype = _RTA.unpack_from(buf, off)
        if alen < 4:
            break
        if atype == _RTA_TABLE and alen >= 8:
            return int(_U32.unpack_from(buf, off + 4)[0])
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
                    if mtype in (_RTM_NEWLINK, _RTM_DELLINK, _RTM_NEWADDR, _RTM_DELADDR):
                        relevant = node = True
                        break
                    if relevant:
                        continue
                    if mtype in (_RTM_NEWROUTE, _RTM_DELROUTE):
                        relevant = _route_table(buf, start, end) == _RT_TABLE_MAIN
                    elif mtype in (_RTM_NEWNEIGH, _RTM_DELNEIGH) and end - start >= 10:
                        # The kernel's own NOARP entries (IPv6 multicast groups of the device's
                        # link-local address) come and go with neighbour GC, about a minute after
                        # start: never ours (we program PERMANENT entries), so no full reconcile.
                        relevant = _I32.unpack_from(buf, start + 4)[0] in neigh_ifindexes and (
                            _U16.unpack_from(buf, start + 8)[0] != _NUD_NOARP
                        )
        except OSError as exc:
            if exc.errno != errno_mod.EBADF:
                raise
            return KernelChanges(True, True)  # closed: never raises, everything may have changed
        return KernelChanges(relevant, node)
