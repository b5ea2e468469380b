"""200 nodes acquiring leases at the same moment against one etcd, each with its own
EtcdSubnetManager (its own gRPC connection), as 200 daemons starting together would.

tests/integration/test_manager.py races 100 acquirers for a roomy range; here it is 200, once
for 255 free subnets (most picks collide near the end) and once for only 150 (the range runs
out mid-race): never two nodes on one subnet, every winner's key in etcd with its own PublicIP,
and the losers fail cleanly with OutOfSubnets. A dual-stack variant checks that neither an IPv4
nor an IPv6 subnet is ever held twice (the halves are picked independently; flanneld's create
only requires the combined key to be absent).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import secrets
import time
from base64 import b64decode

import pytest
import trio
from structlog.testing import capture_logs

from pyflannel.config import parse_network_config
from pyflannel.errors import LeaseError, OutOfSubnets
from pyflannel.lease import Lease, LeaseAttrs, decode_attrs
from pyflannel.subnet.manager import EtcdSubnetManager
from tests.harness.etcd import EtcdServer

pytestmark = pytest.mark.slow

NODES = 200


def attrs(i: int) -> LeaseAttrs:
    return LeaseAttrs(
        public_ip=ipaddress.IPv4Address("203.0.113.0") + i,  # documentation range, never sent to
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": f"0a:ac:00:00:{i >> 8:02x}:{i & 0xFF:02x}"},
    )


async def race(
    etcd: EtcdServer, prefix: str, config: str
) -> tuple[dict[int, Lease], dict[int, Exception], float]:
    cfg = parse_network_config(config)
    won: dict[int, Lease] = {}
    failed: dict[int, Exception] = {}
    start = trio.Event()

    async def node(i: int) -> None:
        async with EtcdSubnetManager(etcd.endpoint, prefix, request_timeout=30) as mgr:
            await start.wait()  # everyone connected and waiting: then all go at once
            try:
                won[i] = await mgr.acquire_lease(cfg, attrs(i))
            except LeaseError as exc:
                failed[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(1, NODES + 1):
            nursery.start_soon(node, i)
        await trio.sleep(0.5)
        t0 = time.monotonic()
        start.set()
    return won, failed, time.monotonic() - t0


def stored(etcd: EtcdServer, prefix: str) -> dict[ipaddress.IPv4Network, LeaseAttrs]:
    out = json.loads(etcd.etcdctl("get", "--prefix", f"{prefix}/subnets/", "-w", "json").stdout)
    leases = {}
    for kv in out.get("kvs", []):
        key = b64decode(kv["key"]).decode()
        net, plen = key.rsplit("/", 1)[1].split("-")
        leases[ipaddress.IPv4Network(f"{net}/{plen}")] = decode_attrs(b64decode(kv["value"]))
    return leases


def assert_no_duplicates(etcd: EtcdServer, prefix: str, won: dict[int, Lease]) -> None:
    subnets = [lease.subnet for lease in won.values()]
    assert len(set(subnets)) == len(subnets), "two nodes were given the same subnet"
    in_etcd = stored(etcd, prefix)
    assert set(in_etcd) == set(subnets), "etcd holds exactly the winners' keys"
    for i, lease in won.items():
        assert lease.subnet is not None
        assert in_etcd[lease.subnet].public_ip == attrs(i).public_ip, f"node {i}'s key"
    nets = sorted(in_etcd)
    for a, b in itertools.pairwise(nets):
        assert not a.overlaps(b)


async def test_200_concurrent_acquirers_get_200_distinct_subnets(etcd: EtcdServer) -> None:
    prefix = f"/pf{secrets.token_hex(3)}/network"
    with capture_logs() as logs:
        won, failed, took = await race(
            etcd, prefix, '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'
        )
    retries = sum(1 for e in logs if e["event"] == "lease.subnet_taken")
    print(
        f"\n{NODES} concurrent acquirers, 255 subnets: {took:.1f}s, {retries} lost races "
        f"retried, {len(won)} leases, 0 duplicates"
    )
    assert failed == {}
    assert len(won) == NODES
    assert_no_duplicates(etcd, prefix, won)


async def test_200_acquirers_for_150_subnets_150_win_the_rest_get_out_of_subnets(
    etcd: EtcdServer,
) -> None:
    prefix = f"/pf{secrets.token_hex(3)}/network"
    config = json.dumps(
        {
            "Network": "10.6.0.0/16",
            "SubnetMin": "10.6.1.0",
            "SubnetMax": "10.6.150.0",
            "Backend": {"Type": "vxlan"},
        }
    )
    won, failed, took = await race(etcd, prefix, config)
    kinds = {type(e).__name__ for e in failed.values()}
    print(
        f"\n{NODES} acquirers for 150 subnets: {took:.1f}s, {len(won)} won, {len(failed)} "
        f"failed ({', '.join(sorted(kinds))})"
    )
    assert len(won) == 150
    assert len(failed) == NODES - 150
    assert all(isinstance(e, OutOfSubnets) for e in failed.values()), kinds
    assert_no_duplicates(etcd, prefix, won)


async def test_200_dual_stack_acquirers_hold_no_ipv4_and_no_ipv6_subnet_twice(
    etcd: EtcdServer,
) -> None:
    """Dual stack: the IPv4 and IPv6 halves are picked independently, so two starters can pick
    the same IPv4 /24 with different IPv6 /64s (or the reverse). Each half must be held once."""
    prefix = f"/pf{secrets.token_hex(3)}/network"
    config = json.dumps(
        {
            "Network": "10.7.0.0/16",
            "EnableIPv6": True,
            "IPv6Network": "fd00:10:7::/56",  # 256 /64s: IPv6 picks collide as often as IPv4
            "Backend": {"Type": "vxlan"},
        }
    )
    with capture_logs() as logs:
        won, failed, took = await race(etcd, prefix, config)
    retries = sum(1 for e in logs if e["event"] == "lease.subnet_taken")
    print(f"\n{NODES} dual-stack acquirers: {took:.1f}s, {retries} lost races retried")
    assert failed == {}
    assert len(won) == NODES
    v4 = [lease.subnet for lease in won.values()]
    v6 = [lease.ipv6_subnet for lease in won.values()]
    assert None not in v4 and None not in v6
    assert len(set(v4)) == NODES, "an IPv4 subnet is held twice"
    assert len(set(v6)) == NODES, "an IPv6 subnet is held twice"
    out = json.loads(etcd.etcdctl("get", "--prefix", f"{prefix}/subnets/", "-w", "json").stdout)
    keys = [b64decode(kv["key"]).decode().rsplit("/", 1)[1] for kv in out.get("kvs", [])]
    assert len(keys) == NODES
    halves4 = [k.split("&")[0] for k in keys]
    halves6 = [k.split("&")[1] for k in keys]
    assert len(set(halves4)) == NODES and len(set(halves6)) == NODES, "etcd holds a half twice"
    for i, lease in won.items():
        assert lease.subnet is not None and lease.ipv6_subnet is not None
        key = f"{lease.subnet.network_address}-24&{lease.ipv6_subnet.network_address}-64"
        assert key in keys, f"node {i}'s key"
