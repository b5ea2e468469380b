"""Benchmark: the real daemon programming a snapshot of N peer leases, vs ip/bridge -batch.

For each N (default 1k, 5k, 10k) a fresh lab is built (switch, etcd host, two nodes). N fake
peer leases are written into etcd in flanneld's format (key ``/coreos.com/network/subnets/
10.0.X.0-24``, value ``{"PublicIP":"198.51.100.1xx","PublicIPv6":null,"BackendType":"vxlan",
"BackendData":{"VNI":1,"VtepMAC":"0a:58:…"}}``, attached to one etcd lease), then:

* **ours** — ``python -m pyflannel`` is started on node 1; the figure is process start → the
  daemon's ``backend.snapshot_applied`` (all routes, neighbours and FDB entries written), checked
  afterwards against the kernel: exactly N routes, N permanent neighbours and N FDB entries on
  flannel.1. This includes interpreter start, imports, etcd round trips, the lease allocation and
  the plan, i.e. what an operator waits for.
* **limit** — on node 2, a flannel.1 made by hand and the same 3N operations as three batch
  files: ``ip -batch`` (neigh), ``bridge -batch`` (fdb), ``ip -batch`` (routes).

Target: ours ≤ 2.0× the batch at 10k, and growth no worse than linear beyond the kernel's own
(the per-peer cost of the batch itself rises with table size; see NOTES.md).

Beside it, **/healthz latency during the apply**: a thread inside node 1's namespace asks the
daemon's ``/healthz`` every 10 ms (one HTTP/1.0 connection each) from process start on; the
figure is the p99 of the answers that started between "peer leases listed" and
``backend.snapshot_applied``, i.e. while the snapshot is planned and written. Netlink work runs
off the trio loop, so the loop must keep answering. Target: p99 ≤ 50 ms.

    .venv/bin/python bench/bench_snapshot.py [--sizes 1000,5000,10000] [--json FILE]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    HEALTHZ_PORT,
    PeerLab,
    PeerSpec,
    Row,
    append_results,
    fmt_ratio,
    log_time,
    machine_line,
    new_prefix,
    peer_specs,
    render_rows,
    rows_to_json,
    status_text,
)

TARGET_RATIO = 2.0
# Per-peer cost may grow this much more than the kernel's own (batch) per-peer cost, 1k → 10k.
LINEAR_SLACK = 1.25
HEALTHZ_TARGET_MS = 50.0


@dataclass
class SizeResult:
    """One N: the batch baseline and the daemon's phases (seconds from process start)."""

    n: int
    batch: float
    ready: float  # subnet.env written
    listed: float  # peer leases listed
    applied: float  # snapshot in the kernel
    apply_phase: float  # the daemon's own figure for plan + netlink of the snapshot
    healthz_p99: float = 0.0  # /healthz latency while the snapshot was applied (seconds)
    healthz_n: int = 0

    @property
    def ratio(self) -> float:
        return self.applied / self.batch


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


