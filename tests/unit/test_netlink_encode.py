"""Pure tests of the hand-written netlink encoders and parsers (no kernel).

The independent check of the wire format against pyroute2's parser and encoder is
tests/unit/test_encode_oracle.py; these tests pin shapes, round trips and error texts.
"""

from __future__ import annotations

import errno
import ipaddress
import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.netlink import consts as c
from pyflannel.netlink.dump import parse_fdb, parse_neighbours, parse_routes
from pyflannel.netlink.encode import (
    encode_fdb,
    encode_neigh,
    encode_op,
    encode_route,
    mac_to_bytes,
    mac_to_str,
)
from pyflannel.netlink.executor import OpFailure, OpsFailed, describe_op
from pyflannel.netlink.links import (
    LinkInfo,
    VxlanAttrs,
    VxlanSpec,
    parse_link,
    random_mac,
    vxlan_incompatibilities,
)
from pyflannel.netlink.nlsocket import (
    DumpItem,
    KernelRefused,
    iter_messages,
    parse_attrs,
    parse_error_payload,
)
from pyflannel.netlink.ops import (
    Delete,
    FdbEntry,
    NeighEntry,
    Op,
    Replace,
    RouteEntry,
)

HDR = struct.Struct("=IHHII")
NET = IPv4Network("10.5.34.0/24")
GW = IPv4Address("10.5.34.0")
MAC = "0a:1b:2c:3d:4e:5f"
PUB = IPv4Address("198.51.100.2")


def header(msg: bytes) -> tuple[int, int, int, int, int]:
    length, mtype, flags, seq, pid = HDR.unpack_from(msg)
    return length, mtype, flags, seq, pid


def as_dump(*msgs: bytes) -> list[DumpItem]:
    """Messages we encoded, presented like a kernel dump (RTM_NEW* only)."""
    buf = b"".join(msgs)
    return [(buf, s, e, t) for t, _f, _q, s, e in iter_messages(buf)]


# --- message shapes ---------------------------------------------------------------------------


def test_route_replace_shape() -> None:
    msg = encode_route(RouteEntry(NET, GW, 5, True), delete=False, seq=42, ack=True)
    length, mtype, flags, seq, _ = header(msg)
    assert (length, mtype, seq) == (len(msg), c.RTM_NEWROUTE, 42)
    assert flags == c.NLM_F_REQUEST | c.NLM_F_ACK | c.NLM_F_CREATE | c.NLM_F_REPLACE
    fam, dlen, _s, _t, table, proto, scope, rtype, rflags = struct.unpack_from("=8BI", msg, 16)
    assert (fam, dlen, table, proto, scope, rtype) == (2, 24, 254, c.RTPROT_BOOT, 0, 1)
    assert rflags == c.RTNH_F_ONLINK
    attrs = parse_attrs(msg, 28, len(msg))
    assert attrs[c.RTA_DST] == GW.packed
    assert attrs[c.RTA_GATEWAY] == GW.packed
    assert struct.unpack("=i", attrs[c.RTA_OIF]) == (5,)


def test_route_without_gateway_is_link_scope_and_ifindex_zero_has_no_oif() -> None:
    msg = encode_route(RouteEntry(NET, None, 3), delete=False, seq=1, ack=False)
    assert msg[16 + 6] == c.RT_SCOPE_LINK
    attrs = parse_attrs(msg, 28, len(msg))
    assert c.RTA_GATEWAY not in attrs
    msg = encode_route(RouteEntry(NET, PUB, 0), delete=False, seq=1, ack=False)
    assert msg[16 + 6] == c.RT_SCOPE_UNIVERSE
    attrs = parse_attrs(msg, 28, len(msg))
    assert c.RTA_OIF not in attrs and attrs[c.RTA_GATEWAY] == PUB.packed


def test_route_delete_shape() -> None:
    msg = encode_route(RouteEntry(NET, GW, 5, True), delete=True, seq=1, ack=False)
    _, mtype, flags, _, _ = header(msg)
    assert mtype == c.RTM_DELROUTE and flags == c.NLM_F_REQUEST
    _f, _d, _s, _t, table, proto, scope, rtype, _rf = struct.unpack_from("=8BI", msg, 16)
    assert (table, proto, scope, rtype) == (254, 0, c.RT_SCOPE_NOWHERE, 0)


def test_ipv4_route_via_ipv6_gateway_uses_rta_via() -> None:
    gw6 = IPv6Address("fe80::1")
    msg = encode_route(RouteEntry(NET, gw6, 2), delete=False, seq=1, ack=False)
    attrs = parse_attrs(msg, 28, len(msg))
    assert attrs[c.RTA_VIA] == struct.pack("=H", c.AF_INET6) + gw6.packed
    assert parse_routes(as_dump(msg)) == [RouteEntry(NET, gw6, 2)]


