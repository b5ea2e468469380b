"""Read the kernel's routes, neighbours and FDB entries back as ops' entry types.

Used for start-up reconciliation: what the planner wants minus what these return is what the
executor must do. Each dump is one ``NLM_F_DUMP`` request and a minimal parser over the raw
bytes (10,000 entries parse in tens of milliseconds), filtered to one device when asked.

Only entries pyflannel could have programmed are returned: routes of the main table that are
unicast, not kernel/RA-generated, not cached clones and not multipath; neighbours and FDB entries
in state ``permanent`` (unless asked otherwise).
"""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyflannel.netlink import consts as c
from pyflannel.netlink.encode import attr, mac_to_str, ndmsg, rtmsg
from pyflannel.netlink.nlsocket import DumpItem, KernelRefused, NetlinkSocket, parse_attrs
from pyflannel.netlink.ops import FdbEntry, IPAddress, NeighEntry, RouteEntry

__all__ = [
    "RouteLookup",
    "dump_fdb",
    "dump_neighbours",
    "dump_routes",
    "parse_fdb",
    "parse_neighbours",
    "parse_routes",
    "route_get",
]

_SKIP_PROTOCOLS = frozenset({c.RTPROT_KERNEL, c.RTPROT_RA})


def _addr(raw: bytes) -> IPAddress | None:
    n = len(raw)
    if n == 4:
        return IPv4Address(int.from_bytes(raw, "big"))
    if n == 16:
        return IPv6Address(int.from_bytes(raw, "big"))
    return None


def _family_arg(family: int) -> int:
    if family not in (c.AF_INET, c.AF_INET6):
        raise ValueError(f"family must be AF_INET (2) or AF_INET6 (10), not {family}")
    return family


def dump_routes(
    sock: NetlinkSocket, ifindex: int | None = None, family: int = c.AF_INET
) -> list[RouteEntry]:
    """Routes of the main table, optionally only those whose output device is ``ifindex``.

    The returned ``ifindex`` is the kernel's output device, also for routes that were added
    with ifindex 0 (host-gw / DirectRouting): compare on ``(dst, gw)`` for those.
    """
    items = sock.dump(
        c.RTM_GETROUTE, rtmsg(_family_arg(family), table=0), what=f"dump routes (family {family})"
    )
    return parse_routes(items, ifindex)


def parse_routes(items: Iterable[DumpItem], ifindex: int | None = None) -> list[RouteEntry]:
    """The route filter and parser behind :func:`dump_routes` (pure; takes raw messages)."""
    out: list[RouteEntry] = []
    append = out.append
    unpack_rt = c.RTMSG.unpack_from
    unpack_rta = c.RTATTR.unpack_from
    unpack_u32 = c.U32.unpack_from
    from_bytes = int.from_bytes
    skip_proto = _SKIP_PROTOCOLS
    # This loop is the start-up cost of reconciliation with 10k+ peers, hence inlined attribute
    # parsing instead of parse_attrs() and no objects for entries that are filtered out.
    for buf, start, end, mtype in items:
        if mtype != c.RTM_NEWROUTE:
            continue
        fam, dst_len, _src_len, _tos, table, proto, _scope, rtype, flags = unpack_rt(buf, start)
        if rtype != c.RTN_UNICAST or proto in skip_proto or flags & c.RTM_F_CLONED:
            continue
        oif = 0
        raw_dst = raw_gw = raw_via = None
        multipath = False
        off = start + 12
        while off + 4 <= end:
            alen, atype = unpack_rta(buf, off)
            if alen < 4:
                break
            if atype == c.RTA_DST:
                raw_dst = buf[off + 4 : off + alen]
            elif atype == c.RTA_GATEWAY:
                raw_gw = buf[off + 4 : off + alen]
            elif atype == c.RTA_OIF:
                oif = unpack_u32(buf, off + 4)[0]
            elif atype == c.RTA_TABLE:
                table = unpack_u32(buf, off + 4)[0]
            elif atype == c.RTA_MULTIPATH:
                multipath = True
            elif atype == c.RTA_VIA:
                raw_via = buf[off + 6 : off + alen]
            off += (alen + 3) & ~3
        if table != c.RT_TABLE_MAIN or multipath or (ifindex is not None and oif != ifindex):
            continue
        net = from_bytes(raw_dst, "big") if raw_dst else 0
        dst = IPv4Network((net, dst_len)) if fam == c.AF_INET else IPv6Network((net, dst_len))
        if raw_gw is not None:
            gw = _addr(raw_gw)
        elif raw_via is not None:
            gw = _addr(raw_via)
        else:
            gw = None
        append(RouteEntry(dst, gw, oif, bool(flags & c.RTNH_F_ONLINK)))
    return out


def _nd_request(family: int, ifindex: int | None) -> bytes:
    body = ndmsg(family, 0)
    if ifindex is not None:
        # a kernel-side filter (honoured since Linux 4.18); parsing filters again regardless
        body += attr(c.NDA_IFINDEX, c.U32.pack(ifindex))
    return body


