"""``pyflannel lab up|check|down``: a sandbox cluster on one Linux box, in network namespaces.

``up`` builds the topology (switch, etcd host, N nodes), starts etcd, writes the network config,
runs ``pyflanneld`` on every node with its own /run/flannel and /var/lib/cni, and attaches one
pod per node through the real CNI chain (flannel + portmap). ``check`` prints the leases and an
all-pairs pod connectivity matrix. ``down`` removes everything by name. Nothing is added to the
root network namespace.

``--stack dual`` (or ``ipv6``) gives the underlay 2001:db8::/64 as well and makes the network
dual-stack (IPv6-only): ``IPv6Network`` :data:`NETWORK6`; pods then get an address of each
family and ``check`` pings every address.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from pyflannel.errors import FlannelError
from pyflannel.lease import decode_attrs, parse_subnet_key

__all__ = [
    "NETWORK",
    "NETWORK6",
    "STACKS",
    "LabState",
    "Stack",
    "check",
    "down",
    "main",
    "settle_ipv6",
    "up",
]

DEFAULT_PREFIX = "pfl"
NETWORK = "10.5.0.0/16"
NETWORK6 = "fd00:10:5::/48"  # a unique-local range: lab pod addresses never mean a real host
ETCD_PREFIX = "/coreos.com/network"
READY_TIMEOUT = 60.0
DAD_TIMEOUT = 10.0

Stack = Literal["ipv4", "dual", "ipv6"]
STACKS: tuple[Stack, ...] = ("ipv4", "dual", "ipv6")


@dataclass
class LabPodState:
    node: str
    ns: str
    container_id: str
    ip: str  # the first address (IPv4 unless the lab is IPv6-only)
    result: Any
    ips: list[str] = field(default_factory=list)  # every address, IPv4 first

    @property
    def addresses(self) -> list[str]:
        """Every pod address (state files written before dual stack only have ``ip``)."""
        return self.ips or [self.ip]


@dataclass
class LabState:
    """What ``up`` made, saved for ``check`` and ``down``."""

    prefix: str
    nodes: int
    backend: str
    state_root: str
    pods: list[LabPodState]
    stack: Stack = "ipv4"
    kube: bool = False  # --kube: an API server instead of bare etcd (pyflannel/lab/kube.py)

    @classmethod
    def load(cls, path: Path) -> LabState:
        data = json.loads(path.read_text())
        data["pods"] = [LabPodState(**p) for p in data["pods"]]
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))


def _state_root(prefix: str) -> Path:
    from pyflannel.lab.topology import default_state_root

    return default_state_root(prefix)


def _topology(prefix: str, nodes: int, stack: Stack = "ipv4") -> Any:
    from pyflannel.lab.topology import Topology

    return Topology(prefix, nodes=nodes, state_root=_state_root(prefix), ipv6=stack != "ipv4")


def _say(text: str) -> None:
    print(text, flush=True)


def _network_config(backend: str, stack: Stack = "ipv4") -> str:
    config: dict[str, Any] = {}
    if stack == "ipv6":
        config["EnableIPv4"] = False
    else:
        config["Network"] = NETWORK
    if stack != "ipv4":
        config.update(EnableIPv6=True, IPv6Network=NETWORK6)
    config["Backend"] = {"Type": backend}
    return json.dumps(config)


def _tentative_ipv6(ns: str) -> list[str]:
    """IPv6 addresses in ``ns`` still doing (or failed at) duplicate address detection."""
    from pyflannel.lab.netns import run_in

    out = run_in(ns, ["ip", "-6", "-j", "addr", "show"], check=False).stdout.strip()
    return [
        f"{link['ifname']}:{a['local']}"
        for link in (json.loads(out) if out else [])
        for a in link.get("addr_info", [])
        if a.get("tentative") or a.get("dadfailed")
    ]


def settle_ipv6(namespaces: list[str], timeout: float = DAD_TIMEOUT) -> list[str]:
    """Wait until no IPv6 address in ``namespaces`` is tentative; return those that still are
    after ``timeout`` (empty when all settled).

    The bridge plugin gives cni0 the pod gateway address without skipping DAD, and the kernel
    gives cni0 and the veths link-local addresses with DAD too. While any of them is tentative
    the node's first IPv6 exchanges through cni0 can stall for a second or more (measured here:
    about one run in five lost the first cross-node ping; none after waiting for every address,
    link-local included). IPv4 has no such wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        pending = [a for ns in namespaces for a in _tentative_ipv6(ns)]
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(0.1)