def test_neigh_delete_has_no_lladdr() -> None:
    msg = encode_neigh(NeighEntry(GW, MAC, 5), delete=True, seq=1, ack=False)
    assert header(msg)[1] == c.RTM_DELNEIGH
    attrs = parse_attrs(msg, 28, len(msg))
    assert c.NDA_LLADDR not in attrs and attrs[c.NDA_DST] == GW.packed


def test_fdb_is_bridge_family_self_permanent() -> None:
    msg = encode_fdb(FdbEntry(MAC, PUB, 5), delete=True, seq=1, ack=False)
    fam, _p1, _p2, idx, state, flags, _t = struct.unpack_from("=BBHiHBB", msg, 16)
    assert (fam, idx, state, flags) == (c.AF_BRIDGE, 5, c.NUD_PERMANENT, c.NTF_SELF)
    assert header(msg)[1] == c.RTM_DELNEIGH


def test_encode_op_dispatch_and_ack_flag() -> None:
    ops: list[Op] = [
        Replace(RouteEntry(NET, GW, 5, True)),
        Delete(RouteEntry(NET, GW, 5, True)),
        Replace(NeighEntry(GW, MAC, 5)),
        Delete(NeighEntry(GW, MAC, 5)),
        Replace(FdbEntry(MAC, PUB, 5)),
        Delete(FdbEntry(MAC, PUB, 5)),
    ]
    types = [header(encode_op(op, 1))[1] for op in ops]
    assert types == [24, 25, 28, 29, 28, 29]
    assert all(header(encode_op(op, 1, ack=True))[2] & c.NLM_F_ACK for op in ops)
    assert not any(header(encode_op(op, 1, ack=False))[2] & c.NLM_F_ACK for op in ops)


def test_bad_mac_and_unknown_op_raise_value_error() -> None:
    with pytest.raises(ValueError, match="MAC"):
        encode_op(Replace(NeighEntry(GW, "0a:1b:2c", 5)), 1)
    with pytest.raises(ValueError):
        encode_op(Replace(FdbEntry("zz:zz:zz:zz:zz:zz", PUB, 5)), 1)
    with pytest.raises(ValueError, match="not a netlink operation"):
        encode_op("route add", 1)  # type: ignore[arg-type]


def test_mac_round_trip() -> None:
    assert mac_to_str(mac_to_bytes("0A:1B:2C:3D:4E:5F")) == MAC
    assert mac_to_bytes("0a-1b-2c-3d-4e-5f") == bytes.fromhex("0a1b2c3d4e5f")


def test_random_mac_is_local_unicast() -> None:
    for _ in range(200):
        raw = mac_to_bytes(random_mac())
        assert raw[0] & 0x01 == 0 and raw[0] & 0x02 == 0x02


# --- parse(encode(x)) == x -------------------------------------------------------------------

v4 = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
macs = st.binary(min_size=6, max_size=6).map(mac_to_str)
idx = st.integers(1, 2**31 - 1)


@st.composite
def routes(draw: st.DrawFn) -> RouteEntry:
    six = draw(st.booleans())
    plen = draw(st.integers(0, 128 if six else 32))
    addr = draw(v6 if six else v4)
    net: IPv4Network | IPv6Network = ipaddress.ip_network((int(addr), plen), strict=False)
    gw: IPv4Address | IPv6Address | None = draw(st.none() | v6) if six else draw(st.none() | v4)
    return RouteEntry(net, gw, draw(idx), draw(st.booleans()))


@given(st.lists(routes(), max_size=20))
def test_routes_round_trip(entries: list[RouteEntry]) -> None:
    msgs = [encode_route(e, delete=False, seq=i, ack=False) for i, e in enumerate(entries)]
    assert parse_routes(as_dump(*msgs)) == entries


@given(st.lists(st.builds(NeighEntry, v4 | v6, macs, idx), max_size=20))
def test_neighbours_round_trip(entries: list[NeighEntry]) -> None:
    msgs = [encode_neigh(e, delete=False, seq=i, ack=False) for i, e in enumerate(entries)]
    assert parse_neighbours(as_dump(*msgs)) == entries


@given(st.lists(st.builds(FdbEntry, macs, v4 | v6, idx), max_size=20))
def test_fdb_round_trip(entries: list[FdbEntry]) -> None:
    msgs = [encode_fdb(e, delete=False, seq=i, ack=False) for i, e in enumerate(entries)]
    assert parse_fdb(as_dump(*msgs)) == entries


