"""The wireguard planner: hostile leases refused (bad keys, our key, duplicate keys, bad ports),
peers per Mode with flanneld's endpoints and ports, and the device diff that removes stale
peers."""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.backend.base import PlanContext
from pyflannel.backend.wireguard.keys import encode_key, public_key
from pyflannel.backend.wireguard.peers import (
    WgContext,
    device_specs,
    diff_device,
    go_is_private,
    plan_peers,
)
from pyflannel.backend.wireguard.uapi import DeviceState, PeerSet, PeerState
from pyflannel.lease import Lease, LeaseAttrs

N4 = ipaddress.IPv4Network
N6 = ipaddress.IPv6Network
ip = ipaddress.ip_address
V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
OWN_PRIV = bytes([7]) * 32
OWN = public_key(OWN_PRIV)


def key(i: int) -> bytes:
    return public_key(bytes([i]) * 32)


CTX4 = PlanContext(
    family=4,
    backend_type="wireguard",
    network=N4("10.5.0.0/16"),
    own_subnet=N4("10.5.1.0/24"),
    own_public_ip=ip("198.51.100.1"),
    dev_index=0,
    ext_index=2,
)
CTX6 = PlanContext(
    family=6,
    backend_type="wireguard",
    network=N6("fd00:10:5::/48"),
    own_subnet=N6("fd00:10:5:1::/64"),
    own_public_ip=ip("2001:db8::1"),
    dev_index=0,
    ext_index=2,
)


def ctx(mode: Any = "separate", dual: bool = False, **kw: Any) -> WgContext:
    contexts: dict[Any, PlanContext] = {4: CTX4, 6: CTX6} if dual else {4: CTX4}
    return WgContext(
        mode=mode,
        devices=device_specs(mode, True, dual, 51820, 51821),
        contexts=contexts,
        own_key=OWN,
        listen_port=51820,
        listen_port_v6=51821,
        ext_ipv4=ip("198.51.100.1"),
        ext_ipv6=ip("2001:db8::1") if dual else None,
        **kw,
    )


def lease(
    n: int,
    k: bytes | Any = None,
    *,
    port: Any = 51820,
    rev: int = 0,
    dual: bool = False,
    data: Any = None,
) -> Lease:
    k = key(n) if k is None else k
    payload = (
        data
        if data is not None
        else {"PublicKey": encode_key(k) if isinstance(k, bytes) else k, "Port": port}
    )
    attrs = LeaseAttrs(
        public_ip=V4(f"198.51.100.{n}"), backend_type="wireguard", backend_data=payload
    )
    if dual:
        v6 = dict(payload, Port=51821) if isinstance(payload, dict) else payload
        attrs = replace(attrs, public_ipv6=V6(f"2001:db8::{n}"), backend_v6_data=v6)
    return Lease(
        subnet=N4(f"10.5.{n}.0/24"),
        ipv6_subnet=N6(f"fd00:10:5:{n:x}::/64") if dual else None,
        attrs=attrs,
        create_revision=rev or n,
    )


def test_peer_as_flanneld_programs_it() -> None:
    plan = plan_peers([lease(2, port=40000)], ctx(psk=bytes(32), keepalive=25))
    assert plan.rejected == ()
    assert plan.peers == {
        "flannel-wg": {
            key(2): PeerSet(
                key(2),
                preshared_key=bytes(32),
                endpoint=(ip("198.51.100.2"), 40000),
                keepalive=25,
                allowed_ips=(N4("10.5.2.0/24"),),
            )
        }
    }


def test_payload_without_port_dials_our_port() -> None:
    plan = plan_peers([lease(2, data={"PublicKey": encode_key(key(2))})], ctx())
    assert plan.peers["flannel-wg"][key(2)].endpoint == (ip("198.51.100.2"), 51820)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"PublicKey": "not base64!"}, "not valid base64"),
        ({"PublicKey": base64.b64encode(bytes(16)).decode()}, "decodes to 16 bytes"),
        ({"PublicKey": 42}, "must be a base64 string"),
        ({"Port": 1}, "PublicKey is missing"),
        ("a string", "must be a JSON object"),
        ({"PublicKey": encode_key(OWN)}, "our own public key"),
        ({"PublicKey": encode_key(key(2)), "Port": "51820"}, "Port must be an integer"),
        ({"PublicKey": encode_key(key(2)), "Port": 65536}, "Port must be an integer"),
    ],
)
def test_hostile_payloads_refused(data: Any, reason: str) -> None:
    plan = plan_peers([lease(2, data=data), lease(3)], ctx())
    ((refused, rej),) = plan.rejected
    assert refused.subnet == N4("10.5.2.0/24")
    assert reason in rej.reason and "10.5.2.0-24" in rej.reason and not rej.benign
    assert list(plan.peers["flannel-wg"]) == [key(3)]  # the others are unaffected


def test_duplicate_key_the_older_lease_keeps_it() -> None:
    first, thief = lease(2, rev=10), lease(3, key(2), rev=20)
    for order in ([first, thief], [thief, first]):
        plan = plan_peers(order, ctx())
        assert plan.peers["flannel-wg"][key(2)].allowed_ips == (N4("10.5.2.0/24"),)
        ((refused, rej),) = plan.rejected
        assert refused is thief and "already used by lease 10.5.2.0-24" in rej.reason


