"""Benchmark: kube mode — N Node objects present → all programmed, vs ip/bridge -batch; and
event latency, annotation patch → route.

A lab of two nodes with a real kube-apiserver on the etcd host (``lab_kube_up``). N Node objects
are created with flanneld-format annotations (backend-type vxlan, backend-data
``{"VNI":1,"VtepMAC":…}``, public-ip, kube-subnet-manager=true) and podCIDRs 10.0.X.0/24, then:

* **ours** — ``python -m pyflannel --kube-subnet-mgr`` starts on node 1; the figure is process
  start → ``backend.snapshot_applied``, checked against the kernel (N routes, N permanent
  neighbours, N FDB entries on flannel.1): interpreter start, imports, the Node GET and
  annotation patch, the Node listing (N objects as JSON), the plan and the netlink writes;
* **limit** — the same 3N operations as ``ip -batch`` / ``bridge -batch`` files on a hand-made
  flannel.1 on node 2 (as bench_snapshot.py).

Then **event latency**: M more Nodes exist without flannel annotations; each in turn gets them
with one merge patch, and the time until its route is in node 1's kernel is measured (polled
every 2 ms from inside the namespace). Targets: ratio ≤ 2.0 (as the etcd snapshot row) and
p99 ≤ 100 ms.

    .venv/bin/python bench/bench_kube.py [--n 5000] [--events 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_snapshot import run_batch
from bench.common import (
    HEALTHZ_PORT,
    PYTHON,
    PeerLab,
    PeerSpec,
    Row,
    append_results,
    fmt_ratio,
    log_time,
    machine_line,
    new_prefix,
    peer_specs,
    percentile,
    render_rows,
    rows_to_json,
    status_text,
)
from pyflannel.lab.kube import KubeApiServer, lab_daemon_flags, lab_kube_up
from pyflannel.subnet.kube.annotations import annotation_keys

TARGET_RATIO = 2.0
TARGET_P99_MS = 100.0
K = annotation_keys()
NETWORK = "10.0.0.0/8"


def annotations(p: PeerSpec) -> dict[str, str]:
    return {
        K.backend_data: json.dumps({"VNI": 1, "VtepMAC": p.mac}, separators=(",", ":")),
        K.backend_type: "vxlan",
        K.kube_managed: "true",
        K.public_ip: str(p.public_ip),
    }


class KubePeerLab(PeerLab):
    """PeerLab with a kube-apiserver instead of a bare etcd; daemons in kube mode."""

    srv: KubeApiServer

    def __enter__(self) -> KubePeerLab:
        try:
            self.topo.up()
            conf = json.dumps({"Network": NETWORK, "Backend": {"Type": "vxlan"}})
            self.srv = lab_kube_up(self.topo, self.state_root, conf, NETWORK, None)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if getattr(self, "srv", None) is not None:
            self.srv.stop()
        super().close()

    def daemon_argv(self, *flags: str) -> list[str]:
        return [
            PYTHON, "-m", "pyflannel", *lab_daemon_flags(self.state_root), "--log-format=json",
            f"--healthz-port={HEALTHZ_PORT}", "--healthz-ip=127.0.0.1", "--ip-masq", *flags,
        ]  # fmt: skip

    def create_nodes(self, peers: list[PeerSpec], *, annotated: bool, width: int = 32) -> float:
        """Create one Node per peer (concurrently); seconds taken."""

        async def go(client: Any) -> None:
            import trio

            limit = trio.CapacityLimiter(width)

            async def one(p: PeerSpec) -> None:
                obj = {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": f"peer-{p.subnet.network_address}".replace(".", "-"),
                        "annotations": annotations(p) if annotated else {"bench": "1"},
                    },
                    "spec": {"podCIDR": str(p.subnet), "podCIDRs": [str(p.subnet)]},
                }
                async with limit:
                    await client.create("/api/v1/nodes", obj)

            async with trio.open_nursery() as nursery:
                for p in peers:
                    nursery.start_soon(one, p)

        t0 = time.perf_counter()
        self.srv.call(go)
        return time.perf_counter() - t0


def _route_present(ns: str, subnet: str) -> bool:
    out = subprocess.run(
        ["ip", "-n", ns, "route", "show", subnet], capture_output=True, text=True, check=False
    )
    return bool(out.stdout.strip())


def event_latencies(lab: KubePeerLab, peers: list[PeerSpec]) -> list[float]:
    """Patch each annotation-less Node with flannel's annotations; seconds until its route."""
    ns = lab.nodes[0].ns
    out = []
    for p in peers:
        name = f"peer-{p.subnet.network_address}".replace(".", "-")
        t0 = time.perf_counter()
        lab.srv.patch_node(name, {"metadata": {"annotations": annotations(p)}})
        deadline = t0 + 10
        while not _route_present(ns, str(p.subnet)):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"route {p.subnet} not programmed within 10 s")
            time.sleep(0.002)
        out.append(time.perf_counter() - t0)
    return out


