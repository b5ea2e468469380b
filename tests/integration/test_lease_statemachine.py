"""A hypothesis state machine over the lease lifecycle: several managers, one real etcd.

Nodes acquire (alone or all at once), run their renewal loop (own-key watch, renewals,
re-acquiring) across jumps of trio's MockClock, stop, and restart. Any registry write of a node
may fail before it is sent or *after* it took effect (a fault-injecting ``Registry`` wrapper);
someone else may delete a node's key, let it expire (revoke its etcd lease), overwrite it with
another node's identity or garble it (with or without the key's etcd lease). After every step:

- no two keys in etcd share an IPv4 or an IPv6 subnet;
- a node never deleted a key that did not carry its identity;
- every node's etcd writes stay bounded per step (each step is at most one TTL of trio time);
- after the renewal loop ran, a node holds a key with its identity in etcd, or it stopped with
  ``LeaseLost`` and one clear line.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from base64 import b64decode
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from pyflannel.config import parse_network_config
from pyflannel.errors import LeaseError, LeaseLost, RegistryError
from pyflannel.lease import (
    Lease,
    LeaseAttrs,
    LeaseDecodeError,
    decode_attrs,
    encode_attrs,
    parse_subnet_key,
)
from pyflannel.subnet.etcd.registry import EtcdRegistry
from pyflannel.subnet.manager import EtcdSubnetManager
from tests.harness.etcd import EtcdServer, start_etcd
from tests.harness.faulty_registry import FaultyRegistry

pytestmark = pytest.mark.slow

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network
NODES = 3
TTL = 60  # etcd's own expiry never happens during a run: expiry is the "expire" rule
MARGIN = 20
CFG = parse_network_config(
    json.dumps(
        {
            "Network": "10.8.0.0/16",
            "SubnetMin": "10.8.1.0",
            "SubnetMax": "10.8.6.0",
            "EnableIPv6": True,
            "IPv6Network": "fd00:10:8::/61",  # 8 /64s: IPv6 picks collide often
            "Backend": {"Type": "vxlan"},
        }
    )
)
# Each write of a step: fine, fails before it reaches etcd, or fails after it took effect.
FAULTS = st.lists(st.sampled_from(["ok", "ok", "before", "after"]), max_size=3)
# Writes one node may make in one step: an acquire is bounded by max_race_retries (+ the
# conflicts of one renewal), a renewal window covers one TTL of trio time.
MAX_WRITES_PER_STEP = 24


def identity(i: int) -> LeaseAttrs:
    return LeaseAttrs(
        public_ip=ipaddress.IPv4Address(f"198.51.100.{i + 1}"),
        public_ipv6=ipaddress.IPv6Address(f"2001:db8::{i + 1}"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": f"aa:bb:cc:00:00:{i + 1:02x}"},
    )


STRANGER = LeaseAttrs(public_ip=ipaddress.IPv4Address("198.51.100.99"), backend_type="vxlan")


class LeaseLifecycle(RuleBasedStateMachine):
    etcd: EtcdServer

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"/sm{secrets.token_hex(3)}/network"
        self.clock = trio.testing.MockClock(rate=1.0)
        self.regs = [
            FaultyRegistry(EtcdRegistry(self.etcd.endpoint, self.prefix), identity(i))
            for i in range(NODES)
        ]
        self.mgrs = [
            EtcdSubnetManager(
                registry=reg,
                ttl=TTL,
                renew_margin_seconds=MARGIN,
                renew_retry=0.2,
                max_race_retries=6,
            )
            for reg in self.regs
        ]
        # None: not running / no lease; a Lease: running with it; "lost": exited with LeaseLost.
        self.state: list[Lease | str | None] = [None] * NODES
        self.lost_messages: list[str] = []

    def teardown(self) -> None:
        for mgr in self.mgrs:
            mgr.close()

    # ----------------------------------------------------------------- helpers
    def _run(self, fn: Callable[[], Awaitable[None]]) -> None:
        for reg in self.regs:
            reg.writes = 0
        trio.run(fn, clock=self.clock)
        for i, reg in enumerate(self.regs):
            assert reg.writes <= MAX_WRITES_PER_STEP, f"node {i} wrote {reg.writes} times"

    def _keys(self) -> Iterator[tuple[str, dict[str, Any]]]:
        out = json.loads(
            self.etcd.etcdctl("get", "--prefix", f"{self.prefix}/subnets/", "-w", "json").stdout
        )
        for kv in out.get("kvs") or []:
            yield b64decode(kv["key"]).decode(), kv

    def _key_of(self, i: int) -> str | None:
        held = self.state[i]
        if not isinstance(held, Lease):
            return None
        return self.regs[i].inner.lease_key(held.subnet, held.ipv6_subnet)

    async def _acquire(self, i: int) -> None:
        try:
            self.state[i] = await self.mgrs[i].acquire_lease(CFG, identity(i))
        except (RegistryError, LeaseError):
            self.state[i] = None  # the daemon retries or restarts; the key may exist

    # ----------------------------------------------------------------- node rules
    @rule(i=st.integers(0, NODES - 1), faults=FAULTS)
    def acquire(self, i: int, faults: list[str]) -> None:
        if isinstance(self.state[i], Lease):
            return
        self.regs[i].faults = list(faults)

        async def go() -> None:
            await self._acquire(i)

        self._run(go)

    @rule(faults=FAULTS)
    def acquire_all_at_once(self, faults: list[str]) -> None:
        idle = [i for i in range(NODES) if not isinstance(self.state[i], Lease)]
        for i in idle:
            self.regs[i].faults = list(faults)

        async def go() -> None:
            async with trio.open_nursery() as nursery:
                for i in idle:
                    nursery.start_soon(self._acquire, i)

        self._run(go)

    @rule(faults=FAULTS, jump=st.sampled_from([0.0, TTL - MARGIN + 1.0, 3600.0]))
    def time_passes(self, faults: list[str], jump: float) -> None:
        """Every running node runs its renewal loop while trio's clock jumps by ``jump``."""
        running = [i for i in range(NODES) if isinstance(self.state[i], Lease)]
        for i in running:
            self.regs[i].faults = list(faults)

        async def one(i: int) -> None:
            lease = self.state[i]
            assert isinstance(lease, Lease)

            def changed(new: Lease) -> None:
                self.state[i] = new

            try:
                await self.mgrs[i].run_renewal(lease, on_change=changed)
            except LeaseLost as exc:
                self.state[i] = "lost"
                self.lost_messages.append(str(exc))

        async def go() -> None:
            async with trio.open_nursery() as nursery:
                for i in running:
                    nursery.start_soon(one, i)
                await trio.sleep(0.1)
                self.clock.jump(jump)
                # Let the nodes react (re-create, replace, give up); a loaded CI box may need
                # more than the usual few hundred milliseconds.
                with trio.move_on_after(5):
                    await trio.sleep(0.3)
                    while await trio.to_thread.run_sync(self._unsettled, running):
                        await trio.sleep(0.2)
                nursery.cancel_scope.cancel()

        self._run(go)
        assert self._unsettled(running) == []

    def _unsettled(self, nodes: list[int]) -> list[str]:
        """Nodes that neither hold a key with their identity in etcd nor exited LeaseLost."""
        stored = dict(self._keys())
        problems = []
        for i in nodes:
            key = self._key_of(i)
            if key is None:
                if self.state[i] != "lost":
                    problems.append(f"node {i} stopped without LeaseLost")
                continue
            kv = stored.get(key)
            if kv is None:
                problems.append(f"node {i} runs with {key}, which is not in etcd")
                continue
            try:
                attrs = decode_attrs(b64decode(kv["value"]))
            except LeaseDecodeError as exc:
                problems.append(f"node {i}'s key {key} is unreadable: {exc}")
                continue
            if attrs.public_ip != identity(i).public_ip:
                problems.append(f"node {i}'s key {key} holds {attrs}")
        return problems

    @rule(i=st.integers(0, NODES - 1), expire=st.booleans())
    def stop(self, i: int, expire: bool) -> None:
        """The node stops (flanneld never deletes its key); maybe its lease expires later."""
        held = self.state[i]
        self.state[i] = None
        if expire and isinstance(held, Lease):
            self._expire(held)

    # ----------------------------------------------------------------- others
    def _expire(self, held: Lease) -> None:
        key = self.regs[0].inner.lease_key(held.subnet, held.ipv6_subnet)
        stored = dict(self._keys()).get(key)
        if stored is not None and int(stored.get("lease", 0)):
            self.etcd.etcdctl("lease", "revoke", f"{int(stored['lease']):x}")

    @rule(
        i=st.integers(0, NODES - 1),
        how=st.sampled_from(["delete", "expire", "stranger", "garble", "garble-own-lease"]),
    )
    def someone_else(self, i: int, how: str) -> None:
        key = self._key_of(i)
        held = self.state[i]
        if key is None or not isinstance(held, Lease):
            return
        stored = dict(self._keys()).get(key)
        if how == "delete":
            self.etcd.etcdctl("del", key)
        elif how == "expire":
            self._expire(held)
        elif how == "stranger":
            self.etcd.put(key, encode_attrs(STRANGER))
        elif how == "garble":
            self.etcd.put(key, '{"PublicIP": "198.51.100.1"')
        elif stored is not None and int(stored.get("lease", 0)):
            lease_hex = f"{int(stored['lease']):x}"
            self.etcd.etcdctl("put", f"--lease={lease_hex}", key, '{"PublicIP": "198.5')

    # ----------------------------------------------------------------- invariants
    @invariant()
    def no_subnet_held_twice(self) -> None:
        v4: dict[V4, str] = {}
        v6: dict[V6, str] = {}
        for key, _ in self._keys():
            subnet, ipv6_subnet = parse_subnet_key(key)
            if subnet is not None:
                assert subnet not in v4, f"{subnet} held by {v4[subnet]} and {key}"
                v4[subnet] = key
            if ipv6_subnet is not None:
                assert ipv6_subnet not in v6, f"{ipv6_subnet} held by {v6[ipv6_subnet]} and {key}"
                v6[ipv6_subnet] = key

    @invariant()
    def never_deletes_a_foreign_key(self) -> None:
        for i, reg in enumerate(self.regs):
            assert reg.foreign_deletes == [], f"node {i} deleted {reg.foreign_deletes}"

    @invariant()
    def lease_lost_is_one_clear_line(self) -> None:
        for msg in self.lost_messages:
            assert "\n" not in msg and "no longer owns" in msg, msg


def test_lease_lifecycle_state_machine() -> None:
    with start_etcd() as etcd:
        LeaseLifecycle.etcd = etcd
        run_state_machine_as_test(
            LeaseLifecycle,
            settings=settings(
                max_examples=8,
                stateful_step_count=16,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