def run_batch(lab: PeerLab, peers: list[PeerSpec], tmp: Path) -> float:
    """ip/bridge -batch of the 3N operations on a hand-made flannel.1 on node 2; seconds."""
    node = lab.nodes[1]
    ns = node.ns
    _ip(ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", str(node.ip),
        "dev", "eth0", "nolearning")  # fmt: skip
    _ip(ns, "link", "set", "flannel.1", "up")
    neigh, fdb, route = tmp / "neigh.batch", tmp / "fdb.batch", tmp / "route.batch"
    neigh.write_text(
        "".join(
            f"neigh replace {p.subnet.network_address} lladdr {p.mac} dev flannel.1 nud permanent\n"
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
    t0 = time.perf_counter()
    subprocess.run(["ip", "-n", ns, "-batch", str(neigh)], check=True)
    subprocess.run(["bridge", "-n", ns, "-batch", str(fdb)], check=True)
    subprocess.run(["ip", "-n", ns, "-batch", str(route)], check=True)
    elapsed = time.perf_counter() - t0
    got = lab.counts(node)
    if got != (len(peers),) * 3:
        raise RuntimeError(f"ip -batch programmed {got} (route, neigh, fdb), want {len(peers)}")
    return elapsed


class HealthProbe:
    """Asks ``/healthz`` every 10 ms from inside a namespace; (start time, latency) samples."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from pyflannel.netlink.nsenter import in_netns

        with in_netns(self.ns):
            while not self._stop.wait(0.01):
                started, t0 = time.time(), time.perf_counter()
                try:
                    with socket.create_connection(("127.0.0.1", HEALTHZ_PORT), timeout=5) as s:
                        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                        while s.recv(4096):
                            pass
                except OSError:
                    continue  # not listening yet
                self.samples.append((started, time.perf_counter() - t0))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def p99_between(self, start: float, end: float) -> tuple[float, int]:
        """p99 latency of the probes started in [start, end], and how many there were."""
        lat = sorted(x for t, x in self.samples if start <= t <= end)
        if not lat:
            return 0.0, 0
        return lat[min(len(lat) - 1, int(0.99 * len(lat)))], len(lat)


def run_daemon(lab: PeerLab, n: int) -> tuple[float, float, float, float, float, int]:
    """Start the daemon on node 1 with N peers in etcd; (ready, listed, applied, apply_phase,
    /healthz p99 during the apply, probes in that window)."""
    node = lab.nodes[0]
    t0 = time.time()
    lab.start_daemon(node)
    probe = HealthProbe(node.ns)
    try:
        done = lab.wait_log_event(node, "backend.snapshot_applied", timeout=180)
    finally:
        probe.stop()
    got = lab.counts(node)
    if got != (n, n, n):
        raise RuntimeError(f"daemon programmed {got} (route, neigh, fdb), want {n} each")
    ready = lab.log_event(node, "daemon.subnet_file_written")
    listed = lab.log_event(node, "lease.peers_listed")
    assert ready is not None and listed is not None
    lab.stop_daemon(node)
    p99, count = probe.p99_between(log_time(listed), log_time(done))
    return (
        log_time(ready) - t0,
        log_time(listed) - t0,
        log_time(done) - t0,
        float(done["seconds"]),
        p99,
        count,
    )


def measure(sizes: list[int], repeat: int, prefix: str) -> list[SizeResult]:
    """Run every size ``repeat`` times (a fresh lab each time); medians per size."""
    results = []
    with tempfile.TemporaryDirectory(prefix="pfbench-") as tmpdir:
        for n in sizes:
            samples: list[tuple[float, float, float, float, float, float, int]] = []
            for i in range(repeat):
                with PeerLab(f"{prefix}{i}", nodes=2) as lab:
                    lab.set_config()
                    peers = peer_specs(n, ipaddress.IPv4Network(lab.topo.underlay))
                    lab.write_peers(peers)
                    # Alternate which goes first, so neither always runs on the warmer box.
                    if i % 2 == 0:
                        batch = run_batch(lab, peers, Path(tmpdir))
                        phases = run_daemon(lab, n)
                    else:
                        phases = run_daemon(lab, n)
                        batch = run_batch(lab, peers, Path(tmpdir))
                samples.append((batch, *phases))
            med = [statistics.median(s[k] for s in samples) for k in range(6)]
            r = SizeResult(n, *med, healthz_n=sum(s[6] for s in samples))
            results.append(r)
            print(
                f"N={n:>6}: batch {r.batch:6.3f} s | daemon ready {r.ready:6.3f} s, listed "
                f"{r.listed:6.3f} s, programmed {r.applied:6.3f} s (apply {r.apply_phase:.3f} s)"
                f" | ratio {r.ratio:.2f} | /healthz p99 {r.healthz_p99 * 1e3:.1f} ms"
                f" ({r.healthz_n} probes)",
                flush=True,
            )
    return results


def growth(results: list[SizeResult]) -> tuple[float, float] | None:
    """(our per-peer cost growth, the batch's per-peer cost growth) from smallest to largest N."""
    if len(results) < 2:
        return None
    a, b = results[0], results[-1]
    ours_a = a.applied - a.listed
    ours_b = b.applied - b.listed
    return (ours_b / b.n) / (ours_a / a.n), (b.batch / b.n) / (a.batch / a.n)


def rows(results: list[SizeResult]) -> list[Row]:
    """The summary rows: the largest N against the target, and the growth check."""
    big = results[-1]
    out = [
        Row(
            f"snapshot of {big.n} peers: start → routes+neigh+fdb in kernel",
            f"{big.applied:.2f} s",
            f"ip+bridge -batch {big.batch:.2f} s",
            fmt_ratio(big.ratio),
            f"≤ {TARGET_RATIO}× at 10k",
            status_text(big.ratio <= TARGET_RATIO),
        )
    ]
    out.append(
        Row(
            f"/healthz p99 while the {big.n}-peer snapshot is applied",
            f"{big.healthz_p99 * 1e3:.1f} ms ({big.healthz_n} probes)",
            "— (absolute target)",
            "—",
            f"≤ {HEALTHZ_TARGET_MS:.0f} ms",
            status_text(big.healthz_n > 0 and big.healthz_p99 * 1e3 <= HEALTHZ_TARGET_MS),
        )
    )
    g = growth(results)
    if g is not None:
        ours, kernel = g
        ok = ours <= LINEAR_SLACK * max(1.0, kernel)
        out.append(
            Row(
                f"snapshot scaling {results[0].n}→{big.n}: per-peer cost growth",
                f"×{ours:.2f} (list → programmed)",
                f"batch per-peer growth ×{kernel:.2f}",
                fmt_ratio(ours / max(1.0, kernel)),
                f"linear (≤ {LINEAR_SLACK}× the kernel's own growth)",
                status_text(ok),
            )
        )
    return out


def detail(results: list[SizeResult]) -> str:
    """The scaling curve as a markdown table."""
    lines = [
        "### Snapshot scaling curve (seconds from daemon process start)",
        "",
        "| peers | ip+bridge -batch s | µs/peer | daemon READY s | peers listed s "
        "| programmed s | list→programmed µs/peer | daemon apply phase s | ours/batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.n} | {r.batch:.3f} | {r.batch / r.n * 1e6:.0f} | {r.ready:.3f} "
            f"| {r.listed:.3f} | {r.applied:.3f} | {(r.applied - r.listed) / r.n * 1e6:.0f} "
            f"| {r.apply_phase:.3f} | {r.ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--prefix", default=None, help="lab prefix (default: random)")
    parser.add_argument("--json", default=None, help="write rows for run_all here")
    parser.add_argument("--no-results", action="store_true", help="do not append RESULTS.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    results = measure(
        [int(s) for s in args.sizes.split(",")], args.repeat, args.prefix or new_prefix("s")
    )
    out, text = rows(results), detail(results)
    print(render_rows(out) + "\n" + text)
    if args.json:
        rows_to_json(args.json, out, text)
    elif not args.no_results:
        append_results(f"## bench_snapshot ({machine_line()})\n\n" + render_rows(out) + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
