"""Hostile and broken leases written straight into etcd under a running lab.

Anyone who can write to etcd can put a subnet key; flanneld programs whatever it reads. Each
lease below must be refused with a warning in the daemon log that names its key, leave nothing
on flannel.1 and no route outside the Network, and leave the daemon healthy with pods pinging.

Some leases are hostile to every node (a default route, a subnet outside the Network, a
broadcast VTEP MAC, link-local/reserved/in-Network/underlay-broadcast PublicIPs, a key with host
bits, garbage); two are hostile only to the node they impersonate ("we" = n1): a
lease claiming a range that contains our subnet, and one carrying our PublicIP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

import pytest

from tests.e2e.helpers import ETCD_PREFIX, NETWORK, DaemonLab, wait_for
from tests.faults.helpers import PingMesh, free_octets, healthz, log_text

pytestmark = [pytest.mark.root, pytest.mark.slow]

SUBNETS = f"{ETCD_PREFIX}/subnets"
FAKE_IP = "198.51.100.230"
GOOD_MAC = "0a:fc:00:00:00:01"


def vxlan_value(public_ip: str = FAKE_IP, mac: str = GOOD_MAC, **extra: Any) -> str:
    doc: dict[str, Any] = {
        "PublicIP": public_ip,
        "PublicIPv6": None,
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": mac},
        **extra,
    }
    return json.dumps(doc, separators=(",", ":"))


@dataclass(frozen=True)
class Hostile:
    name: str
    suffix: str  # the key below <prefix>/subnets/
    value: str

    @property
    def key(self) -> str:
        return f"{SUBNETS}/{self.suffix}"


def route_table(lab: DaemonLab, node: str) -> set[tuple[str, str | None, str]]:
    """The node's whole main routing table as (dst, gateway, dev)."""
    return {
        (r["dst"], r.get("gateway"), r.get("dev", "")) for r in lab.ip_json(node, "route", "show")
    }


def outside_network(routes: set[tuple[str, str | None, str]]) -> set[tuple[str, str | None, str]]:
    out = set()
    for dst, gw, dev in routes:
        net = IPv4Network("0.0.0.0/0" if dst == "default" else dst)
        if not net.subnet_of(NETWORK):
            out.add((dst, gw, dev))
    return out


def claim_around(ours: IPv4Network, leased: set[IPv4Network]) -> IPv4Network:
    """The longest supernet of ``ours`` whose network address is no lease's network address.

    To n1 it claims n1's subnet. To n2/n3 it is a lease that overlaps a peer (n1): they program
    it like flanneld does (see test_lease_inside_a_peers_subnet_is_refused); a shared gateway
    address would let it take over n1's neighbour entry, which that test covers.
    """
    gateways = {n.network_address for n in leased}
    for plen in range(ours.prefixlen - 1, NETWORK.prefixlen, -1):
        net = ours.supernet(new_prefix=plen)
        if net.network_address not in gateways:
            return net
    raise AssertionError(f"no supernet of {ours} inside {NETWORK} avoids {gateways}")


@pytest.fixture
def lab(vxlan_lab: DaemonLab) -> Iterator[DaemonLab]:
    yield vxlan_lab


