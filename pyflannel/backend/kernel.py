"""The kernel as the peer programmer sees it: three table dumps, a route lookup, and applying ops.

:class:`PeerKernel` is the seam between :class:`~pyflannel.backend.peers.PeerProgrammer` and
netlink: :class:`NetlinkKernel` is the real one (batched raw netlink on a socket of its own);
tests put an in-memory kernel that fails on demand in its place. Its methods are blocking and
are only ever called from the programmer's worker thread (see
:mod:`pyflannel.netlink.worker`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from pyflannel.backend.base import PlanContext
from pyflannel.errors import NetlinkError
from pyflannel.lease import Lease
from pyflannel.netlink import consts as nlc
from pyflannel.netlink.addresses import IPInterface, list_all_addresses
from pyflannel.netlink.dump import RouteLookup, dump_fdb, dump_neighbours, dump_routes, route_get
from pyflannel.netlink.executor import NetlinkExecutor, OpFailure
from pyflannel.netlink.nlsocket import NetlinkSocket
from pyflannel.netlink.ops import FdbEntry, IPAddress, NeighEntry, Op, RouteEntry

__all__ = [
    "KernelView",
    "NetlinkKernel",
    "PeerKernel",
    "direct_oif",
    "direct_routes",
    "read_kernel",
]

log = structlog.get_logger(__name__)


class PeerKernel(Protocol):
    """What peer programming reads from and writes to the kernel."""

    def routes(self, family: int) -> list[RouteEntry]:
        """Every route of the main table of one address family (``AF_INET``/``AF_INET6``)."""
        ...

    def neighbours(self, ifindex: int, family: int) -> list[NeighEntry]:
        """The neighbour entries of one device and family."""
        ...

    def fdb(self, ifindex: int) -> list[FdbEntry]:
        """The FDB entries (with a remote) of one device."""
        ...

    def route_get(self, dst: IPAddress) -> RouteLookup | None:
        """``ip route get dst``; None when unreachable."""
        ...

    def apply(self, ops: Sequence[Op]) -> list[OpFailure]:
        """Apply ``ops`` in order; the ones the kernel refused."""
        ...

    def node_addresses(self, family: int) -> frozenset[tuple[int, IPInterface]]:
        """The node's (ifindex, address/prefix) pairs of one family, link-local ones left out:
        what decides whether a next hop is on link."""
        ...


class NetlinkKernel:
    """:class:`PeerKernel` over a netlink socket (opened here, in the caller's namespace)."""

    def __init__(self, sock: NetlinkSocket | None = None) -> None:
        self.sock = sock if sock is not None else NetlinkSocket()
        self._exec = NetlinkExecutor(self.sock)

    def routes(self, family: int) -> list[RouteEntry]:
        """See :class:`PeerKernel`."""
        return dump_routes(self.sock, None, family)

    def neighbours(self, ifindex: int, family: int) -> list[NeighEntry]:
        """See :class:`PeerKernel`."""
        return dump_neighbours(self.sock, ifindex, family)

    def fdb(self, ifindex: int) -> list[FdbEntry]:
        """See :class:`PeerKernel`."""
        return dump_fdb(self.sock, ifindex)

    def route_get(self, dst: IPAddress) -> RouteLookup | None:
        """See :class:`PeerKernel`."""
        return route_get(self.sock, dst)

    def apply(self, ops: Sequence[Op]) -> list[OpFailure]:
        """See :class:`PeerKernel`."""
        return self._exec.apply(ops)

    def node_addresses(self, family: int) -> frozenset[tuple[int, IPInterface]]:
        """See :class:`PeerKernel`."""
        return frozenset(
            (idx, iface)
            for idx, iface in list_all_addresses(self.sock, family)
            if not iface.ip.is_link_local
        )

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@dataclass(frozen=True, slots=True)
class KernelView:
    """What the kernel holds for one family's peers: the main table's routes and, for vxlan,
    the device's neighbour and FDB entries (the input of
    :func:`~pyflannel.backend.plan.plan_reconcile`)."""

    routes: tuple[RouteEntry, ...] = ()
    neighbours: tuple[NeighEntry, ...] = ()
    fdb: tuple[FdbEntry, ...] = ()


def read_kernel(kernel: PeerKernel, ctx: PlanContext) -> KernelView:
    """The dumps a reconcile of ``ctx``'s family plans against (the daemon's and ``status``'s
    one way of reading them)."""
    family = nlc.AF_INET if ctx.family == 4 else nlc.AF_INET6
    routes = kernel.routes(family)
    neighs = kernel.neighbours(ctx.dev_index, family) if ctx.is_vxlan else []
    fdb = kernel.fdb(ctx.dev_index) if ctx.is_vxlan else []
    return KernelView(tuple(routes), tuple(neighs), tuple(fdb))


def direct_oif(kernel: PeerKernel, ip: IPAddress, ctx: PlanContext) -> int | None:
    """The interface DirectRouting reaches ``ip`` through, or None (needs the vxlan device).

    flanneld: DirectRouting when ``ip route get <PublicIP>`` gives one route, no gateway.
    """
    try:
        found = kernel.route_get(ip)
    except NetlinkError as exc:
        log.debug("backend.route_get_failed", ip=str(ip), error=str(exc))
        return None
    if found is None or found.gw is not None or found.local or found.ifindex == 0:
        return None
    if found.ifindex == ctx.dev_index:
        return None
    return found.ifindex


def direct_routes(
    kernel: PeerKernel, leases: Iterable[Lease], ctx: PlanContext
) -> dict[IPAddress, int]:
    """DirectRouting decisions for every peer public IP of ``ctx``'s family in ``leases``."""
    out: dict[IPAddress, int] = {}
    seen: set[IPAddress] = set()
    for lease in leases:
        ip = lease.attrs.public_ip if ctx.family == 4 else lease.attrs.public_ipv6
        if ip is None or ip.is_unspecified or ip in seen:
            continue
        seen.add(ip)
        oif = direct_oif(kernel, ip, ctx)
        if oif is not None:
            out[ip] = oif
    return out
