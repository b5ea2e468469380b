"""Lease lifecycle under ambiguity (issue 18), against a real etcd on loopback.

- dual stack: a create is refused when another key holds the same IPv4 or IPv6 subnet, even one
  created after the caller's listing;
- a lost reply to a write never revokes the lease the key now carries (registry level, by a
  client that applies the transaction and then times out; manager level, by a fault-injecting
  Registry wrapper);
- an unreadable value on our own key backs off and resolves (replace it when it carries our etcd
  lease, else ``LeaseLost``), never a hot loop;
- a wall-clock step does not delay a renewal.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from pyflannel.config import parse_network_config
from pyflannel.errors import EtcdUnavailable, LeaseLost
from pyflannel.lease import EventKind, Lease, LeaseAttrs, decode_attrs, encode_attrs
from pyflannel.subnet import manager as manager_module
from pyflannel.subnet.etcd.client import EtcdClient
from pyflannel.subnet.etcd.errors import EtcdFailure
from pyflannel.subnet.etcd.registry import EtcdRegistry
from pyflannel.subnet.manager import EtcdSubnetManager
from pyflannel.subnet.protocols import Registry
from tests.harness.etcd import EtcdServer
from tests.harness.faulty_registry import FaultyRegistry
from tests.integration.test_manager import kv, new_prefix

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network
CFG = parse_network_config('{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}')
ME = LeaseAttrs(
    public_ip=ipaddress.IPv4Address("198.51.100.10"),
    public_ipv6=ipaddress.IPv6Address("2001:db8::10"),
    backend_type="vxlan",
    backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:0a"},
)
OTHER = LeaseAttrs(public_ip=ipaddress.IPv4Address("198.51.100.20"), backend_type="vxlan")


def transactions_time_out_after_applying(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every transaction is applied, then reports DEADLINE_EXCEEDED (each failover retry too):
    a reply lost after etcd committed the write."""
    real = EtcdClient.txn

    def applied_then_timeout(self: EtcdClient, *args: Any, **kw: Any) -> Any:
        real(self, *args, **kw)
        raise EtcdFailure("connection", "DEADLINE_EXCEEDED", "injected: reply lost")

    monkeypatch.setattr(EtcdClient, "txn", applied_then_timeout)


def ttl_left(etcd: EtcdServer, lease_id: int) -> int:
    out = etcd.etcdctl("lease", "timetolive", f"{lease_id:x}").stdout
    m = re.search(r"remaining\((-?\d+)s\)", out)
    return int(m.group(1)) if m else -1


# --------------------------------------------------------------------------- 1. dual stack


