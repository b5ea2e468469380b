"""Fault-injection helpers: labs whose daemons, etcd and data path the tests break on purpose.

Everything builds on the e2e harness (:mod:`tests.e2e.helpers` ``DaemonLab``) and the etcd
helpers of :mod:`tests.harness`; this module adds only what fault tests need on top:

- :func:`fault_lab`: the same bring-up as ``daemon_lab`` but with a choice of etcd (the lab's
  single member, a TLS + auth member, or a 3-member cluster inside the lab's etcd namespace) and
  daemon flags computed from it;
- :class:`PingMesh`: a continuous ``ping -i 0.05`` from every pod to every pod on another node,
  and the exact sequence numbers that went unanswered;
- fake peers: flanneld-format vxlan leases of hosts that do not exist (public IPs
  198.51.100.200+, which no namespace owns), so leases can be added and removed without touching
  the real nodes;
- :func:`wait_each_node`: polls every node in its own thread and records *when* each one reached
  the wanted state, which is what the latency numbers in docs/reliability.md are.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from pyflannel.lab.netns import http_request
from pyflannel.lab.topology import NodeRef
from tests.e2e.helpers import (
    ETCD_PREFIX,
    HEALTHZ_PORT,
    NETWORK,
    BackgroundPing,
    DaemonLab,
)
from tests.harness.etcd import EtcdServer
from tests.harness.etcd_cluster import EtcdCluster
from tests.harness.lab import LabEnv, start_lab

__all__ = [
    "ClusterLab",
    "FakePeer",
    "PingMesh",
    "drop_foreign_leases",
    "fake_peer",
    "fault_lab",
    "free_octets",
    "healthz",
    "lease_values",
    "log_text",
    "peer_state",
    "wait_each_node",
]

# Fake peers' public IPs: inside the lab underlay but owned by no namespace.
FAKE_PEER_BASE = 200


# --------------------------------------------------------------------------------- fake peers


@dataclass(frozen=True)
class FakePeer:
    """A vxlan lease of a host that does not exist."""

    subnet: IPv4Network
    public_ip: str
    mac: str

    @property
    def key(self) -> str:
        return f"{ETCD_PREFIX}/subnets/{self.subnet.network_address}-{self.subnet.prefixlen}"

    @property
    def value(self) -> str:
        # flanneld's exact bytes for a vxlan lease (flannel-spec §3).
        return (
            f'{{"PublicIP":"{self.public_ip}","PublicIPv6":null,"BackendType":"vxlan",'
            f'"BackendData":{{"VNI":1,"VtepMAC":"{self.mac}"}}}}'
        )

    def put(self, etcd: EtcdServer, ttl: int = 600, dial_timeout: str = "2s") -> None:
        """Write the lease with an etcd lease of ``ttl`` seconds, as flanneld would."""
        out = etcd.etcdctl("lease", "grant", str(ttl), dial_timeout=dial_timeout).stdout
        m = re.search(r"lease ([0-9a-f]+) granted", out)
        assert m, out
        etcd.etcdctl(
            "put", f"--lease={m.group(1)}", self.key, self.value, dial_timeout=dial_timeout
        )

    def delete(self, etcd: EtcdServer) -> None:
        etcd.etcdctl("del", self.key)

    def entries(self) -> dict[str, tuple[Any, ...]]:
        """What a vxlan node programs for this peer, in DaemonLab.vxlan_entries' shapes."""
        gw = str(self.subnet.network_address)
        return {
            "routes": (str(self.subnet), gw, True),
            "neigh": (gw, self.mac, ("PERMANENT",)),
            "fdb": (self.mac, self.public_ip, "permanent"),
        }


_fake_counter = itertools.count(1)


def fake_peer(third_octet: int, *, mac: str | None = None) -> FakePeer:
    """A fake peer owning ``10.5.<third_octet>.0/24``; pick octets the real nodes do not hold."""
    n = next(_fake_counter)
    host = FAKE_PEER_BASE + (n % 50)
    return FakePeer(
        IPv4Network(f"10.5.{third_octet}.0/24"),  # inside NETWORK (10.5.0.0/16)
        f"198.51.100.{host}",
        mac or "0a:fa:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(4)),
    )


def free_octets(lab: DaemonLab, count: int) -> list[int]:
    """``count`` third octets of /24s in the Network that no lease holds now (high ones first)."""
    taken = {rec.subnet.network_address.packed[2] for rec in lab.leases().values()}
    free = [o for o in range(250, 1, -1) if o not in taken]
    return free[:count]


