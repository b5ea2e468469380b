"""Benchmark: peer event latency, etcd put → route visible in the kernel, with 10k peers present.

A lab with one node runs the real daemon; 10,000 peer leases are in etcd and programmed first.
Then, one at a time, a new peer lease is put into etcd and the time until its route appears in
the node's routing table is taken. The route is seen through an rtnetlink multicast socket
(``RTMGRP_IPV4_ROUTE``) opened inside the node's namespace and read by a thread that stamps each
``RTM_NEWROUTE`` as it arrives, so the figure is put request sent → kernel notification, without
polling. The route is the last of the peer's three entries the daemon writes (neighbour, FDB,
route), so its arrival means the peer is fully programmed. Afterwards the same leases are
deleted and the route removals timed the same way (reported, no target).

Target: p99 ≤ 25 ms. There is no limit to compare with; etcd (on tmpfs) is part of the figure.

    .venv/bin/python bench/bench_latency.py [--peers 10000] [--samples 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import random
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ETCD_PREFIX,
    PeerLab,
    PeerSpec,
    PySpy,
    Row,
    append_results,
    machine_line,
    new_prefix,
    peer_specs,
    percentile,
    render_rows,
    rows_to_json,
    status_text,
)
from pyflannel.netlink.nsenter import in_netns

TARGET_P99_MS = 25.0
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTA_DST = 1
NETLINK_ROUTE = 0


class RouteWatch:
    """Stamps every IPv4 route added/removed in a namespace: {(kind, dst): perf_counter}."""

    def __init__(self, ns: str) -> None:
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
        self.sock.bind((0, RTMGRP_IPV4_ROUTE))
        self.seen: dict[tuple[int, ipaddress.IPv4Network], float] = {}
        self.cond = threading.Condition()
        self.overflows = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                buf = self.sock.recv(1 << 20)
            except OSError:
                if self._stop:
                    return
                self.overflows += 1  # ENOBUFS: notifications lost
                continue
            now = time.perf_counter()
            found = []
            off = 0
            while off + 16 <= len(buf):
                length, mtype = struct.unpack_from("=IH", buf, off)
                if length < 16:
                    break
                if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
                    family, dst_len = buf[off + 16], buf[off + 17]
                    a = off + 28
                    while family == socket.AF_INET and a + 4 <= off + length:
                        alen, atype = struct.unpack_from("=HH", buf, a)
                        if alen < 4:
                            break
                        if atype == RTA_DST and alen == 8:
                            dst = ipaddress.IPv4Network((buf[a + 4 : a + 8], dst_len))
                            found.append((mtype, dst))
                            break
                        a += (alen + 3) & ~3
                off += (length + 3) & ~3
            if found:
                with self.cond:
                    for key in found:
                        self.seen.setdefault(key, now)
                    self.cond.notify_all()

    def wait(self, kind: int, dst: ipaddress.IPv4Network, timeout: float) -> float | None:
        """perf_counter of the notification, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while (kind, dst) not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.seen[(kind, dst)]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def own_subnet(lab: PeerLab) -> ipaddress.IPv4Network:
    """The node's lease, from its subnet.env."""
    for line in lab.nodes[0].subnet_env.read_text().splitlines():
        if line.startswith("FLANNEL_SUBNET="):
            return ipaddress.IPv4Interface(line.split("=", 1)[1]).network
    raise RuntimeError("no FLANNEL_SUBNET in subnet.env")