def test_lease_validation_still_applies() -> None:
    outside = replace(lease(2), subnet=N4("10.6.2.0/24"))
    plan = plan_peers([outside], ctx())
    assert "outside the Network" in plan.rejected[0][1].reason


def test_own_lease_is_benign() -> None:
    own = Lease(
        subnet=N4("10.5.1.0/24"),
        attrs=LeaseAttrs(
            public_ip=V4("198.51.100.1"),
            backend_type="wireguard",
            backend_data={"PublicKey": encode_key(OWN)},
        ),
    )
    plan = plan_peers([own], ctx())
    assert plan.rejected[0][1].benign and plan.peers["flannel-wg"] == {}


def test_separate_dual_stack_one_peer_per_device() -> None:
    plan = plan_peers([lease(2, dual=True)], ctx(dual=True))
    v4 = plan.peers["flannel-wg"][key(2)]
    v6 = plan.peers["flannel-wg-v6"][key(2)]
    assert (v4.endpoint, v4.allowed_ips) == ((ip("198.51.100.2"), 51820), (N4("10.5.2.0/24"),))
    assert (v6.endpoint, v6.allowed_ips) == ((ip("2001:db8::2"), 51821), (N6("fd00:10:5:2::/64"),))


@pytest.mark.parametrize(
    ("mode", "endpoint"),
    [("ipv4", "198.51.100.2"), ("ipv6", "2001:db8::2"), ("auto", "198.51.100.2")],
)
def test_single_tunnel_modes(mode: str, endpoint: str) -> None:
    plan = plan_peers([lease(2, dual=True)], ctx(mode, dual=True))
    assert list(plan.peers) == ["flannel-wg"]
    peer = plan.peers["flannel-wg"][key(2)]
    # One device listening on ListenPort: its IPv4 payload's port, for either endpoint.
    assert peer.endpoint == (ip(endpoint), 51820)
    assert peer.allowed_ips == (N4("10.5.2.0/24"), N6("fd00:10:5:2::/64"))


def test_auto_prefers_public_v6_when_v4_is_private() -> None:
    le = lease(2, dual=True)
    le = replace(le, attrs=replace(le.attrs, public_ip=V4("10.1.0.2")))
    plan = plan_peers([le], ctx("auto", dual=True))
    assert plan.peers["flannel-wg"][key(2)].endpoint == (ip("2001:db8::2"), 51820)


def test_go_is_private() -> None:
    assert go_is_private(ip("10.1.2.3")) and go_is_private(ip("fd00::1"))
    assert not go_is_private(ip("198.51.100.1"))  # Python calls TEST-NET private; Go does not
    assert not go_is_private(ip("2001:db8::1"))


def test_diff_removes_stale_and_rewrites_changed_only() -> None:
    same = PeerSet(key(2), endpoint=(ip("198.51.100.2"), 51820), allowed_ips=(N4("10.5.2.0/24"),))
    moved = PeerSet(key(3), endpoint=(ip("198.51.100.3"), 51820), allowed_ips=(N4("10.5.3.0/24"),))
    have = DeviceState(
        peers=(
            PeerState(key(2), endpoint=same.endpoint, allowed_ips=same.allowed_ips, rx_bytes=5),
            PeerState(key(3), endpoint=(ip("198.51.100.9"), 51820), allowed_ips=moved.allowed_ips),
            PeerState(key(9), allowed_ips=(N4("10.5.9.0/24"),)),  # a stale lease's peer
        )
    )
    req = diff_device({key(2): same, key(3): moved}, have)
    assert req.peers == (PeerSet(key(9), remove=True), moved)
    assert not req.replace_peers and req.private_key is None


@given(st.lists(st.tuples(st.integers(2, 30), st.integers(2, 8), st.integers(1, 99)), max_size=12))
def test_one_peer_per_key_and_every_lease_accounted(specs: list[tuple[int, int, int]]) -> None:
    leases = {}
    for n, k, rev in specs:
        leases[n] = lease(n, key(k), rev=rev)
    plan = plan_peers(leases.values(), ctx())
    peers = plan.peers["flannel-wg"]
    planned_subnets = [p.allowed_ips for p in peers.values()]
    assert len(planned_subnets) + len(plan.rejected) == len(leases)
    for peer_key, p in peers.items():
        owner = plan.owners[peer_key]
        assert p.allowed_ips == (owner.subnet,)
        claimants = [
            le
            for le in leases.values()
            if le.attrs.backend_data["PublicKey"] == encode_key(peer_key)
        ]
        assert owner.create_revision == min(c.create_revision for c in claimants)
    # diffing the plan against itself on a device changes nothing
    dev = DeviceState(
        peers=tuple(
            PeerState(p.public_key, endpoint=p.endpoint, allowed_ips=p.allowed_ips)
            for p in peers.values()
        )
    )
    assert diff_device(peers, dev).peers == ()
