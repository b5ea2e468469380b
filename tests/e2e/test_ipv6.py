"""End to end, IPv6: dual-stack and IPv6-only networks through ``python -m pyflannel`` on three
lab nodes with an IPv6 underlay (2001:db8::/64, inside the lab's namespaces only), pods attached
through the real CNI chain.

What a flanneld user would check (flannel-spec §2-§8):

- dual-stack pods reach each other over both families, with vxlan (``flannel.1`` and
  ``flannel-v6.1``, each with its own stable VTEP MAC) and with host-gw;
- leases use the ``<v4>-<len>&<v6>-<len>`` key and the value carries ``PublicIPv6`` and
  ``BackendV6Data``, byte for byte as flanneld writes them; IPv6-only keys start ``0.0.0.0-0&``;
- per-peer IPv6 neighbour, FDB and onlink route entries (vxlan), or routes via the peer's
  ``PublicIPv6`` (host-gw);
- ip6tables masquerade rules with ``ff00::/8`` and the IPv6 forward rules;
- subnet.env ``FLANNEL_IPV6_NETWORK``/``FLANNEL_IPV6_SUBNET``; the CNI delegate config with a range
  and a route per family;
- a peer written straight into etcd in flanneld's exact format is programmed and removed;
- an IPv6-only network with ``IPv6SubnetLen``/``IPv6SubnetMin``/``IPv6SubnetMax`` and
  ``--public-ipv6``; ``pyflannel lab --stack dual``.

One lab per class (class-scoped fixtures, so at most one lab of this module is up at a time); tests
only read their lab except where they say otherwise (and then restore what they changed). Only
DirectRouting and the lab command get a small lab of their own.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
)
from pathlib import Path
from typing import Any

import pytest

from pyflannel.lab.cni import cni_add
from pyflannel.lab.command import down as lab_down
from pyflannel.lab.command import settle_ipv6
from pyflannel.lab.netns import ping, run_in
from pyflannel.lab.topology import LabNode, NodeRef
from tests.e2e.helpers import ETCD_PREFIX, MASQ_COMMENT, DaemonLab, wait_for
from tests.harness.fixtures import require_root
from tests.harness.lab import new_prefix, start_lab

pytestmark = pytest.mark.root

NETWORK4 = IPv4Network("10.5.0.0/16")
NETWORK6 = IPv6Network("fd00:10:5::/48")
# The IPv6-only lab: 16 /64s, fd00:10:6:10:: .. fd00:10:6:1f::.
V6_ONLY_NETWORK = IPv6Network("fd00:10:6::/56")
V6_ONLY_MIN = IPv6Address("fd00:10:6:10::")
V6_ONLY_MAX = IPv6Address("fd00:10:6:1f::")

DUAL_CONFIG = {
    "Network": str(NETWORK4),
    "EnableIPv6": True,
    "IPv6Network": str(NETWORK6),
}
V6_ONLY_CONFIG = {
    "EnableIPv4": False,
    "EnableIPv6": True,
    "IPv6Network": str(V6_ONLY_NETWORK),
    "IPv6SubnetLen": 64,
    "IPv6SubnetMin": str(V6_ONLY_MIN),
    "IPv6SubnetMax": str(V6_ONLY_MAX),
}
VXLAN_MTU_V4 = 1450  # underlay 1500 - 50
VXLAN_MTU_V6 = 1430  # underlay 1500 - 70: an IPv6 outer header is 20 bytes longer
FWD_COMMENT = '-m comment --comment "flanneld forward"'
# flanneld's lease key regex (pkg/subnet/subnet.go), with the dots escaped.
KEY_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

IPAddr = IPv4Address | IPv6Address
Entries = dict[str, set[tuple[Any, ...]]]


# ------------------------------------------------------------------------------------------------
# The lab


@dataclass(frozen=True)
class StackPod:
    """A pod attached through the CNI chain, with every address it got (IPv4 first)."""

    node: str
    ns: str
    ips: tuple[IPAddr, ...]
    container_id: str
    result: Any

    def ip(self, family: int) -> IPAddr:
        (addr,) = [a for a in self.ips if a.version == family]
        return addr


@dataclass(frozen=True)
class StackLease:
    """One subnet key in etcd, value kept byte for byte."""

    key: str
    subnet: IPv4Network | None
    subnet6: IPv6Network | None
    value: bytes
    etcd_lease: int

    @property
    def attrs(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.value)
        return parsed


@dataclass
class StackLab(DaemonLab):
    """A DaemonLab whose network may be dual-stack or IPv6-only."""

    families: tuple[int, ...] = (4,)
    networks: dict[int, IPv4Network | IPv6Network] = field(default_factory=dict)
    direct_routing: bool = False  # vxlan "DirectRouting": peers routed like host-gw
    node_flags: Callable[[LabNode], list[str]] | None = None
    stack_pods: dict[str, StackPod] = field(default_factory=dict)

    def start_daemon(self, ref: NodeRef) -> subprocess.Popen[bytes]:
        node = self.node(ref)
        extra = self.node_flags(node) if self.node_flags else []
        proc = self.topo.spawn_in_node(node, [*self.daemon_argv(), *extra], self.log_path(node))
        self.daemons[node.name] = proc
        return proc

    # -- etcd -----------------------------------------------------------------------------------

    def stack_leases(self) -> list[StackLease]:
        out = self.etcd.etcdctl("get", "--prefix", f"{ETCD_PREFIX}/subnets", "-w", "json").stdout
        leases = []
        for kv in json.loads(out).get("kvs", []):
            key = base64.b64decode(kv["key"]).decode()
            m = KEY_RE.search(key)
            assert m, f"unparsable subnet key {key!r}"
            v4 = IPv4Network(f"{m.group(1)}/{m.group(2)}")
            v6 = IPv6Network(f"{m.group(3)}/{m.group(4)}") if m.group(3) else None
            leases.append(
                StackLease(
                    key,
                    None if v4.prefixlen == 0 else v4,
                    v6,
                    base64.b64decode(kv["value"]),
                    int(kv.get("lease", 0)),
                )
            )
        return leases

    def lease_for(self, ref: NodeRef) -> StackLease:
        """The lease whose PublicIPv6 is the node's IPv6 underlay address."""
        ip6 = str(self.node(ref).ip6)
        mine = [r for r in self.stack_leases() if r.attrs.get("PublicIPv6") == ip6]
        assert len(mine) == 1, f"expected one lease for {ip6}, found {mine}"
        return mine[0]

    # -- kernel state ---------------------------------------------------------------------------

    def vxlan_state(self, ref: NodeRef, family: int) -> Entries:
        """Routes, neighbours and FDB entries flannel put on the family's vxlan device."""
        ns = self.node(ref).ns
        dev = "flannel.1" if family == 4 else "flannel-v6.1"
        routes = self.ip_json(ns, f"-{family}", "route", "show", "dev", dev)
        neigh = self.ip_json(ns, f"-{family}", "neigh", "show", "dev", dev)
        fdb_out = run_in(ns, ["bridge", "-j", "fdb", "show", "dev", dev]).stdout.strip()
        fdb: list[dict[str, Any]] = json.loads(fdb_out) if fdb_out else []
        return {
            "routes": {
                (r["dst"], r.get("gateway"), "onlink" in r.get("flags", []))
                for r in routes
                if r.get("protocol") != "kernel"  # the device's own address and fe80::/64
            },
            "neigh": {
                (n["dst"], n.get("lladdr"), tuple(n.get("state", [])))
                for n in neigh
                if not n["dst"].startswith("fe80:")
            },
            "fdb": {
                (f["mac"], f["dst"], f.get("state"))
                for f in fdb
                if "dst" in f and "self" in f.get("flags", [])
            },
        }

    def expected_vxlan_state(self, ref: NodeRef, family: int) -> Entries:
        """flanneld's entries for every other lease of the family (flannel-spec §6)."""
        me = self.node(ref)
        want: Entries = {"routes": set(), "neigh": set(), "fdb": set()}
        for rec in self.stack_leases():
            attrs = rec.attrs
            if attrs["PublicIPv6"] == str(me.ip6):
                continue
            subnet = rec.subnet if family == 4 else rec.subnet6
            if subnet is None:
                continue
            data = attrs["BackendData" if family == 4 else "BackendV6Data"]
            public = attrs["PublicIP" if family == 4 else "PublicIPv6"]
            gw = str(subnet.network_address)
            want["routes"].add((str(subnet), gw, True))
            want["neigh"].add((gw, data["VtepMAC"], ("PERMANENT",)))
            want["fdb"].add((data["VtepMAC"], public, "permanent"))
        return want

    def hostgw_state(self, ref: NodeRef, family: int) -> set[tuple[str, str | None, str, bool]]:
        """Routes into the flannel network of the family: (dst, gateway, dev, onlink)."""
        network = self.networks[family]
        return {
            (r["dst"], r.get("gateway"), r.get("dev", ""), "onlink" in r.get("flags", []))
            for r in self.ip_json(ref, f"-{family}", "route", "show")
            if r["dst"] != "default" and _inside(r["dst"], network)
        }

    def expected_hostgw_state(
        self, ref: NodeRef, family: int
    ) -> set[tuple[str, str | None, str, bool]]:
        """Each peer subnet via the peer's public address on eth0; ours on cni0 (connected)."""
        me = self.node(ref)
        want: set[tuple[str, str | None, str, bool]] = set()
        for rec in self.stack_leases():
            subnet = rec.subnet if family == 4 else rec.subnet6
            assert subnet is not None
            if rec.attrs["PublicIPv6"] == str(me.ip6):
                if me.name in self.stack_pods:
                    want.add((str(subnet), None, "cni0", False))
                continue
            public = rec.attrs["PublicIP" if family == 4 else "PublicIPv6"]
            want.add((str(subnet), public, "eth0", False))
        return want

    def converged(self, ref: NodeRef, family: int) -> bool:
        """Whether the node's kernel holds exactly flannel's entries for every peer lease."""
        if self.backend == "vxlan" and not self.direct_routing:
            return self.vxlan_state(ref, family) == self.expected_vxlan_state(ref, family)
        return self.hostgw_state(ref, family) == self.expected_hostgw_state(ref, family)

    def wait_stack_converged(self, timeout: float = 15.0) -> None:
        for node in self.nodes:
            for family in self.families:
                wait_for(
                    f"{node.name} programmed its IPv{family} peers",
                    functools.partial(self.converged, node, family),
                    timeout,
                )

    def save_rules(self, ref: NodeRef, family: int, table: str) -> list[str]:
        """``ip(6)tables-save -t TABLE`` inside the node: its ``-A`` lines."""
        tool = "iptables-save" if family == 4 else "ip6tables-save"
        out = run_in(self.node(ref).ns, [tool, "-t", table]).stdout
        return [line for line in out.splitlines() if line.startswith("-A ")]

    # -- pods -----------------------------------------------------------------------------------

    def add_stack_pod(self, ref: NodeRef, name: str = "pod1") -> StackPod:
        node = self.node(ref)
        ns = self.topo.add_pod_ns(node, name)
        cid = f"{self.topo.prefix}-{node.name}-{name}"
        result = cni_add(self.topo, node, ns, cid, self.cni_path)
        ips = tuple(ip_address(entry["address"].split("/")[0]) for entry in result["ips"])
        pod = StackPod(node.name, ns, ips, cid, result)
        self.stack_pods[node.name] = pod
        return pod

    def settle(self) -> None:
        """Wait out duplicate address detection of the pods' and bridges' IPv6 addresses."""
        pending = settle_ipv6([n.ns for n in self.nodes] + [p.ns for p in self.stack_pods.values()])
        assert pending == [], f"IPv6 addresses stuck in DAD: {pending}"

    def ping_failures_stack(self, family: int) -> list[str]:
        """Every pod pings every pod on another node over ``family``; the pairs that failed."""
        failed = []
        for a, b in itertools.permutations(self.stack_pods.values(), 2):
            ok, _ = ping(a.ns, b.ip(family), count=1, timeout=3.0)
            if not ok:
                failed.append(f"{a.node}/{a.ip(family)} -> {b.node}/{b.ip(family)}")
        return failed


