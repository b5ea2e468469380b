"""The cheap checks that let periodic resyncs skip work on an idle node, against the real kernel.

- :class:`pyflannel.netlink.changes.ChangeMonitor` reports main-table route changes, link and
  address changes, and neighbour changes only on the devices asked about.
- :func:`pyflannel.trafficmngr.nftgen.ruleset_generation` moves with every iptables-nft change
  and not with a read.
- The backend's resync loop skips a reconcile while nothing changed, and still repairs a route
  deleted by hand on the very next resync.
- Planning events in place gives the same plan and state as planning on a copy.
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest
import trio

from pyflannel.backend.hostgw import HostGwBackend
from pyflannel.backend.plan import ProgrammedState, plan_events
from pyflannel.config import parse_network_config
from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs
from pyflannel.netlink.changes import ChangeMonitor
from pyflannel.netlink.nsenter import in_netns
from pyflannel.trafficmngr.nftgen import ruleset_generation
from tests.harness.backend_nodes import Nodes, ip, ip_json, make_nodes

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

CFG = parse_network_config(b'{"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}}')


def _settled(monitor: ChangeMonitor, devs: set[int]) -> bool:
    # Drain whatever setting up the namespace queued.
    time.sleep(0.05)
    return monitor.changed(devs)


def test_change_monitor_sees_what_matters(netns) -> None:  # type: ignore[no-untyped-def]
    ns = netns("a")
    ip("-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    ip("-n", ns, "link", "set", "d0", "up")
    ip("-n", ns, "link", "set", "d1", "up")
    ip("-n", ns, "addr", "add", "198.51.100.1/24", "dev", "d0")
    d0 = ip_json("-n", ns, "link", "show", "d0")[0]["ifindex"]
    with in_netns(ns):
        monitor = ChangeMonitor()
    with monitor:
        _settled(monitor, {d0})
        assert not monitor.changed({d0}), "nothing happened, nothing may be reported"

        ip("-n", ns, "route", "add", "10.5.7.0/24", "via", "198.51.100.7", "dev", "d0")
        assert _settled(monitor, {d0}), "a main-table route was added"
        assert not monitor.changed({d0}), "changed() drains: the route is reported once"

        ip("-n", ns, "neigh", "replace", "198.51.100.9", "lladdr", "02:00:00:00:00:09",
           "dev", "d1", "nud", "permanent")  # fmt: skip
        assert not _settled(monitor, {d0}), "a neighbour on another device is not ours"
        ip("-n", ns, "neigh", "replace", "198.51.100.8", "lladdr", "02:00:00:00:00:08",
           "dev", "d0", "nud", "permanent")  # fmt: skip
        assert _settled(monitor, {d0}), "a neighbour on a watched device counts"
        ip("-n", ns, "neigh", "replace", "198.51.100.10", "lladdr", "02:00:00:00:00:0a",
           "dev", "d0", "nud", "noarp")  # fmt: skip
        # (Neighbour GC deletes the kernel's own NOARP multicast entries a minute after start;
        # that delete carries NOARP too. A delete by hand goes through FAILED: it counts.)
        assert not _settled(monitor, {d0}), "NOARP entries are the kernel's, never ours"
        ip("-n", ns, "neigh", "del", "198.51.100.10", "dev", "d0")
        _settled(monitor, {d0})
        ip("-n", ns, "neigh", "del", "198.51.100.8", "dev", "d0")
        assert _settled(monitor, {d0}), "our permanent neighbour deleted behind our back counts"

        ip("-n", ns, "route", "add", "10.9.0.0/24", "dev", "d0", "table", "100")
        assert not _settled(monitor, {d0}), "routes of other tables are not ours"

        ip("-n", ns, "link", "set", "d1", "down")
        assert _settled(monitor, {d0}), "a link going down flushes routes silently: counts"


def test_ruleset_generation_moves_with_changes_only(netns) -> None:  # type: ignore[no-untyped-def]
    ns = netns("g")
    first = ruleset_generation(ns)
    assert first is not None
    ip("netns", "exec", ns, "iptables", "-t", "nat", "-N", "PFTEST")
    second = ruleset_generation(ns)
    assert second is not None and second > first
    ip("netns", "exec", ns, "iptables-save", "-t", "nat")
    assert ruleset_generation(ns) == second, "reading the rules is not a change"
    ip("netns", "exec", ns, "iptables", "-t", "nat", "-A", "PFTEST", "-j", "RETURN")
    third = ruleset_generation(ns)
    assert third is not None and third > second


@pytest.fixture
def nodes() -> Nodes:  # type: ignore[misc]
    with make_nodes(2) as topo:
        yield topo


def test_idle_resyncs_skip_and_a_deleted_route_still_comes_back(
    nodes: Nodes, tmp_path: Path
) -> None:
    n1 = nodes.nodes[1]
    nets, leases = [], []
    for node in nodes.nodes:
        be = HostGwBackend(resync_interval=0.1)
        prepared = node.run(trio.run, be.prepare, CFG, node.ext_iface(), tmp_path)
        lease = Lease(node.subnet, prepared.attrs, expiration=time.time() + 3600, etcd_lease_id=1)
        leases.append(lease)
        nets.append(node.run(trio.run, be.configure, prepared, lease))
    net = nets[1]
    n1.run(trio.run, net.apply_snapshot, leases)
    programmer = net.programmer
    full: list[str] = []
    real = programmer._reconcile_job

    def counting(sock, fam, wanted):  # type: ignore[no-untyped-def]
        full.append("x")
        return real(sock, fam, wanted)

    programmer._reconcile_job = counting

    def routes() -> dict[str, str | None]:
        return {
            r["dst"]: r.get("gateway")
            for r in ip_json("-n", n1.ns, "route", "show", "dev", "eth0")
            if r["dst"].startswith("10.5.")
        }

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            await trio.sleep(1.2)  # ~12 resyncs: the first reconciles, the rest find no change
            idle_full, idle_resyncs = len(full), net.stats.resyncs_total
            ip("-n", n1.ns, "route", "del", "10.5.1.0/24")
            with trio.fail_after(10):
                while routes() != {"10.5.1.0/24": "198.51.100.11"}:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        # The first one reconciles; fresh namespaces may still report an address or two (IPv6
        # DAD finishing), each costing one more; after that they must be skipped.
        assert idle_full >= 1
        assert idle_resyncs - idle_full >= 5, f"{idle_full} of {idle_resyncs} idle resyncs ran"

    n1.run(trio.run, scenario)
    assert net.stats.resync_repairs_total >= 1


def _lease(i: int, mac: str) -> Lease:
    attrs = LeaseAttrs(
        public_ip=ipaddress.IPv4Address(f"198.51.100.{100 + i}"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": mac},
    )
    return Lease(ipaddress.IPv4Network(f"10.5.{i}.0/24"), attrs, expiration=1e10, etcd_lease_id=1)


def test_in_place_event_planning_matches_copying() -> None:
    from pyflannel.backend.base import PlanContext

    ctx = PlanContext(
        family=4,
        backend_type="vxlan",
        network=ipaddress.IPv4Network("10.5.0.0/16"),
        own_subnet=ipaddress.IPv4Network("10.5.200.0/24"),
        own_public_ip=ipaddress.IPv4Address("198.51.100.1"),
        dev_index=5,
        ext_index=2,
        own_mac="02:00:00:00:00:01",
    )
    batches = [
        [Event(EventKind.ADDED, _lease(i, f"0a:00:00:00:00:{i:02x}")) for i in range(1, 6)],
        [Event(EventKind.ADDED, _lease(2, "0a:00:00:00:00:99"))],  # MAC moved
        [Event(EventKind.REMOVED, _lease(3, "0a:00:00:00:00:03"))],
        [Event(EventKind.ADDED, _lease(7, "0a:00:00:00:00:01"))],  # duplicate MAC of peer 1
        [Event(EventKind.REMOVED, _lease(1, "0a:00:00:00:00:01"))],
    ]
    copied = in_place = ProgrammedState()
    for batch in batches:
        before = dict(copied.peers)
        a = plan_events(batch, copied, ctx)
        assert dict(copied.peers) == before, "the default must not touch the given state"
        b = plan_events(batch, in_place, ctx, in_place=True)
        assert a.ops == b.ops and a.rejected == b.rejected
        assert dict(a.state.peers) == dict(b.state.peers)
        assert a.state.programmed_entries() == b.state.programmed_entries()
        copied, in_place = a.state, b.state
