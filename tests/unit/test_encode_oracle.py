"""pyroute2 as an independent oracle for pyflannel's hand-written rtnetlink messages.

Every message kind pyflannel sends — routes, neighbours and FDB entries from
``pyflannel/netlink/encode.py`` (both families, replace and delete), links and addresses from
``links.py``/``addresses.py``, and the dump / ``route get`` requests of ``dump.py`` — is decoded
with pyroute2's own parser (``rtmsg``, ``ndmsg``, ``ifinfmsg``, ``ifaddrmsg``) and compared field
by field with what the operation means (``ip route replace ...``). The expectations here are
written from the kernel ABI, not from the encoder, so a wrong length, padding, attribute number,
byte order or flag shows up as a field mismatch. For routes, neighbours and FDB entries pyroute2's
*encoder*, fed the decoded fields, must also reproduce our bytes exactly.

pyroute2 is in the ``test`` extra only; pyflannel itself never imports it (docs/decisions.md).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from pyflannel.netlink import addresses, dump, links
from pyflannel.netlink import consts as c
from pyflannel.netlink.encode import (
    attr,
    encode_fdb,
    encode_message,
    encode_neigh,
    encode_op,
    encode_route,
    ifinfomsg,
)
from pyflannel.netlink.nlsocket import NetlinkSocket
from pyflannel.netlink.ops import (
    Delete,
    FdbEntry,
    NeighEntry,
    Replace,
    RouteEntry,
)

NLMSGHDR = struct.Struct("=IHHII")
REQ = 0x1
ACK = 0x4
CREATE_REPLACE = 0x400 | 0x100
CREATE_EXCL = 0x400 | 0x200
DUMP = 0x300
NLA_F_NESTED = 0x8000

v4 = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
macs = st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))
ifindexes = st.integers(1, 2**31 - 1)
seqs = st.integers(0, 2**32 - 1)


def decoded(cls: Callable[[bytes], Any], msg: bytes) -> Any:
    """pyroute2's reading of one complete message (after checking it is exactly one)."""
    (length,) = struct.unpack_from("=I", msg)
    assert length == len(msg), "nlmsghdr length must cover the message exactly"
    m = cls(msg)
    m.decode()
    return m


ADDRESS_ATTRS = frozenset(
    {
        "RTA_DST",
        "RTA_GATEWAY",
        "NDA_DST",
        "IFA_ADDRESS",
        "IFA_LOCAL",
        "IFA_BROADCAST",
        "IFLA_VXLAN_LOCAL",
        "IFLA_VXLAN_LOCAL6",
    }
)


def attrs_of(m: Any) -> list[tuple[str, Any]]:
    """(name, value) of each attribute, in wire order; addresses as ``ipaddress`` objects.

    pyroute2 prints some IPv6 addresses in the IPv4-compatible form (``::0.1.0.0``), so the
    comparison is on address values, not strings.
    """
    out: list[tuple[str, Any]] = []
    for slot in m["attrs"]:
        name, value = slot.name, slot.value
        if name in ADDRESS_ATTRS:
            value = ipaddress.ip_address(value)
        elif name == "RTA_VIA":
            value = (value["family"], ipaddress.ip_address(value["addr"]))
        out.append((name, value))
    return out


def raw_attrs(m: Any) -> list[tuple[str, Any]]:
    """(name, value) exactly as pyroute2 decoded them (for re-encoding)."""
    return [(slot.name, slot.value) for slot in m["attrs"]]


def check_header(m: Any, msg: bytes, mtype: int, flags: int, seq: int) -> None:
    h = m["header"]
    assert (h["length"], h["type"], h["flags"], h["sequence_number"], h["pid"]) == (
        len(msg),
        mtype,
        flags,
        seq,
        0,
    )


def reencode(cls: Callable[[], Any], m: Any, fields: tuple[str, ...]) -> bytes:
    """pyroute2's encoder fed the fields pyroute2's decoder read."""
    out = cls()
    out["header"] = {k: m["header"][k] for k in ("type", "flags", "sequence_number", "pid")}
    for k in fields:
        out[k] = m[k]
    out["attrs"] = raw_attrs(m)
    out.encode()
    return bytes(out.data)


