"""Benchmark: daemon process start → READY (subnet.env written), vs a bare interpreter start.

A lab with ``--samples`` nodes and one etcd holding a small network config
(``10.5.0.0/16``, vxlan). Each sample starts ``python -m pyflannel --ip-masq`` on a node of its
own (fresh namespace, no previous subnet.env: a first start, which allocates a lease), and takes
the time from ``Popen`` until the node's subnet.env exists; the daemon is then stopped. In the
same round the limit is measured: ``python -I -S -c pass`` on the same interpreter, started
through the same wrapper (``ip netns exec`` + mount namespace, as the daemon) — the bare
interpreter, without the wrapper, is shown as well.

The daemon's phases come from its JSON log (first line = imports done, interface chosen, lease
acquired, subnet.env written). With ``--importtime`` one extra start runs with
``PYTHONPROFILEIMPORTTIME=1`` and the heaviest imports before READY are listed.

Target: READY ≤ 5× the interpreter start.

    .venv/bin/python bench/bench_startup.py [--samples 7] [--importtime] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PYTHON,
    PeerLab,
    Row,
    append_results,
    fmt_ratio,
    log_time,
    machine_line,
    new_prefix,
    read_json_log,
    render_rows,
    rows_to_json,
    status_text,
)
from pyflannel.lab.topology import LabNode

TARGET_RATIO = 5.0
PHASES = (
    ("first log line", None),
    ("etcd config read", "daemon.interface_selected"),
    ("lease acquired", "daemon.lease_acquired"),
    ("subnet.env written", "daemon.subnet_file_written"),
)


def interpreter(lab: PeerLab, node: LabNode, wrapped: bool) -> float:
    """Seconds for ``python -I -S -c pass`` (through the node wrapper if ``wrapped``)."""
    argv = [PYTHON, "-I", "-S", "-c", "pass"]
    if wrapped:
        argv = lab.topo.node_exec_argv(node, argv)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - t0


def start_once(
    lab: PeerLab, node: LabNode, env: dict[str, str] | None = None
) -> tuple[float, dict[str, float]]:
    """Start the daemon on ``node``; (seconds to subnet.env, phase offsets from its log)."""
    path = node.subnet_env
    if path.exists():
        path.unlink()
    t_wall = time.time()
    t0 = time.perf_counter()
    proc = lab.start_daemon(node, env=env)
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}:\n{lab.log_tail(node)}")
        if time.perf_counter() - t0 > 60:
            raise RuntimeError(f"no subnet.env after 60 s:\n{lab.log_tail(node)}")
        time.sleep(0.001)
    ready = time.perf_counter() - t0
    # Let the daemon finish the log line it writes right after subnet.env.
    lab.wait_log_event(node, "daemon.subnet_file_written", timeout=10)
    lab.stop_daemon(node)
    entries = read_json_log(lab.log_path(node))
    phases: dict[str, float] = {}
    for name, event in PHASES:
        for e in entries:
            if event is None or e.get("event") == event:
                phases[name] = log_time(e) - t_wall
                break
    return ready, phases


def import_profile(lab: PeerLab, node: LabNode, top: int = 15) -> str:
    """One extra start with -X importtime: the heaviest imports (cumulative) before READY."""
    start_once(lab, node, env={"PYTHONPROFILEIMPORTTIME": "1"})
    text = lab.log_path(node).read_text(errors="replace")
    # Only what was imported before READY (the log line written right after subnet.env).
    text = text.split('"event": "daemon.subnet_file_written"', 1)[0]
    rows = []
    for m in re.finditer(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", text):
        rows.append((int(m.group(2)), len(m.group(3)) // 2, m.group(4), int(m.group(1))))
    total = sum(cum for cum, depth, _, _ in rows if depth == 0)
    lines = [
        f"imports before READY: {len(rows)} modules, {total / 1e3:.0f} ms cumulative "
        "(top-level sum, -X importtime inflates it ~10-20 %)",
        "",
        "| top-level import | cumulative ms |",
        "|---|---:|",
    ]
    for cum, _, name, _ in sorted((r for r in rows if r[1] == 0), reverse=True)[:top]:
        lines.append(f"| {name} | {cum / 1e3:.0f} |")
    heavy = sorted(rows, key=lambda r: -r[3])[:top]
    lines += ["", "| module (self time) | self ms |", "|---|---:|"]
    lines += [f"| {name} | {own / 1e3:.1f} |" for _, _, name, own in heavy]
    return "\n".join(lines) + "\n"


def measure(samples: int, prefix: str, importtime: bool) -> dict[str, object]:
    with PeerLab(prefix, nodes=samples + (1 if importtime else 0)) as lab:
        lab.set_config(network="10.5.0.0/16")
        ready, wrapped, bare = [], [], []
        phases: dict[str, list[float]] = {}
        for i in range(samples):
            node = lab.nodes[i]
            bare.append(interpreter(lab, node, wrapped=False))
            wrapped.append(interpreter(lab, node, wrapped=True))
            r, ph = start_once(lab, node)
            ready.append(r)
            for k, v in ph.items():
                phases.setdefault(k, []).append(v)
            print(
                f"sample {i}: READY {r * 1e3:.0f} ms, interpreter {wrapped[-1] * 1e3:.1f} ms "
                f"(bare {bare[-1] * 1e3:.1f} ms)",
                flush=True,
            )
        profile = import_profile(lab, lab.nodes[samples]) if importtime else ""
    return {
        "ready": ready,
        "wrapped": wrapped,
        "bare": bare,
        "phases": {k: statistics.median(v) for k, v in phases.items()},
        "profile": profile,
    }


def rows(data: dict[str, object]) -> list[Row]:
    ready = statistics.median(data["ready"])  # type: ignore[arg-type]
    wrapped = statistics.median(data["wrapped"])  # type: ignore[arg-type]
    bare = statistics.median(data["bare"])  # type: ignore[arg-type]
    ratio = ready / wrapped
    return [
        Row(
            "process start → READY (subnet.env written)",
            f"{ready * 1e3:.0f} ms",
            f"python3 -I -S -c pass {wrapped * 1e3:.0f} ms (same wrapper; bare {bare * 1e3:.0f})",
            fmt_ratio(ratio),
            f"≤ {TARGET_RATIO:.0f}×",
            status_text(ratio <= TARGET_RATIO),
        )
    ]


def detail(data: dict[str, object]) -> str:
    phases: dict[str, float] = data["phases"]  # type: ignore[assignment]
    lines = [
        "### Start-up phases (median, ms from Popen; from the daemon's log)",
        "",
        "| phase | ms |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v * 1e3:.0f} |" for k, v in phases.items()]
    text = "\n".join(lines) + "\n"
    if data["profile"]:
        text += "\n" + str(data["profile"])
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=7)
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    data = measure(args.samples, args.prefix or new_prefix("t"), args.importtime)
    out, text = rows(data), detail(data)
    print(render_rows(out) + "\n" + text)
    if args.json:
        rows_to_json(args.json, out, text)
    elif not args.no_results:
        append_results(f"## bench_startup ({machine_line()})\n\n" + render_rows(out) + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
