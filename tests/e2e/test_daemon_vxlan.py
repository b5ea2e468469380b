"""End to end, VXLAN: three nodes each running ``python -m pyflannel`` with flanneld's flags, one
CNI pod per node. What a flanneld user would check: pods reach each other, subnet.env matches the
lease, the lease JSON is flanneld's byte for byte, the kernel has flanneld's ARP/FDB/route entries
and masquerade rules, the health endpoints answer like flanneld's, and the masq rules heal.

One lab for the module (``--iptables-resync=1`` so the repair test is quick); the tests here only
read it, except the masq-repair test, which waits until the daemon has put the rules back.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from pyflannel.lab.netns import http_request
from tests.e2e.helpers import (
    ETCD_PREFIX,
    HEALTHZ_PORT,
    MASQ_COMMENT,
    NETWORK,
    DaemonLab,
    daemon_lab,
    masq_rules,
    wait_for,
)
from tests.harness.fixtures import require_root

pytestmark = pytest.mark.root

RESYNC_SECONDS = 1


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonLab]:
    require_root()
    root = Path(tmp_path_factory.mktemp("vxlan-lab"))
    with daemon_lab(
        root, backend="vxlan", daemon_flags=[f"--iptables-resync={RESYNC_SECONDS}"]
    ) as lab:
        yield lab


def test_every_pod_pings_every_other_pod(lab: DaemonLab) -> None:
    assert len(lab.pods) == 3
    assert lab.ping_failures() == []


def test_lease_json_is_flanneld_format_byte_for_byte(lab: DaemonLab) -> None:
    leases = lab.leases()
    assert len(leases) == 3
    for node in lab.nodes:
        rec = lab.lease_of(node)
        link = lab.link(node, "flannel.1")
        assert link is not None
        mac = link["address"]
        assert re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac)
        # locally administered unicast, like flanneld's random VTEP MAC
        assert int(mac[:2], 16) & 0b11 == 0b10
        expected = (
            f'{{"PublicIP":"{node.ip}","PublicIPv6":null,"BackendType":"vxlan",'
            f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}'
        )
        assert rec.value == expected.encode()
        net = rec.subnet
        assert rec.key == f"{ETCD_PREFIX}/subnets/{net.network_address}-{net.prefixlen}"
        assert net.prefixlen == 24 and net.subnet_of(NETWORK)
        assert rec.etcd_lease != 0, "a dynamic lease is bound to an etcd lease (TTL)"
    assert len({r.subnet for r in leases.values()}) == 3


def test_subnet_env_matches_lease(lab: DaemonLab) -> None:
    for node in lab.nodes:
        subnet = lab.lease_of(node).subnet
        assert node.subnet_env.read_text() == (
            f"FLANNEL_NETWORK={NETWORK}\n"
            f"FLANNEL_SUBNET={subnet.network_address + 1}/{subnet.prefixlen}\n"
            "FLANNEL_MTU=1450\n"
            "FLANNEL_IPMASQ=true\n"
        )
        assert oct(node.subnet_env.stat().st_mode & 0o777) == oct(0o644)


def test_vxlan_device_is_flanneld_shaped(lab: DaemonLab) -> None:
    for node in lab.nodes:
        link = lab.link(node, "flannel.1")
        assert link is not None
        info = link["linkinfo"]
        assert info["info_kind"] == "vxlan"
        data = info["info_data"]
        assert data["id"] == 1
        assert data["local"] == str(node.ip)
        assert data["port"] == 8472
        assert not data.get("learning", False)
        assert link["mtu"] == 1450
        assert "UP" in link["flags"]
        # the lease subnet's network address /32, nothing else
        addrs = lab.ip_json(node, "-4", "addr", "show", "dev", "flannel.1")[0]["addr_info"]
        subnet = lab.lease_of(node).subnet
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [(str(subnet.network_address), 32)]


def test_peers_have_arp_fdb_and_onlink_routes(lab: DaemonLab) -> None:
    for node in lab.nodes:
        got, want = lab.vxlan_entries(node), lab.expected_vxlan_entries(node)
        assert len(want["routes"]) == 2
        assert got == want
    # no route for the whole network (flanneld relies on the per-peer routes only)
    routes = lab.ip_json("n1", "route", "show")
    assert not [r for r in routes if r["dst"] == str(NETWORK)]


def test_masq_and_forward_rules_in_flanneld_order(lab: DaemonLab) -> None:
    for node in lab.nodes:
        subnet = lab.lease_of(node).subnet
        assert lab.flannel_masq_rules(node) == masq_rules(NETWORK, subnet)
        fwd = [r for r in lab.iptables_save(node, "filter") if "flanneld forward" in r]
        c = '-m comment --comment "flanneld forward"'
        assert fwd == [
            f"-A FORWARD {c} -j FLANNEL-FWD",
            f"-A FLANNEL-FWD -s {NETWORK} {c} -j ACCEPT",
            f"-A FLANNEL-FWD -d {NETWORK} {c} -j ACCEPT",
        ]


def test_health_endpoints_answer_like_flanneld(lab: DaemonLab) -> None:
    base = f"http://127.0.0.1:{HEALTHZ_PORT}"
    for node in lab.nodes:
        assert http_request(f"{base}/healthz", ns=node.ns)[:2] == (200, b"flanneld is running")
        assert http_request(f"{base}/readyz", ns=node.ns)[:2] == (200, b"flanneld is ready")
        assert http_request(f"{base}/nothing-here", ns=node.ns)[0] == 404


def _metrics(lab: DaemonLab, node: str) -> dict[str, float]:
    status, body, err = http_request(
        f"http://127.0.0.1:{HEALTHZ_PORT}/metrics", ns=lab.node(node).ns
    )
    assert status == 200, err
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("pyflannel_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_have_plausible_values(lab: DaemonLab) -> None:
    for node in lab.nodes:
        m = _metrics(lab, node.name)
        assert m["pyflannel_leases_known"] == 3
        assert m["pyflannel_peers_programmed"] == 2
        assert m["pyflannel_ready"] == 1
        # 24 h lease, granted a few seconds ago
        assert 86400 - 600 < m["pyflannel_lease_expires_in_seconds"] <= 86400
        # ARP + FDB + route for two peers at least
        assert m["pyflannel_netlink_operations_total"] >= 6
        assert m["pyflannel_netlink_errors_total"] == 0
        assert 0 <= m["pyflannel_last_snapshot_apply_seconds"] < 10


def test_readyz_is_503_until_the_daemon_is_ready(lab: DaemonLab) -> None:
    """A daemon whose network config does not exist (yet) keeps retrying: alive, not ready."""
    node = lab.node("n1")
    port = HEALTHZ_PORT + 1
    proc = lab.topo.spawn_in_node(
        node,
        [
            *lab.daemon_argv()[:3],
            f"--etcd-endpoints={lab.env.etcd_endpoint}",
            "--etcd-prefix=/pyflannel-e2e/no-config-here",
            "--subnet-file=/run/flannel/not-ready.env",
            f"--healthz-port={port}",
            "--healthz-ip=127.0.0.1",
        ],
        node.log_dir / "not-ready.log",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        status, body, _ = http_request(f"{base}/healthz", ns=node.ns, wait=20, expect="running")
        assert (status, body) == (200, b"flanneld is running")
        assert http_request(f"{base}/readyz", ns=node.ns)[:2] == (503, b"flanneld is not ready yet")
        assert proc.poll() is None
        assert not (node.run_flannel_dir / "not-ready.env").exists()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_masq_rules_are_repaired_within_a_resync_period(lab: DaemonLab) -> None:
    node = lab.node("n2")
    subnet: IPv4Network = lab.lease_of(node).subnet
    want = masq_rules(NETWORK, subnet)
    assert lab.flannel_masq_rules(node) == want
    c = shlex.split(MASQ_COMMENT)
    # delete rule 3 (own subnet → network: RETURN) ...
    rule3 = ["-s", str(subnet), "-d", str(NETWORK), *c, "-j", "RETURN"]
    # ... and move the catch-all MASQUERADE (rule 6) to the top, where it would masquerade
    # pod-to-pod traffic
    masq6 = ["-s", str(NETWORK), "!", "-d", "224.0.0.0/4", *c, "-j", "MASQUERADE", "--random-fully"]

    def break_rules() -> list[str]:
        lab.iptables(node, "-t", "nat", "-D", "FLANNEL-POSTRTG", *rule3)
        lab.iptables(node, "-t", "nat", "-D", "FLANNEL-POSTRTG", *masq6)
        lab.iptables(node, "-t", "nat", "-I", "FLANNEL-POSTRTG", "1", *masq6)
        return lab.flannel_masq_rules(node)

    # The resync runs every second: one may repair the chain between these commands. Then
    # the state read is not the one made; wait for the repair and break it again.
    for _ in range(5):
        broken = break_rules()
        if len(broken) == len(want) - 1 and broken[1].endswith("-j MASQUERADE --random-fully"):
            break
        wait_for("a mid-break repair completes", lambda: lab.flannel_masq_rules(node) == want, 5)
    assert broken != want and len(broken) == len(want) - 1
    assert broken[1].endswith("-j MASQUERADE --random-fully")

    wait_for(
        "masq rules repaired",
        lambda: lab.flannel_masq_rules(node) == want,
        timeout=RESYNC_SECONDS + 2.0,
    )
    assert lab.ping_failures() == []


def test_masq_repair_is_counted_in_metrics(lab: DaemonLab) -> None:
    node = lab.node("n3")
    want = masq_rules(NETWORK, lab.lease_of(node).subnet)
    before = _metrics(lab, node.name)
    lab.iptables(
        node, "-t", "nat", "-D", "POSTROUTING", *shlex.split(MASQ_COMMENT), "-j", "FLANNEL-POSTRTG"
    )
    wait_for(
        "masq jump rule repaired",
        lambda: lab.flannel_masq_rules(node) == want,
        timeout=RESYNC_SECONDS + 2.0,
    )
    after = _metrics(lab, node.name)
    assert after["pyflannel_masq_resyncs_total"] > before["pyflannel_masq_resyncs_total"]
    assert after["pyflannel_masq_repairs_total"] > before["pyflannel_masq_repairs_total"]
