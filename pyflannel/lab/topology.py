"""The namespaced lab: a switch, an etcd host and N node hosts, plus pods, all named by a prefix.

::

    <prefix>-sw     bridge br0 (+ gateway .254)  ── sw-etcd ── eth0  <prefix>-etcd  (.250)
                                                 ── sw-n1   ── eth0  <prefix>-n1    (.1)
                                                 ── sw-nN   ── eth0  <prefix>-nN    (.N)
    <prefix>-n1-<pod>  eth0 ── vh-<pod> ── cni0 in <prefix>-n1   (attach_pod_by_hand)

Underlay 198.51.100.0/24 (or 203.0.113.0/24): nodes .1..N, etcd .250, gateway .254. With
``ipv6=True`` also 2001:db8::/64: nodes ::1..::N (hex), etcd ::fa (250), gateway ::fe (254).
All hosts have MTU 1500 (``mtu=``) and loopback up; nodes have IPv4 (and IPv6) forwarding on.

Every host's default route points at the gateway address on the switch's bridge, so flanneld's
"interface of the default route" choice finds eth0, as on a real machine. Each node has private
state on the host under ``<state_root>/<node>/`` that is bind-mounted on /run/flannel and
/var/lib/cni for every command started through :meth:`Topology.node_exec_argv`; that state
survives restarts of the node's daemons and is never shared between nodes.

Everything made here is found again by name prefix, so :func:`cleanup_prefix` also removes what a
crashed earlier run left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Self, Unpack

import structlog

from pyflannel.closing import Closing
from pyflannel.errors import ConfigError, EtcdUnavailable, NetlinkError
from pyflannel.lab.netns import (
    IP,
    NETNS_DIR,
    RunOptions,
    add_netns,
    delete_netns,
    delete_prefixed,
    exec_argv,
    http_request,
    ip_batch,
    netns_exists,
    prefixed_netns,
    run,
    spawn_in,
    validate_prefix,
)

__all__ = [
    "ETCD_HOST",
    "GATEWAY_HOST",
    "IPV6_UNDERLAY",
    "MAX_NODES",
    "RUN_FLANNEL",
    "UNDERLAYS",
    "VAR_LIB_CNI",
    "LabNode",
    "LabPod",
    "NodeRef",
    "Topology",
    "cleanup_prefix",
    "default_state_root",
]

log = structlog.get_logger(__name__)

# Documentation ranges only (RFC 5737 / RFC 3849): lab packets can never mean a real host.
UNDERLAYS = (IPv4Network("198.51.100.0/24"), IPv4Network("203.0.113.0/24"))
IPV6_UNDERLAY = IPv6Network("2001:db8::/64")
ETCD_HOST = 250
GATEWAY_HOST = 254
MAX_NODES = 249
RUN_FLANNEL = Path("/run/flannel")
VAR_LIB_CNI = Path("/var/lib/cni")
# wireguard-go's UAPI sockets: shared by every namespace unless each node has its own (issue 17).
RUN_WIREGUARD = Path("/run/wireguard")
BRIDGE = "br0"
NODE_IF = "eth0"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"

# Runs inside the node's network namespace and a fresh mount namespace: puts the node's own state
# dirs over /run/flannel and /var/lib/cni, then becomes the real command. Propagation "slave"
# keeps these mounts from leaking out while still letting the host's unmounts (for example of
# other labs' /run/netns entries) reach in, so we never pin someone else's namespace.
_NODE_MOUNT_SH = (
    f'mount --bind "$1" {RUN_FLANNEL} && mount --bind "$2" {VAR_LIB_CNI} && '
    f'mount --bind "$3" {RUN_WIREGUARD} && shift 3 && exec "$@"'
)


def default_state_root(prefix: str) -> Path:
    """Where a lab keeps node state when no ``state_root`` is given."""
    return Path(tempfile.gettempdir()) / "pyflannel-lab" / prefix


def cleanup_prefix(prefix: str) -> list[str]:
    """Remove every namespace (and process in it) named ``prefix``/``prefix-*``, and the default
    state dir of that prefix; return the namespaces removed. Safe to call when nothing exists."""
    removed = delete_prefixed(prefix)
    shutil.rmtree(default_state_root(prefix), ignore_errors=True)
    if removed:
        log.info("lab.cleanup", prefix=prefix, namespaces=len(removed))
    return removed


@dataclass(frozen=True)
class LabNode:
    """One simulated host: its namespace, underlay addresses and private state directories."""

    name: str
    index: int
    ns: str
    ip: IPv4Address
    ip6: IPv6Address | None
    state_dir: Path
    ifname: str = NODE_IF

    @property
    def run_flannel_dir(self) -> Path:
        """Host directory the node sees as /run/flannel."""
        return self.state_dir / "run-flannel"

    @property
    def cni_dir(self) -> Path:
        """Host directory the node sees as /var/lib/cni."""
        return self.state_dir / "var-lib-cni"

    @property
    def run_wireguard_dir(self) -> Path:
        """Host directory the node sees as /run/wireguard (its wireguard-go UAPI sockets)."""
        return self.state_dir / "run-wireguard"

    @property
    def log_dir(self) -> Path:
        """Host directory for this node's daemon logs."""
        return self.state_dir / "log"

    @property
    def subnet_env(self) -> Path:
        """Host path of the node's /run/flannel/subnet.env."""
        return self.run_flannel_dir / "subnet.env"