RT_FIELDS = ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type", "flags")
ND_FIELDS = ("family", "ifindex", "state", "flags", "ndm_type")


# --- routes ---------------------------------------------------------------------------------


@st.composite
def route_entries(draw: st.DrawFn) -> RouteEntry:
    six = draw(st.booleans())
    plen = draw(st.integers(0, 128 if six else 32))
    net: IPv4Network | IPv6Network = ipaddress.ip_network(
        (int(draw(v6 if six else v4)), plen), strict=False
    )
    # IPv4 routes may have an IPv6 next hop (RFC 5549, RTA_VIA); IPv6 routes only IPv6 ones
    gw = draw(st.none() | v6) if six else draw(st.none() | v4 | v6)
    ifindex = draw(st.just(0) | ifindexes)  # 0: host-gw routes let the kernel pick the device
    return RouteEntry(net, gw, ifindex, draw(st.booleans()))


@given(route_entries(), st.booleans(), seqs, st.booleans())
def test_route_messages_decode_as_ip_route_replace_or_del(
    entry: RouteEntry, delete: bool, seq: int, ack: bool
) -> None:
    msg = encode_route(entry, delete=delete, seq=seq, ack=ack)
    m = decoded(rtmsg, msg)
    flags = (REQ if delete else REQ | CREATE_REPLACE) | (ACK if ack else 0)
    check_header(m, msg, c.RTM_DELROUTE if delete else c.RTM_NEWROUTE, flags, seq)
    family = 2 if entry.dst.version == 4 else 10
    if delete:
        # ip route del: scope nowhere, protocol and type unset so the kernel matches any
        proto, scope, rtype = 0, 255, 0
    else:
        # ip route replace: protocol boot, unicast; scope link without a gateway
        proto, scope, rtype = 3, (0 if entry.gw is not None else 253), 1
    assert {k: m[k] for k in RT_FIELDS} == {
        "family": family,
        "dst_len": entry.dst.prefixlen,
        "src_len": 0,
        "tos": 0,
        "table": 254,
        "proto": proto,
        "scope": scope,
        "type": rtype,
        "flags": 4 if entry.onlink else 0,  # RTNH_F_ONLINK
    }
    want: list[tuple[str, Any]] = [("RTA_DST", entry.dst.network_address)]
    if entry.gw is not None:
        if entry.gw.version == entry.dst.version:
            want.append(("RTA_GATEWAY", entry.gw))
        else:
            want.append(("RTA_VIA", (10, entry.gw)))  # struct rtvia
    if entry.ifindex:
        want.append(("RTA_OIF", entry.ifindex))
    assert attrs_of(m) == want
    assert reencode(rtmsg, m, RT_FIELDS) == msg


# --- neighbours and FDB ------------------------------------------------------------------------


@given(st.builds(NeighEntry, v4 | v6, macs, ifindexes), st.booleans(), seqs, st.booleans())
def test_neigh_messages_decode_as_ip_neigh_replace_or_del(
    entry: NeighEntry, delete: bool, seq: int, ack: bool
) -> None:
    msg = encode_neigh(entry, delete=delete, seq=seq, ack=ack)
    m = decoded(ndmsg, msg)
    flags = (REQ if delete else REQ | CREATE_REPLACE) | (ACK if ack else 0)
    check_header(m, msg, c.RTM_DELNEIGH if delete else c.RTM_NEWNEIGH, flags, seq)
    assert {k: m[k] for k in ND_FIELDS} == {
        "family": 2 if entry.ip.version == 4 else 10,
        "ifindex": entry.ifindex,
        "state": 0x80,  # NUD_PERMANENT
        "flags": 0,
        "ndm_type": 1,  # RTN_UNICAST
    }
    want: list[tuple[str, Any]] = [("NDA_DST", entry.ip)]
    if not delete:
        want.append(("NDA_LLADDR", entry.mac))
    assert attrs_of(m) == want
    assert reencode(ndmsg, m, ND_FIELDS) == msg