def measure(
    n_peers: int, samples: int, prefix: str, py_spy: str | None = None
) -> dict[str, list[float]]:
    """Latencies in ms: {"add": [...], "del": [...], "lost": [count]}.

    With ``py_spy``, the daemon is sampled during the add phase and the hottest functions are
    printed.
    """
    with PeerLab(prefix, nodes=1) as lab:
        node = lab.nodes[0]
        underlay = ipaddress.IPv4Network(lab.topo.underlay)
        lab.set_config()
        lab.write_peers(peer_specs(n_peers, underlay))
        proc = lab.start_daemon(node)
        lab.wait_log_event(node, "backend.snapshot_applied", timeout=180)
        own = own_subnet(lab)
        candidates = [
            p for p in peer_specs(samples + 2, underlay, first=n_peers) if p.subnet != own
        ][:samples]
        lease = lab.etcd.grant(3600)
        watch = RouteWatch(node.ns)
        add: list[float] = []
        delete: list[float] = []
        rng = random.Random(1)
        try:
            for phase, kind, out in (("add", RTM_NEWROUTE, add), ("del", RTM_DELROUTE, delete)):
                spy = (
                    PySpy(py_spy, proc.pid, lab.state_root / "latency.prof")
                    if py_spy and phase == "add"
                    else contextlib.nullcontext()
                )
                with spy:
                    run_phase(lab, watch, phase, kind, candidates, lease, out, rng)
                if isinstance(spy, PySpy):
                    print(spy.top())
            lost = 2 * len(candidates) - len(add) - len(delete)
            got = lab.counts(node)
        finally:
            watch.close()
        if got != (n_peers, n_peers, n_peers):
            raise RuntimeError(f"after adding and removing, the node has {got}, want {n_peers}")
        if watch.overflows:
            print(f"warning: {watch.overflows} route notification overflows", file=sys.stderr)
        return {"add": add, "del": delete, "lost": [float(lost)]}


def run_phase(
    lab: PeerLab,
    watch: RouteWatch,
    phase: str,
    kind: int,
    peers: list[PeerSpec],
    lease: int,
    out: list[float],
    rng: random.Random,
) -> None:
    """Put (or delete) each peer's lease in turn; append put → route notification in ms."""
    for p in peers:
        key = f"{ETCD_PREFIX}/subnets/{p.key_suffix}"
        # A random pause, so puts do not line up with the daemon's periodic work.
        time.sleep(rng.uniform(0.005, 0.02))
        t0 = time.perf_counter()
        if phase == "add":
            lab.etcd.put(key, p.value(), lease)
        else:
            lab.etcd.delete(key)
        seen = watch.wait(kind, p.subnet, timeout=5.0)
        if seen is not None:
            out.append((seen - t0) * 1e3)


def summary(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50):.1f} ms, p90 {percentile(values, 90):.1f} ms, "
        f"p99 {percentile(values, 99):.1f} ms, max {max(values):.1f} ms (n={len(values)})"
    )


def rows(data: dict[str, list[float]], n_peers: int) -> list[Row]:
    add = data["add"]
    p99 = percentile(add, 99)
    lost = int(data["lost"][0])
    return [
        Row(
            f"peer event latency (etcd put → route in kernel), {n_peers} peers present",
            f"p50 {percentile(add, 50):.1f} ms, p99 {p99:.1f} ms",
            "— (absolute target)",
            "—",
            f"p99 ≤ {TARGET_P99_MS:.0f} ms",
            status_text(p99 <= TARGET_P99_MS and lost == 0),
            f"{lost} lost" if lost else "",
        )
    ]


def detail(data: dict[str, list[float]], n_peers: int) -> str:
    add, delete = data["add"], data["del"]
    return (
        f"### Peer event latency, {n_peers} peers programmed\n\n"
        f"- add (put sent → RTM_NEWROUTE): {summary(add)}; mean {statistics.mean(add):.1f} ms\n"
        f"- delete (delete sent → RTM_DELROUTE): {summary(delete)}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--peers", type=int, default=10000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument("--py-spy", default=None, help="py-spy binary: profile the add phase")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    data = measure(args.peers, args.samples, args.prefix or new_prefix("l"), args.py_spy)
    out, text = rows(data, args.peers), detail(data, args.peers)
    print(render_rows(out) + "\n" + text)
    if args.json:
        rows_to_json(args.json, out, text)
    elif not args.no_results:
        append_results(f"## bench_latency ({machine_line()})\n\n" + render_rows(out) + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
