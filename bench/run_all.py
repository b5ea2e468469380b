"""The performance suite: every benchmark, one table, appended to bench/RESULTS.md.

    make bench                       # = .venv/bin/python bench/run_all.py
    .venv/bin/python bench/run_all.py --quick --no-results   # small sizes, ~3 min, no record
    .venv/bin/python bench/run_all.py --only startup,cni

Each benchmark runs as its own process (fresh interpreter, its own lab of namespaces named with
this run's random prefix) and hands its rows back as JSON; a benchmark that fails becomes an
ERROR row instead of stopping the suite. After each one, and at the end, every namespace whose
name starts with the run's prefix is removed, so nothing is left behind even after a crash; the
end of the table says whether anything had to be removed. Every figure is a ratio against a limit
measured in the same run (or, where the issue names none, stated context); absolute times are
shown for reading, never used as pass/fail. Needs root (network namespaces). Takes about 10
minutes on the 2-core box.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PYTHON,
    REPO,
    Row,
    append_results,
    fmt_ratio,
    machine_line,
    new_prefix,
    render_rows,
    rows_from_json,
    rows_to_json,
    status_text,
)
from pyflannel.lab.netns import delete_netns, list_netns

BENCH = REPO / "bench"


@dataclass(frozen=True)
class Bench:
    """One benchmark script: its arguments for a full and for a quick run."""

    name: str
    script: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    timeout: float = 600.0
    tag: str = ""
    rows_expected: tuple[str, ...] = field(default=())


BENCHES = (
    Bench("snapshot", "bench_snapshot.py", ("--sizes", "1000,5000,10000", "--repeat", "2"),
          ("--sizes", "1000,3000", "--repeat", "1"), tag="s"),
    Bench("latency", "bench_latency.py", ("--peers", "10000", "--samples", "300"),
          ("--peers", "1000", "--samples", "50"), tag="l"),
    Bench("resources", "bench_resources.py", ("--peers", "10000", "--window", "62"),
          ("--peers", "1000", "--window", "10"), tag="r"),
    Bench("startup", "bench_startup.py", ("--samples", "7", "--importtime"),
          ("--samples", "3",), tag="t"),
    Bench("cni", "run_all.py", ("--cni", "-n", "20"), ("--cni", "-n", "5"), tag="c"),
    Bench("throughput", "bench_throughput.py", ("--seconds", "10", "--rounds", "3"),
          ("--seconds", "2", "--rounds", "1"), tag="p"),
    Bench("200nodes", "bench_200nodes.py", ("--nodes", "200",), ("--nodes", "20",),
          timeout=900.0, tag="n"),
    Bench("kube", "bench_kube.py", ("--n", "5000", "--events", "50"),
          ("--n", "500", "--events", "10"), timeout=900.0, tag="k"),
    Bench("wireguard", "bench_wireguard.py", ("--seconds", "10", "--no-record"),
          ("--seconds", "2", "--no-record"), tag="w"),
)  # fmt: skip


def leftovers(run_prefix: str) -> list[str]:
    """Namespaces of this run still present."""
    return [n for n in list_netns() if n.startswith(run_prefix)]


def clean(run_prefix: str) -> list[str]:
    """Remove every namespace and state dir of this run; the namespaces that had to go."""
    left = leftovers(run_prefix)
    if left:
        delete_netns(left)
    for d in Path("/dev/shm/pyflannel-bench").glob(f"{run_prefix}*"):
        shutil.rmtree(d, ignore_errors=True)
    return left


def run_one(b: Bench, quick: bool, run_prefix: str, tmp: Path) -> tuple[list[Row], str, float]:
    """Run one benchmark process; its rows (an ERROR row if it failed), detail, seconds."""
    out = tmp / f"{b.name}.json"
    argv = [PYTHON, str(BENCH / b.script), *(b.quick if quick else b.full), "--json", str(out)]
    if b.script != "run_all.py":
        argv += ["--prefix", f"{run_prefix}{b.tag}"]
    print(f"\n=== {b.name}: {' '.join(argv[1:])}", flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, timeout=b.timeout, cwd=REPO, stderr=subprocess.PIPE, text=True)
        failure = (
            None
            if proc.returncode == 0 and out.exists()
            else f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
    except subprocess.TimeoutExpired:
        failure = f"timed out after {b.timeout:.0f} s"
    elapsed = time.monotonic() - t0
    removed = clean(run_prefix)
    if removed:
        print(f"removed {len(removed)} namespaces left by {b.name}", flush=True)
    if failure is not None:
        return [Row(b.name, "—", "—", "—", "—", "ERROR", failure)], "", elapsed
    rows, detail = rows_from_json(out)
    return rows, detail, elapsed


def cni_main(n: int, json_out: str) -> int:
    """``--cni``: bench/cni_bench.py (the CNI helper's benchmark) as rows for this table."""
    from bench import cni_bench

    result = cni_bench.run(n)
    text, _met = cni_bench.report(result, n)
    start = result.median("startup")
    rows = []
    for cmd in ("add", "del"):
        ours, bridge = result.median(f"ours_{cmd}"), result.median(f"bridge_{cmd}")
        ratio = result.round_ratio(cmd)  # per round: (ours - bridge) / interpreter start
        rows.append(
            Row(
                f"CNI {cmd.upper()} (flannel → bridge) vs bare bridge",
                f"added {(ours - bridge) * 1e3:.1f} ms ({ours * 1e3:.1f} vs {bridge * 1e3:.1f} ms)",
                f"interpreter start (python -I -S -c pass) {start * 1e3:.1f} ms",
                fmt_ratio(ratio),
                f"added ≤ {cni_bench.TARGET_RATIO}× interpreter start",
                status_text(ratio <= cni_bench.TARGET_RATIO),
            )
        )
    print(text)
    rows_to_json(json_out, rows, text.replace("## CNI plugin", "### CNI plugin", 1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (for development)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--no-results", action="store_true", help="do not append RESULTS.md")
    parser.add_argument("--cni", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/run_all.py needs root (it builds network namespaces)")
    if args.cni:
        return cni_main(args.n, args.json)
    only = {s for s in args.only.split(",") if s}
    unknown = only - {b.name for b in BENCHES}
    if unknown:
        names = [b.name for b in BENCHES]
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from {names}")
    run_prefix = new_prefix()
    header = machine_line()
    t0 = time.monotonic()
    all_rows: list[Row] = []
    details: list[str] = []
    timings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pfbench-") as tmpdir:
        try:
            for b in BENCHES:
                if only and b.name not in only:
                    continue
                rows, detail, elapsed = run_one(b, args.quick, run_prefix, Path(tmpdir))
                all_rows += rows
                if detail:
                    details.append(detail)
                timings.append(f"{b.name} {elapsed:.0f} s")
                print(render_rows(rows), flush=True)
        finally:
            removed = clean(run_prefix)
    total = time.monotonic() - t0
    left = leftovers(run_prefix)
    missed = [r for r in all_rows if r.status in ("MISSED", "ERROR")]
    kind = "quick run (small sizes)" if args.quick else "full run"
    text = (
        f"## Performance suite, {kind} — {header}\n\n"
        "`make bench` (bench/run_all.py). Ratios compare with a limit measured in the same run;"
        " absolute figures are for reading only. Reasons for missed targets: bench/NOTES.md.\n\n"
        + render_rows(all_rows)
        + f"\n{len(all_rows) - len(missed)} of {len(all_rows)} rows met their target. "
        f"Took {total / 60:.1f} min ({', '.join(timings)}). Namespaces left behind: "
        f"{'none' if not left else ', '.join(left)}"
        f"{f' (the final clean-up had to remove {len(removed)})' if removed else ''}.\n\n"
        + "\n".join(details)
    )
    print("\n" + text)
    if not args.no_results:
        append_results(text)
        print(f"appended to {REPO / 'bench' / 'RESULTS.md'}")
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
