"""The vxlan backend against the real kernel, in namespaces: pods ping across nodes, stale
entries go while live ones stay untouched, a deleted device comes back with the same MAC and
every peer, the MAC survives restarts."""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from pyflannel.backend.mac_store import mac_path
from pyflannel.backend.vxlan import VxlanBackend, VxlanNetwork
from pyflannel.config import NetworkConfig, parse_network_config
from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs
from pyflannel.netlink.nlsocket import NetlinkSocket, iter_messages, parse_attrs
from tests.harness.backend_nodes import (
    Node,
    Nodes,
    bridge,
    bridge_json,
    ip,
    ip_json,
    make_nodes,
    ping,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

CFG = parse_network_config(b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}')
DEV = "flannel.1"
STALE_MAC = "0a:99:99:99:99:99"

_RTMGRP_NEIGH = 0x4
_RTMGRP_IPV4_ROUTE = 0x40


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    with make_nodes(2) as topo:
        yield topo


def prepare(
    node: Node, state_dir: Path, cfg: NetworkConfig = CFG, **kw: object
) -> tuple[VxlanBackend, LeaseAttrs]:
    be = VxlanBackend(**kw)  # type: ignore[arg-type]
    prepared = node.run(trio.run, be.prepare, cfg, node.ext_iface(), state_dir)
    return be, prepared.attrs


def lease_of(node: Node, attrs: LeaseAttrs) -> Lease:
    return Lease(
        subnet=node.subnet,
        ipv6_subnet=node.subnet6 if attrs.backend_v6_data is not None else None,
        attrs=attrs,
        expiration=time.time() + 3600,
        etcd_lease_id=1,
    )


def bring_up(
    topo: Nodes, tmp_path: Path, cfg: NetworkConfig = CFG, **kw: object
) -> tuple[list[VxlanBackend], list[VxlanNetwork], list[Lease]]:
    backends, leases = [], []
    for node in topo.nodes:
        be, attrs = prepare(node, tmp_path / node.ns, cfg, **kw)
        backends.append(be)
        leases.append(lease_of(node, attrs))
    nets = [
        node.run(trio.run, be.configure, be.prepared, le)
        for node, be, le in zip(topo.nodes, backends, leases, strict=True)
    ]
    return backends, nets, leases


def snapshot(node: Node, net: VxlanNetwork, leases: list[Lease]) -> None:
    node.run(trio.run, net.apply_snapshot, leases)


def routes(node: Node, dev: str = DEV) -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in ip_json("-n", node.ns, "route", "show", "dev", dev)}


def neighs(node: Node) -> dict[str, str]:
    return {n["dst"]: n["lladdr"] for n in ip_json("-n", node.ns, "neigh", "show", "dev", DEV)}


def fdb(node: Node) -> dict[str, str]:
    return {
        f["mac"]: f["dst"]
        for f in bridge_json("-n", node.ns, "fdb", "show", "dev", DEV)
        if "dst" in f
    }


def link(node: Node, dev: str = DEV) -> dict[str, Any]:
    info: dict[str, Any] = ip_json("-n", node.ns, "-d", "link", "show", dev)[0]
    return info


def mac_of(attrs: LeaseAttrs) -> str:
    return str(attrs.backend_data["VtepMAC"])


def drain(sock: NetlinkSocket) -> list[tuple[str, str, str]]:
    """(kind, new|del, key) of every route/neigh/fdb notification queued on ``sock``."""
    out = []
    while (buf := sock.recv_nowait()) is not None:
        for mtype, _f, _s, start, end in iter_messages(buf):
            family = buf[start]
            attrs = parse_attrs(buf, start + 12, end)
            if mtype in (24, 25):
                raw = attrs.get(1, b"")
                dst = ipaddress.IPv4Network(
                    (int.from_bytes(raw, "big") if raw else 0, buf[start + 1])
                )
                out.append(("route", "new" if mtype == 24 else "del", str(dst)))
            elif mtype in (28, 29):
                verb = "new" if mtype == 28 else "del"
                if family == 7:  # AF_BRIDGE: FDB
                    out.append(("fdb", verb, ":".join(f"{b:02x}" for b in attrs.get(2, b""))))
                elif 1 in attrs and len(attrs[1]) == 4:
                    out.append(("neigh", verb, str(ipaddress.IPv4Address(attrs[1]))))
    return out


