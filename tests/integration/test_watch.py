"""Peer-lease watch against a real etcd: first snapshot, order, own-lease filter, etcd restart,
compaction resync and cluster failover."""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from structlog.testing import capture_logs

from pyflannel.config import parse_network_config
from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs, encode_attrs
from pyflannel.peer_messages import PeerChanges, PeerMessage, PeerSnapshot
from pyflannel.subnet.manager import EtcdSubnetManager
from tests.harness.etcd import EtcdServer
from tests.harness.etcd_cluster import EtcdCluster

V4 = ipaddress.IPv4Network
# SubnetMin: our own lease is drawn at random and must not be one of the peers' 10.5.1-5.0/24,
# which the tests write later (own 10.5.4.0/24 hid peer 4's events: once in a full run).
CFG = parse_network_config(
    '{"Network": "10.5.0.0/16", "SubnetMin": "10.5.100.0", "Backend": {"Type": "vxlan"}}'
)


def node(n: int, mac_suffix: int = 0) -> LeaseAttrs:
    return LeaseAttrs(
        public_ip=ipaddress.IPv4Address(f"198.51.100.{n}"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": f"aa:bb:cc:00:{mac_suffix:02x}:{n:02x}"},
    )


ME = node(10)


def new_prefix() -> str:
    return f"/pf{secrets.token_hex(3)}/network"


def put_peer(etcd: EtcdServer, prefix: str, third: int, attrs: LeaseAttrs) -> None:
    out = etcd.etcdctl("lease", "grant", "600").stdout
    m = re.search(r"lease ([0-9a-f]+) granted", out)
    assert m, out
    etcd.etcdctl(
        "put", f"--lease={m.group(1)}", f"{prefix}/subnets/10.5.{third}.0-24", encode_attrs(attrs)
    )


def del_peer(etcd: EtcdServer, prefix: str, third: int) -> None:
    etcd.etcdctl("del", f"{prefix}/subnets/10.5.{third}.0-24")


@dataclass
class Consumer:
    """What a backend would see: every message, and the peer set after applying them."""

    messages: list[PeerMessage] = field(default_factory=list)
    view: dict[V4 | None, Lease] = field(default_factory=dict)

    @property
    def batches(self) -> list[list[Event]]:
        """Each message as events (a snapshot as one Added per lease)."""
        return [
            [Event(EventKind.ADDED, le) for le in m.leases]
            if isinstance(m, PeerSnapshot)
            else list(m.events)
            for m in self.messages
        ]

    @property
    def events(self) -> list[Event]:
        return [e for b in self.batches for e in b]

    def apply(self, msg: PeerMessage) -> None:
        self.messages.append(msg)
        if isinstance(msg, PeerSnapshot):
            self.view = {le.subnet: le for le in msg.leases}
            return
        for e in msg.events:
            if e.kind is EventKind.ADDED:
                self.view[e.lease.subnet] = e.lease
            else:
                self.view.pop(e.lease.subnet, None)

    def peers(self) -> dict[str, str]:
        return {str(k): str(v.attrs.public_ip) for k, v in self.view.items()}

    async def wait(self, pred: Callable[[Consumer], bool], timeout: float = 15.0) -> None:
        with trio.fail_after(timeout):
            while not pred(self):
                await trio.sleep(0.02)


@asynccontextmanager
async def watching(mgr: EtcdSubnetManager, own: Lease) -> AsyncIterator[Consumer]:
    consumer = Consumer()
    send, recv = trio.open_memory_channel[PeerMessage](0)

    async def consume() -> None:
        async with recv:
            async for msg in recv:
                consumer.apply(msg)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mgr.watch_leases, own, send)
        nursery.start_soon(consume)
        await consumer.wait(lambda c: len(c.batches) >= 1)
        yield consumer
        nursery.cancel_scope.cancel()


def sub(third: int) -> str:
    return f"10.5.{third}.0/24"


