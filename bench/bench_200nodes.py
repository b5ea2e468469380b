"""Benchmark: 200 nodes (namespaces) starting their daemons at once against one etcd.

A lab of 200 nodes and one etcd (network ``10.5.0.0/16``, vxlan: 255 possible /24 subnets, so
allocations really race). All 200 ``python -m pyflannel --ip-masq`` are started back to back;
the time each node's subnet.env appears is recorded, with the CPU time its daemon had used by
then. Checked afterwards: 200 leases in etcd, 200 distinct ``FLANNEL_SUBNET`` values, each
lease's PublicIP the address of the node whose subnet.env names it.

For context, in the same run: 200 ``python -I -S -c pass`` started at once the same way (the
bare interpreter's share of the box), and the CPU floor — the daemons' summed CPU time to
READY divided by the number of CPUs: no scheduling can make the last READY earlier than that.

Target: 200 distinct subnets, all READY ≤ 10 s.

    .venv/bin/python bench/bench_200nodes.py [--nodes 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ETCD_PREFIX,
    PYTHON,
    PeerLab,
    Row,
    append_results,
    cpu_seconds,
    fmt_ratio,
    machine_line,
    new_prefix,
    read_json_log,
    render_rows,
    rows_to_json,
    status_text,
)

TARGET_SECONDS = 10.0
TIMEOUT = 300.0
# A daemon that exits before READY is started again after this long, as the shipped unit
# (systemd/pyflanneld.service: Restart=on-failure, RestartSec=5) would.
RESTART_SEC = 5.0


def interpreters_at_once(lab: PeerLab) -> float:
    """Seconds until ``python -I -S -c pass`` started on every node at once has exited."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(lab.topo.node_exec_argv(n, [PYTHON, "-I", "-S", "-c", "pass"]))
        for n in lab.nodes
    ]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"python -I -S -c pass exited {p.returncode}")
    return time.perf_counter() - t0


def subnet_of(env_text: str) -> str | None:
    for line in env_text.splitlines():
        if line.startswith("FLANNEL_SUBNET="):
            return str(ipaddress.IPv4Interface(line.split("=", 1)[1]).network)
    return None


def measure(nodes: int, prefix: str) -> dict[str, object]:
    with PeerLab(prefix, nodes=nodes) as lab:
        lab.set_config(network="10.5.0.0/16")
        bare = interpreters_at_once(lab)
        print(f"{nodes} bare interpreters at once: {bare:.2f} s", flush=True)
        t0 = time.perf_counter()
        procs = {n.name: lab.start_daemon(n) for n in lab.nodes}
        spawned = time.perf_counter() - t0
        ready: dict[str, float] = {}
        cpu: dict[str, float] = {}
        cpu_before: dict[str, float] = {}  # CPU of earlier, failed runs of a node's daemon
        restarts: list[str] = []
        restart_at: dict[str, float] = {}
        pending = {n.name: n for n in lab.nodes}
        while pending and time.perf_counter() - t0 < TIMEOUT:
            now = time.perf_counter()
            for name, node in list(pending.items()):
                if name in restart_at:
                    if now >= restart_at[name]:
                        del restart_at[name]
                        procs[name] = lab.start_daemon(node)
                    continue
                if node.subnet_env.exists():
                    ready[name] = now - t0
                    try:
                        cpu[name] = cpu_before.get(name, 0.0) + cpu_seconds(procs[name].pid)
                    except OSError:
                        cpu[name] = float("nan")
                    del pending[name]
                elif procs[name].poll() is not None:
                    # The CPU of a reaped child shows up in our own children's usage only.
                    cpu_before[name] = cpu_before.get(name, 0.0) + float("nan")
                    last = [e for e in read_json_log(lab.log_path(node)) if "error" in e]
                    why = last[-1]["error"] if last else f"exit {procs[name].returncode}"
                    restarts.append(f"{name} at {now - t0:.0f} s: {why}")
                    restart_at[name] = now + RESTART_SEC
            time.sleep(0.02)
        subnets = {}
        for n in lab.nodes:
            if n.subnet_env.exists():
                subnets[n.name] = subnet_of(n.subnet_env.read_text())
        leases = lab.etcd.values(f"{ETCD_PREFIX}/subnets/")
        # lease → node: the node whose underlay address is the lease's PublicIP
        owner_ok = 0
        by_ip = {str(n.ip): n.name for n in lab.nodes}
        for key, value in leases.items():
            sub = key.rsplit("/", 1)[1].replace("-", "/")
            owner = by_ip.get(json.loads(value).get("PublicIP", ""))
            if owner is not None and subnets.get(owner) == sub:
                owner_ok += 1
        return {
            "nodes": nodes,
            "bare": bare,
            "spawned": spawned,
            "ready": sorted(ready.values()),
            "cpu": [c for c in cpu.values() if c == c],
            "distinct": len({s for s in subnets.values() if s}),
            "leases": len(leases),
            "owner_ok": owner_ok,
            "pending": sorted(pending),
            "restarts": restarts,
        }


