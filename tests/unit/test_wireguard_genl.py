"""The kernel path's generic-netlink messages (``WG_CMD_SET_DEVICE``/``GET_DEVICE``, the family
look-up): exact bytes of the headers and attributes, and encode → decode round trips."""

from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from pyflannel.backend.wireguard import genl
from pyflannel.backend.wireguard.uapi import DeviceState, PeerSet, PeerState, SetDevice

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
FAMILY = 0x1B


def _attrs(buf: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off + 4 <= len(buf):
        length, atype = struct.unpack_from("=HH", buf, off)
        out.append((atype, buf[off + 4 : off + length]))
        off += (length + 3) & ~3
    return out


def test_get_family_message() -> None:
    msg = genl.encode_get_family(7)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, mtype, flags, seq, pid) == (len(msg), 0x10, 0x5, 7, 0)
    assert msg[16:20] == bytes([3, 1, 0, 0])  # CTRL_CMD_GETFAMILY, version 1
    assert _attrs(msg[20:]) == [(2, b"wireguard\0")]


def test_parse_family_id() -> None:
    payload = bytes([1, 2, 0, 0]) + struct.pack("=HHH2x", 6, 1, FAMILY)
    assert genl.parse_family_id(payload) == FAMILY


def test_set_device_message_bytes() -> None:
    req = SetDevice(
        private_key=K1,
        listen_port=51820,
        replace_peers=True,
        peers=(
            PeerSet(
                K2,
                endpoint=(ipaddress.ip_address("198.51.100.2"), 51820),
                keepalive=25,
                allowed_ips=(ipaddress.ip_network("10.5.2.0/24"),),
            ),
        ),
    )
    msg = genl.encode_set_device(FAMILY, 9, "flannel-wg", req)
    length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, mtype, flags, seq) == (len(msg), FAMILY, 0x5, 9)
    assert msg[16:18] == bytes([genl.WG_CMD_SET_DEVICE, genl.WG_GENL_VERSION])
    top = _attrs(msg[20:])
    assert [t & 0x3FFF for t, _ in top] == [2, 3, 6, 5, 8]
    assert top[0][1] == b"flannel-wg\0" and top[1][1] == K1
    assert top[2][1] == struct.pack("=H", 51820)
    assert top[3][1] == struct.pack("=I", 1)  # WGDEVICE_F_REPLACE_PEERS
    assert top[4][0] & 0x8000  # NLA_F_NESTED
    ((_, peer),) = _attrs(top[4][1])
    pa = {t & 0x3FFF: v for t, v in _attrs(peer)}
    assert pa[1] == K2
    assert pa[3] == struct.pack("=I", 2)  # WGPEER_F_REPLACE_ALLOWEDIPS
    assert pa[4] == struct.pack("=H", socket.AF_INET) + struct.pack(">H", 51820) + bytes(
        [198, 51, 100, 2]
    ) + bytes(8)
    assert pa[5] == struct.pack("=H", 25)
    ((_, aip),) = _attrs(pa[9])
    assert {t: v for t, v in _attrs(aip)} == {
        1: struct.pack("=H", socket.AF_INET),
        2: bytes([10, 5, 2, 0]),
        3: bytes([24]),
    }


def test_remove_peer_message() -> None:
    msg = genl.encode_set_device(FAMILY, 1, "wg0", SetDevice(peers=(PeerSet(K2, remove=True),)))
    top = _attrs(msg[20:])
    ((_, peer),) = _attrs(top[-1][1])
    assert {t & 0x3FFF: v for t, v in _attrs(peer)} == {1: K2, 3: struct.pack("=I", 1)}


def test_get_device_is_a_dump() -> None:
    msg = genl.encode_get_device(FAMILY, 3, "flannel-wg")
    assert struct.unpack_from("=H", msg, 6)[0] & 0x300 == 0x300
    assert msg[16] == genl.WG_CMD_GET_DEVICE


keys = st.binary(min_size=32, max_size=32)
nets = st.one_of(
    st.builds(
        lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ),
    st.builds(
        lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    ),
)
endpoints = st.one_of(
    st.tuples(st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)), st.integers(0, 65535)),
    st.tuples(st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)), st.integers(0, 65535)),
)
peer_sets = st.builds(
    PeerSet,
    public_key=keys,
    preshared_key=keys,
    endpoint=endpoints,
    keepalive=st.integers(0, 65535),
    allowed_ips=st.lists(nets, max_size=4).map(tuple),
)


@given(
    keys, st.integers(0, 65535), st.lists(peer_sets, max_size=5, unique_by=lambda p: p.public_key)
)
def test_set_decodes_back(private: bytes, port: int, peers: list[PeerSet]) -> None:
    """What we send is what a device dump of the same attributes reads back."""
    msg = genl.encode_set_device(
        FAMILY, 1, "flannel-wg", SetDevice(private, port, False, tuple(peers))
    )
    dev = genl.parse_device_messages([msg[16:]])
    assert dev == DeviceState(
        private_key=private,
        listen_port=port,
        peers=tuple(
            PeerState(
                public_key=p.public_key,
                preshared_key=p.preshared_key or bytes(32),
                endpoint=p.endpoint,
                keepalive=p.keepalive,
                allowed_ips=p.allowed_ips,
            )
            for p in peers
        ),
    )


def test_split_peer_continues_across_messages() -> None:
    a = PeerSet(
        K2,
        endpoint=(ipaddress.ip_address("198.51.100.2"), 1),
        allowed_ips=(ipaddress.ip_network("10.5.2.0/24"),),
    )
    b = PeerSet(
        K2,
        endpoint=(ipaddress.ip_address("198.51.100.2"), 1),
        allowed_ips=(ipaddress.ip_network("fd00::/64"),),
    )
    m1 = genl.encode_set_device(FAMILY, 1, "x", SetDevice(peers=(a,)))
    m2 = genl.encode_set_device(FAMILY, 1, "x", SetDevice(peers=(b,)))
    (peer,) = genl.parse_device_messages([m1[16:], m2[16:]]).peers
    assert peer.allowed_ips == a.allowed_ips + b.allowed_ips
