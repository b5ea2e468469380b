"""``pyflannel lab up|check|down``: a sandbox cluster on one Linux box, in network namespaces.

``up`` builds the topology (switch, etcd host, N nodes), starts etcd, writes the network config,
runs ``pyflanneld`` on every node with its own /run/flannel and /var/lib/cni, and attaches one
pod per node through the real CNI chain (flannel + portmap). ``check`` prints the leases and an
all-pairs pod connectivity matrix. ``down`` removes everything by name. Nothing is added to the
root network namespace.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyflannel.errors import FlannelError
from pyflannel.lease import decode_attrs, parse_subnet_key

__all__ = ["LabState", "check", "down", "main", "up"]

DEFAULT_PREFIX = "pfl"
NETWORK = "10.5.0.0/16"
ETCD_PREFIX = "/coreos.com/network"
READY_TIMEOUT = 60.0


@dataclass
class LabPodState:
    node: str
    ns: str
    container_id: str
    ip: str
    result: Any


@dataclass
class LabState:
    """What ``up`` made, saved for ``check`` and ``down``."""

    prefix: str
    nodes: int
    backend: str
    state_root: str
    pods: list[LabPodState]

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


def _topology(prefix: str, nodes: int) -> Any:
    from pyflannel.lab.topology import Topology

    return Topology(prefix, nodes=nodes, state_root=_state_root(prefix))


def _say(text: str) -> None:
    print(text, flush=True)


def _network_config(backend: str) -> str:
    return json.dumps({"Network": NETWORK, "Backend": {"Type": backend}})


def up(prefix: str, nodes: int, backend: str) -> LabState:
    """Build (or rebuild) the lab and return its state once every node is ready."""
    from pyflannel.lab.cni import cni_add
    from pyflannel.lab.netns import run_in

    started = time.monotonic()
    state_file = _state_root(prefix) / "lab.json"
    if state_file.exists() or _topology(prefix, nodes).is_up():
        _say(f"lab {prefix}: removing the previous lab first")
        down(prefix)
    topo = _topology(prefix, nodes).up()
    root = Path(topo.state_root)
    _say(f"lab {prefix}: {nodes} nodes, switch {topo.switch_ns}, etcd {topo.etcd_ns}")
    topo.start_etcd()
    etcdctl = ["etcdctl", f"--endpoints={topo.etcd_client_url}", "--dial-timeout=2s"]
    config = _network_config(backend)
    run_in(topo.etcd_ns, ["env", "ETCDCTL_API=3", *etcdctl, "put", f"{ETCD_PREFIX}/config", config])
    _say(f"lab {prefix}: network config {config}")

    cni_bin = root / "cni-bin"
    from cni_plugin.install import install

    install(cni_bin)
    cni_path = f"{cni_bin}:/usr/lib/cni"

    for node in topo.nodes:
        topo.spawn_in_node(
            node,
            [
                sys.executable, "-m", "pyflannel",
                f"--etcd-endpoints={topo.etcd_client_url}",
                "--ip-masq",
                "--healthz-port=10256",
                "--healthz-ip=127.0.0.1",
            ],
            node.log_dir / "pyflanneld.log",
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
        _say(f"lab {prefix}: {node.name} ready ({node.subnet_env.read_text().split()[1]})")

    pods: list[LabPodState] = []
    for node in topo.nodes:
        ns = topo.add_pod_ns(node, "pod1")
        cid = f"{prefix}-{node.name}-pod1"
        result = cni_add(topo, node, ns, cid, cni_path)
        ip = result["ips"][0]["address"].split("/")[0]
        pods.append(LabPodState(node=node.name, ns=ns, container_id=cid, ip=ip, result=result))
        _say(f"lab {prefix}: pod {ns} on {node.name} has {ip}")
    state = LabState(prefix, nodes, backend, str(root), pods)
    state.save(state_file)
    _say(f"lab {prefix}: up in {time.monotonic() - started:.1f}s; logs in {root}/<node>/log/")
    return state


def _leases(prefix: str) -> list[tuple[str, str, str, str, str]]:
    from pyflannel.lab.netns import run_in

    ns = f"{prefix}-etcd"
    topo_url = "http://198.51.100.250:2379"
    out = run_in(
        ns,
        ["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={topo_url}", "get", "--prefix",
         f"{ETCD_PREFIX}/subnets", "-w", "json"],
    ).stdout  # fmt: skip
    rows = []
    import base64

    for kv in json.loads(out).get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()
        try:
            subnet, _ = parse_subnet_key(key)
            attrs = decode_attrs(base64.b64decode(kv["value"]), key=key)
        except FlannelError as exc:
            rows.append((key, "?", "?", "?", f"unparsable: {exc}"))
            continue
        data = attrs.backend_data if isinstance(attrs.backend_data, dict) else {}
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
            (str(subnet), str(attrs.public_ip), attrs.backend_type or "udp",
             str(data.get("VtepMAC", "-")), expires)
        )  # fmt: skip
    return rows


def check(prefix: str) -> bool:
    """Print the lease table and the pod connectivity matrix; True when every pair works."""
    from pyflannel.lab.netns import ping

    state_file = _state_root(prefix) / "lab.json"
    if not state_file.exists():
        raise FlannelError(f"no lab named {prefix!r} is up", hint="run `pyflannel lab up` first")
    state = LabState.load(state_file)
    _say(f"leases in etcd ({ETCD_PREFIX}/subnets):")
    header = ("SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES IN")
    rows = [header, *_leases(prefix)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        _say("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    _say("")
    _say("pod connectivity (row pings column):")
    names = [f"{p.node}/{p.ip}" for p in state.pods]
    width = max(len(n) for n in names) + 2
    _say(" " * width + "".join(n.ljust(width) for n in names))
    all_ok = True
    for src, src_name in zip(state.pods, names, strict=True):
        cells = []
        for dst in state.pods:
            ok, rtt = ping(src.ns, dst.ip, count=1, timeout=2.0)
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
    parser.add_argument("--backend", choices=["vxlan", "host-gw", "udp"], default="vxlan")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace name prefix")
    args = parser.parse_args(argv)
    if shutil.which("ip") is None or shutil.which("etcd") is None:
        print("pyflannel lab: needs iproute2 and etcd (run scripts/setup)", file=sys.stderr)
        return 1
    try:
        if args.action == "up":
            if not 1 <= args.nodes <= 200:
                print("pyflannel lab: --nodes must be 1..200", file=sys.stderr)
                return 2
            up(args.prefix, args.nodes, args.backend)
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