def test_parsers_filter_by_ifindex() -> None:
    msgs = [
        encode_route(RouteEntry(NET, GW, 5, True), delete=False, seq=1, ack=False),
        encode_route(
            RouteEntry(IPv4Network("10.5.35.0/24"), None, 6), delete=False, seq=2, ack=False
        ),
        encode_neigh(NeighEntry(GW, MAC, 6), delete=False, seq=3, ack=False),
        encode_fdb(FdbEntry(MAC, PUB, 5), delete=False, seq=4, ack=False),
    ]
    items = as_dump(*msgs)
    assert parse_routes(items, 5) == [RouteEntry(NET, GW, 5, True)]
    assert parse_neighbours(items, 5) == [] and len(parse_neighbours(items, 6)) == 1
    assert parse_fdb(items, 6) == [] and parse_fdb(items, 5) == [FdbEntry(MAC, PUB, 5)]


def test_route_parser_skips_kernel_and_other_tables() -> None:
    base = encode_route(RouteEntry(NET, None, 5), delete=False, seq=1, ack=False)
    kernel = bytearray(base)
    kernel[16 + 5] = c.RTPROT_KERNEL
    local_table = bytearray(base)
    local_table[16 + 4] = 255
    assert parse_routes(as_dump(bytes(kernel), bytes(local_table))) == []


# --- acks, errors, descriptions -------------------------------------------------------------


def _error_ack(seq: int, err: int, msg: str | None) -> bytes:
    payload = struct.pack("=i", -err) + HDR.pack(40, c.RTM_NEWROUTE, 5, seq, 0)
    flags = c.NLM_F_CAPPED
    if msg is not None:
        raw = msg.encode() + b"\0"
        tlv = struct.pack("=HH", 4 + len(raw), c.NLMSGERR_ATTR_MSG) + raw
        payload += tlv + b"\0" * (-len(tlv) & 3)
        flags |= c.NLM_F_ACK_TLVS
    return HDR.pack(16 + len(payload), c.NLMSG_ERROR, flags, seq, 0) + payload


def test_error_payload_with_extended_ack() -> None:
    buf = _error_ack(11, errno.ENODEV, "Nexthop device required for onlink") + _error_ack(
        12, 0, None
    )
    msgs = list(iter_messages(buf))
    assert [(m[0], m[2]) for m in msgs] == [(c.NLMSG_ERROR, 11), (c.NLMSG_ERROR, 12)]
    _t, flags, _s, start, end = msgs[0]
    assert parse_error_payload(buf, start, end, flags) == (
        errno.ENODEV,
        "Nexthop device required for onlink",
    )
    _t, flags, _s, start, end = msgs[1]
    assert parse_error_payload(buf, start, end, flags) == (0, None)


def test_descriptions_read_like_ip_commands() -> None:
    names = {5: "flannel.1"}
    assert (
        describe_op(Replace(RouteEntry(NET, GW, 5, True)), names)
        == "ip route replace 10.5.34.0/24 via 10.5.34.0 dev flannel.1 (ifindex 5) onlink"
    )
    assert (
        describe_op(Replace(FdbEntry(MAC, PUB, 7)))
        == f"bridge fdb replace {MAC} dev ifindex 7 dst 198.51.100.2 self permanent"
    )
    assert describe_op(Delete(RouteEntry(NET, PUB, 0))) == (
        "ip route del 10.5.34.0/24 via 198.51.100.2"
    )
    assert describe_op(Delete(NeighEntry(GW, MAC, 5))) == "ip neigh del 10.5.34.0 dev ifindex 5"


def test_failure_messages_name_op_device_errno_and_hint() -> None:
    f = OpFailure(2, Replace(RouteEntry(NET, GW, 9, True)), errno.ENODEV, "gone", "flannel.1")
    text = f.message()
    assert "ip route replace 10.5.34.0/24" in text and "dev flannel.1 (ifindex 9)" in text
    assert "ENODEV" in text and "kernel says: gone" in text
    err = f.to_error()
    assert err.hint and "does not exist" in err.hint
    bad = OpFailure(0, Replace(NeighEntry(GW, "zz", 5)), errno.EINVAL, "bad MAC", None, False)
    assert bad.message() == "ip neigh replace 10.5.34.0 lladdr zz dev ifindex 5 nud permanent" + (
        " not sent: bad MAC"
    )
    agg = OpsFailed([f, f], total=30)
    assert str(agg).startswith("2 of 30 netlink operations failed; first: ip route replace")
    assert "(and 1 more)" in str(agg)
    refused = KernelRefused("ip link add flannel.1", errno.EPERM)
    assert "ip link add flannel.1 failed: Operation not permitted (EPERM)" in str(refused)
    assert refused.errno == errno.EPERM