def up(
    prefix: str, nodes: int, backend: str, stack: Stack = "ipv4", *, kube: bool = False
) -> LabState:
    """Build (or rebuild) the lab and return its state once every node is ready.

    ``stack``: ``ipv4`` (``Network`` only), ``dual`` (plus ``IPv6Network``, IPv6 underlay) or
    ``ipv6`` (``EnableIPv4: false``).
    """
    from pyflannel.lab.cni import cni_add
    from pyflannel.lab.netns import run_in

    if stack not in STACKS:
        raise FlannelError(f"unknown lab stack {stack!r}", hint=f"use one of {', '.join(STACKS)}")
    started = time.monotonic()
    state_file = _state_root(prefix) / "lab.json"
    if state_file.exists() or _topology(prefix, nodes, stack).is_up():
        _say(f"lab {prefix}: removing the previous lab first")
        down(prefix)
    topo = _topology(prefix, nodes, stack).up()
    root = Path(topo.state_root)
    _say(f"lab {prefix}: {nodes} nodes, switch {topo.switch_ns}, etcd {topo.etcd_ns}")
    config = _network_config(backend, stack)
    if kube:
        # --kube: kube-apiserver (+ its etcd) on the etcd host, Node objects with podCIDRs.
        from pyflannel.lab.kube import lab_daemon_env, lab_daemon_flags, lab_kube_up

        srv = lab_kube_up(
            topo, root, config, None if stack == "ipv6" else NETWORK,
            None if stack == "ipv4" else NETWORK6,
        )  # fmt: skip
        _say(f"lab {prefix}: kube-apiserver at {srv.url}; net-conf.json {config}")
    else:
        topo.start_etcd()
        etcdctl = ["etcdctl", f"--endpoints={topo.etcd_client_url}", "--dial-timeout=2s"]
        run_in(
            topo.etcd_ns,
            ["env", "ETCDCTL_API=3", *etcdctl, "put", f"{ETCD_PREFIX}/config", config],
        )
        _say(f"lab {prefix}: network config {config}")

    cni_bin = root / "cni-bin"
    from cni_plugin.install import install

    install(cni_bin)
    cni_path = f"{cni_bin}:/usr/lib/cni"

    for node in topo.nodes:
        mode = lab_daemon_flags(root) if kube else [f"--etcd-endpoints={topo.etcd_client_url}"]
        topo.spawn_in_node(
            node,
            [
                sys.executable, "-m", "pyflannel",
                *mode,
                "--ip-masq",
                "--healthz-port=10256",
                "--healthz-ip=127.0.0.1",
            ],
            node.log_dir / "pyflanneld.log",
            env=lab_daemon_env(node.name) if kube else None,
        )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT
    for node in topo.nodes:
        while not node.subnet_env.exists():
            if time.monotonic() > deadline:
                log = node.log_dir / "pyflanneld.log"
                tail = log.read_text()[-2000:] if log.exists() else "(no log)"
                raise FlannelError(
                    f"pyflanneld on {node.name} did not write {node.subnet_env} within "
                    f"{READY_TIMEOUT:.0f}s; last log lines:\n{tail}",
                    hint=f"see {log}",
                )
            time.sleep(0.05)
        subnets = [
            line.split("=", 1)[1]
            for line in node.subnet_env.read_text().splitlines()
            if line.startswith(("FLANNEL_SUBNET=", "FLANNEL_IPV6_SUBNET="))
        ]
        _say(f"lab {prefix}: {node.name} ready ({', '.join(subnets)})")

    pods: list[LabPodState] = []
    for node in topo.nodes:
        ns = topo.add_pod_ns(node, "pod1")
        cid = f"{prefix}-{node.name}-pod1"
        result = cni_add(topo, node, ns, cid, cni_path)
        ips = [entry["address"].split("/")[0] for entry in result["ips"]]
        pods.append(
            LabPodState(node=node.name, ns=ns, container_id=cid, ip=ips[0], result=result, ips=ips)
        )
        _say(f"lab {prefix}: pod {ns} on {node.name} has {', '.join(ips)}")
    if stack != "ipv4":
        pending = settle_ipv6([n.ns for n in topo.nodes] + [p.ns for p in pods])
        if pending:
            _say(f"lab {prefix}: IPv6 addresses still tentative: {', '.join(pending)}")
    state = LabState(prefix, nodes, backend, str(root), pods, stack, kube)
    state.save(state_file)
    _say(f"lab {prefix}: up in {time.monotonic() - started:.1f}s; logs in {root}/<node>/log/")
    return state


def _leases(prefix: str) -> list[tuple[str, ...]]:
    from pyflannel.lab.netns import run_in

    ns = f"{prefix}-etcd"
    topo_url = "http://198.51.100.250:2379"
    out = run_in(
        ns,
        ["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={topo_url}", "get", "--prefix",
         f"{ETCD_PREFIX}/subnets", "-w", "json"],
    ).stdout  # fmt: skip
    rows: list[tuple[str, ...]] = []
    v6_rows: list[tuple[str, str, str]] = []
    import base64

    for kv in json.loads(out).get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()
        try:
            subnet, subnet6 = parse_subnet_key(key)
            attrs = decode_attrs(base64.b64decode(kv["value"]), key=key)
        except FlannelError as exc:
            rows.append((key, "?", "?", "?", f"unparsable: {exc}"))
            v6_rows.append(("?", "?", "?"))
            continue
        data = attrs.backend_data if isinstance(attrs.backend_data, dict) else {}
        data6 = attrs.backend_v6_data if isinstance(attrs.backend_v6_data, dict) else {}
        v6_rows.append(
            (
                str(subnet6 or "-"),
                str(attrs.public_ipv6 or "-"),
                str(data6.get("VtepMAC", "-")),
            )
        )
        lease_id = int(kv.get("lease", 0))
        expires = "reservation"
        if lease_id:
            ttl = run_in(
                ns,
                ["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={topo_url}", "lease",
                 "timetolive", format(lease_id, "x"), "-w", "json"],
            ).stdout  # fmt: skip
            expires = f"{int(json.loads(ttl).get('ttl', -1))}s"
        rows.append(
            (str(subnet or "-"), str(attrs.public_ip), attrs.backend_type or "udp",
             str(data.get("VtepMAC", "-")), expires)
        )  # fmt: skip
    if any(r[0] != "-" for r in v6_rows):
        # Dual-stack or IPv6-only leases: the IPv6 half goes in extra columns.
        rows = [(*r[:4], *r6, r[4]) for r, r6 in zip(rows, v6_rows, strict=True)]
    return rows


