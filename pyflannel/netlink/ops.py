"""Netlink operations as plain data.

The backends' planners (pure) produce lists of these; the executor turns them into netlink
messages and sends them in batches; the dump functions read the kernel's state back into the
same types so that reconciliation is a set difference. Order within a list matters: the
executor applies operations in list order (neighbour → FDB → route when adding a peer, the
reverse when removing one).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = [
    "FdbDel",
    "FdbEntry",
    "FdbReplace",
    "IPAddress",
    "IPNetwork",
    "NeighDel",
    "NeighEntry",
    "NeighReplace",
    "Op",
    "RouteDel",
    "RouteEntry",
    "RouteReplace",
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


@dataclass(frozen=True, slots=True)
class RouteReplace:
    entry: RouteEntry


@dataclass(frozen=True, slots=True)
class RouteDel:
    entry: RouteEntry


@dataclass(frozen=True, slots=True)
class NeighReplace:
    entry: NeighEntry


@dataclass(frozen=True, slots=True)
class NeighDel:
    entry: NeighEntry


@dataclass(frozen=True, slots=True)
class FdbReplace:
    entry: FdbEntry


@dataclass(frozen=True, slots=True)
class FdbDel:
    entry: FdbEntry


Op = RouteReplace | RouteDel | NeighReplace | NeighDel | FdbReplace | FdbDel
