"""The wireguard network's peer pipeline over an in-memory device: a snapshot replaces the
wanted set and stale device peers go, changes edit it, a peer the device refuses is quarantined
without holding the others back, and a device failure changes nothing that is wanted."""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import replace

from pyflannel.backend.base import PlanContext
from pyflannel.backend.wireguard.device import Device
from pyflannel.backend.wireguard.keys import encode_key, public_key
from pyflannel.backend.wireguard.network import WireguardBackend, WireguardNetwork
from pyflannel.backend.wireguard.peers import WgContext, device_specs
from pyflannel.backend.wireguard.uapi import DeviceState, PeerState, SetDevice, UapiError
from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs
from pyflannel.metrics import Metrics
from pyflannel.peer_messages import PeerChanges, PeerSnapshot

ip = ipaddress.ip_address
V4 = ipaddress.IPv4Address
N4 = ipaddress.IPv4Network
OWN = public_key(bytes([7]) * 32)


def key(i: int) -> bytes:
    return public_key(bytes([i]) * 32)


class MemoryDevice:
    """A device that applies ``set`` requests like wireguard-go (refusing chosen keys)."""

    def __init__(self, peers: tuple[PeerState, ...] = ()) -> None:
        self.device = "flannel-wg"
        self.peers = {p.public_key: p for p in peers}
        self.refuse: set[bytes] = set()
        self.down = False
        self.sets: list[SetDevice] = []

    def get(self) -> DeviceState:
        if self.down:
            raise UapiError("gone", errno=errno.ECONNREFUSED)
        return DeviceState(listen_port=51820, peers=tuple(self.peers.values()))

    def set(self, req: SetDevice) -> None:
        if self.down:
            raise UapiError("gone", errno=errno.ECONNREFUSED)
        self.sets.append(req)
        for p in req.peers:  # applied line by line: a refusal leaves the earlier ones done
            if p.public_key in self.refuse:
                raise UapiError("refused", errno=errno.EINVAL)
            if p.remove:
                self.peers.pop(p.public_key, None)
            else:
                self.peers[p.public_key] = PeerState(
                    p.public_key, p.preshared_key or bytes(32), p.endpoint, p.keepalive,
                    p.allowed_ips,
                )  # fmt: skip


def lease(n: int, k: int | None = None) -> Lease:
    return Lease(
        subnet=N4(f"10.5.{n}.0/24"),
        attrs=LeaseAttrs(
            public_ip=V4(f"198.51.100.{n}"),
            backend_type="wireguard",
            backend_data={"PublicKey": encode_key(key(k or n)), "Port": 51820},
        ),
        create_revision=n,
    )


def network(dev: MemoryDevice) -> tuple[WireguardNetwork, Metrics]:
    metrics = Metrics()
    be = WireguardBackend(metrics=metrics)
    be.specs = device_specs("separate", True, False, 51820, 51821)
    be.devices = [Device("flannel-wg", "userspace", dev)]
    pctx = PlanContext(
        family=4,
        backend_type="wireguard",
        network=N4("10.5.0.0/16"),
        own_subnet=N4("10.5.1.0/24"),
        own_public_ip=ip("198.51.100.1"),
        dev_index=0,
        ext_index=2,
    )
    ctx = WgContext("separate", be.specs, {4: pctx}, OWN, 51820, 51821)
    return WireguardNetwork(be, lease(1, 7), ctx, metrics, 1420), metrics


async def test_snapshot_removes_stale_peers_and_keeps_good_ones() -> None:
    stale = PeerState(key(9), allowed_ips=(N4("10.5.9.0/24"),))
    dev = MemoryDevice((stale,))
    net, metrics = network(dev)
    await net.apply(PeerSnapshot((lease(2), lease(3))))
    assert set(dev.peers) == {key(2), key(3)}
    assert dev.peers[key(2)].endpoint == (ip("198.51.100.2"), 51820)
    assert metrics.peers_programmed == 2 and metrics.leases_known == 3
    # A second snapshot with nothing new writes nothing.
    before = len(dev.sets)
    await net.apply(PeerSnapshot((lease(2), lease(3))))
    assert len(dev.sets) == before


async def test_changes_add_rekey_and_remove() -> None:
    dev = MemoryDevice()
    net, _ = network(dev)
    await net.apply(PeerSnapshot((lease(2),)))
    await net.apply(PeerChanges((Event(EventKind.ADDED, lease(3)),)))
    assert set(dev.peers) == {key(2), key(3)}
    # node 2 re-keyed: its old peer goes, the new one comes
    await net.apply(PeerChanges((Event(EventKind.ADDED, lease(2, 12)),)))
    assert set(dev.peers) == {key(12), key(3)}
    await net.apply(PeerChanges((Event(EventKind.REMOVED, lease(3)),)))
    assert set(dev.peers) == {key(12)}


async def test_refused_peer_is_quarantined_others_programmed() -> None:
    dev = MemoryDevice()
    dev.refuse.add(key(3))
    net, metrics = network(dev)
    await net.apply(PeerSnapshot((lease(2), lease(3), lease(4))))
    assert set(dev.peers) == {key(2), key(4)}
    assert list(net.peers.failing) == ["10.5.3.0-24"]
    assert metrics.peer_apply_failures == {"EINVAL": 1}
    # a changed lease leaves the quarantine and is tried again
    dev.refuse.clear()
    moved = replace(lease(3), attrs=replace(lease(3).attrs, public_ip=V4("198.51.100.33")))
    await net.apply(PeerChanges((Event(EventKind.ADDED, moved),)))
    assert key(3) in dev.peers and not net.peers.failing


async def test_device_failure_keeps_the_wanted_set() -> None:
    dev = MemoryDevice()
    net, _ = network(dev)
    dev.down = True
    await net.apply(PeerSnapshot((lease(2), lease(3))))  # logged, not raised
    assert len(net.peers) == 2 and dev.peers == {}
    dev.down = False
    await net.apply(PeerChanges((Event(EventKind.ADDED, lease(4)),)))
    assert set(dev.peers) == {key(2), key(3), key(4)}  # the whole wanted set, not only the event


async def test_hostile_lease_never_reaches_the_device() -> None:
    dev = MemoryDevice()
    net, _ = network(dev)
    thief = lease(5, 2)  # advertises node 2's key
    mine = lease(6, 7)  # advertises our own key
    await net.apply(PeerSnapshot((lease(2), thief, mine)))
    assert set(dev.peers) == {key(2)}
    assert dev.peers[key(2)].allowed_ips == (N4("10.5.2.0/24"),)
    assert net.stats.leases_rejected_total == 2