def _inside(dst: str, network: IPv4Network | IPv6Network) -> bool:
    """Whether the route destination ``dst`` (a prefix, not a host) lies inside ``network``."""
    if "/" not in dst:
        return False
    if isinstance(network, IPv4Network):
        return ":" not in dst and IPv4Network(dst).subnet_of(network)
    return ":" in dst and IPv6Network(dst).subnet_of(network)


@contextlib.contextmanager
def stack_lab(
    state_root: Path,
    *,
    backend: str,
    config: dict[str, Any],
    backend_options: dict[str, Any] | None = None,
    node_flags: Callable[[LabNode], list[str]] | None = None,
    nodes: int = 3,
) -> Iterator[StackLab]:
    """``nodes`` nodes on a dual-stack underlay, ``config`` (+ Backend) in etcd, a daemon per
    node (``--ip-masq``), converged, one CNI pod per node, IPv6 DAD settled. Torn down after."""
    from cni_plugin.install import install

    networks: dict[int, IPv4Network | IPv6Network] = {}
    if config.get("EnableIPv4", True):
        networks[4] = IPv4Network(config["Network"])
    if config.get("EnableIPv6", False):
        networks[6] = IPv6Network(config["IPv6Network"])
    backend_config = {"Type": backend, **(backend_options or {})}
    with start_lab(nodes, ipv6=True, state_root=state_root) as env:
        cni_bin = state_root / "cni-bin"
        install(cni_bin)
        lab = StackLab(
            env,
            backend,
            (),
            f"{cni_bin}:/usr/lib/cni",
            families=tuple(networks),
            networks=networks,
            direct_routing=bool(backend_config.get("DirectRouting")),
            node_flags=node_flags,
        )
        lab.etcd.put(f"{ETCD_PREFIX}/config", json.dumps({**config, "Backend": backend_config}))
        for node in lab.nodes:
            lab.start_daemon(node)
        for node in lab.nodes:
            lab.wait_ready(node)
        lab.wait_stack_converged()
        for node in lab.nodes:
            lab.add_stack_pod(node)
        lab.settle()
        yield lab


