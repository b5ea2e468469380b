"""Peer-lease validation: table-driven, one row per way a lease can be hostile or broken."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from pyflannel.backend.base import PlanContext
from pyflannel.backend.validate import Peer, Rejection, normalize_mac, validate_peer
from pyflannel.lease import Lease, LeaseAttrs

V4 = ipaddress.IPv4Address
N4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Address
N6 = ipaddress.IPv6Network

OWN_MAC = "0a:00:00:00:00:01"
CTX = PlanContext(
    family=4,
    backend_type="vxlan",
    network=N4("10.5.0.0/16"),
    own_subnet=N4("10.5.72.0/24"),
    own_public_ip=V4("198.51.100.1"),
    dev_index=10,
    ext_index=2,
    own_mac=OWN_MAC,
)
HOSTGW = replace(CTX, backend_type="host-gw", dev_index=2, own_mac=None)
CTX6 = PlanContext(
    family=6,
    backend_type="vxlan",
    network=N6("fd00:5::/56"),
    own_subnet=N6("fd00:5:0:48::/64"),
    own_public_ip=V6("2001:db8::1"),
    dev_index=11,
    ext_index=2,
    own_mac="0a:00:00:00:00:06",
)


def lease(
    subnet: str | None = "10.5.34.0/24",
    public: str = "198.51.100.2",
    btype: str = "vxlan",
    data: Any = None,
    *,
    v6: str | None = None,
    public6: str | None = None,
    data6: Any = None,
) -> Lease:
    if data is None:
        data = {"VNI": 1, "VtepMAC": "0a:11:22:33:44:55"}
    return Lease(
        subnet=None if subnet is None else N4(subnet),
        ipv6_subnet=None if v6 is None else N6(v6),
        attrs=LeaseAttrs(
            public_ip=V4(public),
            public_ipv6=None if public6 is None else V6(public6),
            backend_type=btype,
            backend_data=data,
            backend_v6_data=data6,
        ),
        expiration=1e9,
        etcd_lease_id=7,
    )


@pytest.mark.parametrize(
    ("name", "le", "ctx", "needle"),
    [
        ("other backend", lease(btype="host-gw"), CTX, "BackendType 'host-gw' is not ours"),
        ("attr-less removed lease", lease(btype="", data={}), CTX, "BackendType '' is not ours"),
        ("outside network", lease("10.6.1.0/24"), CTX, "outside the Network 10.5.0.0/16"),
        ("supernet of network", lease("10.0.0.0/8"), CTX, "outside the Network"),
        ("whole network", lease("10.5.0.0/16"), CTX, "overlaps our own subnet"),
        ("covers ours", lease("10.5.64.0/19"), CTX, "overlaps our own subnet"),
        ("inside ours", lease("10.5.72.128/25"), CTX, "overlaps our own subnet"),
        ("our subnet, other node", lease("10.5.72.0/24"), CTX, "overlaps our own subnet"),
        # flanneld accepts any length inside the Network; a /17 would swallow other nodes' /24s
        # and a /25 inside a peer's /24 would take that peer's traffic.
        ("wider than SubnetLen", lease("10.5.128.0/17"), CTX, "SubnetLen is /24"),
        ("inside a peer's subnet", lease("10.5.34.0/25"), CTX, "SubnetLen is /24"),
        ("default route", lease("0.0.0.0/0"), replace(CTX, network=N4("0.0.0.0/0")), "default"),
        ("our public ip", lease(public="198.51.100.1"), CTX, "is our own public IP"),
        ("zero public ip", lease(public="0.0.0.0"), CTX, "not a usable unicast"),
        ("loopback public ip", lease(public="127.0.0.1"), CTX, "not a usable unicast"),
        ("multicast public ip", lease(public="239.1.1.1"), CTX, "not a usable unicast"),
        ("broadcast public ip", lease(public="255.255.255.255"), CTX, "not a usable unicast"),
        # Issue 14: link-local, reserved and in-Network tunnel endpoints were accepted.
        ("link-local public ip", lease(public="169.254.1.1"), CTX, "not a usable unicast"),
        ("reserved public ip", lease(public="240.0.0.1"), CTX, "not a usable unicast"),
        ("reserved public ip top", lease(public="250.1.2.3"), CTX, "not a usable unicast"),
        ("public ip in network", lease(public="10.5.99.9"), CTX, "inside the flannel Network"),
        (
            "v6 link-local public",
            lease(v6="fd00:5:0:1::/64", public6="fe80::1", data6={"VtepMAC": "0a:1:1:1:1:1"}),
            CTX6,
            "not a usable unicast",
        ),
        (
            "underlay network address",
            lease(public="198.51.100.0"),
            replace(CTX, underlay=N4("198.51.100.0/24")),
            "network address of the underlay 198.51.100.0/24",
        ),
        (
            "underlay broadcast address",
            lease(public="198.51.100.255"),
            replace(CTX, underlay=N4("198.51.100.0/24")),
            "broadcast address of the underlay",
        ),
        (
            "v6 underlay network address",
            lease(v6="fd00:5:0:1::/64", public6="2001:db8::", data6={"VtepMAC": "0a:1:1:1:1:1"}),
            replace(CTX6, underlay=N6("2001:db8::/64")),
            "network address of the underlay",
        ),
        ("public ip in own subnet", lease(public="10.5.72.9"), CTX, "inside our own subnet"),
        ("public ip in its subnet", lease(public="10.5.34.9"), CTX, "inside the lease's own"),
        ("no backend data", lease(data="x"), CTX, "BackendData must be a JSON object"),
        ("backend data list", lease(data=[1]), CTX, "BackendData must be a JSON object"),
        ("no mac", lease(data={"VNI": 1}), CTX, "BackendData.VtepMAC is missing"),
        ("null mac", lease(data={"VtepMAC": None}), CTX, "VtepMAC is missing"),
        ("garbage mac", lease(data={"VtepMAC": "zz:zz"}), CTX, "not a 6-byte MAC"),
        ("numeric mac", lease(data={"VtepMAC": 5}), CTX, "not a 6-byte MAC"),
        ("8-byte mac", lease(data={"VtepMAC": "0a:00:00:00:00:00:00:01"}), CTX, "6-byte"),
        ("multicast mac", lease(data={"VtepMAC": "01:00:5e:00:00:01"}), CTX, "multicast"),
        ("broadcast mac", lease(data={"VtepMAC": "ff:ff:ff:ff:ff:ff"}), CTX, "broadcast"),
        ("zero mac", lease(data={"VtepMAC": "00:00:00:00:00:00"}), CTX, "all-zero"),
        ("our mac", lease(data={"VtepMAC": OWN_MAC.upper()}), CTX, "our own VTEP MAC"),
        ("string vni", lease(data={"VNI": "1", "VtepMAC": "0a:11:22:33:44:55"}), CTX, "VNI must"),
        ("float vni", lease(data={"VNI": 1.0, "VtepMAC": "0a:11:22:33:44:55"}), CTX, "VNI"),
        ("negative vni", lease(data={"VNI": -1, "VtepMAC": "0a:11:22:33:44:55"}), CTX, "VNI"),
        ("huge vni", lease(data={"VNI": 2**32, "VtepMAC": "0a:11:22:33:44:55"}), CTX, "VNI"),
        ("bool vni", lease(data={"VNI": True, "VtepMAC": "0a:11:22:33:44:55"}), CTX, "VNI"),
        ("hostgw other type", lease(), HOSTGW, "BackendType 'vxlan' is not ours"),
        ("hostgw our ip", lease(public="198.51.100.1", btype="host-gw"), HOSTGW, "own public"),
        ("v6 missing public", lease(v6="fd00:5:0:1::/64"), CTX6, "no PublicIPv6"),
        (
            "v6 outside",
            lease(v6="fd00:6::/64", public6="2001:db8::2", data6={"VtepMAC": "0a:1:1:1:1:1"}),
            CTX6,
            "outside the Network",
        ),
        (
            "v6 no data",
            lease(v6="fd00:5:0:1::/64", public6="2001:db8::2"),
            CTX6,
            "BackendV6Data must be a JSON object",
        ),
        (
            "v6 our public",
            lease(v6="fd00:5:0:1::/64", public6="2001:db8::1", data6={"VtepMAC": "0a:1"}),
            CTX6,
            "PublicIPv6 2001:db8::1 is our own",
        ),
        (
            "v6 short mac",
            lease(v6="fd00:5:0:1::/64", public6="2001:db8::2", data6={"VtepMAC": "0a:1:2:3:4:5"}),
            CTX6,
            "BackendV6Data.VtepMAC '0a:1:2:3:4:5' is not a 6-byte MAC",
        ),
    ],
)
def test_rejected(name: str, le: Lease, ctx: PlanContext, needle: str) -> None:
    result = validate_peer(le, ctx)
    assert isinstance(result, Rejection), name
    assert needle in result.reason
    assert le.key_suffix in result.reason  # the reason names the lease key
    assert not result.benign


def test_own_lease_and_missing_family_are_benign() -> None:
    own = lease("10.5.72.0/24", public="198.51.100.1")
    r = validate_peer(own, CTX)
    assert isinstance(r, Rejection) and r.benign and "our own lease" in r.reason
    r6 = validate_peer(lease(), CTX6)
    assert isinstance(r6, Rejection) and r6.benign and "no IPv6 subnet" in r6.reason


@pytest.mark.parametrize(
    ("le", "ctx", "mac"),
    [
        (lease(), CTX, "0a:11:22:33:44:55"),
        (lease(data={"vtepmac": "0A-11-22-33-44-55", "vni": None}), CTX, "0a:11:22:33:44:55"),
        (lease(data={"VtepMAC": "0a11.2233.4455", "Extra": [1]}), CTX, "0a:11:22:33:44:55"),
        # Go's decoder keeps the last of several case-variant keys.
        (lease(data={"VtepMAC": "zz", "VTEPMAC": "0a:11:22:33:44:66"}), CTX, "0a:11:22:33:44:66"),
        # A peer's VNI is ignored (flanneld programs its own device), whatever its value.
        (lease(data={"VNI": 4096, "VtepMAC": "0a:11:22:33:44:55"}), CTX, "0a:11:22:33:44:55"),
        (lease(btype="host-gw", data="anything"), HOSTGW, None),
    ],
)
def test_accepted(le: Lease, ctx: PlanContext, mac: str | None) -> None:
    result = validate_peer(le, ctx)
    assert isinstance(result, Peer), result
    assert result.vtep_mac == mac
    assert result.lease is le


def test_accepted_v6() -> None:
    le = lease(
        v6="fd00:5:0:1::/64",
        public6="2001:db8::2",
        data6={"VNI": 1, "VtepMAC": "0a:01:02:03:04:05"},
    )
    peer = validate_peer(le, CTX6)
    assert isinstance(peer, Peer)
    assert peer.subnet == N6("fd00:5:0:1::/64")
    assert peer.public_ip == V6("2001:db8::2")
    assert peer.vtep_mac == "0a:01:02:03:04:05"


@pytest.mark.parametrize(
    ("raw", "out"),
    [
        ("AA:bb:CC:dd:EE:ff", "aa:bb:cc:dd:ee:ff"),
        ("aa-bb-cc-dd-ee-ff", "aa:bb:cc:dd:ee:ff"),
        ("aabb.ccdd.eeff", "aa:bb:cc:dd:ee:ff"),
        ("aa:bb-cc:dd:ee:ff", None),  # mixed separators: Go rejects
        ("aa:bb:cc:dd:ee", None),
        ("aabbccddeeff", None),
        ("", None),
        (None, None),
        (12, None),
    ],
)
def test_normalize_mac(raw: object, out: str | None) -> None:
    assert normalize_mac(raw) == out


@pytest.mark.parametrize(
    ("underlay", "public"),
    [
        ("198.51.100.0/31", "198.51.100.0"),
        ("198.51.100.0/24", "198.51.100.254"),
        ("203.0.113.0/24", "198.51.100.0"),
    ],
)
def test_underlay_edges_that_are_fine(underlay: str, public: str) -> None:
    result = validate_peer(lease(public=public), replace(CTX, underlay=N4(underlay)))
    assert isinstance(result, Peer), result


def test_a_normal_mac_is_shared_not_copied() -> None:
    # Memory at 10k peers: the neighbour and FDB entries keep the lease's own string.
    mac = "".join(["0a:bb:cc", ":dd:ee:ff"])  # built at run time: not a shared constant
    assert normalize_mac(mac) is mac
    upper = "".join(["0A:BB:CC", ":DD:EE:FF"])
    assert normalize_mac(upper) == "0a:bb:cc:dd:ee:ff"


def test_a_mac_with_a_trailing_newline_is_refused() -> None:
    assert normalize_mac("0a:bb:cc:dd:ee:ff\n") is None
    assert normalize_mac("0abb.ccdd.eeff\n") is None