def rows(d: dict[str, object]) -> list[Row]:
    nodes = int(d["nodes"])  # type: ignore[call-overload]
    ready: list[float] = d["ready"]  # type: ignore[assignment]
    cpu: list[float] = d["cpu"]  # type: ignore[assignment]
    bare = float(d["bare"])  # type: ignore[arg-type]
    all_ready = ready[-1] if len(ready) == nodes else float("inf")
    floor = sum(cpu) / (os.cpu_count() or 1)  # daemons that restarted are left out (nan)
    ok = (
        len(ready) == nodes
        and d["distinct"] == nodes
        and d["leases"] == nodes
        and d["owner_ok"] == nodes
        and all_ready <= TARGET_SECONDS
    )
    restarts: list[str] = d["restarts"]  # type: ignore[assignment]
    return [
        Row(
            f"{nodes} nodes started at once against one etcd",
            f"{len(ready)}/{nodes} READY, {d['distinct']} distinct subnets, "
            f"{d['leases']} leases; all READY {all_ready:.1f} s"
            + (f" ({len(restarts)} restarts)" if restarts else ""),
            f"{nodes}× python -I -S -c pass at once {bare:.1f} s; CPU floor {floor:.1f} s",
            fmt_ratio(all_ready / bare),
            f"{nodes} distinct subnets, all READY ≤ {TARGET_SECONDS:.0f} s",
            status_text(ok),
        )
    ]


def detail(d: dict[str, object]) -> str:
    ready: list[float] = d["ready"]  # type: ignore[assignment]
    cpu: list[float] = d["cpu"]  # type: ignore[assignment]
    nodes = int(d["nodes"])  # type: ignore[call-overload]
    q = [ready[min(len(ready) - 1, int(p * len(ready)))] for p in (0.1, 0.5, 0.9)] if ready else []
    return (
        f"### {nodes} nodes at once\n\n"
        f"- spawning all {nodes} took {float(d['spawned']):.2f} s (`ip netns exec` + mount "  # type: ignore[arg-type]
        "namespace per daemon)\n"
        f"- READY after (s): first {ready[0]:.1f}, p10 {q[0]:.1f}, p50 {q[1]:.1f}, p90 {q[2]:.1f}, "
        f"last {ready[-1]:.1f}\n"
        f"- CPU per daemon to READY: median {statistics.median(cpu):.2f} s, total "
        f"{sum(cpu):.0f} s on {os.cpu_count()} CPUs\n"
        f"- leases whose PublicIP matches the node holding that subnet: {d['owner_ok']}/{nodes}"
        + (f"; never READY: {', '.join(d['pending'])}" if d["pending"] else "")  # type: ignore[arg-type]
        + "\n"
        + "".join(
            f"- daemon exited before READY, restarted after {RESTART_SEC:.0f} s: {r}\n"
            for r in d["restarts"]  # type: ignore[attr-defined]
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    data = measure(args.nodes, args.prefix or new_prefix("n"))
    out, text = rows(data), detail(data)
    print(render_rows(out) + "\n" + text)
    if args.json:
        rows_to_json(args.json, out, text)
    elif not args.no_results:
        append_results(f"## bench_200nodes ({machine_line()})\n\n" + render_rows(out) + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
