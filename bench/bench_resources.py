"""Benchmark: the daemon's peak RSS and idle CPU with 0 and with 10,000 peers.

One lab, two nodes, one etcd, two etcd prefixes: node 1 runs the daemon with
``--etcd-prefix=/bench-empty/network`` (a network with no other node), node 2 with the default
prefix under which 10,000 peer leases were written. Both run with ``--ip-masq`` (iptables
resync every 5 s, flanneld's default) and the backend's 60 s reconcile, i.e. their periodic work.

* peak RSS: ``VmHWM`` of the daemon process once its snapshot is programmed (the peak over its
  whole life, start-up and the 10k snapshot included);
* idle CPU: user + system time of the daemon *and the children it waited for* (iptables-save,
  iptables-restore), as a share of one core, over two back-to-back windows of ``--window``
  seconds (default 62: each holds one periodic backend resync and a dozen iptables resyncs)
  starting ``--settle`` s after the snapshot. Window A holds the first periodic resync after
  the snapshot, which always reconciles every peer in full; in window B the resync finds
  nothing changed and is skipped. At most 29 resyncs in a row are skipped, so the steady
  state is B plus (A − B) / 30, which is the figure compared with the target.

Limits: none measured; flanneld's published figures (~15 MiB RSS, ~5 mCPU idle) are stated as
context. Targets: ≤ 64 MiB, ≤ 0.5 % of a core.

    .venv/bin/python bench/bench_resources.py [--peers 10000] [--window 62] [--json FILE]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PeerLab,
    Row,
    append_results,
    cpu_seconds,
    fmt_ratio,
    machine_line,
    memory_kib,
    new_prefix,
    peer_specs,
    render_rows,
    rows_to_json,
    status_text,
)

TARGET_RSS_MIB = 64.0
TARGET_CPU_PCT = 0.5
FLANNELD_RSS_MIB = 15.0
FLANNELD_CPU_PCT = 0.5  # 5 mCPU
EMPTY_PREFIX = "/bench-empty/network"


FULL_RESYNC_EVERY = 30  # pyflannel.backend.peers._FULL_RESYNC_EVERY


@dataclass
class Usage:
    peers: int
    hwm_mib: float
    rss_mib: float
    cpu_a: float  # % of a core, window with the first full reconcile
    cpu_b: float  # % of a core, steady window
    window: float

    @property
    def cpu_pct(self) -> float:
        """Steady state: window B plus the amortised full reconcile."""
        return self.cpu_b + max(0.0, self.cpu_a - self.cpu_b) / FULL_RESYNC_EVERY


def measure(n_peers: int, window: float, settle: float, prefix: str) -> list[Usage]:
    """Start both daemons, wait for their snapshots, then measure both in the same window."""
    with PeerLab(prefix, nodes=2) as lab:
        empty, full = lab.nodes
        underlay = ipaddress.IPv4Network(lab.topo.underlay)
        lab.set_config(etcd_prefix=EMPTY_PREFIX)
        lab.set_config()
        lab.write_peers(peer_specs(n_peers, underlay))
        procs = {
            0: lab.start_daemon(empty, f"--etcd-prefix={EMPTY_PREFIX}"),
            n_peers: lab.start_daemon(full),
        }
        lab.wait_log_event(empty, "backend.snapshot_applied", timeout=120)
        lab.wait_log_event(full, "backend.snapshot_applied", timeout=180)
        got = lab.counts(full)
        if got != (n_peers,) * 3:
            raise RuntimeError(f"daemon programmed {got}, want {n_peers} each")
        time.sleep(settle)
        marks = [({n: cpu_seconds(p.pid) for n, p in procs.items()}, time.monotonic())]
        for _ in range(2):
            time.sleep(window)
            marks.append(({n: cpu_seconds(p.pid) for n, p in procs.items()}, time.monotonic()))
        out = []
        for n, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"the daemon with {n} peers exited {p.returncode}")
            pct = [
                100 * (marks[i + 1][0][n] - marks[i][0][n]) / (marks[i + 1][1] - marks[i][1])
                for i in range(2)
            ]
            mem = memory_kib(p.pid)
            u = Usage(n, mem["VmHWM"] / 1024, mem["VmRSS"] / 1024, pct[0], pct[1], window)
            out.append(u)
            print(
                f"{n:>6} peers: peak RSS {u.hwm_mib:.1f} MiB, RSS now {u.rss_mib:.1f} MiB, "
                f"idle CPU window A {u.cpu_a:.3f} %, B {u.cpu_b:.3f} %, steady {u.cpu_pct:.3f} %"
                " of a core",
                flush=True,
            )
        return out


def rows(usages: list[Usage]) -> list[Row]:
    out = []
    for u in usages:
        out.append(
            Row(
                f"daemon peak RSS, {u.peers} peers",
                f"{u.hwm_mib:.1f} MiB (now {u.rss_mib:.1f})",
                f"flanneld ~{FLANNELD_RSS_MIB:.0f} MiB (published, context)",
                fmt_ratio(u.hwm_mib / FLANNELD_RSS_MIB),
                f"≤ {TARGET_RSS_MIB:.0f} MiB",
                status_text(u.hwm_mib <= TARGET_RSS_MIB),
            )
        )
        out.append(
            Row(
                f"daemon idle CPU, {u.peers} peers (2 × {u.window:.0f} s windows)",
                f"{u.cpu_pct:.3f} % of a core (A {u.cpu_a:.2f} %, B {u.cpu_b:.2f} %)",
                "flanneld ~5 mCPU = 0.5 % (published, context)",
                fmt_ratio(u.cpu_pct / FLANNELD_CPU_PCT),
                f"≤ {TARGET_CPU_PCT} % of a core",
                status_text(u.cpu_pct <= TARGET_CPU_PCT),
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--peers", type=int, default=10000)
    parser.add_argument("--window", type=float, default=62.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    usages = measure(args.peers, args.window, args.settle, args.prefix or new_prefix("r"))
    out = rows(usages)
    print(render_rows(out))
    if args.json:
        rows_to_json(args.json, out, "")
    elif not args.no_results:
        append_results(f"## bench_resources ({machine_line()})\n\n" + render_rows(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