async def test_dual_stack_create_refuses_a_key_sharing_either_half(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    async with EtcdRegistry(etcd.endpoint, prefix) as reg:
        _, listed_at = await reg.list_leases(with_ttl=False)
        # Created after the listing, as a concurrent starter would: same IPv4, other IPv6.
        assert (await reg.create_lease(V4("10.5.1.0/24"), V6("fd00::/64"), OTHER, 60)).ok
        # ... and same IPv6, other IPv4.
        assert (await reg.create_lease(V4("10.5.2.0/24"), V6("fd00:0:0:9::/64"), OTHER, 60)).ok
        same_v4 = await reg.create_lease(
            V4("10.5.1.0/24"), V6("fd00:0:0:1::/64"), ME, 60, known_revision=listed_at
        )
        assert not same_v4.ok and same_v4.conflict == f"{prefix}/subnets/10.5.1.0-24&fd00::-64"
        same_v6 = await reg.create_lease(
            V4("10.5.3.0/24"), V6("fd00:0:0:9::/64"), ME, 60, known_revision=listed_at
        )
        assert not same_v6.ok
        assert same_v6.conflict == f"{prefix}/subnets/10.5.2.0-24&fd00:0:0:9::-64"
        # An IPv4-only key holding the IPv4 half blocks too; a junk key "...-240" does not.
        etcd.put(f"{prefix}/subnets/10.5.4.0-24", encode_attrs(OTHER))
        etcd.put(f"{prefix}/subnets/10.5.5.0-240", "junk")
        blocked = await reg.create_lease(V4("10.5.4.0/24"), V6("fd00:0:0:4::/64"), ME, 60)
        assert blocked.conflict == f"{prefix}/subnets/10.5.4.0-24"
        # Unrelated keys created after the listing cost retries, not the subnet.
        _, now = await reg.list_leases(with_ttl=False)
        free = await reg.create_lease(
            V4("10.5.5.0/24"), V6("fd00:0:0:5::/64"), ME, 60, known_revision=listed_at
        )
        assert free.ok and free.lease is not None and free.lease.mod_revision > now
    keys = etcd.etcdctl("get", "--prefix", "--keys-only", f"{prefix}/subnets/").stdout.split()
    assert f"{prefix}/subnets/10.5.1.0-24&fd00:0:0:1::-64" not in keys
    assert f"{prefix}/subnets/10.5.3.0-24&fd00:0:0:9::-64" not in keys


async def test_dual_stack_create_avoids_the_subnets_of_undecodable_keys(etcd: EtcdServer) -> None:
    """A listing skips keys whose value it cannot decode, so the planner may pick their IPv6
    half; the create must still refuse it (found by the state machine)."""
    prefix = new_prefix()
    garbled = f"{prefix}/subnets/10.5.9.0-24&fd00:0:0:7::-64"
    etcd.put(garbled, '{"PublicIP": "198.5')
    async with EtcdRegistry(etcd.endpoint, prefix) as reg:
        leases, listed_at = await reg.list_leases(with_ttl=False)
        assert leases == []
        res = await reg.create_lease(
            V4("10.5.10.0/24"), V6("fd00:0:0:7::/64"), ME, 60, known_revision=listed_at
        )
    assert not res.ok and res.conflict == garbled


async def test_dual_stack_acquire_after_a_hidden_half_conflict_picks_other_subnets(
    etcd: EtcdServer,
) -> None:
    """Two nodes that pick the same IPv4 /24 with different IPv6 /64s no longer both win."""
    prefix = new_prefix()
    cfg = parse_network_config(
        json.dumps(
            {
                "Network": "10.5.0.0/16",
                "SubnetMin": "10.5.1.0",
                "SubnetMax": "10.5.2.0",
                "EnableIPv6": True,
                "IPv6Network": "fd00:10:5::/48",
                "Backend": {"Type": "vxlan"},
            }
        )
    )
    async with EtcdSubnetManager(etcd.endpoint, prefix, request_timeout=5) as mgr:
        won = []
        for i in range(2):
            attrs = LeaseAttrs(public_ip=ipaddress.IPv4Address(f"198.51.100.{i + 1}"))
            won.append(await mgr.acquire_lease(cfg, attrs))
    assert {w.subnet for w in won} == {V4("10.5.1.0/24"), V4("10.5.2.0/24")}
    assert len({w.ipv6_subnet for w in won}) == 2


# --------------------------------------------------------------------------- 2. lost reply


async def test_lost_reply_to_a_renewal_keeps_the_key(
    etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction is applied, then every attempt (failover included) times out."""
    prefix = new_prefix()
    sn = V4("10.5.7.0/24")
    key = f"{prefix}/subnets/10.5.7.0-24"
    async with EtcdRegistry(etcd.endpoint, prefix, request_timeout=5) as reg:
        created = await reg.create_lease(sn, None, ME, 60)
        assert created.lease is not None
        transactions_time_out_after_applying(monkeypatch)
        with capture_logs() as logs:
            renewed = await reg.put_lease(
                sn, None, ME, 60, if_mod_revision=created.lease.mod_revision
            )
        monkeypatch.undo()
    assert renewed.lease is not None, "read back: the write was applied, so it is ours"
    stored = kv(etcd, key)
    assert stored is not None, "the key must survive a lost reply (was: revoked -> deleted)"
    assert stored["lease"] == renewed.lease.etcd_lease_id
    assert ttl_left(etcd, renewed.lease.etcd_lease_id) > 50
    assert any(e["event"] == "etcd.write_reply_lost" for e in logs)


async def test_lost_reply_when_read_back_fails_leaves_the_lease_to_expire(
    etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = new_prefix()
    sn = V4("10.5.8.0/24")
    async with EtcdRegistry(etcd.endpoint, prefix, request_timeout=5) as reg:
        created = await reg.create_lease(sn, None, ME, 60)
        assert created.lease is not None
        transactions_time_out_after_applying(monkeypatch)

        def unreachable(self: Any, *args: Any, **kw: Any) -> Any:
            raise EtcdFailure("connection", "UNAVAILABLE", "injected: unreachable")

        monkeypatch.setattr(EtcdClient, "range", unreachable)
        with pytest.raises(EtcdUnavailable):
            await reg.put_lease(sn, None, ME, 60, if_mod_revision=created.lease.mod_revision)
        monkeypatch.undo()
    stored = kv(etcd, f"{prefix}/subnets/10.5.8.0-24")
    assert stored is not None and stored["lease"] != created.lease.etcd_lease_id
    assert ttl_left(etcd, stored["lease"]) > 50, "not revoked: the key carries it"


async def test_manager_survives_renewals_whose_replies_are_lost(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    faulty = FaultyRegistry(EtcdRegistry(etcd.endpoint, prefix, request_timeout=5), ME)
    registry: Registry = faulty
    seen: list[Lease] = []
    removed: list[int] = []
    async with (
        EtcdSubnetManager(
            registry=registry, ttl=3, renew_margin_seconds=1.5, renew_retry=0.3
        ) as mgr,
        EtcdRegistry(etcd.endpoint, prefix) as observer,
    ):
        lease = await mgr.acquire_lease(CFG, ME)
        faulty.faults = ["after", "after"]  # the next two renewals take effect, then time out
        assert lease.subnet is not None
        _, rev = await observer.get_lease(lease.subnet, None)

        async def watch() -> None:
            async with observer.watch_lease(lease.subnet, None, rev + 1) as stream:
                async for batch in stream:
                    removed.extend(1 for e in batch.events if e.kind is EventKind.REMOVED)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            nursery.start_soon(lambda: mgr.run_renewal(lease, on_change=seen.append))
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
    assert faulty.faults == [] and faulty.writes >= 3
    assert removed == [], "our key was never deleted"
    stored = kv(etcd, f"{prefix}/subnets/{lease.subnet.network_address}-24")
    assert stored is not None and decode_attrs(stored["value"]) == ME
    assert seen and stored["lease"] == seen[-1].etcd_lease_id


# --------------------------------------------------------------------------- 3. unreadable


async def _renewing(
    etcd: EtcdServer, prefix: str, tamper: Callable[[str, Lease], None], secs: float
) -> tuple[list[Any], BaseException | None, Lease, str]:
    outcome: BaseException | None = None
    async with EtcdSubnetManager(
        etcd.endpoint, prefix, request_timeout=5, ttl=4, renew_margin_seconds=2, renew_retry=0.5
    ) as mgr:
        lease = await mgr.acquire_lease(CFG, ME)
        assert lease.subnet is not None
        key = f"{prefix}/subnets/{lease.subnet.network_address}-24"
        with capture_logs() as logs:
            await trio.to_thread.run_sync(tamper, key, lease)
            with trio.move_on_after(secs):
                try:
                    await mgr.run_renewal(lease)
                except LeaseLost as exc:
                    outcome = exc
    return logs, outcome, lease, key


async def test_unreadable_foreign_value_on_our_key_is_lease_lost_not_a_hot_loop(
    etcd: EtcdServer,
) -> None:
    prefix = new_prefix()
    t0 = time.monotonic()
    logs, outcome, lease, key = await _renewing(
        etcd, prefix, lambda key, _: etcd.put(key, '{"PublicIP": "203.0.113.1"'), 8
    )
    assert isinstance(outcome, LeaseLost), "resolved deterministically, not spinning"
    assert time.monotonic() - t0 < 8
    msg = str(outcome)
    assert key in msg and "unreadable" in msg and str(lease.subnet) in msg
    revoked = [e for e in logs if e["event"] == "lease.revoked"]
    bad = [e for e in logs if e["event"] == "etcd.bad_lease_ignored"]
    assert len(revoked) <= 1 and len(bad) <= 3, "a handful of rounds, not thousands"


async def test_unreadable_value_on_our_own_etcd_lease_is_replaced(etcd: EtcdServer) -> None:
    prefix = new_prefix()

    def garble(key: str, lease: Lease) -> None:
        etcd.etcdctl("put", f"--lease={lease.etcd_lease_id:x}", key, '{"PublicIP": "2')

    logs, outcome, _, key = await _renewing(etcd, prefix, garble, 5)
    assert outcome is None, f"kept the lease: {outcome}"
    stored = kv(etcd, key)
    assert stored is not None and decode_attrs(stored["value"]) == ME
    lines = [e for e in logs if e["event"] == "lease.unreadable_value"]
    assert 1 <= len(lines) <= 3 and lines[0]["key"] == key


# --------------------------------------------------------------------------- clock


async def test_wall_clock_step_back_does_not_delay_the_renewal(
    etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = new_prefix()
    seen: list[Lease] = []
    async with EtcdSubnetManager(
        etcd.endpoint, prefix, request_timeout=5, ttl=3, renew_margin_seconds=1, renew_retry=0.3
    ) as mgr:
        lease = await mgr.acquire_lease(CFG, ME)
        real = time.time
        # NTP steps the wall clock back an hour, as the manager sees it (gRPC's own deadlines
        # also use time.time, so the step is shown to the manager only).
        monkeypatch.setattr(manager_module, "time", SimpleNamespace(time=lambda: real() - 3600))
        with capture_logs() as logs, trio.move_on_after(4):
            await mgr.run_renewal(lease, on_change=seen.append)
        monkeypatch.undo()
    reacquiring = {"lease.revoked", "lease.reacquired", "lease.reacquire_failed"}
    assert not [e for e in logs if e["event"] in reacquiring], "the key never expired"
    assert any(x.etcd_lease_id != lease.etcd_lease_id for x in seen), "renewed before expiry"
    assert lease.subnet is not None
    assert kv(etcd, f"{prefix}/subnets/{lease.subnet.network_address}-24") is not None
