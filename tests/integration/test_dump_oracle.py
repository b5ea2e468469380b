"""pyroute2 as an independent oracle for pyflannel's netlink dump parsers, on a real kernel.

A fresh namespace gets real entries of every kind pyflannel reads back — the ones it programs
itself (vxlan devices, routes via the vxlan device, host-gw routes, an IPv4 route via an IPv6
next hop, permanent neighbours and FDB entries, several remotes per MAC) and the ones it must
skip (connected/kernel routes, other tables, blackhole and multipath routes, dynamic neighbours,
FDB entries without a remote). Then every dump parser — ``dump_routes``, ``dump_neighbours``,
``dump_fdb``, ``route_get`` (``pyflannel/netlink/dump.py``), ``list_links``,
``list_all_addresses`` and ``read_host_network`` — is compared with what
``IPRoute(netns=...)`` reads from the same tables, filtered by the rules the parsers document.
A hypothesis property then programs random dual-stack peer sets with pyflannel's executor,
compares every dump again, deletes them and checks the tables are back as they were.

pyroute2 is in the ``test`` extra only; pyflannel itself never imports it (docs/decisions.md).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroute2 import IPRoute

from pyflannel.iface import read_host_network
from pyflannel.netlink import consts as c
from pyflannel.netlink.addresses import list_all_addresses
from pyflannel.netlink.dump import dump_fdb, dump_neighbours, dump_routes, route_get
from pyflannel.netlink.executor import apply_ops_checked
from pyflannel.netlink.links import (
    LinkInfo,
    VxlanAttrs,
    VxlanSpec,
    ensure_vxlan,
    get_link,
    list_links,
    set_link_up,
)
from pyflannel.netlink.nlsocket import NetlinkSocket
from pyflannel.netlink.nsenter import in_netns
from pyflannel.netlink.ops import (
    Delete,
    FdbEntry,
    IPAddress,
    NeighEntry,
    Op,
    Replace,
    RouteEntry,
)
from tests.integration.netlink.nltopo import sh

pytestmark = pytest.mark.root

AF_INET, AF_INET6, AF_BRIDGE = 2, 10, 7
LOCAL4, LOCAL6 = IPv4Address("198.51.100.1"), IPv6Address("2001:db8:1::1")
N_PEERS = 40


class Lab:
    """The namespace, pyflannel's socket in it and pyroute2's reading of it."""

    def __init__(self, ns: str, sock: NetlinkSocket, ipr: IPRoute) -> None:
        self.ns, self.sock, self.ipr = ns, sock, ipr
        self.ifindex: dict[str, int] = {}

    def ip(self, *args: str) -> None:
        sh("ip", "-n", self.ns, *args)

    def bridge(self, *args: str) -> None:
        sh("bridge", "-n", self.ns, *args)

    def link(self, name: str) -> int:
        found = get_link(self.sock, name)
        assert found is not None, name
        self.ifindex[name] = found.ifindex
        return found.ifindex


def _peer_ops(ifindex: int, ifindex6: int) -> list[Op]:
    """What the vxlan backend programs for N_PEERS dual-stack peers (plus host-gw routes)."""
    ops: list[Op] = []
    for i in range(N_PEERS):
        gw4 = IPv4Address(f"10.8.{i}.0")
        gw6 = IPv6Address(f"fd00:8:{i:x}::")
        mac = f"0a:00:00:00:{i:02x}:01"
        mac6 = f"0a:00:00:00:{i:02x}:02"
        under4 = IPv4Address(int(LOCAL4) + 10 + i)
        under6 = IPv6Address(int(LOCAL6) + 10 + i)
        ops += [
            Replace(NeighEntry(gw4, mac, ifindex)),
            Replace(FdbEntry(mac, under4, ifindex)),
            Replace(RouteEntry(IPv4Network(f"10.8.{i}.0/24"), gw4, ifindex, onlink=True)),
            Replace(NeighEntry(gw6, mac6, ifindex6)),
            Replace(FdbEntry(mac6, under6, ifindex6)),
            Replace(RouteEntry(IPv6Network(f"fd00:8:{i:x}::/64"), gw6, ifindex6, True)),
            # host-gw / DirectRouting: no device, the kernel picks the underlay
            Replace(RouteEntry(IPv4Network(f"10.9.{i}.0/24"), under4, 0)),
            Replace(RouteEntry(IPv6Network(f"fd00:9:{i:x}::/64"), under6, 0)),
        ]
    return ops


@pytest.fixture
def lab(netns: Callable[[str | None], str]) -> Iterator[Lab]:
    ns = netns("oracle")
    with in_netns(ns):
        sock = NetlinkSocket()
    ipr = IPRoute(netns=ns)
    try:
        env = Lab(ns, sock, ipr)
        _populate(env)
        yield env
    finally:
        ipr.close()
        sock.close()


def _populate(lab: Lab) -> None:
    lab.ip("link", "add", "u", "type", "veth", "peer", "name", "u2")
    lab.ip("link", "set", "u", "up")
    lab.ip("link", "set", "u2", "up")
    lab.ip("addr", "add", f"{LOCAL4}/24", "dev", "u")
    lab.ip("addr", "add", f"{LOCAL6}/64", "dev", "u", "nodad")
    lab.ip("addr", "add", "198.51.100.200/32", "dev", "u2")
    u = lab.link("u")
    vx4 = ensure_vxlan(lab.sock, VxlanSpec("flannel.1", 1, u, LOCAL4))
    vx6 = ensure_vxlan(
        lab.sock, VxlanSpec("flannel-v6.1", 2, u, LOCAL6, port=4789, gbp=True, mtu=1400)
    )
    for link in (vx4, vx6):
        set_link_up(lab.sock, link.ifindex)
    lab.ifindex.update({"flannel.1": vx4.ifindex, "flannel-v6.1": vx6.ifindex})
    # a vxlan device pyflannel did not make: multicast group, learning, l2miss/l3miss
    lab.ip(
        "link",
        "add",
        "vx9",
        "type",
        "vxlan",
        "id",
        "9",
        "group",
        "239.1.1.9",
        "dev",
        "u",
        "dstport",
        "8472",
        "learning",
        "l2miss",
        "l3miss",
    )
    lab.link("vx9")
    lab.ip("addr", "add", "10.8.200.0/32", "dev", "flannel.1")
    lab.ip("addr", "add", "fd00:8:ff::/128", "dev", "flannel-v6.1", "nodad")
    lab.ip("route", "add", "default", "via", "198.51.100.254", "dev", "u")
    lab.ip("-6", "route", "add", "default", "via", "2001:db8:1::fe", "dev", "u")
    apply_ops_checked(lab.sock, _peer_ops(vx4.ifindex, vx6.ifindex))
    # RFC 5549: IPv4 prefix via an IPv6 next hop (RTA_VIA)
    lab.ip("route", "add", "10.7.0.0/24", "via", "inet6", "fe80::7", "dev", "u")
    # what the route parser must skip
    lab.ip("route", "add", "10.6.0.0/24", "via", "198.51.100.6", "table", "100")
    lab.ip("route", "add", "blackhole", "10.6.1.0/24")
    lab.ip("route", "add", "unreachable", "fd00:6::/64")
    lab.ip(
        "route",
        "add",
        "10.6.2.0/24",
        "nexthop",
        "via",
        "198.51.100.6",
        "nexthop",
        "via",
        "198.51.100.7",
    )
    lab.ip("route", "add", "10.6.3.0/24", "dev", "u", "proto", "kernel")
    lab.ip("-6", "route", "add", "fd00:6:1::/64", "via", "2001:db8:1::6", "proto", "ra")
    lab.ip("route", "add", "10.6.4.0/24", "via", "198.51.100.6", "proto", "static")
    lab.ip("-6", "route", "add", "fd00:6:2::/64", "dev", "u", "metric", "2048")
    # a table id above 255: the header says RT_TABLE_COMPAT, only RTA_TABLE has the real one
    lab.ip("route", "add", "10.6.5.0/24", "via", "198.51.100.6", "table", "1000")
    lab.ip("-6", "route", "add", "fd00:6:3::/64", "via", "2001:db8:1::6", "table", "1000")
    lab.ip(
        "-6", "route", "add", "fd00:6:4::/64",
        "nexthop", "via", "2001:db8:1::6", "nexthop", "via", "2001:db8:1::7",
    )  # fmt: skip
    lab.ip("-6", "route", "add", "fd00:6:5::/64", "via", "fe80::5", "dev", "u")
    # neighbours: permanent and not; on several devices
    lab.ip(
        "neigh", "add", "198.51.100.20", "lladdr", "0a:00:00:aa:01:20", "dev", "u", "nud", "stale"
    )
    lab.ip(
        "neigh",
        "add",
        "198.51.100.21",
        "lladdr",
        "0a:00:00:aa:01:21",
        "dev",
        "u",
        "nud",
        "permanent",
    )
    lab.ip(
        "neigh",
        "add",
        "2001:db8:1::21",
        "lladdr",
        "0a:00:00:aa:01:22",
        "dev",
        "u",
        "nud",
        "reachable",
    )
    lab.ip("neigh", "add", "198.51.100.22", "dev", "u", "nud", "incomplete")  # no lladdr
    # FDB: several remotes per MAC (the all-zero flood entry), a dynamic one
    for i in range(3):
        lab.bridge(
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "flannel.1",
            "dst",
            str(LOCAL4 + 100 + i),
            "self",
            "permanent",
        )
    lab.bridge(
        "fdb",
        "add",
        "0a:00:00:aa:02:01",
        "dev",
        "flannel.1",
        "dst",
        "198.51.100.99",
        "self",
        "dynamic",
    )
    lab.bridge(
        "fdb", "add", "0a:00:00:aa:02:02", "dev", "vx9", "dst", "198.51.100.98", "self", "permanent"
    )


# --- pyroute2's reading, filtered by the documented rules ---------------------------------------


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _mac(msg: Any) -> str | None:
    raw = _attr(msg, "NDA_LLADDR")
    return None if raw is None else str(raw).lower()


def oracle_routes(lab: Lab, family: int, ifindex: int | None) -> list[RouteEntry]:
    """Main table, unicast, not kernel/RA, not cloned, not multipath; optionally one device."""
    out: list[RouteEntry] = []
    for r in lab.ipr.get_routes(family=family):
        table = _attr(r, "RTA_TABLE") or r["table"]
        if r["type"] != 1 or r["proto"] in (2, 9) or r["flags"] & 0x200 or table != 254:
            continue
        if _attr(r, "RTA_MULTIPATH") is not None:
            continue
        oif = _attr(r, "RTA_OIF") or 0
        if ifindex is not None and oif != ifindex:
            continue
        dst = ip_network(
            (_attr(r, "RTA_DST") or ("::" if family == AF_INET6 else "0.0.0.0"), r["dst_len"])
        )
        gw: IPAddress | None = None
        if _attr(r, "RTA_GATEWAY") is not None:
            gw = ip_address(_attr(r, "RTA_GATEWAY"))
        elif _attr(r, "RTA_VIA") is not None:
            gw = ip_address(_attr(r, "RTA_VIA")["addr"])
        out.append(RouteEntry(dst, gw, oif, bool(r["flags"] & c.RTNH_F_ONLINK)))
    return out


def oracle_neighbours(
    lab: Lab, family: int, ifindex: int | None, permanent_only: bool
) -> list[NeighEntry]:
    out: list[NeighEntry] = []
    for n in lab.ipr.get_neighbours(family=family):
        if n["family"] != family or (ifindex is not None and n["ifindex"] != ifindex):
            continue
        if permanent_only and not n["state"] & 0x80:
            continue
        dst, mac = _attr(n, "NDA_DST"), _mac(n)
        if dst is None or mac is None or len(mac) != 17:
            continue
        out.append(NeighEntry(ip_address(dst), mac, n["ifindex"]))
    return out


def oracle_fdb(lab: Lab, ifindex: int | None, permanent_only: bool) -> list[FdbEntry]:
    out: list[FdbEntry] = []
    for n in lab.ipr.fdb("dump"):
        if n["family"] != AF_BRIDGE or (ifindex is not None and n["ifindex"] != ifindex):
            continue
        if not n["flags"] & 0x02 or (permanent_only and not n["state"] & 0x80):
            continue
        dst, mac = _attr(n, "NDA_DST"), _mac(n)
        if dst is None or mac is None:
            continue
        out.append(FdbEntry(mac, ip_address(dst), n["ifindex"]))
    return out


def agree(ours: Callable[[], list[Any]], theirs: Callable[[], list[Any]]) -> list[Any]:
    """Assert ``ours() == theirs()`` on a table that holds still; return our reading.

    The kernel adds and ages some entries on its own (multicast neighbours such as ``ff02::16``
    when a device comes up, failed NDP probes), so a reading is only compared when two of ours
    taken around pyroute2's are equal.
    """
    for _ in range(20):
        first, oracle, second = ours(), theirs(), ours()
        if first == second:
            assert first == oracle
            return first
        time.sleep(0.1)
    raise AssertionError("the kernel table kept changing during 20 readings")


# --- the comparisons ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", [AF_INET, AF_INET6])
def test_dump_routes_matches_pyroute2(lab: Lab, family: int) -> None:
    ours = dump_routes(lab.sock, None, family)
    theirs = oracle_routes(lab, family, None)
    assert ours == theirs
    # the lab really has each kind the parser keeps, so the equality is not vacuous
    assert any(r.gw is not None and r.onlink for r in ours)
    assert any(r.gw is not None and not r.onlink for r in ours)
    if family == AF_INET:
        via6 = RouteEntry(IPv4Network("10.7.0.0/24"), IPv6Address("fe80::7"), lab.ifindex["u"])
        assert via6 in ours
        # of the 10.6.x routes only the plain static one is pyflannel's kind
        skipped = [r.dst for r in ours if str(r.dst).startswith("10.6.")]
        assert skipped == [IPv4Network("10.6.4.0/24")]
    assert len(ours) >= 2 * N_PEERS
    for name in ("flannel.1", "flannel-v6.1", "u"):
        idx = lab.ifindex[name]
        assert dump_routes(lab.sock, idx, family) == oracle_routes(lab, family, idx)


@pytest.mark.parametrize("family", [AF_INET, AF_INET6])
@pytest.mark.parametrize("permanent_only", [True, False])
def test_dump_neighbours_matches_pyroute2(lab: Lab, family: int, permanent_only: bool) -> None:
    for idx in (None, *(lab.ifindex[name] for name in ("flannel.1", "flannel-v6.1", "u"))):
        ours = agree(
            partial(dump_neighbours, lab.sock, idx, family, permanent_only=permanent_only),
            partial(oracle_neighbours, lab, family, idx, permanent_only),
        )
        if idx is None:
            assert len(ours) >= N_PEERS


@pytest.mark.parametrize("permanent_only", [True, False])
def test_dump_fdb_matches_pyroute2(lab: Lab, permanent_only: bool) -> None:
    ours = dump_fdb(lab.sock, None, permanent_only=permanent_only)
    assert ours == oracle_fdb(lab, None, permanent_only)
    vx4 = lab.ifindex["flannel.1"]
    zeros = [e for e in ours if e.mac == "00:00:00:00:00:00" and e.ifindex == vx4]
    assert len(zeros) == 3  # one entry per remote of the same MAC
    assert any(e.mac == "0a:00:00:aa:02:01" for e in ours) == (not permanent_only)
    for name in ("flannel.1", "flannel-v6.1", "vx9", "u"):
        idx = lab.ifindex[name]
        got = dump_fdb(lab.sock, idx, permanent_only=permanent_only)
        assert got == oracle_fdb(lab, idx, permanent_only)


def test_list_links_matches_pyroute2(lab: Lab) -> None:
    theirs: list[LinkInfo] = []
    for link in lab.ipr.get_links():
        info = _attr(link, "IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        vx: VxlanAttrs | None = None
        if kind == "vxlan":
            data = info.get_attr("IFLA_INFO_DATA")

            def get(name: str, default: Any = 0, data: Any = data) -> Any:
                value = data.get_attr(name)
                return default if value is None else value

            local = get("IFLA_VXLAN_LOCAL", None) or get("IFLA_VXLAN_LOCAL6", None)
            group = get("IFLA_VXLAN_GROUP", None) or get("IFLA_VXLAN_GROUP6", None)
            vx = VxlanAttrs(
                vni=get("IFLA_VXLAN_ID"),
                link=get("IFLA_VXLAN_LINK"),
                local=_nonzero(local),
                group=_nonzero(group),
                port=get("IFLA_VXLAN_PORT"),
                gbp=data.get_attr("IFLA_VXLAN_GBP") is not None,
                learning=bool(get("IFLA_VXLAN_LEARNING")),
                l2miss=bool(get("IFLA_VXLAN_L2MISS")),
                l3miss=bool(get("IFLA_VXLAN_L3MISS")),
            )
        mac = _attr(link, "IFLA_ADDRESS")
        theirs.append(
            LinkInfo(
                ifindex=link["index"],
                name=_attr(link, "IFLA_IFNAME"),
                kind=kind,
                mac=mac if mac is not None and len(mac) == 17 else None,
                mtu=_attr(link, "IFLA_MTU") or 0,
                flags=link["flags"],
                vxlan=vx,
            )
        )
    ours = list_links(lab.sock)
    assert ours == theirs
    by_name = {link.name: link for link in ours}
    assert by_name["flannel-v6.1"].vxlan == VxlanAttrs(
        2, lab.ifindex["u"], LOCAL6, None, 4789, True, False, False, False
    )
    vx9 = by_name["vx9"].vxlan
    assert vx9 is not None and (vx9.group, vx9.learning, vx9.l2miss, vx9.l3miss) == (
        IPv4Address("239.1.1.9"),
        True,
        True,
        True,
    )


def _nonzero(raw: str | None) -> IPAddress | None:
    if raw is None:
        return None
    addr = ip_address(raw)
    return None if int(addr) == 0 else addr


@pytest.mark.parametrize("family", [AF_INET, AF_INET6])
def test_list_all_addresses_matches_pyroute2(lab: Lab, family: int) -> None:
    theirs = []
    for a in lab.ipr.get_addr(family=family):
        raw = _attr(a, "IFA_LOCAL") or _attr(a, "IFA_ADDRESS")
        theirs.append((a["index"], ip_interface(f"{raw}/{a['prefixlen']}")))
    ours = list_all_addresses(lab.sock, family)
    assert ours == theirs
    assert len(ours) >= 3


def test_read_host_network_matches_pyroute2(lab: Lab) -> None:
    with in_netns(lab.ns):
        host = read_host_network()
    links = {link["index"]: link for link in lab.ipr.get_links()}
    assert [(x.index, x.name, x.mtu) for x in host.links] == sorted(
        (i, _attr(link, "IFLA_IFNAME"), _attr(link, "IFLA_MTU")) for i, link in links.items()
    )
    theirs: dict[int, list[tuple[IPAddress, int, int]]] = {}
    for a in lab.ipr.get_addr():
        raw = _attr(a, "IFA_LOCAL") or _attr(a, "IFA_ADDRESS")
        flags = _attr(a, "IFA_FLAGS")
        theirs.setdefault(a["index"], []).append(
            (ip_address(raw), a["flags"] if flags is None else flags, a["prefixlen"])
        )
    ours = {
        x.index: [(addr.ip, addr.flags, addr.prefixlen) for addr in x.addrs]
        for x in host.links
        if x.addrs
    }
    assert ours == theirs

    def defaults(family: int) -> tuple[int, ...]:
        return tuple(
            _attr(r, "RTA_OIF") or 0
            for r in lab.ipr.get_routes(family=family)
            if r["dst_len"] == 0 and (_attr(r, "RTA_TABLE") or r["table"]) == 254
        )

    assert host.default_v4 == defaults(AF_INET) == (lab.ifindex["u"],)
    assert host.default_v6 == defaults(AF_INET6) == (lab.ifindex["u"],)


@pytest.mark.parametrize(
    "dst",
    [
        "10.8.3.7",
        "10.9.3.7",
        "198.51.100.1",
        "198.51.100.50",
        "fd00:8:3::7",
        "fd00:9:3::7",
        "2001:db8:1::1",
        "203.0.113.9",
    ],
)
def test_route_get_matches_pyroute2(lab: Lab, dst: str) -> None:
    ours = route_get(lab.sock, ip_address(dst))
    (theirs,) = lab.ipr.route("get", dst=dst)
    assert ours is not None
    gw = _attr(theirs, "RTA_GATEWAY")
    src = _attr(theirs, "RTA_PREFSRC")
    assert (ours.gw, ours.ifindex, ours.prefsrc, ours.local) == (
        None if gw is None else ip_address(gw),
        _attr(theirs, "RTA_OIF") or 0,
        None if src is None else ip_address(src),
        theirs["type"] == 2,  # RTN_LOCAL
    )


def test_route_get_unreachable_is_none(lab: Lab) -> None:
    assert route_get(lab.sock, IPv6Address("fd00:6::1")) is None


# --- property: random peer sets programmed, compared, removed ----------------------------------


@st.composite
def peer_sets(draw: st.DrawFn) -> list[Op]:
    """Replace ops for a random set of dual-stack vxlan and host-gw peers (distinct keys).

    Prefixes (10.64.0.0/10, 10.128.0.0/10, fd00:64::/32) and MACs (0e:...) stay clear of the
    fixture's own entries, so deleting the ops restores the tables exactly.
    """
    slots = draw(st.lists(st.integers(0, 2**14 - 1), max_size=25, unique=True))
    macs = draw(
        st.lists(
            st.integers(1, 2**40 - 1), min_size=2 * len(slots), max_size=2 * len(slots), unique=True
        )
    )
    ops: list[Op] = []
    for i, slot in enumerate(slots):
        mac4 = (0x0E << 40 | macs[2 * i]).to_bytes(6, "big").hex(":")
        mac6 = (0x0E << 40 | macs[2 * i + 1]).to_bytes(6, "big").hex(":")
        gw4 = IPv4Address((10 << 24) | (64 << 16) | (slot << 8))  # in 10.64.0.0/10
        net4 = IPv4Network((int(gw4), 24))
        gw6 = IPv6Address((0xFD00_0064 << 96) | (slot << 64))
        net6 = IPv6Network((int(gw6), 64))
        under4 = IPv4Address(int(LOCAL4) + draw(st.integers(2, 150)))
        under6 = IPv6Address(int(LOCAL6) + draw(st.integers(2, 2**16)))
        vx4 = vx6 = -1  # set by _on_devices (ifindexes are per lab)
        ops += [
            Replace(NeighEntry(gw4, mac4, vx4)),
            Replace(FdbEntry(mac4, under4, vx4)),
            Replace(RouteEntry(net4, gw4, vx4, onlink=True)),
            Replace(NeighEntry(gw6, mac6, vx6)),
            Replace(FdbEntry(mac6, under6, vx6)),
            Replace(RouteEntry(net6, gw6, vx6, onlink=True)),
        ]
        if draw(st.booleans()):  # host-gw for this peer too, on another prefix
            ops.append(Replace(RouteEntry(IPv4Network((int(gw4) + (64 << 16), 24)), under4, 0)))
            ops.append(Replace(RouteEntry(IPv6Network((int(gw6) | 1 << 80, 64)), under6, 0)))
    return ops


def _on_devices(ops: list[Op], vx4: int, vx6: int) -> list[Op]:
    """The ops with the placeholder ifindex -1 replaced by the vxlan device of their family."""
    out: list[Op] = []
    for op in ops:
        entry = op.entry
        if entry.ifindex != -1:
            out.append(op)
            continue
        version = entry.ip.version if isinstance(entry, NeighEntry) else entry.dst.version
        out.append(type(op)(dataclasses.replace(entry, ifindex=vx6 if version == 6 else vx4)))
    return out


def _deletes(ops: list[Op]) -> list[Op]:
    return [Delete(op.entry) for op in reversed(ops)]


def _all_dumps(lab: Lab) -> tuple[list[Any], ...]:
    """Every dump as reconciliation reads it (permanent entries), checked against pyroute2.

    Dynamic entries are compared by the static tests above; here the kernel's own multicast
    neighbours would come and go between the before and after readings.
    """
    return (
        agree(
            lambda: dump_routes(lab.sock, None, AF_INET), lambda: oracle_routes(lab, AF_INET, None)
        ),
        agree(
            lambda: dump_routes(lab.sock, None, AF_INET6),
            lambda: oracle_routes(lab, AF_INET6, None),
        ),
        agree(
            lambda: dump_neighbours(lab.sock, None, AF_INET),
            lambda: oracle_neighbours(lab, AF_INET, None, True),
        ),
        agree(
            lambda: dump_neighbours(lab.sock, None, AF_INET6),
            lambda: oracle_neighbours(lab, AF_INET6, None, True),
        ),
        agree(
            lambda: dump_fdb(lab.sock, None),
            lambda: oracle_fdb(lab, None, True),
        ),
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=peer_sets())
def test_random_peer_sets_read_back_like_pyroute2_reads_them(lab: Lab, ops: list[Op]) -> None:
    before = _all_dumps(lab)
    ops = _on_devices(ops, lab.ifindex["flannel.1"], lab.ifindex["flannel-v6.1"])
    apply_ops_checked(lab.sock, ops)
    try:
        routes4, routes6, neigh4, neigh6, fdb = _all_dumps(lab)
        kernel = {*routes4, *routes6, *neigh4, *neigh6, *fdb}
        for op in ops:
            entry = op.entry
            if isinstance(entry, RouteEntry) and entry.ifindex == 0:
                # the kernel reports the device it chose for a host-gw route
                entry = dataclasses.replace(entry, ifindex=lab.ifindex["u"])
            assert entry in kernel, f"{op} not read back"
    finally:
        apply_ops_checked(lab.sock, _deletes(ops))
    # the same entries as before (the kernel may list them in another order now)
    assert [Counter(d) for d in _all_dumps(lab)] == [Counter(d) for d in before]
