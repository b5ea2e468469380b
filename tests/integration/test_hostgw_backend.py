"""The host-gw backend against the real kernel, in namespaces: routes via the peers' public IPs,
pods ping across nodes, stale routes go, missing ones come back, NAT is refused."""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pyflannel.backend.hostgw import HostGwBackend, HostGwNetwork
from pyflannel.config import parse_network_config
from pyflannel.errors import ConfigError
from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs
from tests.harness.backend_nodes import Node, Nodes, ip, ip_json, make_nodes, ping

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

CFG = parse_network_config(b'{"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}}')


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    with make_nodes(2) as topo:
        yield topo


def eth0_routes(node: Node) -> dict[str, str | None]:
    """dst → gateway of the routes on eth0 that lead into the Network."""
    return {
        r["dst"]: r.get("gateway")
        for r in ip_json("-n", node.ns, "route", "show", "dev", "eth0")
        if r["dst"].startswith("10.5.")
    }


def bring_up(
    topo: Nodes, tmp_path: Path, resync_interval: float = 10.0
) -> tuple[list[HostGwNetwork], list[Lease]]:
    backends, leases = [], []
    for node in topo.nodes:
        be = HostGwBackend(resync_interval=resync_interval)
        prepared = node.run(trio.run, be.prepare, CFG, node.ext_iface(), tmp_path)
        attrs = prepared.attrs
        assert attrs == LeaseAttrs(public_ip=node.ip, backend_type="host-gw")
        backends.append((be, prepared))
        leases.append(Lease(node.subnet, attrs, expiration=time.time() + 3600, etcd_lease_id=1))
    nets = [
        node.run(trio.run, be.configure, prepared, le)
        for node, (be, prepared), le in zip(topo.nodes, backends, leases, strict=True)
    ]
    return nets, leases


def test_routes_via_public_ip_and_ping(nodes: Nodes, tmp_path: Path) -> None:
    n0, n1 = nodes.nodes
    nets, leases = bring_up(nodes, tmp_path)
    assert nets[0].mtu == 1500

    # A route of a peer that left while we were down; and a route outside the Network.
    ip("-n", n1.ns, "route", "add", "10.5.99.0/24", "via", "198.51.100.99", "dev", "eth0")
    ip("-n", n1.ns, "route", "add", "10.6.0.0/24", "via", "198.51.100.99", "dev", "eth0")

    for node, net in zip(nodes.nodes, nets, strict=True):
        node.run(trio.run, net.apply_snapshot, leases)

    assert eth0_routes(n0) == {"10.5.2.0/24": "198.51.100.12"}
    assert eth0_routes(n1) == {"10.5.1.0/24": "198.51.100.11"}
    outside = ip_json("-n", n1.ns, "route", "show", "10.6.0.0/24")
    assert outside and outside[0]["gateway"] == "198.51.100.99", "foreign route was touched"
    assert ping(n0.pod_ns, n1.pod_ip) and ping(n1.pod_ns, n0.pod_ip)

    # Peer gone: its route goes.
    n1.run(trio.run, nets[1].apply_events, [Event(EventKind.REMOVED, leases[0])])
    assert eth0_routes(n1) == {}
    assert not ping(n1.pod_ns, n0.pod_ip, count=1, timeout=0.5)
    # And back.
    n1.run(trio.run, nets[1].apply_events, [Event(EventKind.ADDED, leases[0])])
    assert eth0_routes(n1) == {"10.5.1.0/24": "198.51.100.11"}

    # A vxlan lease is not ours: ignored.
    vx = Lease(
        ipaddress.IPv4Network("10.5.7.0/24"),
        LeaseAttrs(
            public_ip=ipaddress.IPv4Address("198.51.100.17"),
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:07"},
        ),
    )
    n1.run(trio.run, nets[1].apply_events, [Event(EventKind.ADDED, vx)])
    assert eth0_routes(n1) == {"10.5.1.0/24": "198.51.100.11"}


def test_missing_route_is_restored_by_resync(nodes: Nodes, tmp_path: Path) -> None:
    n0, n1 = nodes.nodes
    nets, leases = bring_up(nodes, tmp_path, resync_interval=0.2)
    for node, net in zip(nodes.nodes, nets, strict=True):
        node.run(trio.run, net.apply_snapshot, leases)

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nets[1].run)
            ip("-n", n1.ns, "route", "del", "10.5.1.0/24")
            ip("-n", n1.ns, "route", "add", "10.5.98.0/24", "via", "198.51.100.98", "dev", "eth0")
            with trio.fail_after(10):
                while eth0_routes(n1) != {"10.5.1.0/24": "198.51.100.11"}:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()

    n1.run(trio.run, scenario)
    assert nets[1].stats.resync_repairs_total >= 1
    assert ping(n1.pod_ns, n0.pod_ip)


def test_nat_is_refused(nodes: Nodes, tmp_path: Path) -> None:
    node = nodes[0]
    be = HostGwBackend()
    with pytest.raises(ConfigError, match="NAT, which is not supported by host-gw backend"):
        node.run(trio.run, be.prepare, CFG, node.ext_iface(public_ip="203.0.113.5"), tmp_path)


def test_resync_before_first_snapshot_keeps_existing_routes(nodes: Nodes, tmp_path: Path) -> None:
    # A restarted daemon runs its repair loop before the peer list arrives: the routes of the
    # previous run must survive until the snapshot says otherwise.
    n1 = nodes[1]
    nets, _ = bring_up(nodes, tmp_path, resync_interval=0.1)
    ip("-n", n1.ns, "route", "add", "10.5.1.0/24", "via", "198.51.100.11", "dev", "eth0")

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nets[1].run)
            await trio.sleep(0.6)
            nursery.cancel_scope.cancel()

    n1.run(trio.run, scenario)
    assert eth0_routes(n1) == {"10.5.1.0/24": "198.51.100.11"}
    assert nets[1].stats.resyncs_total >= 3  # the loop did run