def check(prefix: str) -> bool:
    """Print the lease table and the pod connectivity matrix; True when every pair works."""
    from pyflannel.lab.netns import ping

    state_file = _state_root(prefix) / "lab.json"
    if not state_file.exists():
        raise FlannelError(f"no lab named {prefix!r} is up", hint="run `pyflannel lab up` first")
    state = LabState.load(state_file)
    header: tuple[str, ...] = ("SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES IN")
    if state.kube:
        from pyflannel.lab.kube import lab_node_rows
        from pyflannel.lab.topology import ETCD_HOST, UNDERLAYS

        _say("Nodes in the API server:")
        header = ("NODE", "PODCIDRS", "PUBLIC IP", "BACKEND", "VTEP MAC", "NETWORKUNAVAILABLE")
        host = str(UNDERLAYS[0].network_address + ETCD_HOST)
        leases = lab_node_rows(Path(state.state_root), f"{prefix}-etcd", host)
    else:
        _say(f"leases in etcd ({ETCD_PREFIX}/subnets):")
        leases = _leases(prefix)
    if leases and len(leases[0]) > len(header):
        header = (*header[:4], "IPV6 SUBNET", "PUBLIC IPV6", "VTEP MAC V6", header[4])
    rows = [header, *leases]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        _say("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    _say("")
    _say("pod connectivity (row pings column):")
    # One column per pod address: dual-stack pods are checked over both families.
    targets = [(p, ip) for p in state.pods for ip in p.addresses]
    names = [f"{p.node}/{p.ip}" for p in state.pods]
    columns = [f"{p.node}/{ip}" for p, ip in targets]
    width = max(len(n) for n in names + columns) + 2
    _say(" " * width + "".join(n.ljust(width) for n in columns))
    all_ok = True
    for src, src_name in zip(state.pods, names, strict=True):
        cells = []
        for _, dst_ip in targets:
            ok, rtt = ping(src.ns, dst_ip, count=1, timeout=2.0)
            all_ok &= ok
            cells.append((f"✓ {rtt:.2f}ms" if ok and rtt is not None else "✓") if ok else "✗")
        _say(src_name.ljust(width) + "".join(c.ljust(width) for c in cells))
    _say("")
    _say("all pods reach each other" if all_ok else "SOME PODS CANNOT REACH EACH OTHER")
    return all_ok


def down(prefix: str) -> list[str]:
    """Remove every namespace, process and file of the lab ``prefix``."""
    from pyflannel.lab.topology import cleanup_prefix

    removed = cleanup_prefix(prefix)
    shutil.rmtree(_state_root(prefix), ignore_errors=True)
    return removed


def main(argv: list[str]) -> int:
    """``pyflannel lab up|check|down``."""
    parser = argparse.ArgumentParser(prog="pyflannel lab", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["up", "check", "down"])
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    parser.add_argument(
        "--backend", choices=["vxlan", "host-gw", "udp", "wireguard"], default="vxlan"
    )
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace name prefix")
    parser.add_argument(
        "--stack",
        choices=STACKS,
        default="ipv4",
        help=f"address families of the pod network (default ipv4; dual/ipv6 add IPv6Network "
        f"{NETWORK6} over a 2001:db8::/64 underlay)",
    )
    parser.add_argument(
        "--kube",
        action="store_true",
        help="run a kube-apiserver with a Node per node instead of bare etcd; the daemons "
        "use --kube-subnet-mgr",
    )
    args = parser.parse_args(argv)
    if shutil.which("ip") is None or shutil.which("etcd") is None:
        print("pyflannel lab: needs iproute2 and etcd (run scripts/setup)", file=sys.stderr)
        return 1
    try:
        if args.action == "up":
            if not 1 <= args.nodes <= 200:
                print("pyflannel lab: --nodes must be 1..200", file=sys.stderr)
                return 2
            up(args.prefix, args.nodes, args.backend, cast(Stack, args.stack), kube=args.kube)
            return 0
        if args.action == "check":
            return 0 if check(args.prefix) else 1
        removed = down(args.prefix)
        _say(f"lab {args.prefix}: removed {len(removed)} namespaces")
        return 0
    except FlannelError as exc:
        print(f"pyflannel lab {args.action}: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"pyflannel lab {args.action}: {exc}", file=sys.stderr)
        return 1
