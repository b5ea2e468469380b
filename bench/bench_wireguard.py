"""Benchmark: pod ↔ pod TCP over the wireguard backend (wireguard-go here) vs a bare veth pair
and vs the vxlan backend, in the same run.

* ``veth`` - two namespaces joined by one veth pair: the ceiling of the machine;
* ``vxlan`` - a 2-node lab (``pyflannel lab up --backend vxlan``), kernel encapsulation;
* ``wireguard`` - a 2-node lab with ``--backend wireguard``: encryption in wireguard-go when the
  kernel has no module.

iperf3 TCP, one stream, ``--seconds`` each (default 10). Absolute figures are for reading only;
the ratios wireguard/veth and wireguard/vxlan are what is recorded (appended to
bench/RESULTS.md). Namespaces use a random ``pfb`` prefix and are removed afterwards.

    sudo .venv/bin/python bench/bench_wireguard.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row, rows_to_json
from pyflannel.lab.command import down, up
from pyflannel.lab.netns import add_netns, delete_prefixed, ip_batch

RESULTS = Path(__file__).with_name("RESULTS.md")


def _iperf(server_ns: str, client_ns: str, dst: str, seconds: float) -> tuple[float, int]:
    """(Mbit/s received, retransmits) of one iperf3 TCP run."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = subprocess.run(
            ["ip", "netns", "exec", client_ns, "iperf3", "-J", "-c", dst, "-t", str(seconds)],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        ).stdout
    finally:
        srv.kill()
        srv.wait()
    res = json.loads(out)
    if "error" in res:
        raise RuntimeError(f"iperf3: {res['error']}")
    end = res["end"]
    return end["sum_received"]["bits_per_second"] / 1e6, int(end["sum_sent"].get("retransmits", 0))


def _veth(seconds: float, prefix: str) -> tuple[float, int]:
    a, b = f"{prefix}-a", f"{prefix}-b"
    try:
        add_netns([a, b])
        ip_batch(
            [
                f"link add va type veth peer name vb netns {b}",
                "addr add 10.99.0.1/30 dev va",
                "link set va up",
                "link set lo up",
            ],
            ns=a,
        )
        ip_batch(["addr add 10.99.0.2/30 dev vb", "link set vb up", "link set lo up"], ns=b)
        return _iperf(b, a, "10.99.0.2", seconds)
    finally:
        delete_prefixed(prefix)


def _lab(backend: str, seconds: float, prefix: str) -> tuple[float, int]:
    try:
        state = up(prefix, 2, backend)
        p1, p2 = state.pods
        return _iperf(p2.ns, p1.ns, p2.ip, seconds)
    finally:
        down(prefix)


def main() -> int:
    """Measure the three, print them, append the table to bench/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-record", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--prefix", default=None, help="namespace prefix (run_all gives one)")
    parser.add_argument("--json", default=None, help="also write run_all's rows here")
    args = parser.parse_args()
    base = args.prefix or f"pfb{secrets.token_hex(2)}"
    load = os.getloadavg()
    results: dict[str, tuple[float, int]] = {}
    for i, name in enumerate(("veth", "vxlan", "wireguard")):
        prefix = f"{base}{i}"
        results[name] = (
            _veth(args.seconds, prefix) if name == "veth" else _lab(name, args.seconds, prefix)
        )
        print(f"  {name:10} {results[name][0]:8.0f} Mbit/s  {results[name][1]} retr", flush=True)
    wg, veth, vx = results["wireguard"][0], results["veth"][0], results["vxlan"][0]
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    lines = [
        "",
        f"## wireguard backend: pod ↔ pod TCP vs veth and vxlan ({datetime.date.today()})",
        "",
        f"kernel {platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"git {git}, load average before {load[0]:.2f}. 2-node labs (`pyflannel lab up`), iperf3 "
        f"{args.seconds:.0f} s, TCP one stream. WireGuard runs in wireguard-go (no kernel module "
        "here). Absolute figures for reading only; the ratios are what is recorded.",
        "",
        "| path | Mbit/s | retr | wireguard / this |",
        "|---|---:|---:|---:|",
    ]
    for name, (mbps, retr) in results.items():
        lines.append(f"| {name} | {mbps:.0f} | {retr} | {wg / mbps:.3f} |")
    lines += [
        "",
        f"wireguard = {wg / veth:.3f}x veth, {wg / vx:.3f}x vxlan (encryption in userspace).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.json:
        rows = [
            Row(
                "pod↔pod TCP iperf3, wireguard (wireguard-go)",
                f"{wg / 1000:.2f} Gbit/s",
                f"vxlan {vx / 1000:.2f} Gbit/s, veth {veth / 1000:.2f} Gbit/s",
                f"{wg / vx:.3f}×",
                "— (recorded for reading: userspace crypto)",
                "n/a",
            )
        ]
        rows_to_json(args.json, rows, text)
    if not args.no_record:
        with RESULTS.open("a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