def test_two_nodes_ping_and_stale_entries_removed_live_untouched(
    nodes: Nodes, tmp_path: Path
) -> None:
    n0, n1 = nodes.nodes
    backends, nets, leases = bring_up(nodes, tmp_path)
    mac0, mac1 = mac_of(leases[0].attrs), mac_of(leases[1].attrs)

    # Device as flanneld makes it: VNI 1, local = public IP, MTU 1500-50, own /32, up, our MAC.
    dev1 = link(n1)
    assert dev1["address"] == mac1 and dev1["mtu"] == 1450 and "UP" in dev1["flags"]
    info = dev1["linkinfo"]["info_data"]
    assert info["id"] == 1 and info["local"] == "198.51.100.12"
    addrs = ip_json("-n", n1.ns, "-4", "addr", "show", "dev", DEV)[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.5.2.0", 32)]
    assert nets[1].mtu == 1450
    assert leases[1].attrs.backend_data == {"VNI": 1, "VtepMAC": mac1}
    assert leases[1].attrs.public_ip == n1.ip and leases[1].attrs.backend_type == "vxlan"

    # Node 1 already holds node 0's correct entries (from a previous run) and the entries of a
    # peer that left while it was down.
    ns = n1.ns
    ip("-n", ns, "neigh", "replace", "10.5.1.0", "lladdr", mac0, "dev", DEV, "nud", "permanent")
    ip(
        "-n",
        ns,
        "neigh",
        "replace",
        "10.5.99.0",
        "lladdr",
        STALE_MAC,
        "dev",
        DEV,
        "nud",
        "permanent",
    )
    for mac, dst in ((mac0, "198.51.100.11"), (STALE_MAC, "198.51.100.99")):
        bridge("-n", ns, "fdb", "replace", mac, "dev", DEV, "dst", dst, "self", "permanent")
    ip("-n", ns, "route", "replace", "10.5.1.0/24", "via", "10.5.1.0", "dev", DEV, "onlink")
    ip("-n", ns, "route", "replace", "10.5.99.0/24", "via", "10.5.99.0", "dev", DEV, "onlink")
    assert set(routes(n1)) == {"10.5.1.0/24", "10.5.99.0/24"}

    listener = n1.run(
        lambda: NetlinkSocket(groups=_RTMGRP_NEIGH | _RTMGRP_IPV4_ROUTE, timeout=None)
    )
    try:
        snapshot(n0, nets[0], leases)
        snapshot(n1, nets[1], leases)
        seen = drain(listener)
    finally:
        listener.close()

    assert ("route", "del", "10.5.99.0/24") in seen
    assert ("neigh", "del", "10.5.99.0") in seen
    assert ("fdb", "del", STALE_MAC) in seen
    # The live peer's entries were not rewritten.
    assert not [e for e in seen if e[2] in ("10.5.1.0/24", "10.5.1.0", mac0)], seen

    assert set(routes(n1)) == {"10.5.1.0/24"}
    r = routes(n1)["10.5.1.0/24"]
    assert r["gateway"] == "10.5.1.0" and "onlink" in r["flags"]
    assert neighs(n1) == {"10.5.1.0": mac0}
    assert fdb(n1) == {mac0: "198.51.100.11"}
    assert neighs(n0) == {"10.5.2.0": mac1}
    assert fdb(n0) == {mac1: "198.51.100.12"}

    assert ping(n0.pod_ns, n1.pod_ip), "pod 0 cannot reach pod 1 through vxlan"
    assert ping(n1.pod_ns, n0.pod_ip)

    # Watch events: a peer comes, then goes.
    extra = Lease(
        subnet=ipaddress.IPv4Network("10.5.3.0/24"),
        attrs=LeaseAttrs(
            public_ip=ipaddress.IPv4Address("198.51.100.13"),
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": "0a:33:33:33:33:33"},
        ),
    )
    n1.run(trio.run, nets[1].apply_events, [Event(EventKind.ADDED, extra)])
    assert set(routes(n1)) == {"10.5.1.0/24", "10.5.3.0/24"}
    assert fdb(n1)["0a:33:33:33:33:33"] == "198.51.100.13"
    gone = Lease(subnet=extra.subnet, attrs=LeaseAttrs())  # attr-less, as the watcher may send
    n1.run(trio.run, nets[1].apply_events, [Event(EventKind.REMOVED, gone)])
    assert set(routes(n1)) == {"10.5.1.0/24"}
    assert "0a:33:33:33:33:33" not in fdb(n1) and "10.5.3.0" not in neighs(n1)

    # A hostile lease changes nothing.
    hostile = Lease(
        subnet=ipaddress.IPv4Network("10.5.0.0/16"),
        attrs=LeaseAttrs(
            public_ip=ipaddress.IPv4Address("198.51.100.66"),
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": "0a:66:66:66:66:66"},
        ),
    )
    n1.run(trio.run, nets[1].apply_events, [Event(EventKind.ADDED, hostile)])
    assert set(routes(n1)) == {"10.5.1.0/24"}
    assert backends[1].stats.leases_rejected_total == 1
    assert ping(n1.pod_ns, n0.pod_ip)


@pytest.mark.parametrize("first", ["snapshot", "events"])
def test_deleted_device_comes_back_with_same_mac_and_peers(
    nodes: Nodes, tmp_path: Path, first: str
) -> None:
    n0, n1 = nodes.nodes
    backends, nets, leases = bring_up(nodes, tmp_path, resync_interval=3600.0)
    for node, net in zip(nodes.nodes, nets, strict=True):
        if first == "snapshot":
            snapshot(node, net, leases)
        else:  # peers known from watch events only: re-creation must replay them
            added = [Event(EventKind.ADDED, le) for le in leases]
            node.run(trio.run, net.apply_events, added)
    assert ping(n0.pod_ns, n1.pod_ip)
    mac1 = mac_of(leases[1].attrs)
    old_index = link(n1)["ifindex"]

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nets[1].run)
            await trio.sleep(0.2)
            ip("-n", n1.ns, "link", "del", DEV)
            with trio.fail_after(15):
                while True:
                    await trio.sleep(0.1)
                    if ip(
                        "-n", n1.ns, "link", "show", DEV, check=False
                    ).returncode == 0 and "10.5.1.0/24" in routes(n1):
                        break
            nursery.cancel_scope.cancel()

    n1.run(trio.run, scenario)
    dev = link(n1)
    assert dev["ifindex"] != old_index
    assert dev["address"] == mac1, "re-created device must keep the VTEP MAC peers know"
    assert "UP" in dev["flags"] and dev["mtu"] == 1450
    addrs = ip_json("-n", n1.ns, "-4", "addr", "show", "dev", DEV)[0]["addr_info"]
    assert [a["local"] for a in addrs] == ["10.5.2.0"]
    assert neighs(n1) == {"10.5.1.0": mac_of(leases[0].attrs)}
    assert fdb(n1) == {mac_of(leases[0].attrs): "198.51.100.11"}
    assert backends[1].stats.device_recreations_total == 1
    assert ping(n0.pod_ns, n1.pod_ip), "peers were not re-programmed after re-creation"
    assert ping(n1.pod_ns, n0.pod_ip)


