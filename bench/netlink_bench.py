"""Benchmark: programming N vxlan peers, pyflannel's executor vs ``ip -batch`` + ``bridge -batch``.

Per peer: ``ip neigh replace`` + ``bridge fdb replace ... self permanent`` + ``ip route replace
... onlink`` on a vxlan device. Every measurement runs in a fresh network namespace (the
kernel's cost per entry grows with table size), built and removed by this script; nothing is
touched outside namespaces named with a random ``pfb`` prefix.

Target: ours ≤ 2.0x the ip/bridge batch time for N = 10,000. Results are printed and appended
to bench/RESULTS.md.

    sudo .venv/bin/python bench/netlink_bench.py [--sizes 1000,5000,10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyflannel.netlink.dump import dump_fdb, dump_neighbours, dump_routes
from pyflannel.netlink.executor import apply_ops
from pyflannel.netlink.links import VxlanSpec, ensure_vxlan, get_link, set_link_up
from pyflannel.netlink.nlsocket import NetlinkSocket
from pyflannel.netlink.nsenter import create_netns, delete_netns, in_netns
from pyflannel.netlink.ops import (
    FdbEntry,
    NeighEntry,
    Op,
    Replace,
    RouteEntry,
)

TARGET_RATIO = 2.0
NUD = "nud permanent"
RESULTS = Path(__file__).with_name("RESULTS.md")
LOCAL_IP = ipaddress.IPv4Address("198.51.100.1")


@dataclass(frozen=True)
class Peer:
    subnet: ipaddress.IPv4Network
    mac: str
    public_ip: ipaddress.IPv4Address


def make_peers(n: int) -> list[Peer]:
    """N distinct /24 peer subnets in 10.0.0.0/8 with made-up MACs and underlay IPs."""
    out = []
    for i in range(n):
        subnet = ipaddress.IPv4Network(((10 << 24) | ((i + 256) << 8), 24))
        mac = f"0a:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:00:01"
        public = ipaddress.IPv4Address(int(LOCAL_IP) + 1 + i % 250)
        out.append(Peer(subnet, mac, public))
    return out


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def node_ns(prefix: str, tag: str) -> Iterator[tuple[str, int]]:
    """A namespace with a veth underlay and a fresh flannel.1; yields (ns name, vxlan ifindex)."""
    ns = f"{prefix}{tag}"
    create_netns(ns)
    try:
        ip("-n", ns, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1")
        ip("-n", ns, "addr", "add", f"{LOCAL_IP}/24", "dev", "ul0")
        ip("-n", ns, "link", "set", "ul0", "up")
        ip("-n", ns, "link", "set", "ul1", "up")
        with in_netns(ns), NetlinkSocket() as sock:
            ul = get_link(sock, "ul0")
            assert ul is not None
            dev = ensure_vxlan(sock, VxlanSpec("flannel.1", 1, ul.ifindex, LOCAL_IP))
            set_link_up(sock, dev.ifindex)
        yield ns, dev.ifindex
    finally:
        delete_netns(ns)


def count_entries(ns: str) -> tuple[int, int, int]:
    def lines(cmd: list[str]) -> int:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines() if line.strip())

    return (
        lines(["ip", "-n", ns, "route", "show", "dev", "flannel.1"]),
        lines(["ip", "-n", ns, "neigh", "show", "dev", "flannel.1", "nud", "permanent"]),
        lines(["bridge", "-n", ns, "fdb", "show", "dev", "flannel.1"]),
    )


def run_iproute2(prefix: str, peers: list[Peer], tmp: Path) -> float:
    neigh = tmp / "neigh.batch"
    fdb = tmp / "fdb.batch"
    route = tmp / "route.batch"
    neigh.write_text(
        "".join(
            f"neigh replace {p.subnet.network_address} lladdr {p.mac} dev flannel.1 {NUD}\n"
            for p in peers
        )
    )
    fdb.write_text(
        "".join(
            f"fdb replace {p.mac} dev flannel.1 dst {p.public_ip} self permanent\n" for p in peers
        )
    )
    route.write_text(
        "".join(
            f"route replace {p.subnet} via {p.subnet.network_address} dev flannel.1 onlink\n"
            for p in peers
        )
    )
    with node_ns(prefix, "i") as (ns, _idx):
        t0 = time.perf_counter()
        subprocess.run(["ip", "-n", ns, "-batch", str(neigh)], check=True)
        subprocess.run(["bridge", "-n", ns, "-batch", str(fdb)], check=True)
        subprocess.run(["ip", "-n", ns, "-batch", str(route)], check=True)
        elapsed = time.perf_counter() - t0
        got = count_entries(ns)
    if got != (len(peers),) * 3:
        raise SystemExit(f"ip -batch programmed {got} (route, neigh, fdb), want {len(peers)} each")
    return elapsed


def peer_ops(peers: list[Peer], ifindex: int) -> list[Op]:
    ops: list[Op] = []
    for p in peers:
        gw = p.subnet.network_address
        ops.append(Replace(NeighEntry(gw, p.mac, ifindex)))
        ops.append(Replace(FdbEntry(p.mac, p.public_ip, ifindex)))
        ops.append(Replace(RouteEntry(p.subnet, gw, ifindex, onlink=True)))
    return ops


def run_ours(prefix: str, peers: list[Peer]) -> tuple[float, float]:
    """(apply seconds, dump seconds for routes + neighbours + FDB)."""
    with node_ns(prefix, "o") as (ns, idx):
        ops = peer_ops(peers, idx)
        with in_netns(ns), NetlinkSocket() as sock:
            t0 = time.perf_counter()
            failures = apply_ops(sock, ops)
            elapsed = time.perf_counter() - t0
            t1 = time.perf_counter()
            dumped = (
                len(dump_routes(sock, idx)),
                len(dump_neighbours(sock, idx)),
                len(dump_fdb(sock, idx)),
            )
            dump_s = time.perf_counter() - t1
        got = count_entries(ns)
    if failures:
        raise SystemExit(f"executor failures: {failures[0].message()} (+{len(failures) - 1})")
    if got != (len(peers),) * 3 or dumped != got:
        raise SystemExit(f"executor programmed {got}, dumped {dumped}, want {len(peers)} each")
    return elapsed, dump_s


def git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-results", action="store_true", help="do not append RESULTS.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    sizes = [int(s) for s in args.sizes.split(",")]
    prefix = f"pfb{secrets.token_hex(2)}"
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for n in sizes:
            peers = make_peers(n)
            base_runs, our_runs, dump_runs = [], [], []
            for _ in range(args.repeat):
                base_runs.append(run_iproute2(prefix, peers, Path(tmpdir)))
                ours, dump_s = run_ours(prefix, peers)
                our_runs.append(ours)
                dump_runs.append(dump_s)
            base = statistics.median(base_runs)
            ours = statistics.median(our_runs)
            dump_s = statistics.median(dump_runs)
            rows.append((n, base, ours, dump_s))
            print(
                f"N={n:>6}  ip+bridge -batch {base:7.3f} s ({3 * n / base:8.0f} ops/s)   "
                f"ours {ours:7.3f} s ({3 * n / ours:8.0f} ops/s)   ratio {ours / base:5.2f}   "
                f"dump {dump_s:6.3f} s",
                flush=True,
            )
    header = (
        f"\n## netlink: {3} ops per vxlan peer, executor vs ip/bridge -batch "
        f"({datetime.date.today().isoformat()})\n\n"
        f"kernel {platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"git {git_rev()}, median of {args.repeat} runs, fresh namespace per run. "
        f"Target: ours ≤ {TARGET_RATIO}x ip+bridge -batch.\n\n"
        "| peers | ops | ip+bridge -batch s | ops/s | ours s | ops/s | ours/batch | target "
        "| dump 3 tables s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|\n"
    )
    lines = [
        f"| {n} | {3 * n} | {base:.3f} | {3 * n / base:.0f} | {ours:.3f} | {3 * n / ours:.0f} "
        f"| {ours / base:.2f} | {'met' if ours / base <= TARGET_RATIO else 'missed'} "
        f"| {dump_s:.3f} |\n"
        for n, base, ours, dump_s in rows
    ]
    if not args.no_results:
        with RESULTS.open("a") as f:
            f.write(header + "".join(lines))
        print(f"appended to {RESULTS}")
    return 0 if all(ours / base <= TARGET_RATIO for _, base, ours, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
