"""``pyflannel status``: the pure evaluation and rendering (no etcd, no kernel)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network

import pytest

from pyflannel.backend.base import PlanContext
from pyflannel.backend.kernel import KernelView
from pyflannel.cli.status import SCHEMA, StatusReport
from pyflannel.inspect.datapath import evaluate_device, evaluate_peers
from pyflannel.inspect.entries import describe_entry, fix_command
from pyflannel.inspect.findings import Finding, count_levels, format_duration, render_findings
from pyflannel.inspect.leases import LeaseRow, find_own_lease, lease_rows
from pyflannel.inspect.rules import evaluate_rules
from pyflannel.inspect.sources import evaluate_subnet_env
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.netlink import consts as c
from pyflannel.netlink.links import LinkInfo, VxlanAttrs
from pyflannel.netlink.ops import FdbEntry, NeighEntry, RouteEntry
from pyflannel.subnet.subnet_env import SubnetEnv

NET = IPv4Network("10.5.0.0/16")
DEV = 7  # flannel.1
EXT = 2  # eth0
NAMES = {DEV: "flannel.1", EXT: "eth0"}
OWN_MAC = "7a:32:d2:fe:61:82"


def vx_lease(
    subnet: str, ip: str, mac: str, *, expiration: float | None = 2000.0, lease_id: int = 1
) -> Lease:
    return Lease(
        subnet=IPv4Network(subnet),
        attrs=LeaseAttrs(
            public_ip=IPv4Address(ip),
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": mac},
        ),
        expiration=expiration,
        etcd_lease_id=lease_id,
    )


OWN = vx_lease("10.5.16.0/24", "198.51.100.1", OWN_MAC)
PEER = vx_lease("10.5.50.0/24", "198.51.100.2", "02:3a:a0:a1:0a:89")
PEER2 = vx_lease("10.5.60.0/24", "198.51.100.3", "02:3a:a0:a1:0a:90")


def ctx(**kw: object) -> PlanContext:
    base: dict[str, object] = {
        "family": 4,
        "backend_type": "vxlan",
        "network": NET,
        "own_subnet": OWN.subnet,
        "own_public_ip": OWN.attrs.public_ip,
        "dev_index": DEV,
        "ext_index": EXT,
        "own_mac": OWN_MAC,
    }
    base.update(kw)
    return PlanContext(**base)  # type: ignore[arg-type]


def entries_for(lease: Lease) -> tuple[NeighEntry, FdbEntry, RouteEntry]:
    assert lease.subnet is not None
    gw = lease.subnet.network_address
    mac = lease.attrs.backend_data["VtepMAC"]
    return (
        NeighEntry(gw, mac, DEV),
        FdbEntry(mac, lease.attrs.public_ip, DEV),
        RouteEntry(lease.subnet, gw, DEV, onlink=True),
    )


def healthy_kernel(*peers: Lease) -> KernelView:
    routes, neighs, fdb = [], [], []
    for p in peers:
        n, f, r = entries_for(p)
        neighs.append(n)
        fdb.append(f)
        routes.append(r)
    # kernel routes pyflannel does not own: connected + default
    routes += [
        RouteEntry(IPv4Network("0.0.0.0/0"), IPv4Address("198.51.100.254"), EXT),
        RouteEntry(IPv4Network("10.5.16.0/24"), None, 9),
    ]
    return KernelView(tuple(routes), tuple(neighs), tuple(fdb))


def link(**kw: object) -> LinkInfo:
    base: dict[str, object] = {
        "ifindex": DEV,
        "name": "flannel.1",
        "kind": "vxlan",
        "mac": OWN_MAC,
        "mtu": 1450,
        "flags": c.IFF_UP,
        "vxlan": VxlanAttrs(
            1, EXT, IPv4Address("198.51.100.1"), None, 8472, False, False, False, False
        ),
    }
    base.update(kw)
    return LinkInfo(**base)  # type: ignore[arg-type]


def levels(findings: list[Finding]) -> list[str]:
    return [f.level for f in findings]


# --- leases --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "never"),
        (-5, "expired"),
        (0, "expired"),
        (42, "42s"),
        (303, "5m03s"),
        (86399, "23h59m"),
        (3 * 86400 + 7200, "3d02h"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_own_lease_by_subnet_env_wins_over_public_ip() -> None:
    other_mine = vx_lease("10.5.99.0/24", "198.51.100.1", OWN_MAC, expiration=9999.0)
    got = find_own_lease([PEER, other_mine, OWN], [IPv4Address("198.51.100.1")], OWN.subnet)
    assert got == OWN


def test_own_lease_by_public_ip_picks_freshest_and_reservations_first() -> None:
    old = vx_lease("10.5.99.0/24", "198.51.100.1", OWN_MAC, expiration=100.0)
    new = vx_lease("10.5.98.0/24", "198.51.100.1", OWN_MAC, expiration=200.0)
    local = [IPv4Address("198.51.100.1"), IPv4Address("127.0.0.1")]
    assert find_own_lease([old, new, PEER], local, None) == new
    reserved = vx_lease("10.5.97.0/24", "198.51.100.1", OWN_MAC, expiration=None, lease_id=0)
    assert find_own_lease([old, new, reserved], local, None) == reserved


def test_own_lease_none_when_nothing_matches() -> None:
    assert find_own_lease([PEER], [IPv4Address("203.0.113.9")], None) is None
    # a subnet.env subnet nobody holds falls back to the public IP
    assert find_own_lease([PEER], [IPv4Address("198.51.100.2")], IPv4Network("10.5.1.0/24")) == (
        PEER
    )


def test_lease_rows_sorted_marked_and_timed() -> None:
    udp = Lease(IPv4Network("10.5.3.0/24"), LeaseAttrs(public_ip=IPv4Address("198.51.100.9")))
    reserved = vx_lease(
        "10.5.200.0/24", "198.51.100.7", "02:00:00:00:00:07", expiration=None, lease_id=0
    )
    rows = lease_rows([PEER, reserved, OWN, udp], OWN, now=1000.0)
    assert [r.subnet for r in rows] == [
        "10.5.3.0/24",
        "10.5.16.0/24",
        "10.5.50.0/24",
        "10.5.200.0/24",
    ]
    by = {r.subnet: r for r in rows}
    assert by["10.5.16.0/24"].this_node and not by["10.5.50.0/24"].this_node
    assert by["10.5.16.0/24"].vtep_mac == OWN_MAC
    assert by["10.5.16.0/24"].expires_in == 1000.0
    assert by["10.5.3.0/24"].backend == "udp" and by["10.5.3.0/24"].vtep_mac is None
    assert by["10.5.200.0/24"].reservation and by["10.5.200.0/24"].expires_in is None


def test_lease_rows_dual_stack() -> None:
    dual = Lease(
        IPv4Network("10.5.4.0/24"),
        LeaseAttrs(public_ip=IPv4Address("198.51.100.4"), backend_type="host-gw"),
        ipv6_subnet=IPv6Network("2001:db8:42:4::/64"),
    )
    (row,) = lease_rows([dual], None, now=0)
    assert row.ipv6_subnet == "2001:db8:42:4::/64" and row.backend == "host-gw"
    assert not row.this_node


# --- entries and fixes ---------------------------------------------------------------------------


def test_describe_and_fix_commands() -> None:
    n, f, r = entries_for(PEER)
    assert describe_entry(r, NAMES) == "route 10.5.50.0/24 via 10.5.50.0 dev flannel.1 onlink"
    assert describe_entry(n, NAMES) == "neighbour 10.5.50.0 lladdr 02:3a:a0:a1:0a:89 dev flannel.1"
    assert describe_entry(f, NAMES) == "FDB 02:3a:a0:a1:0a:89 dst 198.51.100.2 dev flannel.1"
    assert fix_command(r, NAMES, delete=False) == (
        "ip route replace 10.5.50.0/24 via 10.5.50.0 dev flannel.1 onlink"
    )
    assert (
        fix_command(r, NAMES, delete=True)
        == "ip route del 10.5.50.0/24 via 10.5.50.0 dev flannel.1"
    )
    assert fix_command(n, NAMES, delete=False) == (
        "ip neigh replace 10.5.50.0 lladdr 02:3a:a0:a1:0a:89 dev flannel.1 nud permanent"
    )
    assert fix_command(n, NAMES, delete=True) == "ip neigh del 10.5.50.0 dev flannel.1"
    assert fix_command(f, NAMES, delete=False) == (
        "bridge fdb replace 02:3a:a0:a1:0a:89 dev flannel.1 dst 198.51.100.2 self permanent"
    )
    assert fix_command(f, NAMES, delete=True) == (
        "bridge fdb del 02:3a:a0:a1:0a:89 dev flannel.1 dst 198.51.100.2 self"
    )
    v6 = RouteEntry(ip_network("2001:db8:1::/64"), None, 99)
    assert fix_command(v6, NAMES, delete=False) == "ip -6 route replace 2001:db8:1::/64 dev if99"


# --- device --------------------------------------------------------------------------------------


def test_device_healthy() -> None:
    own_net = [IPv4Network("10.5.16.0/32")]
    (f,) = evaluate_device(
        "flannel.1", link(), OWN.attrs.backend_data, own_subnet=OWN.subnet, addresses=own_net
    )
    assert f.level == "OK" and OWN_MAC in f.message


def test_device_missing_not_vxlan_down_wrong_mac_no_address() -> None:
    (missing,) = evaluate_device("flannel.1", None, OWN.attrs.backend_data)
    assert missing.level == "FAIL" and "does not exist" in missing.message

    (plain,) = evaluate_device("flannel.1", link(kind="bridge"), OWN.attrs.backend_data)
    assert plain.level == "FAIL" and "not vxlan" in plain.message

    found = evaluate_device(
        "flannel.1",
        link(flags=0, mac="02:11:22:33:44:55"),
        OWN.attrs.backend_data,
        own_subnet=OWN.subnet,
        addresses=[],
    )
    assert levels(found) == ["FAIL", "FAIL", "FAIL"]
    down, mac, addr = found
    assert "is down" in down.message and down.fix == "ip link set dev flannel.1 up"
    assert "02:11:22:33:44:55" in mac.message and OWN_MAC in mac.message
    assert mac.fix == f"ip link set dev flannel.1 address {OWN_MAC}"
    assert "10.5.16.0/32" in addr.message
    assert addr.fix == "ip addr add 10.5.16.0/32 dev flannel.1"


def test_device_lease_without_mac() -> None:
    (f,) = evaluate_device("flannel.1", link(), {"VNI": 1})
    assert f.level == "FAIL" and "no VtepMAC" in f.message


def test_device_mac_compared_case_insensitively() -> None:
    (f,) = evaluate_device("flannel.1", link(mac=OWN_MAC), {"VNI": 1, "VtepMAC": OWN_MAC.upper()})
    assert f.level == "OK"


# --- peers ---------------------------------------------------------------------------------------


def test_peers_healthy() -> None:
    out = evaluate_peers([OWN, PEER, PEER2], healthy_kernel(PEER, PEER2), ctx(), NAMES)
    assert levels(out) == ["OK", "OK"]
    assert [f.subject for f in out] == ["10.5.50.0/24", "10.5.60.0/24"]
    assert "neighbour, FDB entry, route in place" in out[0].message


def test_peer_route_missing_and_neighbour_wrong() -> None:
    k = healthy_kernel(PEER, PEER2)
    routes = tuple(r for r in k.routes if r.dst != PEER.subnet)
    neighs = tuple(
        NeighEntry(n.ip, "02:99:99:99:99:99", n.ifindex) if n.ip == IPv4Address("10.5.60.0") else n
        for n in k.neighbours
    )
    out = evaluate_peers([OWN, PEER, PEER2], KernelView(routes, neighs, k.fdb), ctx(), NAMES)
    fails = [f for f in out if f.level == "FAIL"]
    assert [f.subject for f in fails] == ["10.5.50.0/24", "10.5.60.0/24"]
    route, neigh = fails
    assert route.message.startswith("route missing: want route 10.5.50.0/24 via 10.5.50.0")
    assert route.fix == "ip route replace 10.5.50.0/24 via 10.5.50.0 dev flannel.1 onlink"
    assert neigh.message.startswith("neighbour wrong: have neighbour 10.5.60.0 lladdr 02:99")
    assert "02:3a:a0:a1:0a:90" in neigh.message


def test_stale_entries_of_departed_peer() -> None:
    # PEER2 left etcd while its entries stayed in the kernel (flannel #2554)
    out = evaluate_peers([OWN, PEER], healthy_kernel(PEER, PEER2), ctx(), NAMES)
    stale = [f for f in out if f.check == "stale"]
    assert len(stale) == 3 and all(f.level == "FAIL" for f in stale)
    text = " | ".join(f.message for f in stale)
    assert "stale route 10.5.60.0/24" in text
    assert "stale neighbour 10.5.60.0" in text
    assert "stale FDB 02:3a:a0:a1:0a:90" in text
    fixes = {f.fix for f in stale}
    assert "ip route del 10.5.60.0/24 via 10.5.60.0 dev flannel.1" in fixes


def test_entries_not_ours_are_not_stale() -> None:
    k = healthy_kernel(PEER)
    foreign = (
        *k.routes,
        RouteEntry(IPv4Network("192.168.7.0/24"), IPv4Address("198.51.100.254"), EXT),
        RouteEntry(IPv4Network("10.5.16.0/24"), IPv4Address("10.5.16.9"), DEV, onlink=True),
    )
    out = evaluate_peers([OWN, PEER], KernelView(foreign, k.neighbours, k.fdb), ctx(), NAMES)
    assert levels(out) == ["OK"]


def test_rejected_lease_is_a_warning() -> None:
    hostile = vx_lease("10.6.0.0/24", "198.51.100.5", "02:00:00:00:00:05")
    hgw = Lease(
        IPv4Network("10.5.70.0/24"),
        LeaseAttrs(public_ip=IPv4Address("198.51.100.6"), backend_type="host-gw"),
    )
    out = evaluate_peers([OWN, PEER, hostile, hgw], healthy_kernel(PEER), ctx(), NAMES)
    warns = [f for f in out if f.level == "WARN"]
    assert {f.subject for f in warns} == {"10.6.0.0/24", "10.5.70.0/24"}
    assert all(f.message.startswith("not programmed: ") for f in warns)
    assert not [f for f in out if f.level == "FAIL"]


def test_host_gw_route_via_public_ip() -> None:
    def hgw(subnet: str, ip: str) -> Lease:
        return Lease(
            IPv4Network(subnet), LeaseAttrs(public_ip=IPv4Address(ip), backend_type="host-gw")
        )

    own, peer = hgw("10.5.16.0/24", "198.51.100.1"), hgw("10.5.50.0/24", "198.51.100.2")
    hctx = ctx(backend_type="host-gw", dev_index=EXT, ext_index=EXT, own_mac=None)
    good = KernelView((RouteEntry(IPv4Network("10.5.50.0/24"), IPv4Address("198.51.100.2"), EXT),))
    assert levels(evaluate_peers([own, peer], good, hctx, NAMES)) == ["OK"]
    (bad,) = evaluate_peers([own, peer], KernelView(), hctx, NAMES)
    assert bad.level == "FAIL"
    assert bad.fix == "ip route replace 10.5.50.0/24 via 198.51.100.2 dev eth0"
    wrong_gw = KernelView(
        (RouteEntry(IPv4Network("10.5.50.0/24"), IPv4Address("198.51.100.99"), EXT),)
    )
    (w,) = evaluate_peers([own, peer], wrong_gw, hctx, NAMES)
    assert w.message.startswith("route wrong: have route 10.5.50.0/24 via 198.51.100.99")


# --- rules and subnet.env ------------------------------------------------------------------------


def test_rules() -> None:
    (ok,) = evaluate_rules("iptables", [])
    assert ok.level == "OK"
    fails = evaluate_rules("iptables", ["iptables jump rule missing: -A POSTROUTING ...", "x"])
    assert levels(fails) == ["FAIL", "FAIL"] and fails[0].message.startswith("iptables jump")
    (warn,) = evaluate_rules("nftables", None, "required program 'nft' was not found on PATH")
    assert warn.level == "WARN" and "nft" in warn.message


def env(subnet: str = "10.5.16.1/24", network: str = "10.5.0.0/16") -> SubnetEnv:
    from ipaddress import IPv4Interface

    return SubnetEnv(IPv4Network(network), IPv4Interface(subnet), mtu=1450, ipmasq=True)


def test_subnet_env_cases() -> None:
    path = "/run/flannel/subnet.env"
    (ok,) = evaluate_subnet_env(path, env(), None, OWN, NET)
    assert ok.level == "OK"
    (missing,) = evaluate_subnet_env(path, None, None, OWN, NET)
    assert missing.level == "FAIL" and "does not exist" in missing.message
    (broken,) = evaluate_subnet_env(path, None, "subnet.env line 1: bad", OWN, NET)
    assert broken.level == "FAIL" and broken.message == "subnet.env line 1: bad"
    (nolease,) = evaluate_subnet_env(path, env(), None, None, NET)
    assert nolease.level == "FAIL" and "no lease in etcd holds it" in nolease.message
    (other,) = evaluate_subnet_env(path, env("10.5.99.1/24"), None, OWN, NET)
    assert other.level == "FAIL" and "10.5.16.0/24" in other.message
    (net,) = evaluate_subnet_env(path, env(network="10.6.0.0/16"), None, OWN, NET)
    assert net.level == "FAIL" and "FLANNEL_NETWORK=10.6.0.0/16" in net.message


# --- rendering -----------------------------------------------------------------------------------


def report(findings: list[Finding], leases: list[LeaseRow] | None = None) -> StatusReport:
    return StatusReport(
        prefix="/coreos.com/network",
        endpoints="http://198.51.100.250:2379",
        subnet_file="/run/flannel/subnet.env",
        leases=leases if leases is not None else lease_rows([OWN, PEER], OWN, now=1000.0),
        findings=findings,
        config={
            "network": "10.5.0.0/16",
            "ipv6_network": None,
            "backend": "vxlan",
            "nftables": False,
        },
        own_subnet="10.5.16.0/24",
    )


def test_render_table_healthy() -> None:
    text = report([Finding("OK", "peer", "10.5.50.0/24", "via 198.51.100.2: ok")]).render()
    lines = text.splitlines()
    assert lines[0] == (
        "leases in etcd (/coreos.com/network/subnets/ at http://198.51.100.250:2379): 2"
    )
    assert lines[1].split() == [
        "SUBNET",
        "PUBLIC",
        "IP",
        "BACKEND",
        "VTEP",
        "MAC",
        "EXPIRES",
        "IN",
        "RESERVED",
        "FAILING",
        "NODE",
    ]
    assert lines[2].split() == [
        "10.5.16.0/24",
        "198.51.100.1",
        "vxlan",
        OWN_MAC,
        "16m40s",
        "no",
        "-",
        "this",
        "node",
    ]
    assert all(line == line.rstrip() for line in lines)
    assert "this node (lease 10.5.16.0/24):" in text
    assert text.endswith("healthy\n")


def test_render_table_problems_with_fixes() -> None:
    f = Finding("FAIL", "peer", "10.5.50.0/24", "route missing", "ip route replace x")
    text = report([f, Finding("WARN", "rules", "iptables", "hmm")]).render()
    assert "FAIL  peer   10.5.50.0/24  route missing" in text
    assert "fix: ip route replace x" in text
    assert text.endswith("1 problem(s) found, 1 warning(s)\n")


def test_many_ok_peers_collapse() -> None:
    oks = [Finding("OK", "peer", f"10.5.{i}.0/24", "ok") for i in range(30)]
    lines = render_findings([Finding("OK", "device", "flannel.1", "up"), *oks])
    assert len(lines) == 2 and "30 peers" in lines[1]
    assert len(render_findings(oks, collapse_ok_peers=False)) == 30


def test_report_document_is_stable_json() -> None:
    fail = Finding("FAIL", "stale", "10.5.60.0/24", "stale route", "ip route del x")
    doc = report([fail]).document()
    assert json.loads(json.dumps(doc)) == doc
    assert list(doc) == [
        "schema",
        "healthy",
        "etcd",
        "config",
        "subnet_file",
        "own_subnet",
        "leases",
        "findings",
        "summary",
    ]
    assert doc["schema"] == SCHEMA and doc["healthy"] is False
    assert doc["etcd"] == {
        "endpoints": ["http://198.51.100.250:2379"],
        "prefix": "/coreos.com/network",
    }
    assert doc["findings"] == [
        {
            "level": "FAIL",
            "check": "stale",
            "subject": "10.5.60.0/24",
            "message": "stale route",
            "fix": "ip route del x",
        }
    ]
    assert list(doc["leases"][0]) == [
        "subnet",
        "ipv6_subnet",
        "public_ip",
        "public_ipv6",
        "backend",
        "vtep_mac",
        "expiration",
        "expires_in",
        "reservation",
        "this_node",
        "failing",
    ]
    assert doc["leases"][0]["expires_in"] == 1000 and doc["leases"][0]["this_node"] is True
    assert doc["summary"] == {"ok": 0, "warn": 0, "fail": 1}
    assert count_levels([fail, fail]) == {"ok": 0, "warn": 0, "fail": 2}


def test_failing_peers_from_the_daemon_show_in_their_own_column() -> None:
    rows = lease_rows([OWN, PEER], OWN, now=1000.0, failing={PEER.key_suffix: "ENETUNREACH"})
    assert [r.failing for r in rows if not r.this_node] == ["ENETUNREACH"]
    text = report([], leases=rows).render()
    peer_line = next(line for line in text.splitlines() if str(PEER.subnet) in line)
    assert "ENETUNREACH" in peer_line.split()