def measure(n: int, events: int, prefix: str) -> dict[str, float]:
    with KubePeerLab(prefix, nodes=2) as lab, tempfile.TemporaryDirectory() as tmp:
        peers = peer_specs(n + events, lab.topo.underlay, first=10)
        created = lab.create_nodes(peers[:n], annotated=True)
        lab.create_nodes(peers[n:], annotated=False)
        batch = run_batch(lab, peers[:n], Path(tmp))
        node = lab.nodes[0]
        t0 = time.time()
        lab.start_daemon(node, env={"NODE_NAME": node.name})
        done = lab.wait_log_event(node, "backend.snapshot_applied", timeout=300)
        got = lab.counts(node)
        if got != (n, n, n):
            raise RuntimeError(f"daemon programmed {got} (route, neigh, fdb), want {n} each")
        listed = lab.log_event(node, "kube.nodes_listed")
        assert listed is not None
        lat = event_latencies(lab, peers[n:])
        lab.stop_daemon(node)
        return {
            "n": n,
            "create": created,
            "batch": batch,
            "listed": log_time(listed) - t0,
            "applied": log_time(done) - t0,
            "apply_phase": float(done["seconds"]),
            "p50": statistics.median(lat),
            "p99": percentile(lat, 99),
            "events": len(lat),
        }


def rows(r: dict[str, float]) -> list[Row]:
    ratio = r["applied"] / r["batch"]
    p99_ms = r["p99"] * 1000
    return [
        Row(
            f"kube: {int(r['n'])} Nodes → all programmed",
            f"{r['applied']:.2f} s",
            f"ip/bridge -batch {r['batch']:.2f} s",
            fmt_ratio(ratio),
            f"≤ {TARGET_RATIO:.1f}×",
            status_text(ratio <= TARGET_RATIO),
            f"listed at {r['listed']:.2f} s, apply phase {r['apply_phase']:.2f} s",
        ),
        Row(
            "kube: annotation patch → route (p99)",
            f"{p99_ms:.0f} ms (p50 {r['p50'] * 1000:.0f} ms, {int(r['events'])} events)",
            "—",
            "—",
            f"≤ {TARGET_P99_MS:.0f} ms",
            status_text(p99_ms <= TARGET_P99_MS),
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--json", default=None, help="write rows for run_all here")
    parser.add_argument("--no-results", action="store_true", help="do not append RESULTS.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    result = measure(args.n, args.events, args.prefix or new_prefix("k"))
    out = rows(result)
    text = (
        f"Node objects created in {result['create']:.1f} s (32 concurrent POSTs); "
        f"figures from daemon start.\n"
    )
    print(render_rows(out) + "\n" + text)
    if args.json:
        rows_to_json(args.json, out, text)
    elif not args.no_results:
        append_results(f"## bench_kube ({machine_line()})\n\n" + render_rows(out) + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