def test_vtep_mac_survives_restart_and_recreation(nodes: Nodes, tmp_path: Path) -> None:
    n0 = nodes[0]
    state = tmp_path / "run-flannel"
    _, attrs = prepare(n0, state)
    mac = mac_of(attrs)
    assert mac_path(state, 1).read_text().strip() == mac
    assert link(n0)["address"] == mac

    # Restart: new backend object, device still there -> reused.
    index = link(n0)["ifindex"]
    _, attrs2 = prepare(n0, state)
    assert mac_of(attrs2) == mac and link(n0)["ifindex"] == index

    # Device deleted while we were down (flannel #1795): re-created with the stored MAC.
    ip("-n", n0.ns, "link", "del", DEV)
    _, attrs3 = prepare(n0, state)
    assert mac_of(attrs3) == mac and link(n0)["address"] == mac

    # A compatible device with another MAC (re-created behind our back): replaced, MAC kept.
    ip("-n", n0.ns, "link", "del", DEV)
    vx = ["type", "vxlan", "id", "1", "dev", "eth0", "local", str(n0.ip)]
    ip("-n", n0.ns, "link", "add", DEV, "address", "0a:12:34:56:78:9a", *vx)
    _, attrs4 = prepare(n0, state)
    assert mac_of(attrs4) == mac and link(n0)["address"] == mac

    # An incompatible device (GBP on): deleted and re-created with our MAC.
    ip("-n", n0.ns, "link", "del", DEV)
    ip("-n", n0.ns, "link", "add", DEV, "address", "0a:12:34:56:78:9b", *vx, "gbp")
    _, attrs5 = prepare(n0, state)
    dev = link(n0)
    assert mac_of(attrs5) == mac and dev["address"] == mac
    assert "gbp" not in dev["linkinfo"]["info_data"]

    # No state file, but a compatible device exists: its MAC is adopted and stored.
    mac_path(state, 1).unlink()
    _, attrs6 = prepare(n0, state)
    assert mac_of(attrs6) == mac and mac_path(state, 1).read_text().strip() == mac

    # Nothing at all but the previous lease's MAC (a reboot): that one is used.
    ip("-n", n0.ns, "link", "del", DEV)
    mac_path(state, 1).unlink()
    _, attrs7 = prepare(n0, state, mac_hint=mac)
    assert mac_of(attrs7) == mac and link(n0)["address"] == mac