@given(st.builds(FdbEntry, macs, v4 | v6, ifindexes), st.booleans(), seqs, st.booleans())
def test_fdb_messages_decode_as_bridge_fdb_replace_or_del(
    entry: FdbEntry, delete: bool, seq: int, ack: bool
) -> None:
    msg = encode_fdb(entry, delete=delete, seq=seq, ack=ack)
    m = decoded(ndmsg, msg)
    flags = (REQ if delete else REQ | CREATE_REPLACE) | (ACK if ack else 0)
    check_header(m, msg, c.RTM_DELNEIGH if delete else c.RTM_NEWNEIGH, flags, seq)
    assert {k: m[k] for k in ND_FIELDS} == {
        "family": 7,  # AF_BRIDGE
        "ifindex": entry.ifindex,
        "state": 0x80,  # NUD_PERMANENT
        "flags": 0x02,  # NTF_SELF: the vxlan device's own FDB, not a bridge's
        "ndm_type": 0,
    }
    # a delete keeps NDA_DST so only that remote of the MAC goes (bridge fdb del ... dst)
    assert attrs_of(m) == [("NDA_LLADDR", entry.mac), ("NDA_DST", entry.dst)]
    assert reencode(ndmsg, m, ND_FIELDS) == msg


def test_encode_op_produces_the_same_messages_as_the_encoders() -> None:
    route = RouteEntry(IPv6Network("fd00:5::/64"), IPv6Address("fd00:5::"), 5, True)
    neigh = NeighEntry(IPv6Address("fd00:5::"), "0a:1b:2c:3d:4e:5f", 5)
    fdb = FdbEntry("0a:1b:2c:3d:4e:5f", IPv6Address("2001:db8::2"), 5)
    cases: list[tuple[Any, bytes]] = [
        (Replace(route), encode_route(route, delete=False, seq=9, ack=True)),
        (Delete(route), encode_route(route, delete=True, seq=9, ack=True)),
        (Replace(neigh), encode_neigh(neigh, delete=False, seq=9, ack=True)),
        (Delete(neigh), encode_neigh(neigh, delete=True, seq=9, ack=True)),
        (Replace(fdb), encode_fdb(fdb, delete=False, seq=9, ack=True)),
        (Delete(fdb), encode_fdb(fdb, delete=True, seq=9, ack=True)),
    ]
    for op, msg in cases:
        assert encode_op(op, 9) == msg


# --- links, addresses, dump requests: through the real request/dump code ---------------------


class RecordingSocket(NetlinkSocket):
    """A real rtnetlink socket whose datagrams are recorded instead of sent.

    Each request is answered locally the way the kernel would (an ACK; for a link look-up one
    ``RTM_NEWLINK`` first; for a dump an empty ``NLMSG_DONE``), so pyflannel's own ``request``
    and ``dump`` code builds the headers.
    """

    def __init__(self) -> None:
        super().__init__(timeout=1.0)
        self.sent: list[bytes] = []
        self._answers: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(bytes(data))
        _len, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(data)
        if flags & DUMP == DUMP:
            answer = encode_message(c.NLMSG_DONE, 0x2, seq, struct.pack("=i", 0))
        else:
            answer = b""
            if mtype == c.RTM_GETLINK:
                link = ifinfomsg(3) + attr(c.IFLA_IFNAME, b"flannel.1\0")
                answer += encode_message(c.RTM_NEWLINK, 0, seq, link)
            answer += encode_message(c.NLMSG_ERROR, 0, seq, struct.pack("=i", 0) + data[:16])
        self._answers.append(answer)

    def recv(self) -> bytes:
        return self._answers.pop(0)

    def last(self, count: int = 1) -> list[bytes]:
        out = self.sent[-count:]
        return out