def peer_state(lab: DaemonLab, node: NodeRef, peer: FakePeer) -> str:
    """``"programmed"`` (route + ARP + FDB), ``"absent"`` (none of them) or ``"partial"``."""
    got = lab.vxlan_entries(node)
    want = peer.entries()
    present = [want[k] in got[k] for k in ("routes", "neigh", "fdb")]
    # A stale entry with another MAC or gateway also counts as "not absent".
    gw = str(peer.subnet.network_address)
    leftovers = (
        any(r[0] == str(peer.subnet) for r in got["routes"])
        or any(n[0] == gw for n in got["neigh"])
        or any(f[0] == peer.mac for f in got["fdb"])
    )
    if all(present):
        return "programmed"
    return "partial" if leftovers else "absent"


# --------------------------------------------------------------------------------- probes


def healthz(lab: DaemonLab, node: NodeRef, path: str = "/healthz") -> tuple[int, bytes]:
    """GET the daemon's health endpoint from inside the node."""
    status, body, _ = http_request(
        f"http://127.0.0.1:{HEALTHZ_PORT}{path}", ns=lab.node(node).ns, wait=2.0
    )
    return status, body


def wait_each_node(
    lab: DaemonLab,
    what: str,
    probe: Callable[[str], bool],
    timeout: float,
    nodes: Sequence[str] | None = None,
    since: float | None = None,
) -> dict[str, float]:
    """Poll ``probe(node)`` for every node concurrently (one thread each) until true.

    Returns, per node, the seconds from ``since`` (default: now) to the first poll that saw it
    true; fails the test naming the nodes that never got there.
    """
    start = time.monotonic() if since is None else since
    names = list(nodes) if nodes is not None else [n.name for n in lab.nodes]
    reached: dict[str, float] = {}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + timeout

    def poll(name: str) -> None:
        while time.monotonic() < deadline:
            try:
                if probe(name):
                    reached[name] = time.monotonic() - start
                    return
            except Exception as exc:  # a probe racing a re-created device: try again
                errors[name] = repr(exc)
            time.sleep(0.02)

    threads = [threading.Thread(target=poll, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    missing = [n for n in names if n not in reached]
    assert not missing, f"{what}: not reached within {timeout}s on {missing} ({errors})"
    return reached


class PingMesh:
    """Continuous pings between every ordered pair of pods on different nodes."""

    def __init__(self, lab: DaemonLab, interval: float = 0.05) -> None:
        pods = list(lab.pods.values())
        self.pairs = [(a, b) for a, b in itertools.permutations(pods, 2) if a.node != b.node]
        self.pings = {
            f"{a.node}->{b.node}": BackgroundPing(a.ns, b.ip, interval) for a, b in self.pairs
        }
        self.results: dict[str, tuple[int, int, list[int]]] = {}

    def stop(self) -> dict[str, tuple[int, int, list[int]]]:
        """Stop every ping; ``{pair: (sent, received, unanswered sequence numbers)}``."""
        for name, p in self.pings.items():
            if name not in self.results:
                self.results[name] = p.stop()
        return self.results

    def lost(self) -> dict[str, list[int]]:
        """The pairs that lost probes and which ones (after :meth:`stop`)."""
        return {k: miss for k, (_, _, miss) in self.results.items() if miss}

    def totals(self) -> tuple[int, int]:
        """(probes sent, probes lost) over all pairs."""
        return (
            sum(s for s, _, _ in self.results.values()),
            sum(len(m) for _, _, m in self.results.values()),
        )

    def __enter__(self) -> PingMesh:
        time.sleep(0.2)  # the first probes are out before anything is broken
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def log_text(lab: DaemonLab, node: NodeRef) -> str:
    path = lab.log_path(node)
    return path.read_text(errors="replace") if path.exists() else ""


# --------------------------------------------------------------------------------- labs


@dataclass
class ClusterLab(DaemonLab):
    """A DaemonLab whose etcd is a 3-member cluster in the lab's etcd namespace.

    ``endpoints`` is what the daemons get as ``--etcd-endpoints`` (change it, then restart a
    daemon, to move it to other members). Harness reads and writes go to a running member.
    """

    cluster: EtcdCluster | None = None
    endpoints: str = ""
    node_endpoints: dict[str, str] = field(default_factory=dict)
    _starting: str | None = None

    @property
    def etcd(self) -> EtcdServer:
        assert self.cluster is not None
        running = self.cluster.running()
        assert running, "no etcd member is running"
        return running[0]

    def start_daemon(self, ref: NodeRef) -> subprocess.Popen[bytes]:
        self._starting = self.node(ref).name
        try:
            return super().start_daemon(ref)
        finally:
            self._starting = None

    def daemon_argv(self) -> list[str]:
        eps = self.node_endpoints.get(self._starting or "", self.endpoints)
        argv = super().daemon_argv()
        return [f"--etcd-endpoints={eps}" if a.startswith("--etcd-endpoints=") else a for a in argv]


@contextlib.contextmanager
def _ns_cluster(env: LabEnv, size: int = 3) -> Iterator[EtcdCluster]:
    """``size`` etcd members in the lab's etcd namespace, on ports 2379+10000*i / 2380+10000*i
    of its one address (a namespace of its own: no clash with anything on the box)."""
    topo = env.topo
    assert topo.etcd_ns is not None and topo.etcd_ip is not None
    root = topo.state_root / "etcd-cluster"
    token = f"pf-{secrets.token_hex(4)}"
    host = str(topo.etcd_ip)
    members = [
        EtcdServer(
            name=f"m{i}",
            data_dir=root / f"m{i}.etcd",
            client_url=f"http://{host}:{2379 + 10000 * i}",
            peer_url=f"http://{host}:{2380 + 10000 * i}",
            extra_args=["--heartbeat-interval=50", "--election-timeout=500"],
            netns=topo.etcd_ns,
            cluster_token=token,
        )
        for i in range(size)
    ]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    cluster = EtcdCluster(members, root)
    try:
        for m in members:
            m.start(initial_cluster=initial)
        cluster.wait_healthy()
        cluster.leader()
        yield cluster
    finally:
        cluster.stop_all()


@contextlib.contextmanager
def fault_lab(
    state_root: Path,
    *,
    nodes: int = 3,
    backend: str = "vxlan",
    daemon_flags: Sequence[str] | Callable[[LabEnv], Sequence[str]] = (),
    pods: bool = True,
    etcd: str = "single",
    node_endpoints: Callable[[EtcdCluster], dict[str, str]] | None = None,
) -> Iterator[DaemonLab]:
    """Like :func:`tests.e2e.helpers.daemon_lab`, with ``etcd`` = ``"single"`` (the lab's
    member), ``"tls"`` (client-cert TLS + auth; pass the credentials through a callable
    ``daemon_flags(env)``) or ``"cluster"`` (a :class:`ClusterLab`, daemons get all three
    endpoints unless ``node_endpoints(cluster)`` names others for a node). Everything is torn
    down afterwards, also on failure."""
    from cni_plugin.install import install

    with contextlib.ExitStack() as stack:
        env = stack.enter_context(
            start_lab(nodes, state_root=state_root, etcd=etcd != "cluster", etcd_tls=etcd == "tls")
        )
        cni_bin = state_root / "cni-bin"
        install(cni_bin)
        cni_path = f"{cni_bin}:/usr/lib/cni"
        flags = tuple(daemon_flags(env) if callable(daemon_flags) else daemon_flags)
        lab: DaemonLab
        if etcd == "cluster":
            cluster = stack.enter_context(_ns_cluster(env))
            env.etcd = cluster[0]  # only read by DaemonLab.daemon_argv, which ClusterLab rewrites
            lab = ClusterLab(
                env,
                backend,
                flags,
                cni_path,
                cluster=cluster,
                endpoints=cluster.endpoints_csv,
                node_endpoints=node_endpoints(cluster) if node_endpoints else {},
            )
        else:
            lab = DaemonLab(env, backend, flags, cni_path)
        config = {"Network": str(NETWORK), "Backend": {"Type": backend}}
        lab.etcd.put(f"{ETCD_PREFIX}/config", json.dumps(config))
        for node in lab.nodes:
            lab.start_daemon(node)
        for node in lab.nodes:
            lab.wait_ready(node)
        lab.wait_converged()
        if pods:
            for node in lab.nodes:
                lab.add_pod(node)
        yield lab


def lease_values(lab: DaemonLab) -> dict[IPv4Network, dict[str, Any]]:
    """Subnet → parsed lease value, for the real nodes' leases only."""
    ips = {str(n.ip) for n in lab.nodes}
    out = {}
    for subnet, rec in lab.leases().items():
        attrs = rec.attrs
        if attrs.get("PublicIP") in ips:
            out[subnet] = attrs
    return out


def drop_foreign_leases(lab: DaemonLab) -> None:
    """Delete every subnet key that is not a real node's lease (fake and hostile ones)."""
    real = {str(n.ip) for n in lab.nodes}
    keys = lab.etcd.etcdctl("get", "--prefix", "--keys-only", f"{ETCD_PREFIX}/subnets").stdout
    for key in filter(None, keys.splitlines()):
        if not re.search(r"(\d+\.\d+\.\d+\.\d+)-(\d+)$", key):
            lab.etcd.etcdctl("del", key)  # not a subnet key at all
    for rec in list(lab.leases().values()):
        try:
            foreign = rec.attrs.get("PublicIP") not in real
        except (ValueError, AttributeError):
            foreign = True
        if foreign:
            lab.etcd.etcdctl("del", rec.key)