async def test_first_snapshot_then_events_in_order(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    put_peer(etcd, prefix, 1, node(1))
    put_peer(etcd, prefix, 2, node(2))
    async with EtcdSubnetManager(etcd.endpoint, prefix, renew_margin=5) as mgr:
        own = await mgr.acquire_lease(CFG, ME, None)
        async with watching(mgr, own) as c:
            assert isinstance(c.messages[0], PeerSnapshot), "the first message is a snapshot"
            first = c.batches[0]
            assert sorted((e.kind, str(e.lease.subnet)) for e in first) == [
                (EventKind.ADDED, sub(1)),
                (EventKind.ADDED, sub(2)),
            ], "first batch = every current peer, not us"
            put_peer(etcd, prefix, 3, node(3))
            put_peer(etcd, prefix, 1, node(1, mac_suffix=9))  # peer 1 re-registers, new MAC
            del_peer(etcd, prefix, 2)
            assert own.subnet is not None
            await mgr.registry.put_lease(own.subnet, None, ME, 60)  # our own renewal
            put_peer(etcd, prefix, 4, node(4))
            await c.wait(lambda c: len(c.events) >= 6)
            await trio.sleep(0.3)
    later = [(e.kind, str(e.lease.subnet)) for e in c.events[2:]]
    assert later == [
        (EventKind.ADDED, sub(3)),
        (EventKind.ADDED, sub(1)),
        (EventKind.REMOVED, sub(2)),
        (EventKind.ADDED, sub(4)),
    ], "etcd's order, own lease filtered"
    assert all(isinstance(m, PeerChanges) for m in c.messages[1:])
    assert c.events[3].lease.attrs.backend_data == {"VNI": 1, "VtepMAC": "aa:bb:cc:00:09:01"}
    assert c.events[2].lease.expiration is not None
    assert c.peers() == {sub(1): "198.51.100.1", sub(3): "198.51.100.3", sub(4): "198.51.100.4"}


async def test_first_batch_is_sent_even_without_peers(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    async with EtcdSubnetManager(etcd.endpoint, prefix, renew_margin=5) as mgr:
        own = await mgr.acquire_lease(CFG, ME, None)
        async with watching(mgr, own) as c:
            assert len(c.messages) == 1
            assert isinstance(c.messages[0], PeerSnapshot)
            assert c.messages[0].leases == ()


async def test_etcd_restart_mid_watch_loses_no_event(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    put_peer(etcd, prefix, 1, node(1))
    async with EtcdSubnetManager(etcd.endpoint, prefix, renew_margin=5, request_timeout=3) as mgr:
        own = await mgr.acquire_lease(CFG, ME, None)
        with capture_logs() as logs:
            async with watching(mgr, own) as c:
                put_peer(etcd, prefix, 2, node(2))
                await c.wait(lambda c: sub(2) in c.peers())
                await trio.to_thread.run_sync(etcd.stop)
                await trio.sleep(1.5)  # the watch notices and retries with backoff
                await trio.to_thread.run_sync(etcd.restart)
                # Changes right after the restart, before the watch is back, must not be lost.
                await trio.to_thread.run_sync(lambda: put_peer(etcd, prefix, 3, node(3)))
                await trio.to_thread.run_sync(lambda: del_peer(etcd, prefix, 1))
                await c.wait(lambda c: sub(3) in c.peers() and sub(1) not in c.peers())
                await trio.to_thread.run_sync(lambda: put_peer(etcd, prefix, 4, node(4)))
                await c.wait(lambda c: sub(4) in c.peers())
    assert any(e["event"] == "watch.broken" for e in logs)
    assert not any(e["event"] == "watch.compacted" for e in logs)
    kinds = [(e.kind, str(e.lease.subnet)) for e in c.events]
    assert kinds == [
        (EventKind.ADDED, sub(1)),
        (EventKind.ADDED, sub(2)),
        (EventKind.ADDED, sub(3)),
        (EventKind.REMOVED, sub(1)),
        (EventKind.ADDED, sub(4)),
    ]


async def test_compaction_past_the_watch_revision_resyncs(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    for i in (1, 2, 3):
        put_peer(etcd, prefix, i, node(i))
    async with EtcdSubnetManager(etcd.endpoint, prefix, renew_margin=5, request_timeout=3) as mgr:
        own = await mgr.acquire_lease(CFG, ME, None)
        with capture_logs() as logs:
            async with watching(mgr, own) as c:
                assert set(c.peers()) == {sub(1), sub(2), sub(3)}
                # Everything below runs with the trio thread blocked, so the watch cannot resume
                # until the revisions it needs are compacted away.
                etcd.stop()
                etcd.restart()
                del_peer(etcd, prefix, 1)
                put_peer(etcd, prefix, 2, node(2, mac_suffix=7))  # changed attrs
                put_peer(etcd, prefix, 5, node(5))
                status = json.loads(etcd.etcdctl("endpoint", "status", "-w", "json").stdout)
                rev = int(status[0]["Status"]["header"]["revision"])
                etcd.etcdctl("compact", str(rev))
                await c.wait(lambda c: set(c.peers()) == {sub(2), sub(3), sub(5)})
                await trio.sleep(0.5)
    assert any(e["event"] == "watch.compacted" for e in logs)
    assert c.view[V4(sub(2))].attrs == node(2, mac_suffix=7)
    resync = c.messages[-1]
    assert isinstance(resync, PeerSnapshot), "a re-listing is a snapshot, not a diff"
    assert sorted(str(le.subnet) for le in resync.leases) == [sub(2), sub(3), sub(5)]
    assert all(e.lease.subnet != own.subnet for b in c.batches for e in b)


async def test_watch_survives_losing_the_member_in_use(etcd_cluster: EtcdCluster) -> None:
    prefix = new_prefix()
    async with EtcdSubnetManager(
        etcd_cluster.endpoints, prefix, renew_margin=5, request_timeout=3
    ) as mgr:
        own = await mgr.acquire_lease(CFG, ME, None)
        async with watching(mgr, own) as c:
            client = mgr.registry.session.client  # type: ignore[attr-defined]
            assert client is not None
            in_use = client.endpoint_in_use
            victim = next(m for m in etcd_cluster if m.client_url.endswith(in_use))
            survivor = next(m for m in etcd_cluster if m is not victim)
            await trio.to_thread.run_sync(victim.kill)
            await trio.to_thread.run_sync(etcd_cluster.leader)
            await trio.to_thread.run_sync(lambda: put_peer(survivor, prefix, 7, node(7)))
            await c.wait(lambda c: sub(7) in c.peers(), timeout=20)
            # ...and our own renewal keeps working through the surviving members.
            assert own.subnet is not None
            renewed = await mgr.renew_lease(own)
            assert renewed.etcd_lease_id != own.etcd_lease_id
