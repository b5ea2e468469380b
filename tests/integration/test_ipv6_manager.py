"""IPv6 and dual-stack leases through EtcdSubnetManager against a real etcd (loopback only).

What flanneld's etcd layout requires for IPv6 (flannel-spec §2-§5): dual-stack keys
``<v4>-<len>&<v6>-<len>``, IPv6-only keys with the ``0.0.0.0-0`` placeholder, values with
``PublicIPv6`` and ``BackendV6Data`` in flanneld's byte order, IPv6SubnetLen/Min/Max honoured,
both halves re-used from the previous subnet.env, and leases that flanneld itself wrote (the
fixture puts them byte for byte, with an etcd lease) read back from the snapshot and the watch.

One etcd for the module; every test works under its own random prefix.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from base64 import b64decode
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from pyflannel.config import NetworkConfig, parse_network_config
from pyflannel.errors import OutOfSubnets
from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs, encode_attrs
from pyflannel.peer_messages import PeerMessage, PeerSnapshot
from pyflannel.subnet.allocation import previous_subnets
from pyflannel.subnet.manager import EtcdSubnetManager
from pyflannel.subnet.subnet_env import (
    parse_subnet_env,
    render_subnet_env,
    subnet_env_for,
)
from tests.harness.etcd import EtcdServer, start_etcd

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network

DUAL = parse_network_config(
    json.dumps(
        {
            "Network": "10.5.0.0/16",
            "EnableIPv6": True,
            "IPv6Network": "fd00:10:5::/48",
            "Backend": {"Type": "vxlan"},
        }
    )
)
# A small IPv6-only range: /60 subnets fd00:10:6:20::, :30:: and :40:: only.
V6_ONLY = parse_network_config(
    json.dumps(
        {
            "EnableIPv4": False,
            "EnableIPv6": True,
            "IPv6Network": "fd00:10:6::/56",
            "IPv6SubnetLen": 60,
            "IPv6SubnetMin": "fd00:10:6:20::",
            "IPv6SubnetMax": "fd00:10:6:40::",
            "Backend": {"Type": "vxlan"},
        }
    )
)
V6_ONLY_RANGE = [V6("fd00:10:6:20::/60"), V6("fd00:10:6:30::/60"), V6("fd00:10:6:40::/60")]

# Key and value exactly as flanneld writes them for a dual-stack vxlan node (Go json.Marshal).
FLANNELD_KEY = "10.5.1.0-24&fd00:10:5:1::-64"
FLANNELD_VALUE = (
    '{"PublicIP":"198.51.100.9","PublicIPv6":"2001:db8::9","BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:09:04"},'
    '"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:09:06"}}'
)


def dual_node(n: int) -> LeaseAttrs:
    """The attrs the vxlan backend advertises for lab node ``n`` in a dual-stack network."""
    return LeaseAttrs(
        public_ip=ipaddress.IPv4Address(f"198.51.100.{n}"),
        public_ipv6=ipaddress.IPv6Address(f"2001:db8::{n:x}"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": f"0e:00:00:00:{n:02x}:04"},
        backend_v6_data={"VNI": 1, "VtepMAC": f"0e:00:00:00:{n:02x}:06"},
    )


def v6_node(n: int) -> LeaseAttrs:
    """IPv6-only attrs: flanneld leaves PublicIP at 0.0.0.0 and sends no BackendData."""
    return LeaseAttrs(
        public_ipv6=ipaddress.IPv6Address(f"2001:db8::{n:x}"),
        backend_type="vxlan",
        backend_v6_data={"VNI": 1, "VtepMAC": f"0e:00:00:00:{n:02x}:06"},
    )


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    """One etcd for the module (tests use distinct prefixes), on a loopback port."""
    with start_etcd() as srv:
        yield srv


@pytest.fixture
def prefix() -> str:
    return f"/pf{secrets.token_hex(3)}/network"


def manager(etcd: EtcdServer, prefix: str, **kw: Any) -> EtcdSubnetManager:
    kw.setdefault("request_timeout", 5)
    kw.setdefault("ttl", 600)
    kw.setdefault("renew_margin_seconds", 60)
    return EtcdSubnetManager(etcd.endpoint, prefix, **kw)


def stored(etcd: EtcdServer, prefix: str) -> dict[str, tuple[bytes, int]]:
    """Every subnet key under ``prefix`` (suffix after ``subnets/``) → (value, etcd lease id)."""
    out = json.loads(etcd.etcdctl("get", "--prefix", f"{prefix}/subnets/", "-w", "json").stdout)
    found = {}
    for kv in out.get("kvs") or []:
        key = b64decode(kv["key"]).decode()
        found[key.split("/subnets/", 1)[1]] = (b64decode(kv["value"]), int(kv.get("lease", 0)))
    return found


def put_with_lease(etcd: EtcdServer, key: str, value: str, ttl: int = 300) -> int:
    """What flanneld does: Grant(ttl), then Put with that lease."""
    out = etcd.etcdctl("lease", "grant", str(ttl)).stdout
    m = re.search(r"lease ([0-9a-f]+) granted", out)
    assert m, out
    etcd.etcdctl("put", f"--lease={m.group(1)}", key, value)
    return int(m.group(1), 16)


def suffix(lease: Lease) -> str:
    return lease.key_suffix


def in_v4_range(cfg: NetworkConfig, subnet: V4 | None) -> bool:
    assert cfg.subnet_min is not None and cfg.subnet_max is not None
    return (
        subnet is not None
        and subnet.prefixlen == cfg.subnet_len
        and cfg.subnet_min <= subnet.network_address <= cfg.subnet_max
    )


def in_v6_range(cfg: NetworkConfig, subnet: V6 | None) -> bool:
    assert cfg.ipv6_subnet_min is not None and cfg.ipv6_subnet_max is not None
    return (
        subnet is not None
        and subnet.prefixlen == cfg.ipv6_subnet_len
        and cfg.ipv6_subnet_min <= subnet.network_address <= cfg.ipv6_subnet_max
    )


# --------------------------------------------------------------------------- allocation


async def test_dual_stack_lease_has_flanneld_key_and_value(etcd: EtcdServer, prefix: str) -> None:
    me = dual_node(1)
    async with manager(etcd, prefix) as mgr:
        lease = await mgr.acquire_lease(DUAL, me)
    assert in_v4_range(DUAL, lease.subnet)
    assert in_v6_range(DUAL, lease.ipv6_subnet)
    assert lease.subnet is not None and lease.ipv6_subnet is not None
    key = f"{lease.subnet.network_address}-24&{lease.ipv6_subnet.network_address.compressed}-64"
    assert re.fullmatch(r"10\.5\.\d+\.0-24&fd00:10:5:[0-9a-f]{1,4}::-64", key)
    value, lease_id = stored(etcd, prefix)[key]
    assert value == (
        b'{"PublicIP":"198.51.100.1","PublicIPv6":"2001:db8::1","BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:01:04"},'
        b'"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:01:06"}}'
    )
    assert lease_id == lease.etcd_lease_id != 0


async def test_ipv6_only_lease_uses_the_zero_ipv4_placeholder(
    etcd: EtcdServer, prefix: str
) -> None:
    async with manager(etcd, prefix) as mgr:
        lease = await mgr.acquire_lease(V6_ONLY, v6_node(1))
    assert lease.subnet is None
    assert lease.ipv6_subnet in V6_ONLY_RANGE
    assert lease.ipv6_subnet is not None
    key = f"0.0.0.0-0&{lease.ipv6_subnet.network_address.compressed}-60"
    assert stored(etcd, prefix) == {
        key: (
            b'{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::1","BackendType":"vxlan",'
            b'"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:01:06"}}',
            lease.etcd_lease_id,
        )
    }


async def test_ipv6_subnet_min_max_bound_the_allocation(etcd: EtcdServer, prefix: str) -> None:
    async with manager(etcd, prefix) as mgr:
        leases = [await mgr.acquire_lease(V6_ONLY, v6_node(n)) for n in (1, 2, 3)]
        assert sorted(lease.ipv6_subnet for lease in leases if lease.ipv6_subnet) == (V6_ONLY_RANGE)
        with pytest.raises(OutOfSubnets, match=r"IPv6Network fd00:10:6::/56.*\(3 subnets\)"):
            await mgr.acquire_lease(V6_ONLY, v6_node(4))
    assert len(stored(etcd, prefix)) == 3


async def test_ipv6_only_node_reuses_its_lease_by_public_ipv6(
    etcd: EtcdServer, prefix: str
) -> None:
    async with manager(etcd, prefix) as mgr:
        first = await mgr.acquire_lease(V6_ONLY, v6_node(1))
        other = await mgr.acquire_lease(V6_ONLY, v6_node(2))
        # A restart with a fresh VTEP MAC (e.g. after a reboot): same subnet, new value.
        restarted_attrs = LeaseAttrs(
            public_ipv6=ipaddress.IPv6Address("2001:db8::1"),
            backend_type="vxlan",
            backend_v6_data={"VNI": 1, "VtepMAC": "0e:00:00:00:aa:06"},
        )
        again = await mgr.acquire_lease(V6_ONLY, restarted_attrs)
    # Every IPv6-only node has PublicIP 0.0.0.0: only PublicIPv6 tells them apart.
    assert again.ipv6_subnet == first.ipv6_subnet != other.ipv6_subnet
    keys = stored(etcd, prefix)
    assert len(keys) == 2
    assert keys[suffix(again)][0] == encode_attrs(restarted_attrs).encode()
    assert keys[suffix(other)][0] == encode_attrs(v6_node(2)).encode()


async def test_dual_stack_reuses_both_subnets_from_subnet_env(
    etcd: EtcdServer, prefix: str
) -> None:
    # The previous run's subnet.env, as flanneld writes it (first usable address of each).
    text = render_subnet_env(
        subnet_env_for(
            network=DUAL.network,
            lease_subnet=V4("10.5.77.0/24"),
            ipv6_network=DUAL.ipv6_network,
            ipv6_lease_subnet=V6("fd00:10:5:4d::/64"),
            mtu=1430,
            ipmasq=True,
        )
    )
    assert text == (
        "FLANNEL_NETWORK=10.5.0.0/16\n"
        "FLANNEL_SUBNET=10.5.77.1/24\n"
        "FLANNEL_IPV6_NETWORK=fd00:10:5::/48\n"
        "FLANNEL_IPV6_SUBNET=fd00:10:5:4d::1/64\n"
        "FLANNEL_MTU=1430\n"
        "FLANNEL_IPMASQ=true\n"
    )
    previous = parse_subnet_env(text)
    async with manager(etcd, prefix) as mgr:
        lease = await mgr.acquire_lease(DUAL, dual_node(1), previous_subnets(previous))
    assert (lease.subnet, lease.ipv6_subnet) == (V4("10.5.77.0/24"), V6("fd00:10:5:4d::/64"))
    assert list(stored(etcd, prefix)) == ["10.5.77.0-24&fd00:10:5:4d::-64"]


async def test_ipv4_only_lease_of_our_ip_is_replaced_when_ipv6_is_enabled(
    etcd: EtcdServer, prefix: str
) -> None:
    # The network was IPv4-only; the operator turned IPv6 on and restarted the node.
    old_key = f"{prefix}/subnets/10.5.33.0-24"
    v4_attrs = LeaseAttrs(
        public_ip=ipaddress.IPv4Address("198.51.100.1"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "0e:00:00:00:01:04"},
    )
    put_with_lease(etcd, old_key, encode_attrs(v4_attrs))
    async with manager(etcd, prefix) as mgr:
        lease = await mgr.acquire_lease(DUAL, dual_node(1))
    # flanneld: the lease of our PublicIP has no (compatible) IPv6 part, so it is deleted and a
    # dual-stack lease allocated.
    assert lease.ipv6_subnet is not None and in_v6_range(DUAL, lease.ipv6_subnet)
    keys = stored(etcd, prefix)
    assert list(keys) == [suffix(lease)]
    assert "&" in suffix(lease)


async def test_dual_stack_allocation_avoids_subnets_held_by_flanneld_keys(
    etcd: EtcdServer, prefix: str
) -> None:
    # Leases written by flanneld for two other nodes hold all but one IPv6 subnet of the range.
    held = {
        "0.0.0.0-0&fd00:10:6:20::-60": v6_node(7),
        "0.0.0.0-0&fd00:10:6:40::-60": v6_node(8),
    }
    for key, attrs in held.items():
        put_with_lease(etcd, f"{prefix}/subnets/{key}", encode_attrs(attrs))
    async with manager(etcd, prefix) as mgr:
        lease = await mgr.acquire_lease(V6_ONLY, v6_node(1))
    assert lease.ipv6_subnet == V6("fd00:10:6:30::/60")
    assert set(stored(etcd, prefix)) == {*held, "0.0.0.0-0&fd00:10:6:30::-60"}


# --------------------------------------------------------------------------- watching


async def _next_batch(recv: trio.MemoryReceiveChannel[PeerMessage]) -> list[Event]:
    """The next message as events (a snapshot as one Added per lease)."""
    with trio.fail_after(10):
        msg = await recv.receive()
    if isinstance(msg, PeerSnapshot):
        return [Event(EventKind.ADDED, le) for le in msg.leases]
    return list(msg.events)


async def test_flanneld_written_dual_stack_peer_is_read_from_snapshot_and_watch(
    etcd: EtcdServer, prefix: str
) -> None:
    put_with_lease(etcd, f"{prefix}/subnets/{FLANNELD_KEY}", FLANNELD_VALUE)
    # A second flanneld key with the keys in another case and order: Go accepts it, so do we.
    put_with_lease(
        etcd,
        f"{prefix}/subnets/10.5.2.0-24&fd00:10:5:2::-64",
        '{"backendv6data":{"VtepMAC":"0e:00:00:00:0a:06","VNI":1},"publicipv6":"2001:db8::a",'
        '"BackendType":"vxlan","publicip":"198.51.100.10",'
        '"BackendData":{"VtepMAC":"0e:00:00:00:0a:04","VNI":1}}',
    )
    async with manager(etcd, prefix) as mgr:
        own = await mgr.acquire_lease(DUAL, dual_node(1))
        assert own.subnet not in (V4("10.5.1.0/24"), V4("10.5.2.0/24"))
        assert own.ipv6_subnet not in (V6("fd00:10:5:1::/64"), V6("fd00:10:5:2::/64"))
        send, recv = trio.open_memory_channel[PeerMessage](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mgr.watch_leases, own, send)

            snapshot = await _next_batch(recv)
            assert {e.kind for e in snapshot} == {EventKind.ADDED}
            by_key = {e.lease.key_suffix: e.lease for e in snapshot}
            assert set(by_key) == {FLANNELD_KEY, "10.5.2.0-24&fd00:10:5:2::-64"}
            peer = by_key[FLANNELD_KEY]
            assert (peer.subnet, peer.ipv6_subnet) == (
                V4("10.5.1.0/24"),
                V6("fd00:10:5:1::/64"),
            )
            assert peer.attrs == LeaseAttrs(
                public_ip=ipaddress.IPv4Address("198.51.100.9"),
                public_ipv6=ipaddress.IPv6Address("2001:db8::9"),
                backend_type="vxlan",
                backend_data={"VNI": 1, "VtepMAC": "0e:00:00:00:09:04"},
                backend_v6_data={"VNI": 1, "VtepMAC": "0e:00:00:00:09:06"},
            )
            # Re-encoding what flanneld wrote gives flanneld's bytes back.
            assert encode_attrs(peer.attrs) == FLANNELD_VALUE
            other = by_key["10.5.2.0-24&fd00:10:5:2::-64"]
            assert other.attrs.public_ipv6 == ipaddress.IPv6Address("2001:db8::a")
            assert other.attrs.backend_v6_data == {"VtepMAC": "0e:00:00:00:0a:06", "VNI": 1}

            # A new dual-stack peer key arrives through the watch ...
            # Outside our own lease's draw (the first 100 free subnets of each family).
            new_key = "10.5.230.0-24&fd00:10:5:e6::-64"
            put_with_lease(
                etcd,
                f"{prefix}/subnets/{new_key}",
                encode_attrs(dual_node(11)),
            )
            (added,) = await _next_batch(recv)
            assert added.kind is EventKind.ADDED
            assert added.lease.key_suffix == new_key
            assert added.lease.attrs == dual_node(11)

            # ... and a deletion names the dual-stack key (etcd's DELETE has no value: the data
            # path's owner finds what it programmed by key).
            etcd.etcdctl("del", f"{prefix}/subnets/{FLANNELD_KEY}")
            (removed,) = await _next_batch(recv)
            assert removed.kind is EventKind.REMOVED
            assert removed.lease.key_suffix == FLANNELD_KEY
            nursery.cancel_scope.cancel()


async def test_own_dual_stack_lease_is_not_reported_as_a_peer(
    etcd: EtcdServer, prefix: str
) -> None:
    async with manager(etcd, prefix) as mgr:
        own = await mgr.acquire_lease(DUAL, dual_node(1))
        peer = await mgr.acquire_lease(DUAL, dual_node(2))
        send, recv = trio.open_memory_channel[PeerMessage](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mgr.watch_leases, own, send)
            snapshot = await _next_batch(recv)
            assert [e.lease.key_suffix for e in snapshot] == [peer.key_suffix]
            # Renewing our own lease (a PUT on our key) produces no peer event; the peer's
            # renewal does.
            await mgr.renew_lease(own)
            await mgr.renew_lease(peer)
            (event,) = await _next_batch(recv)
            assert event.kind is EventKind.ADDED
            assert event.lease.key_suffix == peer.key_suffix
            nursery.cancel_scope.cancel()


def test_subnet_env_round_trip_ipv6_only() -> None:
    env = subnet_env_for(
        network=None,
        lease_subnet=None,
        ipv6_network=V6_ONLY.ipv6_network,
        ipv6_lease_subnet=V6("fd00:10:6:30::/60"),
        mtu=1430,
        ipmasq=False,
    )
    text = render_subnet_env(env)
    assert text == (
        "FLANNEL_IPV6_NETWORK=fd00:10:6::/56\n"
        "FLANNEL_IPV6_SUBNET=fd00:10:6:30::1/60\n"
        "FLANNEL_MTU=1430\n"
        "FLANNEL_IPMASQ=false\n"
    )
    assert parse_subnet_env(text) == env
