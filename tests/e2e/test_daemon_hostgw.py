"""End to end, host-gw: three nodes on one L2 segment, each running ``python -m pyflannel``; peer
subnets are routed via the peers' public IPs on eth0 (no tunnel device), pods reach each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import ETCD_PREFIX, NETWORK, DaemonLab, daemon_lab, masq_rules
from tests.harness.fixtures import require_root

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonLab]:
    require_root()
    with daemon_lab(Path(tmp_path_factory.mktemp("hostgw-lab")), backend="host-gw") as lab:
        yield lab


def test_every_pod_pings_every_other_pod(lab: DaemonLab) -> None:
    assert len(lab.pods) == 3
    assert lab.ping_failures() == []


def test_routes_via_peer_public_ips_on_eth0(lab: DaemonLab) -> None:
    for node in lab.nodes:
        routes = lab.ip_json(node, "route", "show")
        peers = {
            rec.subnet: rec.attrs["PublicIP"]
            for rec in lab.leases().values()
            if rec.attrs["PublicIP"] != str(node.ip)
        }
        assert len(peers) == 2
        for subnet, public_ip in peers.items():
            (route,) = [r for r in routes if r["dst"] == str(subnet)]
            assert route["gateway"] == public_ip
            assert route["dev"] == "eth0"
            assert "onlink" not in route.get("flags", [])
        assert lab.hostgw_routes(node) == lab.expected_hostgw_routes(node)
        assert lab.link(node, "flannel.1") is None, "host-gw makes no tunnel device"


def test_lease_json_and_subnet_env(lab: DaemonLab) -> None:
    assert len(lab.leases()) == 3
    for node in lab.nodes:
        rec = lab.lease_of(node)
        assert rec.value == (
            f'{{"PublicIP":"{node.ip}","PublicIPv6":null,"BackendType":"host-gw"}}'.encode()
        )
        assert rec.key == f"{ETCD_PREFIX}/subnets/{rec.subnet.network_address}-24"
        subnet = rec.subnet
        # host-gw: FLANNEL_MTU is the external interface's MTU
        assert node.subnet_env.read_text() == (
            f"FLANNEL_NETWORK={NETWORK}\n"
            f"FLANNEL_SUBNET={subnet.network_address + 1}/24\n"
            "FLANNEL_MTU=1500\n"
            "FLANNEL_IPMASQ=true\n"
        )
        assert lab.flannel_masq_rules(node) == masq_rules(NETWORK, subnet)