@dataclass(frozen=True)
class LabPod:
    """A pod namespace attached to a node's bridge by :meth:`Topology.attach_pod_by_hand`."""

    name: str
    node: str
    ns: str
    ip: IPv4Interface
    gateway: IPv4Address
    host_ifname: str
    bridge: str
    ifname: str = "eth0"


NodeRef = str | int | LabNode


class Topology(Closing):
    """A lab of namespaces named ``<prefix>-*``; see the module docstring for the picture.

    ``Topology(prefix, nodes=3).up()`` builds it; ``down()`` removes it (also usable as a context
    manager, which tears down even when the block raises).
    """

    def __init__(
        self,
        prefix: str,
        nodes: int = 3,
        *,
        underlay: str | IPv4Network = "198.51.100.0/24",
        ipv6: bool = False,
        with_etcd: bool = True,
        state_root: Path | str | None = None,
        mtu: int = 1500,
        forwarding: bool = True,
    ) -> None:
        self.prefix = validate_prefix(prefix)
        net = IPv4Network(underlay)
        if net not in UNDERLAYS:
            raise ConfigError(
                f"lab underlay {net} is not one of {', '.join(map(str, UNDERLAYS))}",
                hint="labs use documentation ranges only, so no packet can reach a real network",
            )
        if not 1 <= nodes <= MAX_NODES:
            raise ConfigError(
                f"lab node count {nodes} is outside 1..{MAX_NODES}",
                hint=f"node addresses are .1..N of {net}; .{ETCD_HOST} and .{GATEWAY_HOST} "
                "are taken",
            )
        self.underlay = net
        self.ipv6 = ipv6
        self.mtu = mtu
        self.forwarding = forwarding
        self._owns_state = state_root is None
        self.state_root = Path(state_root) if state_root else default_state_root(prefix)
        base = net.network_address
        base6 = IPV6_UNDERLAY.network_address
        self.gateway = base + GATEWAY_HOST
        self.gateway6: IPv6Address | None = base6 + GATEWAY_HOST if ipv6 else None
        self.switch_ns = f"{prefix}-sw"
        self.etcd_ns: str | None = f"{prefix}-etcd" if with_etcd else None
        self.etcd_ip: IPv4Address | None = base + ETCD_HOST if with_etcd else None
        self.etcd_ip6: IPv6Address | None = base6 + ETCD_HOST if with_etcd and ipv6 else None
        self.nodes: tuple[LabNode, ...] = tuple(
            LabNode(
                name=f"n{i}",
                index=i,
                ns=f"{prefix}-n{i}",
                ip=base + i,
                ip6=base6 + i if ipv6 else None,
                state_dir=self.state_root / f"n{i}",
            )
            for i in range(1, nodes + 1)
        )
        self._procs: list[subprocess.Popen[bytes]] = []
        self._up = False

    # -- lookup -------------------------------------------------------------------------------

    def node(self, ref: NodeRef) -> LabNode:
        """The node named ``ref`` ("n2"), numbered ``ref`` (2), or named by namespace."""
        if isinstance(ref, LabNode):
            return ref
        for n in self.nodes:
            if ref in (n.index, n.name, n.ns):
                return n
        raise ConfigError(
            f"lab {self.prefix} has no node {ref!r}",
            hint=f"nodes are {', '.join(n.name for n in self.nodes)}",
        )

    @property
    def host_namespaces(self) -> list[str]:
        """The etcd and node namespaces (everything plugged into the switch)."""
        return [*([self.etcd_ns] if self.etcd_ns else []), *(n.ns for n in self.nodes)]

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab is built from (pods excluded)."""
        return [self.switch_ns, *self.host_namespaces]

    @property
    def etcd_client_url(self) -> str:
        """Client URL for an etcd listening in the etcd namespace (port 2379 is free there)."""
        if self.etcd_ip is None:
            raise ConfigError(f"lab {self.prefix} was built without an etcd namespace")
        return f"http://{self.etcd_ip}:2379"

    @property
    def etcd_peer_url(self) -> str:
        """Peer URL for that etcd."""
        if self.etcd_ip is None:
            raise ConfigError(f"lab {self.prefix} was built without an etcd namespace")
        return f"http://{self.etcd_ip}:2380"

    # -- life cycle -----------------------------------------------------------------------------

    def is_up(self) -> bool:
        """True when this lab is complete (built here or by an earlier process): every namespace
        exists and every host has its underlay address on eth0."""
        if not all(netns_exists(ns) for ns in self.namespaces):
            return False
        for ns, _, ip4, _ in self._host_ports():
            proc = run([IP, "-n", ns, "-j", "-4", "addr", "show", "dev", NODE_IF], check=False)
            if proc.returncode != 0 or f'"local":"{ip4}"' not in proc.stdout.replace(" ", ""):
                return False
        return True

    def up(self) -> Self:
        """Build the lab. A complete lab with this prefix is reused; a partial one is rebuilt."""
        if self._up:
            return self
        self._make_dirs()
        if self.is_up():
            self._up = True
            log.info("lab.reused", prefix=self.prefix)
            return self
        # Leftovers of a crashed run with this prefix: start from nothing.
        self._remove_all()
        self._make_dirs()
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        self._up = True
        log.info("lab.up", prefix=self.prefix, nodes=len(self.nodes), ipv6=self.ipv6)
        return self

    def down(self) -> list[str]:
        """Kill this lab's processes, delete its namespaces (pods too) by prefix; idempotent.

        The default state dir is removed as well; a ``state_root`` given by the caller is kept.
        """
        for proc in self._procs:
            _kill_group(proc)
        self._procs.clear()
        removed = self._remove_all()
        self._up = False
        return removed

    def _remove_all(self) -> list[str]:
        if self._owns_state:
            return cleanup_prefix(self.prefix)
        return delete_prefixed(self.prefix)

    def close(self) -> None:
        """:meth:`down` as the end of a ``with`` block (which begins with :meth:`up`)."""
        self.down()

    def __enter__(self) -> Self:
        return self.up()

    def _make_dirs(self) -> None:
        # Mount points for the per-node bind mounts. Creating them in the root filesystem is a
        # filesystem change only; the mounts themselves live in each command's mount namespace.
        RUN_FLANNEL.mkdir(parents=True, exist_ok=True)
        VAR_LIB_CNI.mkdir(parents=True, exist_ok=True)
        RUN_WIREGUARD.mkdir(parents=True, exist_ok=True)
        for n in self.nodes:
            for d in (n.run_flannel_dir, n.cni_dir, n.log_dir, n.run_wireguard_dir):
                d.mkdir(parents=True, exist_ok=True)
        if self.etcd_ns:
            (self.state_root / "etcd").mkdir(parents=True, exist_ok=True)

    def _host_ports(self) -> list[tuple[str, str, IPv4Address, IPv6Address | None]]:
        """(namespace, switch-side port name, v4, v6) for every host on the switch."""
        hosts: list[tuple[str, str, IPv4Address, IPv6Address | None]] = []
        if self.etcd_ns and self.etcd_ip:
            hosts.append((self.etcd_ns, "sw-etcd", self.etcd_ip, self.etcd_ip6))
        hosts += [(n.ns, f"sw-{n.name}", n.ip, n.ip6) for n in self.nodes]
        return hosts

    def _build(self) -> None:
        add_netns(self.namespaces)
        plen, plen6 = self.underlay.prefixlen, IPV6_UNDERLAY.prefixlen
        # No STP (ports forward at once), no multicast snooping (ND and vxlan flooding just work)
        # and no br_netfilter calls: the switch must be a plain wire.
        sw = [
            "link set lo up",
            f"link add {BRIDGE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0 "
            "nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0",
            f"link set {BRIDGE} mtu {self.mtu} up",
            f"addr add {self.gateway}/{plen} dev {BRIDGE}",
        ]
        if self.gateway6:
            sw.append(f"addr add {self.gateway6}/{plen6} dev {BRIDGE} nodad")
        for ns, port, _, _ in self._host_ports():
            sw += [
                f"link add {port} mtu {self.mtu} type veth peer name {NODE_IF} netns {ns}",
                f"link set {port} master {BRIDGE} up",
            ]
        ip_batch(sw, self.switch_ns)

        # Each host is configured by one process (its ip batch, then its sysctls), and the hosts,
        # being independent, in parallel: a 200-node lab comes up in about a second.
        node_ns = {n.ns for n in self.nodes}
        sysctls = ["net.ipv4.ip_forward=1"] if self.forwarding else []
        if self.forwarding and self.ipv6:
            sysctls.append("net.ipv6.conf.all.forwarding=1")
        jobs: list[tuple[str, list[str], str]] = []
        for ns, _, ip4, ip6 in self._host_ports():
            lines = [
                "link set lo up",
                f"link set {NODE_IF} mtu {self.mtu} up",
                f"addr add {ip4}/{plen} dev {NODE_IF}",
                f"route add default via {self.gateway} dev {NODE_IF}",
            ]
            if ip6 and self.gateway6:
                lines += [
                    f"addr add {ip6}/{plen6} dev {NODE_IF} nodad",
                    f"route add default via {self.gateway6} dev {NODE_IF}",
                ]
            # Hosts running flannel forward their pods' packets; new namespaces start with 0.
            extra = sysctls if ns in node_ns else []
            jobs.append((ns, _host_setup_argv(ns, extra), "\n".join(lines) + "\n"))
        _run_parallel(jobs)

    def start_etcd(
        self,
        *,
        enable_v2: bool = False,
        extra_args: Sequence[str] = (),
        timeout: float = 15.0,
    ) -> subprocess.Popen[bytes]:
        """Start a single etcd in :attr:`etcd_ns` on :attr:`etcd_client_url` and wait until it is
        healthy; data in ``<state_root>/etcd/data`` (kept across restarts), log beside it.

        For the ``pyflannel lab`` command and bench/; tests use tests/harness (EtcdServer),
        which adds kill/restart/etcdctl helpers. :meth:`down` kills it.
        """
        if self.etcd_ns is None:
            raise ConfigError(f"lab {self.prefix} was built without an etcd namespace")
        etcd_dir = self.state_root / "etcd"
        argv = [
            shutil.which("etcd") or "/usr/bin/etcd",
            "--name", "lab",
            "--data-dir", str(etcd_dir / "data"),
            "--listen-client-urls", self.etcd_client_url,
            "--advertise-client-urls", self.etcd_client_url,
            "--listen-peer-urls", self.etcd_peer_url,
            "--initial-advertise-peer-urls", self.etcd_peer_url,
            "--initial-cluster", f"lab={self.etcd_peer_url}",
            "--initial-cluster-token", f"lab-{self.prefix}",
            "--logger", "zap",
            # A lone member cannot lose touch with peers: short raft timers only speed start-up.
            "--heartbeat-interval", "25", "--election-timeout", "250",
            *(["--enable-v2=true"] if enable_v2 else []),
            *extra_args,
        ]  # fmt: skip
        proc = self.spawn_in(self.etcd_ns, argv, etcd_dir / "etcd.log")
        deadline = time.monotonic() + timeout
        err = ""
        while time.monotonic() < deadline and proc.poll() is None:
            wait = max(0.0, min(1.0, deadline - time.monotonic()))
            status, body, err = http_request(
                f"{self.etcd_client_url}/health", ns=self.etcd_ns, wait=wait, expect="true"
            )
            if status == 200 and b"true" in body:
                log.info("lab.etcd_up", prefix=self.prefix, url=self.etcd_client_url)
                return proc
        _kill_group(proc)
        raise EtcdUnavailable(
            f"lab etcd at {self.etcd_client_url} in {self.etcd_ns} did not become healthy "
            f"within {timeout}s (exit code {proc.returncode}, last error: {err or 'none'})",
            hint=f"see {etcd_dir / 'etcd.log'}",
        )

    # -- running things on nodes ----------------------------------------------------------------

    def node_exec_argv(self, node: NodeRef, argv: Sequence[str]) -> list[str]:
        """argv that runs ``argv`` on ``node``: its netns plus its private /run/flannel and
        /var/lib/cni (bind mounts in a mount namespace of the command's own)."""
        n = self.node(node)
        return exec_argv(
            n.ns,
            [
                "unshare", "--mount", "--propagation", "slave",
                "sh", "-c", _NODE_MOUNT_SH, "pyflannel-node",
                str(n.run_flannel_dir), str(n.cni_dir), str(n.run_wireguard_dir),
                *map(str, argv),
            ],
        )  # fmt: skip

    def run_in_node(
        self, node: NodeRef, argv: Sequence[str], **options: Unpack[RunOptions]
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``node`` (see :meth:`node_exec_argv`) and wait for it."""
        n = self.node(node)
        return run(self.node_exec_argv(n, argv), ns=n.ns, **options)

    def spawn_in_node(
        self,
        node: NodeRef,
        argv: Sequence[str],
        log_path: Path | str | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``node`` in the background, output appended to ``log_path``
        (default ``<node log dir>/<program>.log``). :meth:`down` kills it."""
        n = self.node(node)
        path = Path(log_path) if log_path else n.log_dir / f"{Path(str(argv[0])).name}.log"
        proc = spawn_in(None, self.node_exec_argv(n, argv), path, env=env)
        self._procs.append(proc)
        return proc

    def spawn_in(
        self,
        ns: str,
        argv: Sequence[str],
        log_path: Path | str,
        *,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in any namespace of this lab (e.g. :attr:`etcd_ns`); killed by down()."""
        if ns not in prefixed_netns(self.prefix):
            raise ConfigError(f"namespace {ns!r} does not belong to lab {self.prefix}")
        proc = spawn_in(ns, argv, Path(log_path), env=env)
        self._procs.append(proc)
        return proc

    # -- pods -------------------------------------------------------------------------------------

    def pod_ns(self, node: NodeRef, pod: str) -> str:
        """Name of the namespace of pod ``pod`` on ``node``."""
        if not pod.replace("_", "").isalnum():
            raise ConfigError(f"pod name {pod!r} must be letters, digits or '_'")
        return f"{self.node(node).ns}-{pod}"

    def add_pod_ns(self, node: NodeRef, pod: str) -> str:
        """Create (if missing) the bare namespace of a pod, loopback up; return its name."""
        ns = self.pod_ns(node, pod)
        if add_netns([ns]):
            ip_batch(["link set lo up"], ns)
        return ns

    def remove_pod(self, node: NodeRef, pod: str) -> None:
        """Delete a pod's namespace (its veth pair goes with it)."""
        delete_netns([self.pod_ns(node, pod)])

    def attach_pod_by_hand(
        self,
        node: NodeRef,
        pod: str,
        cidr: str | IPv4Interface,
        gw: str | IPv4Address,
        *,
        bridge: str = "cni0",
        mtu: int | None = None,
    ) -> LabPod:
        """Plug a pod in the way the CNI bridge plugin would, without the plugin.

        Creates ``bridge`` on the node if missing, with ``gw`` (prefix length of ``cidr``) on it,
        a veth pair ``vh-<pod>`` (node side, on the bridge) / ``eth0`` (pod side, address
        ``cidr``), and the pod's default route via ``gw``.
        """
        n = self.node(node)
        addr, gateway = IPv4Interface(cidr), IPv4Address(gw)
        if gateway not in addr.network:
            raise ConfigError(f"pod gateway {gateway} is outside the pod network {addr.network}")
        mtu = mtu or self.mtu
        ns = self.add_pod_ns(n, pod)
        # Interface names are limited to 15 bytes; long pod names get a stable short hash.
        host_if = (
            f"vh-{pod}" if len(pod) <= 12 else f"vh-{hashlib.sha1(pod.encode()).hexdigest()[:12]}"
        )

        node_lines: list[str] = []
        have = _bridge_addrs(n.ns, bridge)
        if have is None:
            node_lines += [f"link add {bridge} mtu {mtu} type bridge", f"link set {bridge} up"]
        if have is None or str(gateway) not in have:
            node_lines.append(f"addr add {gateway}/{addr.network.prefixlen} dev {bridge}")
        node_lines += [
            f"link add {host_if} mtu {mtu} type veth peer name eth0 netns {ns}",
            f"link set {host_if} master {bridge} up",
        ]
        ip_batch(node_lines, n.ns)
        ip_batch(
            [
                "link set lo up",
                "link set eth0 up",
                f"addr add {addr} dev eth0",
                f"route add default via {gateway} dev eth0",
            ],
            ns,
        )
        return LabPod(pod, n.name, ns, addr, gateway, host_if, bridge)


def _bridge_addrs(ns: str, bridge: str) -> list[str] | None:
    """IPv4 addresses on ``bridge`` inside ``ns``, or None when the bridge does not exist."""
    proc = run([IP, "-n", ns, "-j", "-4", "addr", "show", "dev", bridge], check=False, ns=ns)
    if proc.returncode != 0:
        return None
    return [a["local"] for link in json.loads(proc.stdout or "[]") for a in link["addr_info"]]


def _host_setup_argv(ns: str, sysctls: list[str]) -> list[str]:
    """argv that applies an ip batch (stdin) and then ``sysctls`` inside ``ns``.

    ``nsenter --net`` is enough here and cheaper than ``ip netns exec``: net.* sysctls follow
    the network namespace, and nothing needs the namespace's /sys.
    """
    script = 'ip -batch - && { [ "$#" -eq 0 ] || sysctl -qw "$@"; }'
    return [NSENTER, f"--net={NETNS_DIR / ns}", "sh", "-c", script, "lab-host", *sysctls]


def _run_parallel(jobs: list[tuple[str, list[str], str]], width: int = 16) -> None:
    """Run (namespace, argv, stdin) jobs, ``width`` at a time; raise NetlinkError on failures."""
    failed: list[str] = []
    running: list[tuple[str, subprocess.Popen[str]]] = []

    def reap(proc_ns: str, proc: subprocess.Popen[str]) -> None:
        _, err = proc.communicate()
        if proc.returncode != 0:
            failed.append(f"{proc_ns}: {err.strip()}")

    for ns, argv, stdin in jobs:
        if len(running) >= width:
            reap(*running.pop(0))
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdin is not None  # for mypy: PIPE was asked for
        # A few short lines fit the pipe buffer; communicate() later flushes and closes stdin.
        proc.stdin.write(stdin)
        running.append((ns, proc))
    for item in running:
        reap(*item)
    if failed:
        raise NetlinkError(
            f"configuring lab hosts failed: {'; '.join(failed)}",
            hint="run cleanup_prefix(prefix) and try again; see `ip -n NS addr` for the state",
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.warning("lab.process_stuck", pid=proc.pid)