def masq_rules(network: IPv4Network | IPv6Network, subnet: IPv4Network | IPv6Network) -> list[str]:
    """flanneld's --ip-masq rule set, in order, as ip(6)tables-save prints it (§8)."""
    n, p, c = network, subnet, MASQ_COMMENT
    multicast = "224.0.0.0/4" if network.version == 4 else "ff00::/8"
    return [
        f"-A POSTROUTING {c} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {p} -d {n} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {n} -d {p} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {n} -d {p} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {n} ! -d {multicast} {c} -j MASQUERADE --random-fully",
        f"-A FLANNEL-POSTRTG ! -s {n} -d {n} {c} -j MASQUERADE --random-fully",
    ]


def forward_rules(network: IPv4Network | IPv6Network) -> list[str]:
    return [
        f"-A FORWARD {FWD_COMMENT} -j FLANNEL-FWD",
        f"-A FLANNEL-FWD -s {network} {FWD_COMMENT} -j ACCEPT",
        f"-A FLANNEL-FWD -d {network} {FWD_COMMENT} -j ACCEPT",
    ]


def flannel_rules(rules: list[str], chain: str) -> list[str]:
    return [r for r in rules if r.startswith(f"-A {chain}") or f"-j {chain}" in r]


def delegate_config(lab: StackLab, pod: StackPod) -> bytes:
    """The delegate config the flannel plugin saved for DEL
    (``<dataDir>/<network>:<container id>:<ifname>``, after its marker line)."""
    (path,) = (lab.node(pod.node).cni_dir / "flannel").glob(f"*:{pod.container_id}:*")
    marker, _, config = path.read_bytes().partition(b"\n")
    assert marker.startswith(b"pyflannel-cni-state/1 "), marker
    return config


