"""End to end with the udp backend: ``pyflannel lab up --backend udp --nodes 3``, every pod
reaches every other through the userspace forwarders, 100 MB cross the overlay byte-exact,
the leases are flanneld's, and a vanished node is reported as unreachable."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pyflannel.lab.command import LabState
from pyflannel.lab.netns import netns_pids, run_in
from pyflannel.lab.topology import default_state_root
from tests.e2e.helpers import lab_etcdctl, run_lab
from tests.integration.test_udp_backend import tcp_transfer

pytestmark = [pytest.mark.root, pytest.mark.slow]

NODES = 3
ETCD_PREFIX = "/coreos.com/network"


def _ping_output(ns: str, dst: str) -> str:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", dst],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout + proc.stderr


def test_udp_lab(prefix: str) -> None:
    up = run_lab("up", "--backend", "udp", "--nodes", str(NODES), "--prefix", prefix)
    assert up.returncode == 0, up.stdout + up.stderr
    state = LabState.load(default_state_root(prefix) / "lab.json")
    assert state.backend == "udp" and len(state.pods) == NODES

    check = run_lab("check", "--prefix", prefix)
    out = check.stdout
    assert check.returncode == 0, out + check.stderr
    assert out.count(" udp ") == NODES, out  # no BackendType: listed as udp
    assert out.count("✓") == NODES * NODES and "✗" not in out, out

    # The leases are byte for byte what flanneld's udp backend writes.
    kvs = json.loads(lab_etcdctl(prefix, "get", "--prefix", f"{ETCD_PREFIX}/subnets", "-w", "json"))
    values = sorted(base64.b64decode(kv["value"]).decode() for kv in kvs["kvs"])
    assert values == sorted(
        f'{{"PublicIP":"198.51.100.{i}","PublicIPv6":null}}' for i in range(1, NODES + 1)
    )
    for node in ("n1", "n2", "n3"):
        env = (default_state_root(prefix) / node / "run-flannel" / "subnet.env").read_text()
        assert "FLANNEL_MTU=1472\n" in env, env
        link = run_in(f"{prefix}-{node}", ["ip", "-j", "-d", "link", "show", "flannel0"]).stdout
        assert json.loads(link)[0]["linkinfo"]["info_kind"] == "tun"

    # 100 MB pod → pod across nodes, and some back, checked with sha256 on both ends.
    p1, p2, p3 = state.pods
    t0 = time.monotonic()
    tcp_transfer(p1.ns, p2.ns, p2.ip, 100 << 20)
    elapsed = time.monotonic() - t0
    print(f"100 MB over the udp backend in {elapsed:.1f}s")
    tcp_transfer(p3.ns, p1.ns, p1.ip, 10 << 20, port=5556)

    # Node 3 goes away: its daemon stops (the lease stays, as with flanneld) and then its lease
    # is deleted (as etcd does when it expires). The others drop it from their tables and
    # senders hear "Destination Net Unreachable" straight away instead of waiting for a timeout.
    for pid in netns_pids(f"{prefix}-n3"):
        if b"pyflannel" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            os.kill(pid, signal.SIGTERM)
    key = next(
        base64.b64decode(kv["key"]).decode()
        for kv in kvs["kvs"]
        if b"198.51.100.3" in base64.b64decode(kv["value"])
    )
    lab_etcdctl(prefix, "del", key)
    deadline = time.monotonic() + 15
    while "Destination Net Unreachable" not in (last := _ping_output(p1.ns, p3.ip)):
        assert time.monotonic() < deadline, last
        time.sleep(0.2)
    assert "From 10.5.0.0" in last
    ok = subprocess.run(["ip", "netns", "exec", p1.ns, "ping", "-c", "1", "-W", "2", p2.ip],
                        capture_output=True, check=False)  # fmt: skip
    assert ok.returncode == 0  # the remaining peers are unaffected
