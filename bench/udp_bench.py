"""Benchmark: pod ↔ pod throughput over the udp backend vs kernel VXLAN, and what it costs.

For each configuration a 2-node lab is built with ``pyflannel lab up`` (real daemons, real CNI
chain, namespaces named with a random ``pfb`` prefix, removed afterwards):

* ``vxlan`` - the kernel data path (the reference);
* ``udp`` - the userspace forwarder as shipped (one thread, UDP GSO/GRO, TCP coalescing);
* ``udp-split`` - one forwarder thread per direction (``PYFLANNEL_UDP_THREADS=split``);
* ``udp-plain`` - one syscall per packet, no batching (``PYFLANNEL_UDP_OFFLOAD=0``),
  i.e. what a straight port of flanneld's C proxy does.

Per configuration: iperf3 TCP (pod on node 1 → pod on node 2) and iperf3 UDP at a fixed offered
rate, ``--seconds`` each (default 10). CPU is read from ``/proc/<pid>/stat`` of both daemons
(user + system time, summed over both nodes, in cores) and from ``/proc/stat`` for the whole
machine (kernel VXLAN does its work in softirq, charged to no daemon). Target: udp TCP
throughput ≥ 0.10x kernel VXLAN. Results are printed and appended to bench/RESULTS.md.

``--profile`` also samples the sending and receiving daemons with py-spy (give its path with
``--py-spy``; ``pip install py-spy`` into any venv) and prints the hottest frames per daemon.

    sudo .venv/bin/python bench/udp_bench.py [--seconds 10] [--configs vxlan,udp,...]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyflannel.lab.command import LabState, down, up
from pyflannel.lab.netns import netns_pids

TARGET_RATIO = 0.10
RESULTS = Path(__file__).with_name("RESULTS.md")
UDP_RATE = "1G"  # offered iperf3 UDP rate
UDP_LEN = 1400  # datagram payload: fits both MTUs (vxlan 1450, udp 1472)
# iperf3's receiving socket buffer: with the default (~200 KB) a busy box loses datagrams at
# the receiving *application* (UdpRcvbufErrors in the pod), whatever the data path
UDP_SOCKBUF = "4M"

CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    "vxlan": ("vxlan", {}),
    "udp": ("udp", {"PYFLANNEL_UDP_THREADS": "single", "PYFLANNEL_UDP_OFFLOAD": "1"}),
    "udp-split": ("udp", {"PYFLANNEL_UDP_THREADS": "split", "PYFLANNEL_UDP_OFFLOAD": "1"}),
    "udp-plain": ("udp", {"PYFLANNEL_UDP_THREADS": "single", "PYFLANNEL_UDP_OFFLOAD": "0"}),
}


@dataclass
class Run:
    config: str
    test: str  # "tcp" or "udp"
    mbps: float
    retrans_or_loss: str
    daemon_cores: float  # both daemons, user + system
    daemon_user: float
    machine_busy: float  # fraction of all CPUs busy


def _daemon_pids(prefix: str) -> list[int]:
    pids = []
    for node in ("n1", "n2"):
        for pid in netns_pids(f"{prefix}-{node}"):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"pyflannel" in argv and b"-m" in argv:
                pids.append(pid)
    return pids


def _proc_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime (whole process, all threads)


def _machine_ticks() -> tuple[int, int]:
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in cpu]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _iperf(server_ns: str, client_ns: str, dst: str, args: list[str], seconds: float) -> dict:  # type: ignore[type-arg]
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = subprocess.run(
            ["ip", "netns", "exec", client_ns, "iperf3", "-J", "-c", dst,
             "-t", str(seconds), *args],
            capture_output=True, text=True, timeout=seconds + 30, check=False,
        ).stdout  # fmt: skip
    finally:
        srv.kill()
        srv.wait()
    result: dict = json.loads(out)  # type: ignore[type-arg]
    if "error" in result:
        raise RuntimeError(f"iperf3: {result['error']}")
    return result


@contextlib.contextmanager
def _lab(backend: str, env: dict[str, str]) -> Iterator[tuple[str, LabState]]:
    prefix = f"pfb{secrets.token_hex(2)}"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        state = up(prefix, 2, backend)
        yield prefix, state
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        down(prefix)


def _measure(config: str, seconds: float, profile: str | None) -> list[Run]:
    backend, env = CONFIGS[config]
    runs = []
    hz = os.sysconf("SC_CLK_TCK")
    with _lab(backend, env) as (prefix, state):
        pids = _daemon_pids(prefix)
        p1, p2 = state.pods
        udp_args = ["-u", "-b", UDP_RATE, "-l", str(UDP_LEN), "-w", UDP_SOCKBUF]
        for test, args in (("tcp", []), ("udp", udp_args)):
            before = [_proc_ticks(p) for p in pids]
            m0 = _machine_ticks()
            t0 = time.monotonic()
            spies = []
            if profile and test == "tcp" and backend == "udp":
                spies = _start_profiles(profile, pids, seconds)
            res = _iperf(p2.ns, p1.ns, p2.ip, args, seconds)
            wall = time.monotonic() - t0
            m1 = _machine_ticks()
            after = [_proc_ticks(p) for p in pids]
            user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True)) / hz / wall
            system = sum(a[1] - b[1] for a, b in zip(after, before, strict=True)) / hz / wall
            busy = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
            end = res["end"]
            if test == "tcp":
                mbps = end["sum_received"]["bits_per_second"] / 1e6
                extra = f"{end['sum_sent'].get('retransmits', 0)} retr"
            else:
                mbps = end["sum"]["bits_per_second"] / 1e6 * (1 - end["sum"]["lost_percent"] / 100)
                extra = f"{end['sum']['lost_percent']:.1f}% lost"
            runs.append(Run(config, test, mbps, extra, user + system, user, busy))
            print(
                f"  {config:10} {test}: {mbps:8.0f} Mbit/s  {extra:>12}  daemons "
                f"{user + system:.2f} cores (user {user:.2f})  machine {busy:.0%}",
                flush=True,
            )
            for spy in spies:
                _report_profile(*spy)
    return runs


def _start_profiles(
    py_spy: str, pids: list[int], seconds: float
) -> list[tuple[str, int, subprocess.Popen[str]]]:
    out = []
    for pid in pids:
        path = f"/tmp/udp-bench-{pid}.txt"
        proc = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds) - 2)),
             "--rate", "200", "--format", "raw", "--output", path, "--nonblocking", "--threads"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        out.append((path, pid, proc))
    return out


def _report_profile(path: str, pid: int, proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=60)
    if not Path(path).exists():
        print(f"    py-spy on {pid} failed: {err.strip()[-300:]}")
        return
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "udp_forwarder" not in stack:
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        # the innermost frame that is ours or a syscall wrapper
        leaf[_short(frames[-1])] += n
    print(f"    py-spy, daemon {pid}, forwarder thread: {total} samples")
    for name, n in leaf.most_common(12):
        print(f"      {n / max(1, total):6.1%}  {name}")


def _short(frame: str) -> str:
    return frame.replace("/work/main/", "").strip()


def _env_line() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        rev = "?"
    return (
        f"kernel {platform.release()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, git {rev}, load average before "
        f"{os.getloadavg()[0]:.2f}"
    )


def _append_results(runs: list[Run], seconds: float, env: str) -> None:
    by = {(r.config, r.test): r for r in runs}
    ref = by.get(("vxlan", "tcp"))
    lines = [
        "",
        f"## udp backend: pod ↔ pod iperf3 vs kernel VXLAN ({datetime.date.today()})",
        "",
        f"{env}. 2-node lab (`pyflannel lab up`), iperf3 {seconds:g} s per test, TCP "
        f"one stream; UDP offered {UDP_RATE}bit/s of {UDP_LEN}-byte datagrams, socket buffers "
        f"{UDP_SOCKBUF} (goodput shown; iperf3's UDP sender tops out well below the offer). "
        "Daemon CPU = both pyflanneld processes (user+system, in cores); machine = all CPUs "
        f"busy. Target: udp TCP ≥ {TARGET_RATIO:.2f}x vxlan.",
        "",
        "| config | test | Mbit/s | x vxlan | retr / loss | daemons, cores | of it user | "
        "machine busy |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        base = by.get(("vxlan", r.test))
        ratio = f"{r.mbps / base.mbps:.2f}" if base and base.mbps else "-"
        lines.append(
            f"| {r.config} | {r.test} | {r.mbps:.0f} | {ratio} | {r.retrans_or_loss} | "
            f"{r.daemon_cores:.2f} | {r.daemon_user:.2f} | {r.machine_busy:.0%} |"
        )
    udp = by.get(("udp", "tcp"))
    if ref and udp:
        met = "met" if udp.mbps >= TARGET_RATIO * ref.mbps else "NOT met"
        lines += ["", f"udp TCP = {udp.mbps / ref.mbps:.2f}x kernel VXLAN: target {met}."]
    with RESULTS.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {RESULTS}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per iperf3 test")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--profile", action="store_true", help="py-spy the udp daemons")
    parser.add_argument("--py-spy", default="py-spy", help="path of the py-spy binary")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("udp_bench: needs root (network namespaces)", file=sys.stderr)
        return 1
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        print(f"udp_bench: unknown config(s) {unknown}; choose from {list(CONFIGS)}")
        return 2
    env = _env_line()
    print(env)
    runs: list[Run] = []
    for config in configs:
        runs += _measure(config, args.seconds, args.py_spy if args.profile else None)
    if not args.no_record:
        _append_results(runs, args.seconds, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