def go_json(value: Any) -> bytes:
    """Go's json.Marshal of a map: compact, keys sorted."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def is_local_unicast_mac(mac: str) -> bool:
    return bool(MAC_RE.fullmatch(mac)) and int(mac[:2], 16) & 0b11 == 0b10


# ------------------------------------------------------------------------------------------------
# Dual stack, vxlan


@pytest.fixture(scope="class")
def dual_vxlan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackLab]:
    require_root()
    root = Path(tmp_path_factory.mktemp("dual-vxlan"))
    with stack_lab(root, backend="vxlan", config=DUAL_CONFIG) as lab:
        yield lab


class TestDualStackVxlan:
    """One dual-stack vxlan lab for the class (torn down after its last test)."""

    def test_dual_vxlan_pods_ping_over_both_families(self, dual_vxlan: StackLab) -> None:
        assert len(dual_vxlan.stack_pods) == 3
        for pod in dual_vxlan.stack_pods.values():
            assert [a.version for a in pod.ips] == [4, 6]
        assert dual_vxlan.ping_failures_stack(4) == []
        assert dual_vxlan.ping_failures_stack(6) == []

    def test_dual_vxlan_leases_are_flanneld_dual_stack_records(self, dual_vxlan: StackLab) -> None:
        leases = dual_vxlan.stack_leases()
        assert len(leases) == 3
        assert len({r.subnet for r in leases}) == len({r.subnet6 for r in leases}) == 3
        for node in dual_vxlan.nodes:
            rec = dual_vxlan.lease_for(node)
            assert rec.subnet is not None and rec.subnet6 is not None
            assert rec.subnet.prefixlen == 24 and rec.subnet.subnet_of(NETWORK4)
            assert rec.subnet6.prefixlen == 64 and rec.subnet6.subnet_of(NETWORK6)
            assert rec.subnet6.network_address != NETWORK6.network_address  # never the first /64
            assert rec.key == (
                f"{ETCD_PREFIX}/subnets/{rec.subnet.network_address}-24"
                f"&{rec.subnet6.network_address.compressed}-64"
            )
            link4, link6 = dual_vxlan.link(node, "flannel.1"), dual_vxlan.link(node, "flannel-v6.1")
            assert link4 is not None and link6 is not None
            mac4, mac6 = link4["address"], link6["address"]
            assert is_local_unicast_mac(mac4) and is_local_unicast_mac(mac6)
            assert mac4 != mac6, "each vxlan device has its own VTEP MAC"
            assert (
                rec.value
                == (
                    f'{{"PublicIP":"{node.ip}","PublicIPv6":"{node.ip6}","BackendType":"vxlan",'
                    f'"BackendData":{{"VNI":1,"VtepMAC":"{mac4}"}},'
                    f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}'
                ).encode()
            )
            assert rec.etcd_lease != 0

    def test_dual_vxlan_subnet_env_has_both_families(self, dual_vxlan: StackLab) -> None:
        for node in dual_vxlan.nodes:
            rec = dual_vxlan.lease_for(node)
            assert rec.subnet is not None and rec.subnet6 is not None
            assert node.subnet_env.read_text() == (
                f"FLANNEL_NETWORK={NETWORK4}\n"
                f"FLANNEL_SUBNET={rec.subnet.network_address + 1}/24\n"
                f"FLANNEL_IPV6_NETWORK={NETWORK6}\n"
                f"FLANNEL_IPV6_SUBNET={rec.subnet6.network_address + 1}/64\n"
                # the smaller of the two device MTUs, so IPv6 pod packets fit flannel-v6.1 too
                f"FLANNEL_MTU={VXLAN_MTU_V6}\n"
                "FLANNEL_IPMASQ=true\n"
            )

    def test_dual_vxlan_ipv6_device_is_flanneld_shaped(self, dual_vxlan: StackLab) -> None:
        for node in dual_vxlan.nodes:
            link = dual_vxlan.link(node, "flannel-v6.1")
            assert link is not None
            data = link["linkinfo"]["info_data"]
            assert link["linkinfo"]["info_kind"] == "vxlan"
            assert data["id"] == 1
            assert data["local6"] == str(node.ip6)
            assert data["port"] == 8472
            assert not data.get("learning", False)
            assert link["mtu"] == VXLAN_MTU_V6
            assert "UP" in link["flags"]
            link4 = dual_vxlan.link(node, "flannel.1")
            assert link4 is not None and link4["mtu"] == VXLAN_MTU_V4
            assert link4["linkinfo"]["info_data"]["local"] == str(node.ip)
            # the IPv6 lease subnet's network address /128, next to the link-local one only
            rec = dual_vxlan.lease_for(node)
            assert rec.subnet6 is not None
            addrs = dual_vxlan.ip_json(node, "-6", "addr", "show", "dev", "flannel-v6.1")[0]
            assert [
                (a["local"], a["prefixlen"]) for a in addrs["addr_info"] if a["scope"] != "link"
            ] == [(str(rec.subnet6.network_address), 128)]

    def test_dual_vxlan_peers_programmed_for_both_families(self, dual_vxlan: StackLab) -> None:
        for node in dual_vxlan.nodes:
            for family in (4, 6):
                got = dual_vxlan.vxlan_state(node, family)
                want = dual_vxlan.expected_vxlan_state(node, family)
                assert len(want["routes"]) == len(want["neigh"]) == len(want["fdb"]) == 2
                assert got == want, f"{node.name} IPv{family}"

    def test_dual_vxlan_masq_and_forward_rules_for_both_families(
        self, dual_vxlan: StackLab
    ) -> None:
        for node in dual_vxlan.nodes:
            rec = dual_vxlan.lease_for(node)
            assert rec.subnet is not None and rec.subnet6 is not None
            for family, net, sub in ((4, NETWORK4, rec.subnet), (6, NETWORK6, rec.subnet6)):
                nat = dual_vxlan.save_rules(node, family, "nat")
                assert flannel_rules(nat, "FLANNEL-POSTRTG") == masq_rules(net, sub)
                filt = dual_vxlan.save_rules(node, family, "filter")
                assert flannel_rules(filt, "FLANNEL-FWD") == forward_rules(net)

    def test_dual_vxlan_cni_gets_ranges_and_routes_for_both_families(
        self, dual_vxlan: StackLab
    ) -> None:
        for pod in dual_vxlan.stack_pods.values():
            rec = dual_vxlan.lease_for(pod.node)
            assert rec.subnet is not None and rec.subnet6 is not None
            assert delegate_config(dual_vxlan, pod) == go_json(
                {
                    "cniVersion": "1.0.0",
                    "hairpinMode": True,
                    "ipMasq": False,
                    "ipam": {
                        "ranges": [[{"subnet": str(rec.subnet)}], [{"subnet": str(rec.subnet6)}]],
                        "routes": [{"dst": str(NETWORK4)}, {"dst": str(NETWORK6)}],
                        "type": "host-local",
                    },
                    "isDefaultGateway": True,
                    "isGateway": True,
                    "mtu": VXLAN_MTU_V6,
                    "name": "cbr0",
                    "type": "bridge",
                }
            )
            assert pod.ip(4) in rec.subnet and pod.ip(6) in rec.subnet6
            gw4, gw6 = rec.subnet.network_address + 1, rec.subnet6.network_address + 1
            assert [(ip["address"].split("/")[1], ip["gateway"]) for ip in pod.result["ips"]] == [
                ("24", str(gw4)),
                ("64", str(gw6)),
            ]
            routes6 = {
                (r["dst"], r.get("gateway"))
                for r in json.loads(run_in(pod.ns, ["ip", "-6", "-j", "route", "show"]).stdout)
            }
            assert (str(NETWORK6), str(gw6)) in routes6
            assert ("default", str(gw6)) in routes6

    def test_dual_vxlan_flanneld_written_peer_is_programmed_then_removed(
        self,
        dual_vxlan: StackLab,
    ) -> None:
        # A peer that only exists in etcd, its lease written by a "flanneld" in its exact format.
        leases = dual_vxlan.stack_leases()
        used4 = {r.subnet for r in leases}
        used6 = {r.subnet6 for r in leases}
        v4 = next(n for i in range(200, 255) if (n := IPv4Network(f"10.5.{i}.0/24")) not in used4)
        v6 = next(
            n6
            for i in range(0xF00, 0xFFF)
            if (n6 := IPv6Network(f"fd00:10:5:{i:x}::/64")) not in used6
        )
        mac4, mac6 = "0e:00:00:00:09:04", "0e:00:00:00:09:06"
        key = f"{ETCD_PREFIX}/subnets/{v4.network_address}-24&{v6.network_address}-64"
        value = (
            '{"PublicIP":"198.51.100.9","PublicIPv6":"2001:db8::9","BackendType":"vxlan",'
            f'"BackendData":{{"VNI":1,"VtepMAC":"{mac4}"}},'
            f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}'
        )
        out = dual_vxlan.etcd.etcdctl("lease", "grant", "300").stdout
        m = re.search(r"lease ([0-9a-f]+) granted", out)
        assert m, out
        dual_vxlan.etcd.etcdctl("put", f"--lease={m.group(1)}", key, value)
        try:
            fake = {
                4: {
                    "routes": (str(v4), str(v4.network_address), True),
                    "neigh": (str(v4.network_address), mac4, ("PERMANENT",)),
                    "fdb": (mac4, "198.51.100.9", "permanent"),
                },
                6: {
                    "routes": (str(v6), str(v6.network_address), True),
                    "neigh": (str(v6.network_address), mac6, ("PERMANENT",)),
                    "fdb": (mac6, "2001:db8::9", "permanent"),
                },
            }
            for node in dual_vxlan.nodes:
                for family in (4, 6):
                    want = dual_vxlan.expected_vxlan_state(node, family)
                    for kind, entry in fake[family].items():
                        assert entry in want[kind]
                    wait_for(
                        f"{node.name} programmed the fake IPv{family} peer",
                        functools.partial(dual_vxlan.converged, node, family),
                        10.0,
                    )
        finally:
            dual_vxlan.etcd.etcdctl("del", key)
        for node in dual_vxlan.nodes:
            for family in (4, 6):
                wait_for(
                    f"{node.name} removed the fake IPv{family} peer",
                    functools.partial(dual_vxlan.converged, node, family),
                    10.0,
                )
                state = dual_vxlan.vxlan_state(node, family)
                for kind, entry in fake[family].items():
                    assert entry not in state[kind]

    def test_dual_vxlan_restart_keeps_lease_and_both_vtep_macs(self, dual_vxlan: StackLab) -> None:
        """Last of the class: it restarts n1's daemon (and removes flannel-v6.1 meanwhile)."""
        lab = dual_vxlan
        before = lab.lease_for("n1")
        macs = {}
        for dev in ("flannel.1", "flannel-v6.1"):
            link = lab.link("n1", dev)
            assert link is not None
            macs[dev] = link["address"]
        assert lab.stop_daemon("n1") == 0
        # As if the device had been lost while the daemon was down (e.g. a manual cleanup): the
        # VTEP MAC must come back, or every peer's neighbour/FDB entry for us would be stale.
        run_in(lab.node("n1").ns, ["ip", "link", "del", "flannel-v6.1"])
        lab.start_daemon("n1")
        lab.wait_ready("n1")
        after = lab.lease_for("n1")
        assert (after.key, after.value) == (before.key, before.value)
        for dev, mac in macs.items():
            link = lab.link("n1", dev)
            assert link is not None and link["address"] == mac, dev
        lab.wait_stack_converged()
        lab.settle()
        assert lab.ping_failures_stack(6) == []
        assert lab.ping_failures_stack(4) == []


