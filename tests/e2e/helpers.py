"""Shared pieces of the daemon end-to-end tests: a lab whose daemons the test controls.

:func:`daemon_lab` builds the namespaced lab (tests/harness ``start_lab``: switch, etcd host,
nodes), writes the network config, runs ``python -m pyflannel`` with flanneld-style flags on
every node (extra flags per lab, e.g. ``--iptables-resync=1``), waits until each answers
``/readyz`` and every node has programmed every peer, and attaches one pod per node through the
real CNI chain. Unlike ``pyflannel lab up`` it keeps each daemon's ``Popen``, so a test can
signal a daemon, read its exit code and start it again on the same node state.

The rest are small probes of real outcomes: kernel state read with ``ip -j``/``bridge -j`` and
``iptables-save`` inside a node namespace, keys read with etcdctl inside the etcd namespace,
pings between pod namespaces, HTTP from inside a node.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from pyflannel.lab.cni import cni_add
from pyflannel.lab.netns import exec_argv, http_request, ping, run_in
from pyflannel.lab.topology import LabNode, NodeRef, Topology
from pyflannel.lease import parse_subnet_key
from tests.harness.etcd import EtcdServer
from tests.harness.lab import LabEnv, start_lab

__all__ = [
    "ETCD_PREFIX",
    "HEALTHZ_PORT",
    "NETWORK",
    "BackgroundPing",
    "DaemonLab",
    "LeaseRecord",
    "Pod",
    "daemon_lab",
    "masq_rules",
    "wait_for",
]

NETWORK = IPv4Network("10.5.0.0/16")
ETCD_PREFIX = "/coreos.com/network"
HEALTHZ_PORT = 10256
READY_TIMEOUT = 30.0
CONVERGE_TIMEOUT = 15.0
MASQ_COMMENT = '-m comment --comment "flanneld masq"'

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy and return that (so never ``None``);
    fail the test after ``timeout`` seconds, showing the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout}s; last seen: {value!r}")
        time.sleep(interval)


def masq_rules(network: IPv4Network, subnet: IPv4Network) -> list[str]:
    """flanneld's --ip-masq rule set for ``network``/``subnet``, in order, as iptables-save
    prints it (flannel-spec §8)."""
    n, p, c = network, subnet, MASQ_COMMENT
    return [
        f"-A POSTROUTING {c} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {p} -d {n} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {n} -d {p} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {n} -d {p} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {n} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully",
        f"-A FLANNEL-POSTRTG ! -s {n} -d {n} {c} -j MASQUERADE --random-fully",
    ]


@dataclass(frozen=True)
class Pod:
    """A pod attached through the CNI chain."""

    node: str
    ns: str
    ip: IPv4Address
    container_id: str
    result: Any


@dataclass(frozen=True)
class LeaseRecord:
    """One subnet key in etcd, value kept byte for byte."""

    key: str
    subnet: IPv4Network
    value: bytes
    etcd_lease: int

    @property
    def attrs(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.value)
        return parsed


@dataclass
class DaemonLab:
    """A running lab plus handles on its daemons and pods."""

    env: LabEnv
    backend: str
    daemon_flags: tuple[str, ...]
    cni_path: str
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)

    # -- lookup ----------------------------------------------------------------------------------

    @property
    def topo(self) -> Topology:
        return self.env.topo

    @property
    def etcd(self) -> EtcdServer:
        assert self.env.etcd is not None
        return self.env.etcd

    @property
    def nodes(self) -> tuple[LabNode, ...]:
        return self.topo.nodes

    def node(self, ref: NodeRef) -> LabNode:
        return self.topo.node(ref)

    # -- daemons ---------------------------------------------------------------------------------

    def daemon_argv(self) -> list[str]:
        """The daemon command line: flanneld's flags, as a unit file would pass them."""
        return [
            sys.executable,
            "-m",
            "pyflannel",
            f"--etcd-endpoints={self.env.etcd_endpoint}",
            "--ip-masq",
            f"--healthz-port={HEALTHZ_PORT}",
            "--healthz-ip=127.0.0.1",
            *self.daemon_flags,
        ]

    def log_path(self, ref: NodeRef) -> Path:
        return self.node(ref).log_dir / "pyflanneld.log"

    def log_tail(self, ref: NodeRef, chars: int = 3000) -> str:
        path = self.log_path(ref)
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def start_daemon(self, ref: NodeRef) -> subprocess.Popen[bytes]:
        """Start the node's daemon (its /run/flannel state is whatever the last one left)."""
        node = self.node(ref)
        proc = self.topo.spawn_in_node(node, self.daemon_argv(), self.log_path(node))
        self.daemons[node.name] = proc
        return proc

    def daemon_pid(self, ref: NodeRef) -> int:
        """Pid of the node's daemon, found like an operator would: the processes in the node's
        namespace (``ip netns pids``) whose command line is ``python -m pyflannel``."""
        node = self.node(ref)
        pids = subprocess.run(
            ["ip", "netns", "pids", node.ns], capture_output=True, text=True, check=True
        ).stdout.split()
        found = []
        for pid in map(int, pids):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-m" in argv and b"pyflannel" in argv:
                found.append(pid)
        assert len(found) == 1, f"expected one pyflannel process in {node.ns}, found {found}"
        return found[0]

    def stop_daemon(self, ref: NodeRef, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` to the node's daemon and return its exit status (-N for signal N)."""
        node = self.node(ref)
        proc = self.daemons[node.name]
        pid = self.daemon_pid(node)
        # `ip netns exec`, unshare and sh all exec: the python process is the Popen child itself.
        assert pid == proc.pid, f"daemon pid {pid} is not the spawned process {proc.pid}"
        os.kill(pid, sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=10)
            raise AssertionError(
                f"daemon on {node.name} ignored {signal.Signals(sig).name} for {timeout}s:\n"
                + self.log_tail(node)
            ) from None

    def wait_ready(self, ref: NodeRef, timeout: float = READY_TIMEOUT) -> None:
        """Block until the node's daemon answers ``/readyz`` with 200 (subnet.env written)."""
        node = self.node(ref)
        status, body, err = http_request(
            f"http://127.0.0.1:{HEALTHZ_PORT}/readyz",
            ns=node.ns,
            wait=timeout,
            expect="flanneld is ready",
        )
        proc = self.daemons.get(node.name)
        assert status == 200, (
            f"daemon on {node.name} not ready within {timeout}s "
            f"(status {status}, {err or body!r}, exit code {proc.poll() if proc else None}):\n"
            + self.log_tail(node)
        )

    # -- etcd --------------------------------------------------------------------------------------

    def leases(self) -> dict[IPv4Network, LeaseRecord]:
        """Every key under ``<prefix>/subnets`` (etcdctl in the etcd namespace)."""
        out = self.etcd.etcdctl("get", "--prefix", f"{ETCD_PREFIX}/subnets", "-w", "json").stdout
        records: dict[IPv4Network, LeaseRecord] = {}
        for kv in json.loads(out).get("kvs", []):
            key = base64.b64decode(kv["key"]).decode()
            subnet, _ = parse_subnet_key(key)  # accepts flanneld's dual-stack '&' keys too
            assert subnet is not None, f"IPv6-only key {key!r} in an IPv4 lab"
            records[subnet] = LeaseRecord(
                key, subnet, base64.b64decode(kv["value"]), int(kv.get("lease", 0))
            )
        return records

    def lease_of(self, ref: NodeRef) -> LeaseRecord:
        """The lease whose PublicIP is the node's underlay address."""
        ip = str(self.node(ref).ip)
        mine = [r for r in self.leases().values() if r.attrs.get("PublicIP") == ip]
        assert len(mine) == 1, f"expected one lease for {ip}, found {mine}"
        return mine[0]

    # -- kernel state ------------------------------------------------------------------------------

    def ip_json(self, ref: NodeRef, *args: str) -> list[dict[str, Any]]:
        """``ip -j ARGS`` inside the node's namespace."""
        out = run_in(self.node(ref).ns, ["ip", "-j", *args]).stdout.strip()
        parsed: list[dict[str, Any]] = json.loads(out) if out else []
        return parsed

    def link(self, ref: NodeRef, name: str) -> dict[str, Any] | None:
        """``ip -d -j link show NAME`` (None when the link does not exist)."""
        proc = run_in(self.node(ref).ns, ["ip", "-d", "-j", "link", "show", name], check=False)
        if proc.returncode != 0:
            return None
        links: list[dict[str, Any]] = json.loads(proc.stdout)
        return links[0] if links else None

    def vxlan_entries(
        self, ref: NodeRef, dev: str = "flannel.1"
    ) -> dict[str, set[tuple[Any, ...]]]:
        """The node's routes, ARP entries and FDB entries on ``dev``, normalised to sets."""
        ns = self.node(ref).ns
        routes = self.ip_json(ns, "route", "show", "dev", dev)
        neigh = self.ip_json(ns, "neigh", "show", "dev", dev)
        fdb_out = run_in(ns, ["bridge", "-j", "fdb", "show", "dev", dev]).stdout.strip()
        fdb: list[dict[str, Any]] = json.loads(fdb_out) if fdb_out else []
        return {
            "routes": {
                (r["dst"], r.get("gateway"), "onlink" in r.get("flags", [])) for r in routes
            },
            "neigh": {(n["dst"], n.get("lladdr"), tuple(n.get("state", []))) for n in neigh},
            "fdb": {
                (f["mac"], f["dst"], f.get("state"))
                for f in fdb
                if "dst" in f and "self" in f.get("flags", [])
            },
        }

    def expected_vxlan_entries(self, ref: NodeRef) -> dict[str, set[tuple[Any, ...]]]:
        """What flanneld programs on ``ref`` for every other node's lease (flannel-spec §6)."""
        me = self.node(ref)
        want: dict[str, set[tuple[Any, ...]]] = {"routes": set(), "neigh": set(), "fdb": set()}
        for rec in self.leases().values():
            attrs = rec.attrs
            if attrs["PublicIP"] == str(me.ip):
                continue
            gw = str(rec.subnet.network_address)
            mac = attrs["BackendData"]["VtepMAC"]
            want["routes"].add((str(rec.subnet), gw, True))
            want["neigh"].add((gw, mac, ("PERMANENT",)))
            want["fdb"].add((mac, attrs["PublicIP"], "permanent"))
        return want

    def hostgw_routes(self, ref: NodeRef) -> set[tuple[str, str | None, str]]:
        """The node's routes into the flannel network: (dst, gateway, dev)."""
        routes = self.ip_json(ref, "route", "show")
        return {
            (r["dst"], r.get("gateway"), r.get("dev", ""))
            for r in routes
            if r["dst"] != "default" and IPv4Network(r["dst"]).subnet_of(NETWORK)
        }

    def wait_converged(self, timeout: float = CONVERGE_TIMEOUT) -> None:
        """Wait until every node has programmed every peer's lease (and nothing else)."""
        for node in self.nodes:
            if self.backend == "vxlan":
                wait_for(
                    f"{node.name} programmed its peers",
                    lambda n=node: self.vxlan_entries(n) == self.expected_vxlan_entries(n),  # type: ignore[misc]
                    timeout,
                )
            elif self.backend == "wireguard":
                wait_for(
                    f"{node.name} has every peer on flannel-wg",
                    lambda n=node: len(self.wireguard_peers(n)) == len(self.leases()) - 1,  # type: ignore[misc]
                    timeout,
                )
            else:
                wait_for(
                    f"{node.name} has a route to every peer",
                    lambda n=node: self.hostgw_routes(n) == self.expected_hostgw_routes(n),  # type: ignore[misc]
                    timeout,
                )

    def wireguard_peers(self, ref: NodeRef, device: str = "flannel-wg") -> dict[str, str]:
        """wireguard: the device's peers as ``wg`` shows them inside the node (its private
        /run/wireguard): public key -> endpoint."""
        out = self.topo.run_in_node(ref, ["wg", "show", device, "endpoints"], check=False).stdout
        return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)

    def expected_hostgw_routes(self, ref: NodeRef) -> set[tuple[str, str | None, str]]:
        """host-gw: each peer subnet via the peer's PublicIP on eth0; our own via cni0 once a pod
        made the bridge (the bridge plugin's connected route)."""
        me = self.node(ref)
        want: set[tuple[str, str | None, str]] = set()
        for rec in self.leases().values():
            if rec.attrs["PublicIP"] == str(me.ip):
                if me.name in self.pods:
                    want.add((str(rec.subnet), None, "cni0"))
                continue
            want.add((str(rec.subnet), rec.attrs["PublicIP"], "eth0"))
        return want

    def iptables_save(self, ref: NodeRef, table: str = "nat") -> list[str]:
        """``iptables-save -t TABLE`` inside the node: its rule lines (``-A ...``)."""
        out = run_in(self.node(ref).ns, ["iptables-save", "-t", table]).stdout
        return [line for line in out.splitlines() if line.startswith("-A ")]

    def flannel_masq_rules(self, ref: NodeRef) -> list[str]:
        """The nat rules that belong to flanneld's masq set, in kernel order."""
        return [
            r
            for r in self.iptables_save(ref, "nat")
            if r.startswith("-A FLANNEL-POSTRTG") or "-j FLANNEL-POSTRTG" in r
        ]

    def iptables(self, ref: NodeRef, *args: str) -> None:
        """Run ``iptables ARGS`` inside the node (an operator's manual change)."""
        run_in(self.node(ref).ns, ["iptables", *args])

    # -- pods --------------------------------------------------------------------------------------

    def add_pod(self, ref: NodeRef, name: str = "pod1") -> Pod:
        """Attach a pod on the node through the CNI chain (flannel + portmap)."""
        node = self.node(ref)
        ns = self.topo.add_pod_ns(node, name)
        cid = f"{self.topo.prefix}-{node.name}-{name}"
        result = cni_add(self.topo, node, ns, cid, self.cni_path)
        ip = IPv4Address(result["ips"][0]["address"].split("/")[0])
        pod = Pod(node.name, ns, ip, cid, result)
        self.pods[node.name] = pod
        return pod

    def ping_failures(self, count: int = 1) -> list[str]:
        """Every pod pings every pod on another node; the pairs that failed."""
        failed = []
        for a, b in itertools.permutations(self.pods.values(), 2):
            ok, _ = ping(a.ns, b.ip, count=count, timeout=3.0)
            if not ok:
                failed.append(f"{a.node}/{a.ip} -> {b.node}/{b.ip}")
        return failed


class BackgroundPing:
    """``ping -i 0.05`` from one namespace, running until :meth:`stop`; then the loss."""

    def __init__(self, src_ns: str, dst: IPv4Address | str, interval: float = 0.05) -> None:
        self.proc = subprocess.Popen(
            exec_argv(src_ns, ["ping", "-n", "-i", str(interval), str(dst)]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""

    def stop(self) -> tuple[int, int, list[int]]:
        """Stop it with SIGINT (ping then prints its summary); return (transmitted, received,
        sequence numbers never answered).

        The very last probe may still be in flight when SIGINT arrives, so it counts as lost only
        if a later one was answered -- i.e. the unanswered list ignores the final sequence number.
        """
        # `ip netns exec` execs ping: the Popen pid is ping's own.
        self.proc.send_signal(signal.SIGINT)
        self.output, _ = self.proc.communicate(timeout=10)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", self.output)
        assert m, f"no ping summary in:\n{self.output[-2000:]}"
        sent, received = int(m.group(1)), int(m.group(2))
        answered = {int(s) for s in re.findall(r"icmp_seq=(\d+) ttl=", self.output)}
        missing = sorted(set(range(1, sent)) - answered)
        return sent, received, missing


@contextlib.contextmanager
def daemon_lab(
    state_root: Path,
    *,
    nodes: int = 3,
    backend: str = "vxlan",
    daemon_flags: Sequence[str] = (),
    pods: bool = True,
) -> Iterator[DaemonLab]:
    """A lab with a pyflannel daemon and (``pods``) one CNI pod per node, converged; everything
    (processes, namespaces) is removed afterwards, also when the block or the bring-up fails.
    Node state and logs stay under ``state_root`` for post-mortems."""
    from cni_plugin.install import install

    with start_lab(nodes, state_root=state_root) as env:
        cni_bin = state_root / "cni-bin"
        install(cni_bin)
        lab = DaemonLab(env, backend, tuple(daemon_flags), f"{cni_bin}:/usr/lib/cni")
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
        # start_lab's teardown kills every spawned daemon (topology-owned) and the namespaces.
        yield lab


LAB_ETCD_URL = "http://198.51.100.250:2379"
"""Where ``pyflannel lab up`` serves etcd (the etcd host's underlay address)."""


def run_lab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``pyflannel lab ARGS`` (``python -m pyflannel.cli.tools`` is the console script of this
    interpreter); never raises on a non-zero exit: tests assert on it."""
    return subprocess.run(
        [sys.executable, "-m", "pyflannel.cli.tools", "lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def lab_etcdctl(prefix: str, *args: str) -> str:
    """``etcdctl ARGS`` (v3 API) run on the lab's etcd host; its stdout."""
    from pyflannel.lab.netns import run_in

    argv = ["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={LAB_ETCD_URL}", *args]
    return run_in(f"{prefix}-etcd", argv).stdout
