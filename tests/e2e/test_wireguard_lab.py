"""End to end with the wireguard backend (wireguard-go here: this kernel has no module).

* ``pyflannel lab up --backend wireguard --stack dual``: every pod reaches every other over both
  families; the switch sees only WireGuard (UDP to the listen ports), never a pod's ICMP; the
  leases and the key file are byte for byte flanneld's.
* A daemon lab: SIGKILL + restart keeps the data path and the key; a killed wireguard-go is
  re-created and its peers re-applied within seconds; a node whose key changes is re-keyed on
  every other node.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pyflannel.backend.wireguard.keys import public_key
from pyflannel.lab.command import LabState
from pyflannel.lab.netns import exec_argv, http_request, netns_pids, run_in
from pyflannel.lab.topology import LabNode, default_state_root
from tests.e2e.helpers import (
    HEALTHZ_PORT,
    LAB_ETCD_URL,
    BackgroundPing,
    DaemonLab,
    daemon_lab,
    lab_etcdctl,
    run_lab,
    wait_for,
)
from tests.harness.fixtures import require_root

pytestmark = [pytest.mark.root, pytest.mark.slow]

NODES = 3
ETCD_PREFIX = "/coreos.com/network"


def test_wireguard_lab_dual_stack(prefix: str) -> None:
    up = run_lab("up", "--backend", "wireguard", "--stack", "dual", "--prefix", prefix)
    assert up.returncode == 0, up.stdout + up.stderr
    state = LabState.load(default_state_root(prefix) / "lab.json")
    assert state.backend == "wireguard"

    # Capture on the switch while the pods ping each other (both families).
    cap = subprocess.Popen(
        exec_argv(f"{prefix}-sw", ["tcpdump", "-i", "any", "-n", "-l", "-c", "400"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(1.0)  # tcpdump attaches
    check = run_lab("check", "--prefix", prefix)
    out = check.stdout
    assert check.returncode == 0, out + check.stderr
    assert out.count("✓") == NODES * NODES * 2 and "✗" not in out, out
    time.sleep(0.5)
    cap.send_signal(signal.SIGINT)
    captured, _ = cap.communicate(timeout=10)
    lines = captured.splitlines()
    assert any(".51820 > 198.51.100." in ln and ".51820:" in ln for ln in lines), captured[:2000]
    assert any(".51821 > 2001:db8::" in ln for ln in lines), captured[:2000]
    plain = [ln for ln in lines if "ICMP" in ln and ("10.5." in ln or "fd00:10:5" in ln)]
    assert not plain, plain[:5]

    # Leases: flanneld HEAD's bytes (separate mode: v4 port 51820, v6 port 51821, one key).
    kvs = json.loads(lab_etcdctl(prefix, "get", "--prefix", f"{ETCD_PREFIX}/subnets", "-w", "json"))
    values = {base64.b64decode(kv["value"]).decode() for kv in kvs["kvs"]}
    for i in range(1, NODES + 1):
        keyfile = default_state_root(prefix) / f"n{i}" / "run-flannel" / "wgkey"
        raw = keyfile.read_bytes()
        assert len(raw) == 44 and not raw.endswith(b"\n")
        assert keyfile.stat().st_mode & 0o777 == 0o600
        pub = base64.b64encode(public_key(base64.b64decode(raw))).decode()
        assert (
            f'{{"PublicIP":"198.51.100.{i}","PublicIPv6":"2001:db8::{i}",'
            f'"BackendType":"wireguard","BackendData":{{"PublicKey":"{pub}","Port":51820}},'
            f'"BackendV6Data":{{"PublicKey":"{pub}","Port":51821}}}}'
        ) in values, values
        env = (default_state_root(prefix) / f"n{i}" / "run-flannel" / "subnet.env").read_text()
        assert "FLANNEL_MTU=1420\n" in env, env


def _wireguard_go_pids(ns: str) -> list[int]:
    pids = []
    for pid in netns_pids(ns):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"wireguard-go"):
            pids.append(pid)
    return pids


def _tool(lab: DaemonLab, node: LabNode, *args: str) -> tuple[int, dict[str, Any]]:
    argv = [sys.executable, "-m", "pyflannel.cli.tools", *args, "--output", "json",
            f"--etcd-endpoints={lab.env.etcd_endpoint}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    res = lab.topo.run_in_node(node, argv, check=False, timeout=60, env=env)
    return res.returncode, json.loads(res.stdout)


def _check_status_doctor_metrics(lab: DaemonLab, node: LabNode) -> None:
    """status and doctor show one wireguard finding per peer with handshake age and counters;
    /metrics exports them."""
    for tool in ("status", "doctor"):
        code, doc = _tool(lab, node, tool)
        peers = [f for f in doc["findings"] if f["check"] == "wireguard"]
        assert code == 0 and len(peers) == 2, doc
        for f in peers:
            assert f["level"] == "OK" and "handshake" in f["message"] and "rx " in f["message"]
            assert "never" not in f["message"], f  # the pings made handshakes
        bad = [f for f in doc["findings"] if f["level"] != "OK"]
        assert not bad, bad

    def scraped() -> str | None:
        status, body, _ = http_request(f"http://127.0.0.1:{HEALTHZ_PORT}/metrics", ns=node.ns)
        text = body.decode() if isinstance(body, bytes) else str(body)
        ok = status == 200 and text.count("pyflannel_wireguard_peer_handshake_age_seconds{") == 2
        return text if ok else None

    text = wait_for("per-peer wireguard metrics", scraped, 15, interval=0.5)
    assert "pyflannel_wireguard_peer_receive_bytes_total{" in text


def test_wireguard_restarts_and_rekeying(tmp_path: Path) -> None:
    require_root()
    with daemon_lab(tmp_path, backend="wireguard") as lab:
        assert lab.ping_failures() == []
        n1, n2, n3 = lab.nodes
        _check_status_doctor_metrics(lab, n1)
        pod1 = lab.pods[n1.name]
        key_before = (n1.run_flannel_dir / "wgkey").read_bytes()

        # SIGKILL the daemon: the device and its peers stay, so pod traffic keeps flowing.
        ping = BackgroundPing(lab.pods[n2.name].ns, pod1.ip)
        time.sleep(0.5)
        assert lab.stop_daemon(n1, signal.SIGKILL) == -signal.SIGKILL
        assert _wireguard_go_pids(n1.ns), "wireguard-go died with the daemon"
        time.sleep(1.0)
        lab.start_daemon(n1)
        lab.wait_ready(n1)
        time.sleep(0.5)
        sent, received, missing = ping.stop()
        assert sent > 20 and missing == [], (sent, received, missing)
        assert (n1.run_flannel_dir / "wgkey").read_bytes() == key_before
        lab.wait_converged()

        # wireguard-go killed: re-created and every peer re-applied within seconds.
        (old,) = _wireguard_go_pids(n1.ns)
        ping = BackgroundPing(lab.pods[n2.name].ns, pod1.ip)
        time.sleep(0.5)
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for("n1's peers are back", lambda: len(lab.wireguard_peers(n1)) == 2, 10)
        wait_for("pods reach n1 again", lambda: lab.ping_failures() == [], 10)
        took = time.monotonic() - t0
        time.sleep(0.5)
        sent, received, missing = ping.stop()
        print(f"wireguard-go re-created and re-peered in {took:.1f}s; {len(missing)} of {sent} "
              "pings lost")  # fmt: skip
        assert len(missing) <= 60, missing  # ≤ 3 s of 50 ms pings
        assert "wireguard.device_recreated" in lab.log_tail(n1, 20000)

        # n2's key rotates (its key file is replaced while it is down): everyone re-keys.
        old_key = lab.lease_of(n2).attrs["BackendData"]["PublicKey"]
        lab.stop_daemon(n2)
        (n2.run_flannel_dir / "wgkey").unlink()
        lab.start_daemon(n2)
        lab.wait_ready(n2)
        new_key = lab.lease_of(n2).attrs["BackendData"]["PublicKey"]
        assert new_key != old_key
        for node in (n1, n3):
            wait_for(
                f"{node.name} re-keyed n2",
                lambda n=node: (
                    new_key in lab.wireguard_peers(n)  # type: ignore[misc]
                    and old_key not in lab.wireguard_peers(n)
                ),
                10,
            )
        wait_for("all pods ping after the rotation", lambda: lab.ping_failures() == [], 15)


def test_single_tunnel_ipv6_mode(prefix: str) -> None:
    """Mode ipv6 (dual stack, one device) with a PSK and keepalive: every peer is dialled at its
    IPv6 address on the port its one device listens on (ListenPort), with the PSK and keepalive,
    both families flow, and the lease says so."""
    from pyflannel.lab import command
    from pyflannel.lab.topology import Topology

    command.up(prefix, NODES, "wireguard", "dual")
    topo = Topology(prefix, nodes=NODES, ipv6=True, state_root=default_state_root(prefix))
    psk = base64.b64encode(os.urandom(32)).decode()
    config = {"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": command.NETWORK6,
              "Backend": {"Type": "wireguard", "Mode": "ipv6", "PSK": psk,
                          "PersistentKeepaliveInterval": 25}}  # fmt: skip
    # A config change makes the daemons exit (systemd would restart them); restart them here.
    # flannel-wg is reused (its separate-mode peers reconciled away), flannel-wg-v6 removed.
    lab_etcdctl(prefix, "put", f"{ETCD_PREFIX}/config", json.dumps(config))
    wait_for("daemons exit on the config change", lambda: not _daemon_pids(topo), 30)
    for node in topo.nodes:
        argv = [sys.executable, "-m", "pyflannel", f"--etcd-endpoints={LAB_ETCD_URL}", "--ip-masq"]
        topo.spawn_in_node(node, argv, node.log_dir / "pyflanneld-ipv6-mode.log")

    def wg_column(what: str) -> list[str]:
        out = topo.run_in_node("n1", ["wg", "show", "flannel-wg", what], check=False).stdout
        return out.split()[1::2]

    want_eps = ["[2001:db8::2]:51820", "[2001:db8::3]:51820"]

    def endpoints() -> list[str] | None:
        # The peers separate mode left on flannel-wg carry the same keys, and WireGuard roams:
        # a new peer's handshake over IPv6 moves an old entry's endpoint to IPv6 before n1's
        # daemon rewrites it. Only the PSK and keepalive say n1's daemon has programmed them,
        # and only the single tunnel's port says it did so from the peers' new leases (the old
        # ones, still in etcd until their TTL, advertise the separate mode's ports).
        eps = wg_column("endpoints")
        done = wg_column("preshared-keys") == [psk] * (NODES - 1)
        done = done and wg_column("persistent-keepalive") == ["25"] * (NODES - 1)
        return eps if done and sorted(eps) == want_eps else None

    wait_for("n1 dials its peers' new leases over IPv6 with the PSK and keepalive", endpoints, 20)

    def links_settled() -> str | None:
        # Each daemon removes flannel-wg-v6 at its own start: n1 being done says nothing of n3.
        out = [run_in(node.ns, ["ip", "-o", "link", "show"]).stdout for node in topo.nodes]
        return None if any("flannel-wg-v6" in o or "flannel-wg:" not in o for o in out) else "ok"

    wait_for("every node has flannel-wg and no flannel-wg-v6", links_settled, 20)
    check = wait_for(
        "all pods reach each other",
        lambda: ((c := run_lab("check", "--prefix", prefix)).returncode == 0 and c) or None,
        20,
        interval=1.0,
    )
    assert check.stdout.count("✓") == NODES * NODES * 2, check.stdout
    kvs = json.loads(lab_etcdctl(prefix, "get", "--prefix", f"{ETCD_PREFIX}/subnets", "-w", "json"))
    for kv in kvs["kvs"]:
        value = json.loads(base64.b64decode(kv["value"]))
        assert value["BackendData"]["Port"] == value["BackendV6Data"]["Port"] == 51820


def _daemon_pids(topo: Any) -> list[int]:
    pids = []
    for node in topo.nodes:
        for pid in netns_pids(node.ns):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"pyflannel" in argv and b"-m" in argv:
                pids.append(pid)
    return pids
