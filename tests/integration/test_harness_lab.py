"""Self-tests of the namespaced lab: connectivity, private node state, pods, teardown."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyflannel.errors import ConfigError
from pyflannel.lab import Topology, cleanup_prefix, ping, run_in
from pyflannel.lab.netns import list_netns, netns_exists, netns_pids, prefixed_netns
from tests.harness.etcd import ETCDCTL_BIN, start_etcd
from tests.harness.lab import LabEnv, new_prefix

pytestmark = pytest.mark.root


def _leftovers(prefix: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert [n for n in list_netns() if n.startswith(prefix)] == [
        n for n in sorted(names) if n.startswith(prefix)
    ]
    return [n for n in names if n.startswith(prefix)]


def test_lab3_every_node_pings_every_other(lab3: LabEnv) -> None:
    topo = lab3.topo
    assert [n.name for n in topo.nodes] == ["n1", "n2", "n3"]
    assert [str(n.ip) for n in topo.nodes] == ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
    for a, b in itertools.permutations(topo.nodes, 2):
        ok, rtt = ping(a.ns, b.ip)
        assert ok and rtt is not None, f"{a.name} -> {b.name}"
    for n in topo.nodes:
        assert ping(n.ns, topo.etcd_ip)[0]
        assert ping(n.ns, topo.gateway)[0]


def test_lab3_node_looks_like_a_host(lab3: LabEnv) -> None:
    n1 = lab3.node("n1")
    route = run_in(n1.ns, ["ip", "route", "show", "default"]).stdout
    assert "via 198.51.100.254 dev eth0" in route
    mtu = run_in(n1.ns, ["cat", "/sys/class/net/eth0/mtu"]).stdout.strip()
    assert mtu == "1500"
    assert run_in(n1.ns, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    # The gateway lives only in the switch namespace, never in the root namespace.
    assert "198.51.100.254" in run_in(lab3.topo.switch_ns, ["ip", "-br", "addr"]).stdout


def test_lab3_etcd_in_its_namespace_serves_the_nodes(lab3: LabEnv) -> None:
    assert lab3.etcd_endpoint == "http://198.51.100.250:2379"
    ctl = [ETCDCTL_BIN, f"--endpoints={lab3.etcd_endpoint}", "--dial-timeout=2s"]
    env = {**os.environ, "ETCDCTL_API": "3"}
    lab3.topo.run_in_node("n1", [*ctl, "put", "/coreos.com/network/config", "{}"], env=env)
    got = lab3.topo.run_in_node(3, [*ctl, "get", "/coreos.com/network/config"], env=env).stdout
    assert got.split() == ["/coreos.com/network/config", "{}"]
    assert lab3.etcd is not None and lab3.etcd.get("/coreos.com/network/config") == "{}"


def test_node_state_is_private_and_persistent(lab3: LabEnv) -> None:
    topo = lab3.topo
    n1, n2 = topo.node("n1"), topo.node("n2")
    topo.run_in_node(n1, ["sh", "-c", "echo FLANNEL_SUBNET=10.5.1.1/24 > /run/flannel/subnet.env"])
    topo.run_in_node(n1, ["sh", "-c", "mkdir -p /var/lib/cni/flannel && touch /var/lib/cni/x"])
    assert n1.subnet_env.read_text() == "FLANNEL_SUBNET=10.5.1.1/24\n"
    assert (n1.cni_dir / "x").exists()
    other = topo.run_in_node(n2, ["ls", "-A", "/run/flannel", "/var/lib/cni"]).stdout
    assert "subnet.env" not in other and "x" not in other
    host_env = Path("/run/flannel/subnet.env")
    assert not host_env.exists() or "10.5.1.1" not in host_env.read_text()
    # A later command (a restarted daemon) finds the same state.
    again = topo.run_in_node(n1, ["cat", "/run/flannel/subnet.env"]).stdout
    assert again == "FLANNEL_SUBNET=10.5.1.1/24\n"


def test_spawn_in_node_runs_in_the_node(lab3: LabEnv) -> None:
    topo = lab3.topo
    n2 = topo.node(2)
    proc = topo.spawn_in_node(n2, ["sh", "-c", "ip -br addr show eth0; cat /run/flannel/id"])
    (n2.run_flannel_dir / "id").write_text("node-two\n")
    proc.wait(timeout=10)
    out = (n2.log_dir / "sh.log").read_text()
    assert "198.51.100.2/24" in out


def test_pod_attached_by_hand_pings_its_node(lab3: LabEnv) -> None:
    topo = lab3.topo
    pod = topo.attach_pod_by_hand("n1", "p1", "10.5.1.2/24", "10.5.1.1")
    pod2 = topo.attach_pod_by_hand("n1", "p2", "10.5.1.3/24", "10.5.1.1")
    assert pod.ns == f"{topo.prefix}-n1-p1" and pod.host_ifname == "vh-p1"
    assert ping(pod.ns, "10.5.1.1")[0]
    assert ping(topo.node("n1").ns, "10.5.1.2")[0]
    assert ping(pod.ns, pod2.ip.ip)[0]
    # Its default route points at the bridge; the node forwards to its underlay address.
    assert ping(pod.ns, topo.node("n1").ip)[0]
    topo.remove_pod("n1", "p2")
    assert not netns_exists(pod2.ns)


def test_teardown_removes_namespaces_and_processes() -> None:
    prefix = new_prefix()
    with Topology(prefix, 2) as topo:
        proc = topo.spawn_in_node("n1", ["sleep", "300"])
        topo.attach_pod_by_hand("n2", "p1", "10.5.2.2/24", "10.5.2.1")
        stray = topo.spawn_in(topo.switch_ns, ["sleep", "300"], topo.state_root / "s.log")
        assert len(prefixed_netns(prefix)) == 5
    assert _leftovers(prefix) == []
    assert proc.poll() == -signal.SIGKILL and stray.poll() is not None
    assert not topo.state_root.exists()


def test_teardown_after_exception_in_block() -> None:
    prefix = new_prefix()
    with pytest.raises(RuntimeError, match="boom"), Topology(prefix, 2) as topo:
        topo.attach_pod_by_hand(1, "p1", "10.5.1.2/24", "10.5.1.1")
        raise RuntimeError("boom")
    assert _leftovers(prefix) == []


def test_cleanup_prefix_removes_a_crashed_run() -> None:
    prefix = new_prefix()
    crashed = Topology(prefix, 2).up()
    # Its owner vanished without down(): a process is still running in a node namespace.
    leftover = crashed.spawn_in_node("n1", ["sleep", "300"])
    # Wait until it really runs inside the namespace: `ip netns exec` exits 255 if the namespace
    # is deleted before it could enter it, which is not the leftover this test is about.
    deadline = time.monotonic() + 10
    while leftover.pid not in netns_pids(f"{prefix}-n1") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cleanup_prefix(prefix) != []
    assert _leftovers(prefix) == [] and leftover.wait(timeout=5) == -signal.SIGKILL
    # A partial leftover is rebuilt, not half-reused.
    Topology(prefix, 2).up()
    run_in(f"{prefix}-n2", ["ip", "link", "del", "eth0"])
    with Topology(prefix, 2) as again:
        assert ping(again.node(1).ns, again.node(2).ip)[0]
    assert _leftovers(prefix) == []


def test_ipv6_and_alternative_underlay(lab_factory: Callable[..., LabEnv]) -> None:
    env = lab_factory(2, ipv6=True, underlay="203.0.113.0/24", etcd=False)
    n1, n2 = env.nodes
    assert str(n2.ip) == "203.0.113.2" and str(n2.ip6) == "2001:db8::2"
    assert ping(n1.ns, n2.ip)[0] and ping(n1.ns, n2.ip6)[0]
    route6 = run_in(n1.ns, ["ip", "-6", "route", "show", "default"]).stdout
    assert f"via {env.topo.gateway6} dev eth0" in route6


def test_lab_etcd_with_tls(lab_factory: Callable[..., LabEnv]) -> None:
    env = lab_factory(1, etcd_tls=True)
    assert env.tls is not None and env.etcd_endpoint == "https://198.51.100.250:2379"
    t = env.tls
    argv = [
        ETCDCTL_BIN, f"--endpoints={env.etcd_endpoint}", f"--cacert={t.ca_file}",
        f"--cert={t.cert_file}", f"--key={t.key_file}", f"--user={t.user}:{t.password}",
        "put", f"{t.prefix}/config", "{}",
    ]  # fmt: skip
    env.topo.run_in_node("n1", argv, env={**os.environ, "ETCDCTL_API": "3"})
    assert env.etcd is not None and env.etcd.get(f"{t.prefix}/config") == "{}"


def test_netns_factory_and_etcd_in_a_bare_namespace(netns: Callable[..., str]) -> None:
    ns = netns("e")
    assert ping(ns, "127.0.0.1")[0]
    # 2379 inside our own namespace is ours, not a packaged etcd's.
    with start_etcd(netns=ns, host="127.0.0.1") as srv:
        assert srv.client_url == "http://127.0.0.1:2379"
        srv.put("/k", "v")
        assert srv.get("/k") == "v"


def test_only_documentation_underlays_are_accepted() -> None:
    with pytest.raises(ConfigError, match=r"192\.0\.2\.0/24"):
        Topology("pfx", 1, underlay="192.0.2.0/24")
    with pytest.raises(ConfigError):
        Topology("bad-prefix", 1)


def test_topology_start_etcd_for_the_lab_command() -> None:
    with Topology(new_prefix(), 1) as topo:
        proc = topo.start_etcd()
        ctl = [ETCDCTL_BIN, f"--endpoints={topo.etcd_client_url}", "--dial-timeout=2s"]
        env = {**os.environ, "ETCDCTL_API": "3"}
        topo.run_in_node("n1", [*ctl, "put", "/k", "v"], env=env)
        got = topo.run_in_node("n1", [*ctl, "get", "/k", "--print-value-only"], env=env)
        assert got.stdout.strip() == "v" and proc.poll() is None
    assert proc.poll() is not None
