"""Netlink operations as plain data.

The backends' planners (pure) produce lists of these; the executor turns them into netlink
messages and sends them in batches; the dump functions read the kernel's state back into the
same types so that reconciliation is a set difference. Order within a list matters: the
executor applies operations in list order (neighbour → FDB → route when adding a peer, the
reverse when removing one).

An op is two independent facts: what to do (:class:`Replace` or :class:`Delete`) and the entry
to do it to, whose type (:class:`RouteEntry`, :class:`NeighEntry`, :class:`FdbEntry`) says which
kernel table it lives in.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = [
    "Delete",
    "Entry",
    "FdbEntry",
    "IPAddress",
    "IPNetwork",
    "NeighEntry",
    "Op",
    "Replace",
    "RouteEntry",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """A unicast route in the main table: ``dst via gw dev ifindex [onlink]``.

    ``gw`` None means a directly connected route; ``ifindex`` 0 lets the kernel pick the device
    (host-gw and DirectRouting routes).
    """

    dst: IPNetwork
    gw: IPAddress | None
    ifindex: int
    onlink: bool = False


@dataclass(frozen=True, slots=True)
class NeighEntry:
    """A permanent neighbour (ARP/NDP) entry: ``ip lladdr mac dev ifindex nud permanent``."""

    ip: IPAddress
    mac: str  # lower-case, colon-separated
    ifindex: int


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """A permanent VXLAN FDB entry: ``bridge fdb mac dev ifindex dst ip self permanent``."""

    mac: str  # lower-case, colon-separated
    dst: IPAddress
    ifindex: int


Entry = RouteEntry | NeighEntry | FdbEntry
"""One kernel table entry; its type says which table (routes, neighbours or the FDB)."""


@dataclass(frozen=True, slots=True)
class Replace:
    """Create ``entry``, or overwrite the entry with the same key (``ip ... replace``)."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove ``entry``; an entry that is already absent counts as removed."""

    entry: Entry


Op = Replace | Delete