def test_direct_routing_uses_underlay_route(nodes: Nodes, tmp_path: Path) -> None:
    cfg = parse_network_config(
        b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}'
    )
    n0, n1 = nodes.nodes
    _, nets, leases = bring_up(nodes, tmp_path, cfg)
    for node, net in zip(nodes.nodes, nets, strict=True):
        snapshot(node, net, leases)
    r = routes(n1, "eth0")["10.5.1.0/24"]
    assert r["gateway"] == "198.51.100.11"
    assert "10.5.1.0/24" not in routes(n1)
    assert neighs(n1) == {} and fdb(n1) == {}
    assert ping(n0.pod_ns, n1.pod_ip) and ping(n1.pod_ns, n0.pod_ip)


def test_dual_stack(tmp_path: Path) -> None:
    cfg = parse_network_config(
        b'{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:5::/56",'
        b' "Backend": {"Type": "vxlan"}}'
    )
    with make_nodes(2, ipv6=True) as topo:
        n0, n1 = topo.nodes
        _, nets, leases = bring_up(topo, tmp_path, cfg)
        attrs = leases[1].attrs
        assert attrs.public_ipv6 == n1.ip6
        assert attrs.backend_v6_data["VtepMAC"] != attrs.backend_data["VtepMAC"]
        for node, net in zip(topo.nodes, nets, strict=True):
            snapshot(node, net, leases)
        v6dev = "flannel-v6.1"
        r6 = ip_json("-n", n1.ns, "-6", "route", "show", "dev", v6dev)
        assert {r["dst"]: r.get("gateway") for r in r6 if "gateway" in r} == {
            "2001:db8:5:1::/64": "2001:db8:5:1::"
        }
        addrs = ip_json("-n", n1.ns, "-6", "addr", "show", "dev", v6dev, "scope", "global")
        got = [(a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"] if "local" in a]
        assert got == [("2001:db8:5:2::", 128)]
        assert link(n1, v6dev)["mtu"] == 1430 and nets[1].mtu == 1430
        fdb6 = bridge_json("-n", n1.ns, "fdb", "show", "dev", v6dev)
        assert {f["mac"]: f["dst"] for f in fdb6 if "dst" in f} == {
            leases[0].attrs.backend_v6_data["VtepMAC"]: "2001:db8::11"
        }
        assert ping(n0.pod_ns, n1.pod_ip6) and ping(n1.pod_ns, n0.pod_ip6)
        assert ping(n0.pod_ns, n1.pod_ip)


def test_device_check_restores_a_removed_address(nodes: Nodes, tmp_path: Path) -> None:
    """Issue 19: the device check (link events, and every 10 s) also puts back our /32."""
    n0 = nodes.nodes[0]
    _, nets, _ = bring_up(nodes, tmp_path, resync_interval=3600.0)
    ip("-n", n0.ns, "addr", "del", "10.5.1.0/32", "dev", DEV)
    assert ip_json("-n", n0.ns, "-4", "addr", "show", "dev", DEV) == []
    n0.run(trio.run, nets[0].check_devices)
    addrs = ip_json("-n", n0.ns, "-4", "addr", "show", "dev", DEV)[0]["addr_info"]
    assert [a["local"] for a in addrs] == ["10.5.1.0"]