def test_dual_vxlan_direct_routing_routes_both_families_over_the_underlay(
    tmp_path: Path,
) -> None:
    """DirectRouting: peers on our L2 get a plain route via their PublicIP / PublicIPv6."""
    require_root()
    with stack_lab(
        tmp_path / "lab",
        backend="vxlan",
        config=DUAL_CONFIG,
        backend_options={"DirectRouting": True},
        nodes=2,
    ) as lab:
        for node in lab.nodes:
            for family in (4, 6):
                routes = lab.hostgw_state(node, family)
                assert routes == lab.expected_hostgw_state(node, family)
                assert len([r for r in routes if r[2] == "eth0"]) == 1
                # nothing on the vxlan devices: no neighbour, FDB entry or onlink route
                assert lab.vxlan_state(node, family) == {
                    "routes": set(),
                    "neigh": set(),
                    "fdb": set(),
                }
        assert lab.ping_failures_stack(4) == []
        assert lab.ping_failures_stack(6) == []


# ------------------------------------------------------------------------------------------------
# Dual stack, host-gw


@pytest.fixture(scope="class")
def dual_hostgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackLab]:
    require_root()
    root = Path(tmp_path_factory.mktemp("dual-hostgw"))
    with stack_lab(root, backend="host-gw", config=DUAL_CONFIG) as lab:
        yield lab