def header_fields(m: Any) -> tuple[int, int]:
    return m["header"]["type"], m["header"]["flags"]


vxlan_specs = st.builds(
    links.VxlanSpec,
    name=st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=15),
    vni=st.integers(0, 2**24 - 1),
    vtep_ifindex=st.just(0) | ifindexes,
    local=st.none() | v4 | v6,
    port=st.just(0) | st.integers(1, 65535),
    gbp=st.booleans(),
    learning=st.booleans(),
    mtu=st.just(0) | st.integers(68, 65535),
    mac=macs,
)


@given(vxlan_specs)
def test_vxlan_link_creation_decodes_as_ip_link_add_type_vxlan(spec: links.VxlanSpec) -> None:
    with RecordingSocket() as sock:
        links.create_vxlan(sock, spec)
        create, lookup = sock.last(2)
    m = decoded(ifinfmsg, create)
    assert header_fields(m) == (c.RTM_NEWLINK, REQ | ACK | CREATE_EXCL)
    assert (m["family"], m["index"], m["flags"], m["change"]) == (0, 0, 0, 0)
    want: list[tuple[str, Any]] = [("IFLA_IFNAME", spec.name), ("IFLA_ADDRESS", spec.mac)]
    if spec.mtu:
        want.append(("IFLA_MTU", spec.mtu))
    linkinfo = m["attrs"][-1]
    # nested attributes carry NLA_F_NESTED, as the kernel's strict validation wants
    assert linkinfo.name == "IFLA_LINKINFO" and linkinfo.get_flags() == NLA_F_NESTED
    assert attrs_of(m)[:-1] == want
    kind, info = linkinfo.value["attrs"]
    assert (kind.name, kind.value) == ("IFLA_INFO_KIND", "vxlan")
    assert info.name == "IFLA_INFO_DATA" and info.get_flags() == NLA_F_NESTED
    data: list[tuple[str, Any]] = [("IFLA_VXLAN_ID", spec.vni)]
    if spec.vtep_ifindex:
        data.append(("IFLA_VXLAN_LINK", spec.vtep_ifindex))
    if spec.local is not None:
        key = "IFLA_VXLAN_LOCAL" if spec.local.version == 4 else "IFLA_VXLAN_LOCAL6"
        data.append((key, spec.local))
    data += [
        ("IFLA_VXLAN_TTL", 0),
        ("IFLA_VXLAN_TOS", 0),
        ("IFLA_VXLAN_LEARNING", int(spec.learning)),
        ("IFLA_VXLAN_L2MISS", 0),
        ("IFLA_VXLAN_L3MISS", 0),
    ]
    if spec.port:
        data.append(("IFLA_VXLAN_PORT", spec.port))  # be16 on the wire, host order here
    if spec.gbp:
        data.append(("IFLA_VXLAN_GBP", True))
    assert attrs_of(info.value) == data
    # create_vxlan reads the new device back by name, skipping statistics
    m = decoded(ifinfmsg, lookup)
    assert header_fields(m) == (c.RTM_GETLINK, REQ | ACK)
    assert attrs_of(m) == [("IFLA_IFNAME", spec.name), ("IFLA_EXT_MASK", 8)]


@given(ifindexes, st.integers(68, 65535))
def test_link_state_messages_decode_as_ip_link_set_and_del(ifindex: int, mtu: int) -> None:
    with RecordingSocket() as sock:
        links.set_link_up(sock, ifindex)
        links.set_link_mtu(sock, ifindex, mtu)
        links.delete_link(sock, ifindex)
        links.get_link(sock, ifindex)
        links.list_links(sock)
        up, set_mtu, delete, get, listing = (decoded(ifinfmsg, raw) for raw in sock.sent)
    assert header_fields(up) == (c.RTM_NEWLINK, REQ | ACK)
    assert (up["index"], up["flags"], up["change"], attrs_of(up)) == (ifindex, 1, 1, [])
    assert header_fields(set_mtu) == (c.RTM_NEWLINK, REQ | ACK)
    assert (set_mtu["index"], set_mtu["flags"], set_mtu["change"]) == (ifindex, 0, 0)
    assert attrs_of(set_mtu) == [("IFLA_MTU", mtu)]
    assert header_fields(delete) == (c.RTM_DELLINK, REQ | ACK)
    assert (delete["index"], attrs_of(delete)) == (ifindex, [])
    assert header_fields(get) == (c.RTM_GETLINK, REQ | ACK)
    assert (get["index"], attrs_of(get)) == (ifindex, [("IFLA_EXT_MASK", 8)])
    assert header_fields(listing) == (c.RTM_GETLINK, REQ | DUMP)
    assert (listing["index"], attrs_of(listing)) == (0, [("IFLA_EXT_MASK", 8)])