def _nd_rows(
    items: Iterable[DumpItem], ifindex: int | None, *, bridge: bool, permanent_only: bool
) -> Iterator[tuple[IPAddress, str, int]]:
    """(``NDA_DST`` address, ``NDA_LLADDR`` MAC, ifindex) of every neighbour message (``bridge``:
    FDB message with ``NTF_SELF``) for ``ifindex`` that carries both, permanent ones only if asked.
    """
    unpack_nd = c.NDMSG.unpack_from
    for buf, start, end, mtype in items:
        if mtype != c.RTM_NEWNEIGH:
            continue
        fam, _p1, _p2, idx, state, flags, _type = unpack_nd(buf, start)
        if (fam == c.AF_BRIDGE) != bridge or (ifindex is not None and idx != ifindex):
            continue
        if (bridge and not flags & c.NTF_SELF) or (permanent_only and not state & c.NUD_PERMANENT):
            continue
        attrs = parse_attrs(buf, start + 12, end)
        raw_ip = attrs.get(c.NDA_DST)
        raw_mac = attrs.get(c.NDA_LLADDR)
        if raw_ip is None or raw_mac is None or len(raw_mac) != 6:
            continue
        ip = _addr(raw_ip)
        if ip is not None:
            yield ip, mac_to_str(raw_mac), idx


def dump_neighbours(
    sock: NetlinkSocket,
    ifindex: int | None = None,
    family: int = c.AF_INET,
    *,
    permanent_only: bool = True,
) -> list[NeighEntry]:
    """ARP (``AF_INET``) or NDP (``AF_INET6``) entries that have a link-layer address."""
    items = sock.dump(
        c.RTM_GETNEIGH,
        _nd_request(_family_arg(family), ifindex),
        what=f"dump neighbours (family {family})",
    )
    return parse_neighbours(items, ifindex, permanent_only=permanent_only)


def parse_neighbours(
    items: Iterable[DumpItem], ifindex: int | None = None, *, permanent_only: bool = True
) -> list[NeighEntry]:
    """The parser behind :func:`dump_neighbours` (pure; takes raw messages)."""
    rows = _nd_rows(items, ifindex, bridge=False, permanent_only=permanent_only)
    return [NeighEntry(ip, mac, idx) for ip, mac, idx in rows]


def dump_fdb(
    sock: NetlinkSocket, ifindex: int | None = None, *, permanent_only: bool = True
) -> list[FdbEntry]:
    """The vxlan devices' own FDB entries (``NTF_SELF``) that have a remote (``dst``).

    A MAC with several remotes yields one entry per remote.
    """
    items = sock.dump(c.RTM_GETNEIGH, _nd_request(c.AF_BRIDGE, ifindex), what="dump bridge FDB")
    return parse_fdb(items, ifindex, permanent_only=permanent_only)


def parse_fdb(
    items: Iterable[DumpItem], ifindex: int | None = None, *, permanent_only: bool = True
) -> list[FdbEntry]:
    """The parser behind :func:`dump_fdb` (pure; takes raw messages)."""
    rows = _nd_rows(items, ifindex, bridge=True, permanent_only=permanent_only)
    return [FdbEntry(mac, dst, idx) for dst, mac, idx in rows]


@dataclass(frozen=True, slots=True)
class RouteLookup:
    """The kernel's answer to ``ip route get <dst>``."""

    dst: IPAddress
    gw: IPAddress | None
    ifindex: int
    prefsrc: IPAddress | None
    local: bool
    """The destination is an address of this host (``RTN_LOCAL``)."""


def route_get(sock: NetlinkSocket, dst: IPAddress) -> RouteLookup | None:
    """Resolve ``dst`` like ``ip route get``; None when there is no route (unreachable).

    For DirectRouting: the peer is on our L2 segment when the result has no gateway.
    """
    family, bits = (c.AF_INET, 32) if dst.version == 4 else (c.AF_INET6, 128)
    body = rtmsg(family, bits, table=0) + attr(c.RTA_DST, dst.packed)
    try:
        replies = sock.request(c.RTM_GETROUTE, 0, body, what=f"ip route get {dst}")
    except KernelRefused as exc:
        if exc.errno in (errno_mod.ENETUNREACH, errno_mod.EHOSTUNREACH, errno_mod.ENETDOWN):
            return None
        raise
    for mtype, payload in replies:
        if mtype != c.RTM_NEWROUTE:
            continue
        rtype = payload[7]
        attrs = parse_attrs(payload, 12, len(payload))
        raw_gw = attrs.get(c.RTA_GATEWAY)
        raw_oif = attrs.get(c.RTA_OIF)
        raw_src = attrs.get(c.RTA_PREFSRC)
        return RouteLookup(
            dst=dst,
            gw=_addr(raw_gw) if raw_gw else None,
            ifindex=c.I32.unpack(raw_oif)[0] if raw_oif else 0,
            prefsrc=_addr(raw_src) if raw_src else None,
            local=rtype == c.RTN_LOCAL,
        )
    return None