class TestDualStackHostGw:
    """One dual-stack host-gw lab for the class."""

    def test_dual_hostgw_pods_ping_over_both_families(self, dual_hostgw: StackLab) -> None:
        assert len(dual_hostgw.stack_pods) == 3
        assert dual_hostgw.ping_failures_stack(4) == []
        assert dual_hostgw.ping_failures_stack(6) == []

    def test_dual_hostgw_routes_via_peer_public_addresses(self, dual_hostgw: StackLab) -> None:
        for node in dual_hostgw.nodes:
            for family in (4, 6):
                got = dual_hostgw.hostgw_state(node, family)
                assert got == dual_hostgw.expected_hostgw_state(node, family)
                peers = [r for r in got if r[2] == "eth0"]
                assert len(peers) == 2
                public = "198.51.100." if family == 4 else "2001:db8::"
                assert all(gw is not None and gw.startswith(public) for _, gw, _, _ in peers)
            assert dual_hostgw.link(node, "flannel.1") is None
            assert dual_hostgw.link(node, "flannel-v6.1") is None

    def test_dual_hostgw_lease_and_subnet_env(self, dual_hostgw: StackLab) -> None:
        for node in dual_hostgw.nodes:
            rec = dual_hostgw.lease_for(node)
            assert rec.subnet is not None and rec.subnet6 is not None
            assert (
                rec.value
                == (
                    f'{{"PublicIP":"{node.ip}","PublicIPv6":"{node.ip6}","BackendType":"host-gw"}}'
                ).encode()
            )
            assert "&" in rec.key
            assert node.subnet_env.read_text() == (
                f"FLANNEL_NETWORK={NETWORK4}\n"
                f"FLANNEL_SUBNET={rec.subnet.network_address + 1}/24\n"
                f"FLANNEL_IPV6_NETWORK={NETWORK6}\n"
                f"FLANNEL_IPV6_SUBNET={rec.subnet6.network_address + 1}/64\n"
                "FLANNEL_MTU=1500\n"
                "FLANNEL_IPMASQ=true\n"
            )
            nat6 = dual_hostgw.save_rules(node, 6, "nat")
            assert flannel_rules(nat6, "FLANNEL-POSTRTG") == masq_rules(NETWORK6, rec.subnet6)