@st.composite
def interfaces(draw: st.DrawFn) -> IPv4Interface | IPv6Interface:
    if draw(st.booleans()):
        return IPv6Interface((int(draw(v6)), draw(st.integers(0, 128))))
    return IPv4Interface((int(draw(v4)), draw(st.integers(0, 32))))


@given(interfaces(), ifindexes, st.booleans())
def test_address_messages_decode_as_ip_addr_replace_or_del(
    iface: IPv4Interface | IPv6Interface, ifindex: int, delete: bool
) -> None:
    with RecordingSocket() as sock:
        if delete:
            addresses.delete_address(sock, ifindex, iface)
        else:
            addresses.add_address(sock, ifindex, iface)
        (raw,) = sock.sent
    m = decoded(ifaddrmsg, raw)
    want_flags = REQ | ACK | (0 if delete else CREATE_REPLACE)
    assert header_fields(m) == (c.RTM_DELADDR if delete else c.RTM_NEWADDR, want_flags)
    assert (m["family"], m["prefixlen"], m["flags"], m["scope"], m["index"]) == (
        2 if iface.version == 4 else 10,
        iface.network.prefixlen,
        0,
        0,
        ifindex,
    )
    ip = iface.ip
    if iface.version == 6:
        assert attrs_of(m) == [("IFA_ADDRESS", ip)]
    else:
        want = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
        if iface.network.prefixlen < 31:  # /31 and /32 have no broadcast address
            want.append(("IFA_BROADCAST", iface.network.broadcast_address))
        assert attrs_of(m) == want


def test_dump_and_route_get_requests_decode_as_ip_show_and_get() -> None:
    with RecordingSocket() as sock:
        addresses.list_all_addresses(sock, c.AF_INET6)
        dump.dump_routes(sock, 5, c.AF_INET6)
        dump.dump_neighbours(sock, 5, c.AF_INET)
        dump.dump_fdb(sock)
        dump.route_get(sock, IPv6Address("2001:db8::7"))
        addr, routes, neigh, fdb, get = sock.sent
    m = decoded(ifaddrmsg, addr)
    assert header_fields(m) == (c.RTM_GETADDR, REQ | DUMP) and m["family"] == 10
    m = decoded(rtmsg, routes)
    assert header_fields(m) == (c.RTM_GETROUTE, REQ | DUMP)
    # table 0 in the request: all tables; the parser keeps the main one
    assert (m["family"], m["table"], attrs_of(m)) == (10, 0, [])
    m = decoded(ndmsg, neigh)
    assert header_fields(m) == (c.RTM_GETNEIGH, REQ | DUMP)
    assert (m["family"], m["ifindex"], attrs_of(m)) == (2, 0, [("NDA_IFINDEX", 5)])
    m = decoded(ndmsg, fdb)
    assert header_fields(m) == (c.RTM_GETNEIGH, REQ | DUMP)
    assert (m["family"], attrs_of(m)) == (7, [])
    m = decoded(rtmsg, get)
    assert header_fields(m) == (c.RTM_GETROUTE, REQ | ACK)
    assert (m["family"], m["dst_len"], attrs_of(m)) == (
        10,
        128,
        [("RTA_DST", IPv6Address("2001:db8::7"))],
    )
