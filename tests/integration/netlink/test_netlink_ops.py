"""The batched executor and the dumps against the real kernel, in a namespaced node."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest

from pyflannel.netlink import executor as executor_mod
from pyflannel.netlink.dump import dump_fdb, dump_neighbours, dump_routes, route_get
from pyflannel.netlink.executor import OpsFailed, apply_ops, apply_ops_checked
from pyflannel.netlink.links import LinkInfo, ensure_vxlan, set_link_up
from pyflannel.netlink.nlsocket import NetlinkSocket
from pyflannel.netlink.nsenter import in_netns
from pyflannel.netlink.ops import (
    Delete,
    FdbEntry,
    NeighEntry,
    Op,
    Replace,
    RouteEntry,
)

from .nltopo import PEER_IP, Node

pytestmark = pytest.mark.root

N = 1000
State = tuple[set[tuple[str, ...]], set[tuple[str, ...]], set[tuple[str, ...]]]
AF_INET6 = 10


def peers(n: int) -> list[tuple[IPv4Network, str, IPv4Address]]:
    """n peer subnets 10.8.x.0/24.. with distinct MACs and underlay IPs."""
    out = []
    for i in range(n):
        subnet = IPv4Network(((10 << 24) | ((8 << 16) + (i << 8)), 24))
        mac = f"0a:00:00:{i >> 8:02x}:{i & 255:02x}:01"
        out.append((subnet, mac, IPv4Address(int(PEER_IP) + i % 200)))
    return out


def add_ops(ifindex: int, n: int = N) -> list[Op]:
    ops: list[Op] = []
    for subnet, mac, public in peers(n):
        gw = subnet.network_address
        ops += [
            Replace(NeighEntry(gw, mac, ifindex)),
            Replace(FdbEntry(mac, public, ifindex)),
            Replace(RouteEntry(subnet, gw, ifindex, onlink=True)),
        ]
    return ops


def del_ops(ifindex: int, n: int = N) -> list[Op]:
    ops: list[Op] = []
    for subnet, mac, public in peers(n):
        gw = subnet.network_address
        ops += [
            Delete(RouteEntry(subnet, gw, ifindex, onlink=True)),
            Delete(FdbEntry(mac, public, ifindex)),
            Delete(NeighEntry(gw, mac, ifindex)),
        ]
    return ops


def kernel_state(
    node: Node,
) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]], set[tuple[str, ...]]]:
    """What `ip`/`bridge` show on flannel.1, with the attributes that matter."""
    routes: set[tuple[str, ...]] = {
        (r["dst"], r.get("gateway", ""), ",".join(r.get("flags", [])), r.get("protocol", ""))
        for r in node.ip_json("-d", "route", "show", "dev", "flannel.1")
    }
    neighs: set[tuple[str, ...]] = {
        (n["dst"], n.get("lladdr", ""), ",".join(n.get("state", [])))
        for n in node.ip_json("neigh", "show", "dev", "flannel.1")
    }
    fdb: set[tuple[str, ...]] = {
        (f["mac"], f.get("dst", ""), ",".join(f.get("flags", [])), f.get("state", ""))
        for f in node.bridge_json("fdb", "show", "dev", "flannel.1")
    }
    return routes, neighs, fdb


def expected_state(
    n: int = N,
) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]], set[tuple[str, ...]]]:
    routes: set[tuple[str, ...]] = set()
    neighs: set[tuple[str, ...]] = set()
    fdb: set[tuple[str, ...]] = set()
    for subnet, mac, public in peers(n):
        gw = str(subnet.network_address)
        routes.add((str(subnet), gw, "onlink", "boot"))
        neighs.add((gw, mac, "PERMANENT"))
        fdb.add((mac, str(public), "self", "permanent"))
    return routes, neighs, fdb


def test_apply_1000_peers_programs_every_entry(node: Node, vxlan: LinkInfo) -> None:
    assert apply_ops(node.sock, add_ops(vxlan.ifindex)) == []
    assert kernel_state(node) == expected_state()


def test_replace_is_idempotent_and_updates(node: Node, vxlan: LinkInfo) -> None:
    ops = add_ops(vxlan.ifindex)
    assert apply_ops(node.sock, ops) == []
    assert apply_ops(node.sock, ops) == []
    assert kernel_state(node) == expected_state()
    # a peer re-registers with a new VTEP MAC and public IP: replace overwrites in place
    subnet, _mac, _public = peers(1)[0]
    new_mac, new_pub = "0a:ff:ff:ff:ff:01", IPv4Address("198.51.100.250")
    apply_ops_checked(
        node.sock,
        [
            Replace(NeighEntry(subnet.network_address, new_mac, vxlan.ifindex)),
            Replace(FdbEntry(new_mac, new_pub, vxlan.ifindex)),
        ],
    )
    neigh = node.ip_json("neigh", "show", str(subnet.network_address), "dev", "flannel.1")
    assert [n["lladdr"] for n in neigh] == [new_mac]
    fdb = node.bridge_json("fdb", "show", "dev", "flannel.1")
    assert [f["dst"] for f in fdb if f["mac"] == new_mac] == [str(new_pub)]


def test_delete_removes_everything_and_absent_deletes_succeed(node: Node, vxlan: LinkInfo) -> None:
    assert apply_ops(node.sock, add_ops(vxlan.ifindex)) == []
    assert apply_ops(node.sock, del_ops(vxlan.ifindex)) == []
    assert kernel_state(node) == (set(), set(), set())
    # deleting what is already gone is success (ENOENT/ESRCH swallowed)
    assert apply_ops(node.sock, del_ops(vxlan.ifindex, 10)) == []


def test_failure_is_reported_precisely_and_the_rest_applies(node: Node, vxlan: LinkInfo) -> None:
    ops = add_ops(vxlan.ifindex, 100)
    bad_route = Replace(
        RouteEntry(IPv4Network("10.99.0.0/24"), IPv4Address("10.99.0.0"), 999_999, True)
    )
    # a gateway outside every connected subnet, without onlink: ENETUNREACH on an existing dev
    bad_gw = Replace(
        RouteEntry(IPv4Network("10.98.0.0/24"), IPv4Address("10.97.0.1"), node.ext_ifindex)
    )
    bad_mac = Replace(NeighEntry(IPv4Address("10.97.0.0"), "0a:00", vxlan.ifindex))
    ops[150:150] = [bad_route]
    ops[10:10] = [bad_mac]
    ops.append(bad_gw)
    failures = apply_ops(node.sock, ops)
    assert [(f.index, f.op) for f in failures] == [
        (10, bad_mac),
        (151, bad_route),
        (len(ops) - 1, bad_gw),
    ]
    assert not failures[0].encodable and "not sent" in failures[0].message()
    failures = failures[1:]
    assert failures[0].errno == errno.ENODEV
    assert "ip route replace 10.99.0.0/24 via 10.99.0.0 dev ifindex 999999 onlink" in (
        failures[0].message()
    )
    assert failures[1].device == node.ext_name
    assert f"dev {node.ext_name} (ifindex {node.ext_ifindex})" in failures[1].message()
    assert kernel_state(node) == expected_state(100)
    with pytest.raises(OpsFailed) as info:
        apply_ops_checked(node.sock, [bad_route])
    assert "1 of 1 netlink operations failed" in str(info.value)
    assert info.value.hint and "does not exist" in info.value.hint


def test_small_receive_buffer_falls_back_without_losing_failures(
    node: Node, vxlan: LinkInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    fallbacks: list[int] = []
    real = executor_mod._apply_one_by_one

    def counting(*args: Any) -> None:
        fallbacks.append(len(args[1]))
        real(*args)

    monkeypatch.setattr(executor_mod, "_apply_one_by_one", counting)
    with in_netns(node.ns):
        tiny = NetlinkSocket(rcvbuf=4096)
    with tiny:
        bad = [
            Replace(
                RouteEntry(IPv4Network(((10 << 24) | (200 << 16) | (i << 8), 24)), None, 999_999)
            )
            for i in range(200)
        ]
        good = add_ops(vxlan.ifindex, 50)
        failures = apply_ops(tiny, bad + good)
    assert fallbacks, "the error ACKs should have overflowed an 8 KiB receive buffer"
    assert [f.index for f in failures] == list(range(200))
    assert kernel_state(node) == expected_state(50)


def test_dumps_return_exactly_what_was_programmed(node: Node, vxlan: LinkInfo) -> None:
    ops = add_ops(vxlan.ifindex)
    apply_ops_checked(node.sock, ops)
    want_routes = {op.entry for op in ops if isinstance(op.entry, RouteEntry)}
    want_neigh = {op.entry for op in ops if isinstance(op.entry, NeighEntry)}
    want_fdb = {op.entry for op in ops if isinstance(op.entry, FdbEntry)}
    routes = dump_routes(node.sock, vxlan.ifindex)
    assert len(routes) == N and set(routes) == want_routes
    neigh = dump_neighbours(node.sock, vxlan.ifindex)
    assert len(neigh) == N and set(neigh) == want_neigh
    fdb = dump_fdb(node.sock, vxlan.ifindex)
    assert len(fdb) == N and set(fdb) == want_fdb
    # unfiltered dumps see other devices too, but nothing kernel-made (connected routes)
    all_routes = dump_routes(node.sock)
    assert set(all_routes) == want_routes
    assert dump_fdb(node.sock, node.ext_ifindex) == []


def test_ipv6_entries_on_a_v6_device(node: Node) -> None:
    node.ip("addr", "add", "fd00:198::1/64", "dev", node.ext_name, "nodad")
    dev = ensure_vxlan(
        node.sock, node.vxlan_spec(name="flannel-v6.1", local=IPv6Address("fd00:198::1"))
    )
    set_link_up(node.sock, dev.ifindex)
    subnet = IPv6Network("fd00:5:1::/64")
    gw = subnet.network_address
    mac = "0a:00:00:00:66:01"
    neigh = NeighEntry(gw, mac, dev.ifindex)
    fdb = FdbEntry(mac, IPv6Address("fd00:198::2"), dev.ifindex)
    route = RouteEntry(subnet, gw, dev.ifindex, onlink=True)
    apply_ops_checked(node.sock, [Replace(neigh), Replace(fdb), Replace(route)])
    assert dump_routes(node.sock, dev.ifindex, AF_INET6) == [route]
    assert dump_neighbours(node.sock, dev.ifindex, AF_INET6) == [neigh]
    assert dump_fdb(node.sock, dev.ifindex) == [fdb]
    shown = node.ip_json("-6", "route", "show", "dev", "flannel-v6.1")
    assert any(r["dst"] == str(subnet) and "onlink" in r.get("flags", []) for r in shown)
    # an IPv6 remote on the IPv4 device is refused by the kernel, and reported as such
    v4dev = ensure_vxlan(node.sock, node.vxlan_spec())
    failures = apply_ops(node.sock, [Replace(FdbEntry(mac, fdb.dst, v4dev.ifindex))])
    assert [f.errno for f in failures] == [errno.EAFNOSUPPORT]
    apply_ops_checked(node.sock, [Delete(route), Delete(fdb), Delete(neigh)])
    assert dump_routes(node.sock, dev.ifindex, AF_INET6) == []


def test_host_gw_and_direct_routes(node: Node) -> None:
    subnet = IPv4Network("10.9.3.0/24")
    hostgw = RouteEntry(subnet, PEER_IP, node.ext_ifindex)
    apply_ops_checked(node.sock, [Replace(hostgw)])
    shown = node.ip_json("route", "show", str(subnet))
    assert [(r["gateway"], r["dev"], r.get("flags", [])) for r in shown] == [
        (str(PEER_IP), node.ext_name, [])
    ]
    assert dump_routes(node.sock, node.ext_ifindex) == [hostgw]
    # DirectRouting style: no device given, the kernel picks it
    direct = RouteEntry(IPv4Network("10.9.4.0/24"), PEER_IP, 0)
    apply_ops_checked(node.sock, [Replace(direct)])
    shown = node.ip_json("route", "show", "10.9.4.0/24")
    assert [(r["gateway"], r["dev"]) for r in shown] == [(str(PEER_IP), node.ext_name)]
    apply_ops_checked(node.sock, [Delete(direct), Delete(hostgw)])
    assert node.ip_json("route", "show", "10.9.0.0/16", "root", "10.9.0.0/16") == []


def test_route_get(node: Node) -> None:
    on_link = route_get(node.sock, PEER_IP)
    assert on_link is not None
    assert (on_link.gw, on_link.ifindex, on_link.local) == (None, node.ext_ifindex, False)
    assert on_link.prefsrc == IPv4Address("198.51.100.1")
    node.ip("route", "add", "203.0.113.0/24", "via", str(PEER_IP))
    routed = route_get(node.sock, IPv4Address("203.0.113.7"))
    assert routed is not None and routed.gw == PEER_IP
    assert route_get(node.sock, IPv4Address("198.18.0.1")) is None  # no default route
    local = route_get(node.sock, IPv4Address("198.51.100.1"))
    assert local is not None and local.local