# ------------------------------------------------------------------------------------------------
# IPv6 only (vxlan), with IPv6SubnetLen/Min/Max and --public-ipv6


@pytest.fixture(scope="class")
def v6_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackLab]:
    require_root()
    root = Path(tmp_path_factory.mktemp("v6-only"))
    with stack_lab(
        root,
        backend="vxlan",
        config=V6_ONLY_CONFIG,
        node_flags=lambda node: [f"--public-ipv6={node.ip6}"],
    ) as lab:
        yield lab


class TestIPv6Only:
    """One IPv6-only vxlan lab for the class."""

    def test_v6_only_pods_ping_over_ipv6(self, v6_only: StackLab) -> None:
        assert len(v6_only.stack_pods) == 3
        for pod in v6_only.stack_pods.values():
            assert [a.version for a in pod.ips] == [6]
            addrs4 = run_in(pod.ns, ["ip", "-j", "-4", "addr", "show", "dev", "eth0"]).stdout
            assert json.loads(addrs4 or "[]") == []
        assert v6_only.ping_failures_stack(6) == []

    def test_v6_only_leases_use_the_zero_ipv4_key_and_the_configured_range(
        self,
        v6_only: StackLab,
    ) -> None:
        leases = v6_only.stack_leases()
        assert len(leases) == 3
        assert len({r.subnet6 for r in leases}) == 3
        for node in v6_only.nodes:
            rec = v6_only.lease_for(node)
            assert rec.subnet is None and rec.subnet6 is not None
            assert rec.subnet6.prefixlen == 64
            assert V6_ONLY_MIN <= rec.subnet6.network_address <= V6_ONLY_MAX
            assert rec.key == f"{ETCD_PREFIX}/subnets/0.0.0.0-0&{rec.subnet6.network_address}-64"
            link = v6_only.link(node, "flannel-v6.1")
            assert link is not None and is_local_unicast_mac(link["address"])
            assert (
                rec.value
                == (
                    f'{{"PublicIP":"0.0.0.0","PublicIPv6":"{node.ip6}","BackendType":"vxlan",'
                    f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{link["address"]}"}}}}'
                ).encode()
            )

    def test_v6_only_node_state(self, v6_only: StackLab) -> None:
        for node in v6_only.nodes:
            rec = v6_only.lease_for(node)
            assert rec.subnet6 is not None
            assert node.subnet_env.read_text() == (
                f"FLANNEL_IPV6_NETWORK={V6_ONLY_NETWORK}\n"
                f"FLANNEL_IPV6_SUBNET={rec.subnet6.network_address + 1}/64\n"
                f"FLANNEL_MTU={VXLAN_MTU_V6}\n"
                "FLANNEL_IPMASQ=true\n"
            )
            assert v6_only.link(node, "flannel.1") is None, "no IPv4 device without IPv4"
            link = v6_only.link(node, "flannel-v6.1")
            assert link is not None
            assert link["linkinfo"]["info_data"]["local6"] == str(node.ip6)
            assert v6_only.vxlan_state(node, 6) == v6_only.expected_vxlan_state(node, 6)
            nat6 = v6_only.save_rules(node, 6, "nat")
            assert flannel_rules(nat6, "FLANNEL-POSTRTG") == masq_rules(
                V6_ONLY_NETWORK, rec.subnet6
            )
            assert flannel_rules(v6_only.save_rules(node, 4, "nat"), "FLANNEL-POSTRTG") == []
            assert flannel_rules(v6_only.save_rules(node, 4, "filter"), "FLANNEL-FWD") == []

    def test_v6_only_cni_delegate_has_only_the_ipv6_range(self, v6_only: StackLab) -> None:
        for pod in v6_only.stack_pods.values():
            rec = v6_only.lease_for(pod.node)
            saved = json.loads(delegate_config(v6_only, pod))
            assert saved["ipam"] == {
                "ranges": [[{"subnet": str(rec.subnet6)}]],
                "routes": [{"dst": str(V6_ONLY_NETWORK)}],
                "type": "host-local",
            }
            assert saved["mtu"] == VXLAN_MTU_V6


# ------------------------------------------------------------------------------------------------
# The lab command


def test_lab_command_dual_stack_host_gw() -> None:
    require_root()
    prefix = new_prefix()

    def lab(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pyflannel.cli.tools", "lab", *args, "--prefix", prefix],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    try:
        up = lab("up", "--nodes", "2", "--backend", "host-gw", "--stack", "dual")
        assert up.returncode == 0, up.stdout + up.stderr
        assert '"EnableIPv6": true, "IPv6Network": "fd00:10:5::/48"' in up.stdout
        check = lab("check")
        assert check.returncode == 0, check.stdout + check.stderr
        out = check.stdout
        assert "IPV6 SUBNET" in out and "PUBLIC IPV6" in out
        assert out.count("2001:db8::") == 2, out  # one lease row per node
        # 2 pods x (2 pods x 2 families): every cell a tick
        assert out.count("✓") == 8, out
        assert "✗" not in out
        assert re.search(r"n2/fd00:10:5:[0-9a-f]+::2", out), out
        assert "all pods reach each other" in out
    finally:
        lab_down(prefix)
