"""Benchmark: pod ↔ pod TCP (iperf3) over pyflannel's vxlan / host-gw vs the same path by hand.

One lab, one switch, eight nodes, traffic only between pod namespaces created here:

* ``n1``/``n2`` run the daemon with ``Backend: vxlan`` (etcd prefix ``/bench-vx/network``) and
  ``n3``/``n4`` with ``host-gw`` (``/bench-hg/network``), ``--ip-masq`` as a unit file would;
  one pod each, attached through the real CNI chain (flannel → bridge, portmap);
* ``n5``/``n6``: the limit for vxlan — a kernel VXLAN link made by hand (``vx0``, VNI 1, port
  8472, no learning, MTU 1450, permanent neighbour + FDB entry + onlink route, as flannel
  programs them) and pods plugged into a bridge by hand (MTU 1450), no iptables rules;
* ``n7``/``n8``: the limit for host-gw — the same pods (MTU 1500) with a plain route via the
  other node's underlay address over the veth underlay, no iptables rules.

Each pair runs ``iperf3 -c`` for ``--seconds`` (default 10) from the pod on the first node to
the pod on the second, pyflannel and hand-made alternating, ``--rounds`` times (default 3); the
medians are compared. Targets: vxlan ≥ 0.97×, host-gw ≥ 0.95× of the hand-made path.

    .venv/bin/python bench/bench_throughput.py [--seconds 10] [--rounds 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PeerLab,
    Row,
    append_results,
    fmt_ratio,
    machine_line,
    new_prefix,
    render_rows,
    rows_to_json,
    status_text,
)
from pyflannel.lab.cni import cni_add
from pyflannel.lab.netns import exec_argv, ip_batch
from pyflannel.lab.topology import LabNode

TARGETS = {"vxlan": 0.97, "host-gw": 0.95}
PREFIXES = {"vxlan": "/bench-vx/network", "host-gw": "/bench-hg/network"}
NETWORKS = {"vxlan": "10.5.0.0/16", "host-gw": "10.6.0.0/16"}
VXLAN_MTU = 1450


class IperfServer:
    """``iperf3 -s`` in a pod namespace, bound to the pod address, for a ``with`` block."""

    def __init__(self, ns: str, ip: str, log: Path) -> None:
        self.ns, self.ip, self.log = ns, ip, log

    def __enter__(self) -> IperfServer:
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(
                exec_argv(self.ns, ["iperf3", "-s", "-B", self.ip]),
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while not self.listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(
                    f"iperf3 server in {self.ns} on {self.ip} did not start "
                    f"(exit {self.proc.poll()}): {self.log.read_text()[-1000:]}"
                )
            time.sleep(0.05)
        return self

    def listening(self) -> bool:
        out = subprocess.run(
            exec_argv(self.ns, ["ss", "-Hltn", "sport", "= :5201"]),
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        return "LISTEN" in out

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def iperf(client_ns: str, dst: str, seconds: float) -> float:
    """Gbit/s received, one TCP stream, ``seconds`` long (the server must be running)."""
    out = ""
    for _ in range(30):  # until the server listens
        done = subprocess.run(
            exec_argv(client_ns, ["iperf3", "-J", "-c", dst, "-t", str(seconds)]),
            capture_output=True, text=True, timeout=seconds + 30, check=False,
        )  # fmt: skip
        out = done.stdout
        if done.returncode == 0:
            break
        time.sleep(0.2)
    result = json.loads(out)
    if "error" in result:
        route = subprocess.run(
            exec_argv(client_ns, ["ip", "route", "get", dst]), capture_output=True, text=True
        ).stdout.strip()
        raise RuntimeError(f"iperf3 {client_ns} → {dst}: {result['error']} (route: {route})")
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9


def start_flannel_pair(
    lab: PeerLab, backend: str, a: LabNode, b: LabNode, cni_path: str
) -> list[tuple[str, str]]:
    """Daemons on a and b, one CNI pod each; [(pod ns, pod ip)] for a and b."""
    prefix = PREFIXES[backend]
    lab.set_config(network=NETWORKS[backend], backend=backend, etcd_prefix=prefix)
    for n in (a, b):
        lab.start_daemon(n, f"--etcd-prefix={prefix}")
    pods = []
    for n in (a, b):
        lab.wait_log_event(n, "daemon.subnet_file_written", timeout=60)
    for n in (a, b):
        # each must have the other's route before traffic flows
        lab.wait_log_event(n, "backend.peers_programmed", timeout=60)
        ns = lab.topo.add_pod_ns(n, "pod")
        result = cni_add(lab.topo, n, ns, f"{lab.prefix}-{n.name}-pod", cni_path)
        pods.append((ns, result["ips"][0]["address"].split("/")[0]))
    return pods


def hand_vxlan_pair(lab: PeerLab, a: LabNode, b: LabNode) -> list[tuple[str, str]]:
    """vx0 by hand on a and b (as flannel programs it) and one pod each."""
    subnets = {a.name: 1, b.name: 2}
    macs = {a.name: "0a:58:0a:07:01:00", b.name: "0a:58:0a:07:02:00"}
    pods = []
    for me, peer in ((a, b), (b, a)):
        mine, theirs = subnets[me.name], subnets[peer.name]
        ip_batch(
            [
                f"link add vx0 address {macs[me.name]} mtu {VXLAN_MTU} type vxlan id 1 "
                f"local {me.ip} dev eth0 dstport 8472 nolearning",
                f"addr add 10.7.{mine}.0/32 dev vx0",
                "link set vx0 up",
                f"neigh replace 10.7.{theirs}.0 lladdr {macs[peer.name]} dev vx0 nud permanent",
                f"route replace 10.7.{theirs}.0/24 via 10.7.{theirs}.0 dev vx0 onlink",
            ],
            me.ns,
        )
        subprocess.run(
            ["bridge", "-n", me.ns, "fdb", "replace", macs[peer.name], "dev", "vx0",
             "dst", str(peer.ip), "self", "permanent"],
            check=True, capture_output=True,
        )  # fmt: skip
        pod = lab.topo.attach_pod_by_hand(
            me, "pod", f"10.7.{mine}.2/24", f"10.7.{mine}.1", mtu=VXLAN_MTU
        )
        # The pod side of the veth as the bridge plugin makes it: FLANNEL_MTU, like cni0.
        ip_batch([f"link set eth0 mtu {VXLAN_MTU}"], pod.ns)
        pods.append((pod.ns, str(pod.ip.ip)))
    return pods


def hand_route_pair(lab: PeerLab, a: LabNode, b: LabNode) -> list[tuple[str, str]]:
    """Plain routes via the other node's underlay address (host-gw by hand), one pod each."""
    subnets = {a.name: 1, b.name: 2}
    pods = []
    for me, peer in ((a, b), (b, a)):
        mine, theirs = subnets[me.name], subnets[peer.name]
        pod = lab.topo.attach_pod_by_hand(me, "pod", f"10.8.{mine}.2/24", f"10.8.{mine}.1")
        ip_batch([f"route replace 10.8.{theirs}.0/24 via {peer.ip} dev eth0"], me.ns)
        pods.append((pod.ns, str(pod.ip.ip)))
    return pods


