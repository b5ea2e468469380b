"""``pyflannel status`` and ``pyflannel doctor`` on a running namespaced lab.

The tools run *inside* a node (``Topology.run_in_node``: the node's netns and its private
/run/flannel), so they see that node's subnet.env, devices, routes and rules, as on a real
host. A healthy lab must come out clean; a node broken on purpose — wrong MAC on flannel.1, a
peer route deleted, a stale route added, a masquerade rule deleted, subnet.env moved away —
must have each problem reported with a clear line and exit status 1.

The daemon of the node being broken is stopped first (SIGTERM, which leaves its device, lease,
routes and rules in place): a running pyflanneld repairs all of these within seconds.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyflannel.lab import command
from pyflannel.lab.netns import netns_pids, run_in
from pyflannel.lab.topology import LabNode, Topology, default_state_root
from tests.harness.fixtures import require_root

pytestmark = pytest.mark.root

ETCD = "http://198.51.100.250:2379"


class Lab:
    """A lab made by ``pyflannel lab up`` (daemons and one pod per node)."""

    def __init__(self, prefix: str, nodes: int, backend: str) -> None:
        self.prefix = prefix
        self.state = command.up(prefix, nodes, backend)
        self.topo = Topology(prefix, nodes=nodes, state_root=default_state_root(prefix))

    def node(self, name: str) -> LabNode:
        return self.topo.node(name)

    def subnet(self, name: str) -> str:
        """The lease subnet of a node, from its subnet.env."""
        for line in self.node(name).subnet_env.read_text().splitlines():
            if line.startswith("FLANNEL_SUBNET="):
                ip, plen = line.split("=", 1)[1].split("/")
                octets = ip.split(".")
                return f"{'.'.join(octets[:3])}.0/{plen}"
        raise AssertionError(f"no FLANNEL_SUBNET in {name}'s subnet.env")

    def tool(self, node: str, *args: str) -> tuple[int, str, str]:
        argv = [sys.executable, "-m", "pyflannel.cli.tools", *args, f"--etcd-endpoints={ETCD}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
        res = self.topo.run_in_node(node, argv, check=False, timeout=60, env=env)
        return res.returncode, res.stdout, res.stderr

    def json_tool(self, node: str, *args: str) -> tuple[int, dict[str, Any]]:
        code, out, err = self.tool(node, *args, "--output", "json")
        try:
            return code, json.loads(out)
        except ValueError:
            raise AssertionError(f"not JSON (exit {code}): {out!r} {err!r}") from None

    def sh(self, node: str, script: str) -> str:
        return run_in(self.node(node).ns, ["sh", "-ec", script]).stdout

    def stop_daemon(self, node: str) -> None:
        """SIGTERM the pyflanneld of ``node`` (a process this lab started) and wait for it."""
        ns = self.node(node).ns
        pids = [
            pid
            for pid in netns_pids(ns)
            if b"pyflannel" in _cmdline(pid) and b"--etcd-endpoints" in _cmdline(pid)
        ]
        assert pids, f"no pyflanneld found in {ns}"
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in pids):
            assert time.monotonic() < deadline, f"pyflanneld {pids} did not exit"
            time.sleep(0.05)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def vxlan_lab() -> Iterator[Lab]:
    require_root()
    prefix = f"pf{secrets.token_hex(3)}"
    try:
        yield Lab(prefix, 3, "vxlan")
    finally:
        command.down(prefix)


def by(findings: list[dict[str, Any]], **match: str) -> list[dict[str, Any]]:
    return [f for f in findings if all(f[k] == v for k, v in match.items())]


def test_status_healthy_node(vxlan_lab: Lab) -> None:
    lab = vxlan_lab
    subnets = {n: lab.subnet(n) for n in ("n1", "n2", "n3")}
    for node in ("n1", "n2", "n3"):
        code, doc = lab.json_tool(node, "status")
        assert code == 0, json.dumps(doc, indent=1)
        assert doc["healthy"] is True and doc["summary"]["fail"] == 0
        assert doc["own_subnet"] == subnets[node]
        assert sorted(r["subnet"] for r in doc["leases"]) == sorted(subnets.values())
        mine = [r for r in doc["leases"] if r["this_node"]]
        assert [r["subnet"] for r in mine] == [subnets[node]]
        assert mine[0]["public_ip"] == str(lab.node(node).ip)
        assert all(r["backend"] == "vxlan" and r["vtep_mac"] for r in doc["leases"])
        assert all(80_000 < r["expires_in"] <= 86_400 for r in doc["leases"])
        peers = {f["subject"] for f in by(doc["findings"], check="peer", level="OK")}
        assert peers == {s for n, s in subnets.items() if n != node}
        assert by(doc["findings"], check="device", level="OK")
        assert by(doc["findings"], check="rules", level="OK")
        assert by(doc["findings"], check="subnet.env", level="OK")

    code, out, err = lab.tool("n1", "status")
    assert code == 0, out + err
    assert out.endswith("healthy\n")
    assert "this node" in out and subnets["n1"] in out


def test_doctor_healthy_node(vxlan_lab: Lab) -> None:
    code, doc = vxlan_lab.json_tool("n2", "doctor")
    assert code == 0, json.dumps(doc, indent=1)
    assert doc["ok"] is True and doc["summary"]["fail"] == 0
    checks = {f["check"]: f for f in doc["findings"]}
    for name in ("br_netfilter", "etcd", "config", "interface", "lease", "subnet.env", "mtu",
                 "udp-port", "device"):  # fmt: skip
        assert checks[name]["level"] == "OK", checks[name]
    assert checks["etcd"]["message"].startswith("etcd 3.")
    assert (
        checks["mtu"]["message"] == "eth0 1500 -> flannel.1 1450 -> FLANNEL_MTU 1450 -> cni0 1450"
    )
    assert checks["interface"]["subject"] == "eth0"
    # the lab's veth devices offload checksums: the known kernel-bug warning must show
    assert checks["offload"]["level"] in ("OK", "WARN")
    if checks["offload"]["level"] == "WARN":
        assert checks["offload"]["fix"] == "ethtool -K flannel.1 tx-checksum-ip-generic off"


def test_broken_node_is_reported(vxlan_lab: Lab) -> None:
    lab = vxlan_lab
    n2_subnet = lab.subnet("n2")
    n1_subnet = lab.subnet("n1")
    code, before = lab.json_tool("n1", "status")
    lease_mac = next(r["vtep_mac"] for r in before["leases"] if r["this_node"])
    stale = "10.5.254.0/24" if "10.5.254.0/24" not in (n1_subnet, n2_subnet) else "10.5.253.0/24"
    env_file = lab.node("n1").subnet_env

    lab.stop_daemon("n1")
    lab.sh(
        "n1",
        f"""
        ip link set dev flannel.1 address 02:11:22:33:44:55
        ip route del {n2_subnet}
        ip route add {stale} via {stale.split("/")[0]} dev flannel.1 onlink
        iptables -t nat -D FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 \
            -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
        """,
    )
    env_file.rename(env_file.with_suffix(".moved"))

    code, doc = lab.json_tool("n1", "status")
    assert code == 1 and doc["healthy"] is False
    f = doc["findings"]
    (mac,) = by(f, check="device", level="FAIL")
    assert "02:11:22:33:44:55" in mac["message"] and lease_mac in mac["message"]
    assert mac["fix"] == f"ip link set dev flannel.1 address {lease_mac}"
    route = [x for x in by(f, check="peer", level="FAIL", subject=n2_subnet)
             if x["message"].startswith("route missing")]  # fmt: skip
    assert route and route[0]["fix"].startswith(f"ip route replace {n2_subnet} via ")
    (st,) = by(f, check="stale", subject=stale)
    assert st["level"] == "FAIL" and st["message"].startswith(f"stale route {stale}")
    (env,) = by(f, check="subnet.env")
    assert env["level"] == "FAIL" and "does not exist" in env["message"]
    rules = by(f, check="rules", level="FAIL")
    assert any("MASQUERADE" in r["message"] and "missing" in r["message"] for r in rules)
    # this node is still found without subnet.env: by its PublicIP
    assert doc["own_subnet"] == n1_subnet

    code, out, _ = lab.tool("n1", "status")
    assert code == 1
    assert "FAIL  device" in out and "FAIL  stale" in out and "FAIL  subnet.env" in out
    assert f"route missing: want route {n2_subnet}" in out
    assert out.rstrip().endswith("warning(s)") and "problem(s) found" in out

    code, doc = lab.json_tool("n1", "doctor")
    assert code == 1 and doc["ok"] is False
    fails = {x["check"] for x in doc["findings"] if x["level"] == "FAIL"}
    assert fails == {"subnet.env", "device"}, doc["findings"]

    # the other nodes are untouched by n1's local damage
    code, doc = lab.json_tool("n2", "status")
    assert code == 0, json.dumps(doc, indent=1)


@pytest.fixture
def hostgw_lab() -> Iterator[Lab]:
    require_root()
    prefix = f"pf{secrets.token_hex(3)}"
    try:
        yield Lab(prefix, 2, "host-gw")
    finally:
        command.down(prefix)


def test_host_gw_route_via_public_ip(hostgw_lab: Lab) -> None:
    lab = hostgw_lab
    n2_subnet = lab.subnet("n2")
    code, doc = lab.json_tool("n1", "status")
    assert code == 0, json.dumps(doc, indent=1)
    (peer,) = by(doc["findings"], check="peer")
    assert peer["level"] == "OK" and peer["subject"] == n2_subnet
    assert "198.51.100.2" in peer["message"]

    lab.stop_daemon("n1")  # its 10 s resync would put the route back
    lab.sh("n1", f"ip route del {n2_subnet}")
    code, doc = lab.json_tool("n1", "status")
    assert code == 1
    (bad,) = by(doc["findings"], check="peer", level="FAIL")
    assert bad["fix"] == f"ip route replace {n2_subnet} via 198.51.100.2 dev eth0"
    code, doc = lab.json_tool("n1", "doctor")
    assert code == 0, doc["findings"]  # host-gw: no device, no UDP port; nothing else broken


@pytest.fixture(scope="module")
def udp_lab() -> Iterator[Lab]:
    require_root()
    prefix = f"pf{secrets.token_hex(3)}"
    try:
        yield Lab(prefix, 2, "udp")
    finally:
        command.down(prefix)


def test_udp_data_path_is_judged(udp_lab: Lab) -> None:
    """status judges the udp backend with the daemon's own rules: the TUN (up, address, MTU,
    the Network route), the forwarder's socket, and the peers the forwarder's table holds."""
    lab = udp_lab
    n2_subnet = lab.subnet("n2")
    code, doc = lab.json_tool("n1", "status")
    assert code == 0, json.dumps(doc, indent=1)
    assert not by(doc["findings"], level="WARN"), doc["findings"]
    (dev,) = by(doc["findings"], check="device")
    assert dev["level"] == "OK" and dev["subject"] == "flannel0", dev
    (peer,) = by(doc["findings"], check="peer")
    assert peer["level"] == "OK" and peer["subject"] == n2_subnet
    assert "198.51.100.2:8285" in peer["message"]
    code, doc = lab.json_tool("n1", "doctor")
    assert code == 0, doc["findings"]
    (mtu,) = by(doc["findings"], check="mtu")
    assert mtu["level"] == "OK", mtu  # FLANNEL_MTU = external MTU - 28, not a warning

    # The TUN and the forwarder's socket live as long as the daemon: stopped, both are gone.
    lab.stop_daemon("n1")
    code, doc = lab.json_tool("n1", "status")
    assert code == 1
    fails = by(doc["findings"], check="device", level="FAIL")
    assert any("does not exist" in f["message"] for f in fails), fails
    assert any("UDP port 8285" in f["message"] for f in fails), fails
