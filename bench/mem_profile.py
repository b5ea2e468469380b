"""Where the daemon's memory goes: tracemalloc's live allocations after a snapshot of N peers.

Not a timed benchmark (tracemalloc slows the daemon several-fold and adds its own memory): a
tool for finding what to shrink. One lab node, one etcd, N peer leases; the daemon runs under a
wrapper that starts tracemalloc and writes the top allocation sites on SIGUSR2.

    .venv/bin/python bench/mem_profile.py [--peers 10000] [--top 30] [--group lineno|filename]
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PYTHON, PeerLab, memory_kib, new_prefix, peer_specs

_WRAPPER = """
import runpy, signal, sys, tracemalloc
tracemalloc.start(1)
out, group, top = sys.argv[1], sys.argv[2], int(sys.argv[3])
del sys.argv[1:4]

def dump(signum, frame):
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)])
    stats = snap.statistics(group)
    total = sum(s.size for s in stats)
    with open(out, "w") as f:
        f.write(f"total traced {total / 2**20:.1f} MiB in {sum(s.count for s in stats)} blocks\\n")
        for s in stats[:top]:
            fr = s.traceback[0]
            f.write(f"{s.size / 2**20:7.2f} MiB {s.count:8d} {fr.filename}:{fr.lineno}\\n")

signal.signal(signal.SIGUSR2, dump)
sys.argv[0] = "pyflannel"
runpy.run_module("pyflannel", run_name="__main__", alter_sys=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=10000)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--group", choices=["lineno", "filename"], default="lineno")
    args = ap.parse_args()
    with PeerLab(new_prefix("mem"), nodes=1) as lab:
        node = lab.nodes[0]
        lab.set_config()
        lab.write_peers(peer_specs(args.peers, ipaddress.IPv4Network(lab.topo.underlay)))
        wrapper = lab.state_root / "traced_daemon.py"
        wrapper.write_text(_WRAPPER)
        out = lab.state_root / "tracemalloc.txt"
        argv = lab.daemon_argv()
        assert argv[1:3] == ["-m", "pyflannel"], argv
        argv = [PYTHON, str(wrapper), str(out), args.group, str(args.top), *argv[3:]]
        proc = lab.topo.spawn_in_node(node, argv, lab.log_path(node))
        lab.daemons[node.name] = proc
        lab.wait_log_event(node, "backend.snapshot_applied", timeout=600)
        time.sleep(2)
        mem = memory_kib(proc.pid)
        proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 120
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)
        print(
            f"{args.peers} peers: VmRSS {mem['VmRSS'] / 1024:.1f} MiB, "
            f"VmHWM {mem['VmHWM'] / 1024:.1f} MiB (tracemalloc's own overhead included)"
        )
        print(out.read_text())


if __name__ == "__main__":
    main()