# --- links ------------------------------------------------------------------------------------

SPEC = VxlanSpec("flannel.1", 1, 2, IPv4Address("198.51.100.1"))


def _vx(**kw: object) -> LinkInfo:
    base: dict[str, object] = dict(
        vni=1,
        link=2,
        local=IPv4Address("198.51.100.1"),
        group=None,
        port=8472,
        gbp=False,
        learning=False,
        l2miss=False,
        l3miss=False,
    )
    base.update(kw)
    return LinkInfo(3, "flannel.1", "vxlan", MAC, 1450, 0, VxlanAttrs(**base))  # type: ignore[arg-type]


def test_vxlan_compatible_ignores_mtu_learning_mac_and_default_port() -> None:
    assert vxlan_incompatibilities(SPEC, _vx(learning=True)) == []
    assert vxlan_incompatibilities(SPEC, _vx(link=0)) == []  # only compared when both > 0
    assert vxlan_incompatibilities(SPEC, _vx(local=None)) == []


@pytest.mark.parametrize(
    ("existing", "spec", "word"),
    [
        (_vx(vni=2), SPEC, "vni"),
        (_vx(link=7), SPEC, "vtep (external) interface"),
        (_vx(local=IPv4Address("198.51.100.9")), SPEC, "vtep (external) IP"),
        (_vx(l2miss=True), SPEC, "l2miss"),
        (_vx(port=4789), VxlanSpec("flannel.1", 1, 2, None, port=8472), "port"),
        (_vx(gbp=True), SPEC, "gbp"),
        (LinkInfo(3, "flannel.1", "bridge", MAC, 1500, 0), SPEC, "link type"),
    ],
)
def test_vxlan_incompatible(existing: LinkInfo, spec: VxlanSpec, word: str) -> None:
    diffs = vxlan_incompatibilities(spec, existing)
    assert len(diffs) == 1 and diffs[0].startswith(word)


def test_parse_link_reads_vxlan_attributes() -> None:
    from pyflannel.netlink.encode import attr, ifinfomsg, nested

    data = nested(
        c.IFLA_INFO_DATA,
        attr(c.IFLA_VXLAN_ID, struct.pack("=I", 7)),
        attr(c.IFLA_VXLAN_LINK, struct.pack("=I", 2)),
        attr(c.IFLA_VXLAN_LOCAL, IPv4Address("198.51.100.1").packed),
        attr(c.IFLA_VXLAN_PORT, struct.pack("!H", 8472)),
        attr(c.IFLA_VXLAN_GBP, b""),
        attr(c.IFLA_VXLAN_LEARNING, b"\0"),
    )
    payload = (
        ifinfomsg(3, c.IFF_UP)
        + attr(c.IFLA_IFNAME, b"flannel.7\0")
        + attr(c.IFLA_ADDRESS, mac_to_bytes(MAC))
        + attr(c.IFLA_MTU, struct.pack("=I", 1450))
        + nested(c.IFLA_LINKINFO, attr(c.IFLA_INFO_KIND, b"vxlan\0"), data)
    )
    link = parse_link(payload)
    assert (link.ifindex, link.name, link.kind, link.mac, link.mtu, link.up) == (
        3,
        "flannel.7",
        "vxlan",
        MAC,
        1450,
        True,
    )
    assert link.vxlan == VxlanAttrs(
        7, 2, IPv4Address("198.51.100.1"), None, 8472, True, False, False, False
    )


@given(
    st.sampled_from([IPv4Network("10.5.0.0/16"), IPv6Network("fd00:5::/48")]),
    st.integers(min_value=1, max_value=2**31 - 1),
)
def test_device_route_body_is_the_replace_route_body(
    net: IPv4Network | IPv6Network, ix: int
) -> None:
    """The link-scope device route (wireguard) is exactly the body ``encode_route`` sends for a
    route without gateway; udp's scope-universe one differs only in the rtmsg scope byte."""
    from pyflannel.netlink.encode import device_route_body

    routed = encode_route(RouteEntry(net, None, ix), delete=False, seq=1, ack=False)[16:]
    assert device_route_body(net, ix, scope=c.RT_SCOPE_LINK) == routed
    universe = device_route_body(net, ix, scope=c.RT_SCOPE_UNIVERSE)
    assert universe[6] == c.RT_SCOPE_UNIVERSE
    assert universe[:6] + universe[7:] == routed[:6] + routed[7:]