def measure(seconds: float, rounds: int, prefix: str) -> dict[str, dict[str, list[float]]]:
    """{backend: {"ours": [Gbit/s...], "hand": [...]}}."""
    from cni_plugin.install import install

    with PeerLab(prefix, nodes=8) as lab:
        n = lab.nodes
        bindir = lab.state_root / "cni-bin"
        install(bindir)
        cni_path = f"{bindir}:/usr/lib/cni"
        pairs = {
            "vxlan": (
                start_flannel_pair(lab, "vxlan", n[0], n[1], cni_path),
                hand_vxlan_pair(lab, n[4], n[5]),
            ),
            "host-gw": (
                start_flannel_pair(lab, "host-gw", n[2], n[3], cni_path),
                hand_route_pair(lab, n[6], n[7]),
            ),
        }
        out: dict[str, dict[str, list[float]]] = {}
        for backend, (ours, hand) in pairs.items():
            res: dict[str, list[float]] = {"ours": [], "hand": []}
            log = lab.state_root / f"iperf-{backend}.log"
            with IperfServer(*ours[1], log), IperfServer(*hand[1], log):
                # Warm-up (ARP, conntrack, route caches), not counted.
                for src, dst in (ours, hand):
                    iperf(src[0], dst[1], 1)
                for r in range(rounds):
                    order = [("ours", ours), ("hand", hand)]
                    for name, ((src_ns, _), (_, dst_ip)) in order if r % 2 == 0 else order[::-1]:
                        gbps = iperf(src_ns, dst_ip, seconds)
                        res[name].append(gbps)
                        print(f"{backend:8s} {name:5s} round {r}: {gbps:.2f} Gbit/s", flush=True)
            out[backend] = res
        return out


def rows(data: dict[str, dict[str, list[float]]], seconds: float) -> list[Row]:
    out = []
    for backend, res in data.items():
        ours, hand = statistics.median(res["ours"]), statistics.median(res["hand"])
        ratio = ours / hand
        limit = "kernel VXLAN link by hand" if backend == "vxlan" else "plain routes by hand"
        out.append(
            Row(
                f"pod↔pod TCP iperf3 {seconds:.0f} s, {backend}",
                f"{ours:.2f} Gbit/s",
                f"{limit} {hand:.2f} Gbit/s",
                fmt_ratio(ratio),
                f"≥ {TARGETS[backend]}×",
                status_text(ratio >= TARGETS[backend]),
            )
        )
    return out


def detail(data: dict[str, dict[str, list[float]]]) -> str:
    lines = ["### Throughput samples (Gbit/s, in run order)", ""]
    for backend, res in data.items():
        lines.append(
            f"- {backend}: pyflannel {', '.join(f'{x:.2f}' for x in res['ours'])}; "
            f"by hand {', '.join(f'{x:.2f}' for x in res['hand'])}"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    data = measure(args.seconds, args.rounds, args.prefix or new_prefix("p"))
    out, text = rows(data, args.seconds), detail(data)
    print(render_rows(out) + "\n" + text)
    if args.json:
        rows_to_json(args.json, out, text)
    elif not args.no_results:
        append_results(
            f"## bench_throughput ({machine_line()})\n\n" + render_rows(out) + "\n" + text
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