def test_hostile_leases_are_refused_with_warnings_and_program_nothing(
    lab: DaemonLab, request: pytest.FixtureRequest
) -> None:
    n1 = lab.node("n1")
    ours = lab.lease_of(n1).subnet
    # Below the fixed hostile keys (10.5.241-252): free_octets' highest, 250, was the "PublicIP
    # in the Network" key, which this lease then overwrote.
    free = next(o for o in free_octets(lab, 20) if o < 241)
    everyone = [
        Hostile("default route", "0.0.0.0-0", vxlan_value()),
        Hostile("outside the Network", "10.99.0.0-24", vxlan_value()),
        Hostile(
            "the whole Network", f"{NETWORK.network_address}-{NETWORK.prefixlen}", vxlan_value()
        ),
        Hostile("broadcast VTEP MAC", "10.5.241.0-24", vxlan_value(mac="ff:ff:ff:ff:ff:ff")),
        Hostile("multicast VTEP MAC", "10.5.242.0-24", vxlan_value(mac="01:00:5e:00:00:01")),
        Hostile("all-zero VTEP MAC", "10.5.243.0-24", vxlan_value(mac="00:00:00:00:00:00")),
        Hostile("loopback PublicIP", "10.5.244.0-24", vxlan_value(public_ip="127.0.0.1")),
        Hostile("invalid JSON", "10.5.245.0-24", '{"PublicIP": "198.51.100.230", '),
        Hostile("JSON that is not an object", "10.5.246.0-24", "[1, 2, 3]"),
        Hostile("1 MiB value", "10.5.247.0-24", vxlan_value(Pad="x" * (1 << 20))),
        # Issue 14: these were programmed.
        Hostile("link-local PublicIP", "10.5.248.0-24", vxlan_value(public_ip="169.254.1.1")),
        Hostile("reserved PublicIP", "10.5.249.0-24", vxlan_value(public_ip="240.0.0.1")),
        Hostile("PublicIP in the Network", "10.5.250.0-24", vxlan_value(public_ip="10.5.9.9")),
        Hostile("underlay broadcast", "10.5.251.0-24", vxlan_value(public_ip="198.51.100.255")),
        Hostile("key with host bits", "10.5.252.5-24", vxlan_value()),
    ]
    claim = claim_around(ours, {rec.subnet for rec in lab.leases().values()})
    against_n1 = [
        Hostile("claims our subnet", f"{claim.network_address}-{claim.prefixlen}", vxlan_value()),
        Hostile("carries our PublicIP", f"10.5.{free}.0-24", vxlan_value(public_ip=str(n1.ip))),
    ]
    routes_before = {n.name: route_table(lab, n.name) for n in lab.nodes}
    entries_before = {n.name: lab.vxlan_entries(n) for n in lab.nodes}
    log_start = {n.name: len(log_text(lab, n)) for n in lab.nodes}

    # The lab is shared with the next test: take every hostile key away again afterwards.
    request.addfinalizer(
        lambda: [
            lab.etcd.etcdctl("del", key, check=False)
            for key in [h.key for h in (*everyone, *against_n1)] + [f"{SUBNETS}/not-a-subnet"]
        ]
    )
    with PingMesh(lab) as mesh:
        for h in [*everyone, *against_n1]:
            # stdin: a 1 MiB value is too long for one command-line argument.
            lab.etcd.etcdctl("put", h.key, input=h.value)
        # A garbage key, too (not a subnet at all).
        lab.etcd.etcdctl("put", f"{SUBNETS}/not-a-subnet", vxlan_value())

        def warned(node: str, hostiles: list[Hostile]) -> list[str]:
            log = log_text(lab, node)[log_start[node] :]
            return [h.name for h in hostiles if h.suffix not in log]

        for node in lab.nodes:
            hostiles = everyone + (against_n1 if node.name == "n1" else [])
            wait_for(
                f"{node.name} warned about every hostile lease",
                lambda n=node.name, hs=hostiles: not warned(n, hs),  # type: ignore[misc]
                timeout=5,
            )
        time.sleep(1.0)  # let anything that would be programmed get programmed
        for node in lab.nodes:
            assert lab.daemons[node.name].poll() is None, lab.log_tail(node)
            assert healthz(lab, node) == (200, b"flanneld is running")
        failures = lab.ping_failures()

    # Nothing at all changed on n1; on n2/n3 only what the lease carrying n1's PublicIP asks
    # for (to them it is an ordinary lease of n1), inside the Network.
    assert lab.vxlan_entries(n1) == entries_before["n1"]
    assert route_table(lab, "n1") == routes_before["n1"]
    claim_route = (str(claim), str(claim.network_address), True)
    for name in ("n2", "n3"):
        added = lab.vxlan_entries(name)["routes"] - entries_before[name]["routes"]
        assert added <= {(f"10.5.{free}.0/24", f"10.5.{free}.0", True), claim_route}, added
        assert outside_network(route_table(lab, name)) == outside_network(routes_before[name])
    for node in lab.nodes:
        log = log_text(lab, node)[log_start[node.name] :]
        assert "Traceback" not in log
    assert failures == [], failures
    assert mesh.stop() and mesh.lost() == {}, mesh.lost()
    print(
        f"\nhostile leases: {len(everyone)} refused by every node, {len(against_n1)} by n1; "
        f"pings {mesh.totals()[0]} sent, {mesh.totals()[1]} lost"
    )


def test_lease_inside_a_peers_subnet_is_refused(lab: DaemonLab) -> None:
    n1 = lab.node("n1")
    ours = lab.lease_of(n1).subnet
    half = next(ours.subnets(prefixlen_diff=1))  # same network address as n1's subnet
    hijack = Hostile(
        "inside n1's subnet", f"{half.network_address}-{half.prefixlen}", vxlan_value()
    )
    lab.etcd.etcdctl("put", hijack.key, hijack.value)
    try:
        time.sleep(1.0)
        failures = lab.ping_failures()
        routes = {n: lab.vxlan_entries(n)["routes"] for n in ("n2", "n3")}
    finally:
        lab.etcd.etcdctl("del", hijack.key)
    assert all(not any(r[0] == str(half) for r in rs) for rs in routes.values()), routes
    assert failures == [], failures


def test_lease_reusing_a_peers_vtep_mac_is_refused_until_the_peer_goes(lab: DaemonLab) -> None:
    """Issue 14 probe: a lease with n1's VtepMAC repointed n1's FDB entry on every peer."""
    n1 = lab.node("n1")
    victim = lab.lease_of(n1)
    mac = victim.attrs["BackendData"]["VtepMAC"]
    # Below the fixed hostile keys (10.5.241-252): free_octets' highest, 250, was the "PublicIP
    # in the Network" key, which this lease then overwrote.
    free = next(o for o in free_octets(lab, 20) if o < 241)
    thief = Hostile("reuses n1's VtepMAC", f"10.5.{free}.0-24", vxlan_value(mac=mac))
    log_start = {n.name: len(log_text(lab, n)) for n in lab.nodes}
    lab.etcd.etcdctl("put", thief.key, thief.value)
    try:
        with PingMesh(lab) as mesh:
            for name in ("n2", "n3"):
                wait_for(
                    f"{name} warned about {thief.suffix}",
                    lambda n=name: thief.suffix in log_text(lab, n)[log_start[n] :],  # type: ignore[misc]
                    timeout=5,
                )
            time.sleep(1.0)  # let anything that would be programmed get programmed
            fdb = {name: lab.vxlan_entries(name)["fdb"] for name in ("n2", "n3")}
            failures = lab.ping_failures()
        assert mesh.stop() and mesh.lost() == {}, mesh.lost()
    finally:
        lab.etcd.etcdctl("del", thief.key)
    assert failures == [], failures
    for name, entries in fdb.items():
        # The victim's FDB entry still points at its own PublicIP, and only there.
        assert {dst for m, dst, _ in entries if m == mac} == {str(n1.ip)}, (name, entries)
    for node in lab.nodes:
        log = log_text(lab, node)[log_start[node.name] :]
        assert "Traceback" not in log
        if node.name != "n1":
            assert log.count(thief.suffix) >= 1
