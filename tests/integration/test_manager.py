"""EtcdSubnetManager against a real etcd: allocation rules, reservations, out-of-subnets, the
100-node race, renewal, and what happens when our key is deleted, expires or is taken."""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import time
from base64 import b64decode
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from pyflannel.config import parse_network_config
from pyflannel.errors import LeaseLost, OutOfSubnets
from pyflannel.lease import Lease, LeaseAttrs, decode_attrs, encode_attrs
from pyflannel.subnet.allocation import previous_subnets
from pyflannel.subnet.etcd.errors import ConfigNotFound
from pyflannel.subnet.manager import EtcdSubnetManager
from pyflannel.subnet.subnet_env import SubnetEnv
from tests.harness.etcd import EtcdServer

V4 = ipaddress.IPv4Network
CFG_TEXT = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'
CFG = parse_network_config(CFG_TEXT)


def node(n: int) -> LeaseAttrs:
    return LeaseAttrs(
        public_ip=ipaddress.IPv4Address(f"198.51.100.{n}"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": f"aa:bb:cc:00:00:{n:02x}"},
    )


ME = node(10)


def new_prefix() -> str:
    return f"/pf{secrets.token_hex(3)}/network"


def manager(etcd: EtcdServer, prefix: str, **kw: Any) -> EtcdSubnetManager:
    kw.setdefault("request_timeout", 5)
    return EtcdSubnetManager(etcd.endpoint, prefix, **kw)


def kv(etcd: EtcdServer, key: str) -> dict[str, Any] | None:
    out = json.loads(etcd.etcdctl("get", key, "-w", "json").stdout)
    kvs = out.get("kvs") or []
    if not kvs:
        return None
    return {"value": b64decode(kvs[0]["value"]), "lease": int(kvs[0].get("lease", 0))}


def subnet_keys(etcd: EtcdServer, prefix: str) -> list[str]:
    out = etcd.etcdctl("get", "--prefix", "--keys-only", f"{prefix}/subnets/").stdout
    return [line for line in out.splitlines() if line]


def put_with_lease(etcd: EtcdServer, key: str, value: str, ttl: int = 300) -> int:
    out = etcd.etcdctl("lease", "grant", str(ttl)).stdout
    m = re.search(r"lease ([0-9a-f]+) granted", out)
    assert m, out
    etcd.etcdctl("put", f"--lease={m.group(1)}", key, value)
    return int(m.group(1), 16)


async def wait_for(pred: Any, timeout: float = 10.0, what: str = "condition") -> None:
    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(pred):
            await trio.sleep(0.05)


# --------------------------------------------------------------------------- config


async def test_network_config_raw_and_missing(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    async with manager(etcd, prefix) as mgr:
        with pytest.raises(ConfigNotFound, match="etcdv3 API"):
            await mgr.get_network_config()
        etcd.put(f"{prefix}/config", CFG_TEXT)
        raw = await mgr.get_network_config()
    assert parse_network_config(raw) == CFG


# --------------------------------------------------------------------------- allocation


async def test_random_allocation_writes_our_lease(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    async with manager(etcd, prefix, ttl=600, renew_margin=5) as mgr:
        lease = await mgr.acquire_lease(CFG, ME)
    assert lease.subnet is not None and lease.subnet.prefixlen == 24
    assert CFG.subnet_min is not None and CFG.subnet_max is not None
    assert CFG.subnet_min <= lease.subnet.network_address <= CFG.subnet_max
    stored = kv(etcd, f"{prefix}/subnets/{lease.subnet.network_address}-24")
    assert stored is not None
    assert stored["value"] == encode_attrs(ME).encode()
    assert stored["lease"] == lease.etcd_lease_id != 0
    assert lease.expiration is not None and 590 < lease.expiration - time.time() <= 601


async def test_reuses_the_lease_of_our_public_ip(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    key = f"{prefix}/subnets/10.5.33.0-24"
    old_attrs = LeaseAttrs(
        public_ip=ME.public_ip,
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "00:00:00:00:00:01"},
    )
    old_id = put_with_lease(etcd, key, encode_attrs(old_attrs))
    put_with_lease(etcd, f"{prefix}/subnets/10.5.34.0-24", encode_attrs(node(20)))
    async with manager(etcd, prefix) as mgr:
        lease = await mgr.acquire_lease(
            CFG, ME, previous_subnets(SubnetEnv(subnet=ipaddress.IPv4Interface("10.5.90.1/24")))
        )
    assert lease.subnet == V4("10.5.33.0/24"), "PublicIP match beats subnet.env"
    stored = kv(etcd, key)
    assert stored is not None
    assert decode_attrs(stored["value"]) == ME, "the new VtepMAC replaces the old one"
    assert stored["lease"] == lease.etcd_lease_id and lease.etcd_lease_id != old_id
    assert len(subnet_keys(etcd, prefix)) == 2


async def test_previous_lease_of_our_public_ip_is_found_before_acquiring(etcd: EtcdServer) -> None:
    """The daemon reads it before preparing the backend: its VtepMAC survives an emptied /run."""
    prefix = new_prefix()
    old_attrs = LeaseAttrs(
        public_ip=ME.public_ip,
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:33"},
    )
    put_with_lease(etcd, f"{prefix}/subnets/10.5.33.0-24", encode_attrs(old_attrs))
    put_with_lease(etcd, f"{prefix}/subnets/10.5.34.0-24", encode_attrs(node(20)))
    put_with_lease(etcd, f"{prefix}/subnets/10.9.35.0-24", encode_attrs(old_attrs))  # outside
    async with manager(etcd, prefix) as mgr:
        found = await mgr.previous_lease(CFG, ME)
        assert found is not None and found.subnet == V4("10.5.33.0/24")
        assert found.attrs.backend_data == old_attrs.backend_data
        assert await mgr.previous_lease(CFG, node(21)) is None


async def test_incompatible_lease_of_our_ip_is_deleted(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    wrong = f"{prefix}/subnets/10.9.1.0-24"  # outside Network
    put_with_lease(etcd, wrong, encode_attrs(ME))
    async with manager(etcd, prefix) as mgr:
        lease = await mgr.acquire_lease(CFG, ME)
    assert kv(etcd, wrong) is None
    assert lease.subnet is not None and lease.subnet.subnet_of(V4("10.5.0.0/16"))
    assert subnet_keys(etcd, prefix) == [f"{prefix}/subnets/{lease.subnet.network_address}-24"]


async def test_reuses_free_subnet_from_subnet_env(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    env = SubnetEnv(subnet=ipaddress.IPv4Interface("10.5.77.1/24"))
    async with manager(etcd, prefix) as mgr:
        lease = await mgr.acquire_lease(CFG, ME, previous_subnets(env))
    assert lease.subnet == V4("10.5.77.0/24")


async def test_subnet_env_subnet_held_by_another_node_is_not_taken(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    put_with_lease(etcd, f"{prefix}/subnets/10.5.77.0-24", encode_attrs(node(20)))
    env = SubnetEnv(subnet=ipaddress.IPv4Interface("10.5.77.1/24"))
    async with manager(etcd, prefix) as mgr:
        lease = await mgr.acquire_lease(CFG, ME, previous_subnets(env))
    assert lease.subnet != V4("10.5.77.0/24")
    held = kv(etcd, f"{prefix}/subnets/10.5.77.0-24")
    assert held is not None and decode_attrs(held["value"]) == node(20)


async def test_out_of_subnets(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    cfg = parse_network_config('{"Network": "10.5.0.0/28", "Backend": {"Type": "host-gw"}}')
    for i, host in ((4, 21), (8, 22), (12, 23)):
        put_with_lease(etcd, f"{prefix}/subnets/10.5.0.{i}-30", encode_attrs(node(host)))
    async with manager(etcd, prefix) as mgr:
        with pytest.raises(OutOfSubnets) as info:
            await mgr.acquire_lease(cfg, ME)
    msg = str(info.value)
    assert "Network 10.5.0.0/28" in msg and "SubnetLen 30" in msg
    assert "10.5.0.4 - 10.5.0.12" in msg and "3 leases" in msg
    assert len(subnet_keys(etcd, prefix)) == 3


# --------------------------------------------------------------------------- reservations


async def test_reservation_is_used_without_a_ttl_and_never_converted(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    key = f"{prefix}/subnets/10.5.200.0-24"
    # Documentation/reservations.md: a key written without --lease, naming the host's IP.
    etcd.put(key, json.dumps({"PublicIP": str(ME.public_ip)}))
    async with manager(etcd, prefix, ttl=3, renew_margin_seconds=1, renew_retry=0.2) as mgr:
        lease = await mgr.acquire_lease(CFG, ME)
        assert lease.subnet == V4("10.5.200.0/24")
        assert lease.is_reservation and lease.expiration is None
        stored = kv(etcd, key)
        assert stored is not None and stored["lease"] == 0, "must stay a reservation (#1329)"
        assert decode_attrs(stored["value"]) == ME, "our attrs (VtepMAC) are written"
        with trio.move_on_after(4):  # longer than the TTL: nothing may attach a lease
            await mgr.run_renewal(lease)
    stored = kv(etcd, key)
    assert stored is not None and stored["lease"] == 0


async def test_reservation_of_another_host_is_not_taken(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    cfg = parse_network_config('{"Network": "10.5.0.0/28", "Backend": {"Type": "host-gw"}}')
    etcd.put(f"{prefix}/subnets/10.5.0.4-30", json.dumps({"PublicIP": "198.51.100.50"}))
    async with manager(etcd, prefix) as mgr:
        first = await mgr.acquire_lease(cfg, node(11))
        second = await mgr.acquire_lease(cfg, node(12))
        with pytest.raises(OutOfSubnets):
            await mgr.acquire_lease(cfg, node(13))
    assert {first.subnet, second.subnet} == {V4("10.5.0.8/30"), V4("10.5.0.12/30")}


# --------------------------------------------------------------------------- the race


async def test_100_concurrent_acquirers_get_100_distinct_subnets(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    results: dict[int, Lease] = {}

    async def one(i: int) -> None:
        async with manager(etcd, prefix, request_timeout=20) as mgr:
            results[i] = await mgr.acquire_lease(CFG, node(i + 1))

    t0 = time.monotonic()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(one, i)
    elapsed = time.monotonic() - t0
    subnets = [r.subnet for r in results.values()]
    assert len(subnets) == 100 and len(set(subnets)) == 100
    keys = subnet_keys(etcd, prefix)
    assert sorted(keys) == sorted(f"{prefix}/subnets/{s.network_address}-24" for s in subnets if s)
    for i, lease in results.items():
        stored = kv(
            etcd, f"{prefix}/subnets/{lease.subnet.network_address}-24" if lease.subnet else ""
        )
        assert (
            stored is not None and decode_attrs(stored["value"]).public_ip == node(i + 1).public_ip
        )
    lost = sum(1 for e in logs if e["event"] == "lease.subnet_taken")
    print(f"\n100 concurrent acquirers: {elapsed:.1f}s, {lost} lost races retried")


# --------------------------------------------------------------------------- renewal


async def test_renewal_with_short_ttl(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    seen: list[Lease] = []
    async with manager(etcd, prefix, ttl=3, renew_margin_seconds=1, renew_retry=0.2) as mgr:
        lease = await mgr.acquire_lease(CFG, ME)
        assert lease.subnet is not None
        key = f"{prefix}/subnets/{lease.subnet.network_address}-24"
        with trio.move_on_after(6.5):
            await mgr.run_renewal(lease, on_change=seen.append)
    renewals = [x for x in seen if x.etcd_lease_id != lease.etcd_lease_id]
    assert len({x.etcd_lease_id for x in renewals}) >= 2, "renewed about every 2 s"
    stored = kv(etcd, key)
    assert stored is not None, "the key outlived several TTLs"
    assert stored["lease"] == seen[-1].etcd_lease_id
    assert decode_attrs(stored["value"]) == ME


async def test_renewal_retries_while_etcd_is_down(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    seen: list[Lease] = []
    async with manager(etcd, prefix, ttl=4, renew_margin_seconds=2, renew_retry=0.3) as mgr:
        lease = await mgr.acquire_lease(CFG, ME)
        with capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: mgr.run_renewal(lease, on_change=seen.append))
                await trio.to_thread.run_sync(etcd.stop)
                await trio.sleep(3.0)  # the renewal at ~2 s fails and is retried
                assert not seen
                await trio.to_thread.run_sync(etcd.restart)
                with trio.fail_after(15):
                    while not seen:
                        await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
    assert any(e["event"] == "lease.renew_failed" for e in logs)
    assert seen[-1].etcd_lease_id != lease.etcd_lease_id
    assert lease.subnet is not None
    stored = kv(etcd, f"{prefix}/subnets/{lease.subnet.network_address}-24")
    assert stored is not None and stored["lease"] == seen[-1].etcd_lease_id


# --------------------------------------------------------------------------- own lease lost


async def _renewal_running(etcd: EtcdServer, prefix: str) -> tuple[EtcdSubnetManager, Lease, str]:
    mgr = manager(etcd, prefix, ttl=60, renew_margin_seconds=10, renew_retry=0.2)
    lease = await mgr.acquire_lease(CFG, ME)
    assert lease.subnet is not None
    return mgr, lease, f"{prefix}/subnets/{lease.subnet.network_address}-24"


@pytest.mark.parametrize("how", ["delete", "revoke"])
async def test_deleted_or_expired_lease_is_reacquired(etcd: EtcdServer, how: str) -> None:
    prefix = new_prefix()
    mgr, lease, key = await _renewal_running(etcd, prefix)
    seen: list[Lease] = []
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: mgr.run_renewal(lease, on_change=seen.append))
            await trio.sleep(0.5)
            if how == "delete":
                await trio.to_thread.run_sync(lambda: etcd.etcdctl("del", key))
            else:  # what etcd does when the TTL runs out
                lid = f"{lease.etcd_lease_id:x}"
                await trio.to_thread.run_sync(lambda: etcd.etcdctl("lease", "revoke", lid))
            await wait_for(lambda: seen and kv(etcd, key) is not None, what="re-acquired")
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    mgr.close()
    stored = kv(etcd, key)
    assert stored is not None and decode_attrs(stored["value"]) == ME
    assert stored["lease"] == seen[-1].etcd_lease_id != lease.etcd_lease_id
    errors = [e for e in logs if e["log_level"] == "error"]
    assert any(e["event"] == "lease.revoked" for e in errors), "logged loudly"


async def test_lease_overwritten_by_another_node_raises_lease_lost(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    mgr, lease, key = await _renewal_running(etcd, prefix)

    async def other_node_writes() -> None:
        await trio.sleep(0.5)
        await trio.to_thread.run_sync(lambda: put_with_lease(etcd, key, encode_attrs(node(99))))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_node_writes)
            with trio.fail_after(10), pytest.raises(LeaseLost) as info:
                await mgr.run_renewal(lease)
    finally:
        mgr.close()
    assert "198.51.100.99" in str(info.value) and str(lease.subnet) in str(info.value)


async def test_deleted_then_taken_by_another_node_raises_lease_lost(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    mgr, lease, key = await _renewal_running(etcd, prefix)

    async def delete_and_take() -> None:
        await trio.sleep(0.5)
        # Blocking calls on the trio thread: the manager cannot react between the deletion and
        # the other node's create, so the other node wins deterministically.
        etcd.etcdctl("del", key)
        put_with_lease(etcd, key, encode_attrs(node(77)))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(delete_and_take)
            with trio.fail_after(10), pytest.raises(LeaseLost, match=r"198\.51\.100\.77"):
                await mgr.run_renewal(lease)
    finally:
        mgr.close()
    stored = kv(etcd, key)
    assert stored is not None and decode_attrs(stored["value"]) == node(77)


async def test_lease_lost_is_not_wrapped_in_an_exception_group(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    mgr, lease, key = await _renewal_running(etcd, prefix)
    put_with_lease(etcd, key, encode_attrs(node(98)))  # taken before renewal even starts
    try:
        with trio.fail_after(10):
            try:
                await mgr.run_renewal(lease)
            except LeaseLost as exc:  # the daemon catches exactly this
                assert "198.51.100.98" in str(exc)
            else:
                raise AssertionError("run_renewal returned")
    finally:
        mgr.close()


async def test_value_rewritten_with_our_ip_is_restored(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    mgr, lease, key = await _renewal_running(etcd, prefix)
    stale = LeaseAttrs(
        public_ip=ME.public_ip,
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "00:00:00:00:00:ff"},
    )
    seen: list[Lease] = []
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: mgr.run_renewal(lease, on_change=seen.append))
            await trio.sleep(0.5)
            await trio.to_thread.run_sync(lambda: put_with_lease(etcd, key, encode_attrs(stale)))

            def restored() -> bool:
                stored = kv(etcd, key)
                return stored is not None and decode_attrs(stored["value"]) == ME

            await wait_for(restored, what="our attrs written back")
            nursery.cancel_scope.cancel()
    mgr.close()
    assert any(e["event"] == "lease.attrs_restored" for e in logs)
    stored = kv(etcd, key)
    assert stored is not None and stored["lease"] == seen[-1].etcd_lease_id


async def test_lease_turned_into_reservation_is_no_longer_renewed(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    seen: list[Lease] = []
    async with manager(etcd, prefix, ttl=3, renew_margin_seconds=1, renew_retry=0.2) as mgr:
        lease = await mgr.acquire_lease(CFG, ME)
        assert lease.subnet is not None
        key = f"{prefix}/subnets/{lease.subnet.network_address}-24"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: mgr.run_renewal(lease, on_change=seen.append))
            await trio.sleep(0.3)
            # An admin pins the subnet to this host: same value, no etcd lease.
            await trio.to_thread.run_sync(lambda: etcd.put(key, encode_attrs(ME)))
            await trio.sleep(4)  # longer than the TTL
            nursery.cancel_scope.cancel()
    stored = kv(etcd, key)
    assert stored is not None and stored["lease"] == 0
    assert seen and seen[-1].is_reservation
