"""The udp backend's pure packet functions and its forwarding loops.

Packets are crafted by hand; checksums are compared with a naive RFC 1071 implementation. The
forwarder is driven without root: its "TUN" is one end of an AF_UNIX datagram socket pair
(``readv``/``write`` keep packet boundaries just as on a TUN) and its peers are UDP sockets on
127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.backend.base import PlanContext
from pyflannel.backend.udp import plan_table
from pyflannel.backend.udp_forwarder import Forwarder, Mode
from pyflannel.backend.udp_packet import (
    VNET_HDR,
    VNET_HDR_LEN,
    PeerTable,
    checksum,
    complete_checksum,
    decrement_ttl,
    icmp_error,
    ipv4_dst,
    ipv4_src,
    pseudo_header_sum,
    tcp_segments,
)
from pyflannel.lease import Lease, LeaseAttrs

V4 = ipaddress.IPv4Address
N4 = ipaddress.IPv4Network


def naive_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_packet(
    src: str,
    dst: str,
    *,
    ttl: int = 64,
    proto: int = 17,
    payload: bytes = b"\x12\x34\x56\x78\x00\x10\x00\x00hello!",
    ident: int = 0x1234,
    frag: int = 0,
    tos: int = 0,
) -> bytearray:
    """A valid IPv4 packet (correct header checksum)."""
    hdr = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            tos,
            20 + len(payload),
            ident,
            frag,
            ttl,
            proto,
            0,
            V4(src).packed,
            V4(dst).packed,
        )
    )
    struct.pack_into("!H", hdr, 10, naive_checksum(bytes(hdr)))
    return hdr + payload


def echo_request(src: str, dst: str, ttl: int = 64) -> bytearray:
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x77, 1) + b"pingdata")
    struct.pack_into("!H", icmp, 2, naive_checksum(bytes(icmp)))
    return ip_packet(src, dst, ttl=ttl, proto=1, payload=bytes(icmp))


# --- checksum ---------------------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_checksum_matches_rfc1071(data: bytes) -> None:
    assert checksum(data) == naive_checksum(data)


def test_checksum_of_valid_header_verifies_to_zero() -> None:
    pkt = ip_packet("10.5.1.2", "10.5.2.2")
    assert checksum(pkt[:20]) == 0


# --- TTL ----------------------------------------------------------------------------------------


@given(
    ttl=st.integers(2, 255),
    tos=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
    frag=st.integers(0, 0xFFFF),
    proto=st.integers(0, 255),
    src=st.integers(0, 2**32 - 1),
    dst=st.integers(0, 2**32 - 1),
)
def test_decrement_ttl_equals_full_recompute(
    ttl: int, tos: int, ident: int, frag: int, proto: int, src: int, dst: int
) -> None:
    pkt = ip_packet(str(V4(src)), str(V4(dst)), ttl=ttl, tos=tos, ident=ident, frag=frag,
                    proto=proto)  # fmt: skip
    assert decrement_ttl(pkt)
    assert pkt[8] == ttl - 1
    expect = ip_packet(str(V4(src)), str(V4(dst)), ttl=ttl - 1, tos=tos, ident=ident,
                       frag=frag, proto=proto)  # fmt: skip
    assert pkt == expect  # the incremental checksum equals a full recompute
    assert checksum(pkt[:20]) == 0


def test_decrement_ttl_checksum_corner_cases() -> None:
    # Search headers whose checksum lands on the RFC 1624 corner values before the update.
    seen = set()
    for ident in range(0x10000):
        pkt = ip_packet("10.5.1.2", "10.5.2.2", ident=ident)
        hc = struct.unpack_from("!H", pkt, 10)[0]
        if hc in (0xFEFF, 0xFF00, 0xFFFF, 0x0000, 0xFEFE) and hc not in seen:
            seen.add(hc)
            assert decrement_ttl(pkt)
            assert pkt == ip_packet("10.5.1.2", "10.5.2.2", ident=ident, ttl=63), hex(hc)
    assert {0xFEFF, 0xFF00} <= seen


@pytest.mark.parametrize("ttl", [0, 1])
def test_decrement_ttl_refuses_expiring_packet(ttl: int) -> None:
    pkt = ip_packet("10.5.1.2", "10.5.2.2", ttl=ttl)
    before = bytes(pkt)
    assert not decrement_ttl(pkt)
    assert bytes(pkt) == before


def test_addresses() -> None:
    pkt = ip_packet("10.5.1.2", "10.5.2.3")
    assert ipv4_src(pkt) == int(V4("10.5.1.2"))
    assert ipv4_dst(pkt) == int(V4("10.5.2.3"))


# --- ICMP errors --------------------------------------------------------------------------------


def parse_icmp(reply: bytes) -> dict[str, object]:
    ver_ihl, _tos, total, _id, frag, ttl, proto, _ck, src, dst = struct.unpack_from(
        "!BBHHHBBH4s4s", reply
    )
    assert ver_ihl == 0x45 and total == len(reply) and frag == 0
    assert checksum(reply[:20]) == 0, "IP header checksum"
    assert checksum(reply[20:]) == 0, "ICMP checksum"
    return {
        "ttl": ttl,
        "proto": proto,
        "src": str(V4(src)),
        "dst": str(V4(dst)),
        "type": reply[20],
        "code": reply[21],
        "unused": reply[24:28],
        "quoted": reply[28:],
    }


def test_net_unreachable_is_well_formed() -> None:
    offender = ip_packet("10.5.1.2", "10.5.9.9", payload=b"ABCDEFGHIJKLMNOP")
    reply = icmp_error(offender, int(V4("10.5.1.0")), 3, 0)
    assert reply is not None
    got = parse_icmp(reply)
    assert got == {
        "ttl": 8,
        "proto": 1,
        "src": "10.5.1.0",
        "dst": "10.5.1.2",
        "type": 3,
        "code": 0,
        "unused": b"\0\0\0\0",
        "quoted": bytes(offender[:28]),  # IP header + 8 bytes
    }


def test_icmp_error_for_echo_request_but_not_for_icmp_errors() -> None:
    src = int(V4("10.5.1.0"))
    ping = echo_request("10.5.1.2", "10.5.9.9")
    reply = icmp_error(ping, src, 3, 0)
    assert reply is not None and parse_icmp(reply)["quoted"] == bytes(ping[:28])
    assert icmp_error(reply, src, 3, 0) is None  # never an error about an error
    # a time exceeded offender is an error too
    te = icmp_error(ping, src, 11, 0)
    assert te is not None and icmp_error(te, src, 3, 0) is None


def test_icmp_error_quotes_short_packets_whole() -> None:
    offender = ip_packet("10.5.1.2", "10.5.9.9", payload=b"abc")
    reply = icmp_error(offender, 1, 3, 0)
    assert reply is not None and parse_icmp(reply)["quoted"] == bytes(offender)


@pytest.mark.parametrize(
    ("src", "frag", "why"),
    [
        ("0.0.0.0", 0, "unspecified source"),
        ("127.0.0.1", 0, "loopback source"),
        ("224.0.0.5", 0, "multicast source"),
        ("255.255.255.255", 0, "broadcast source"),
        ("10.5.1.2", 0x0010, "not the first fragment"),
    ],
)
def test_no_icmp_error(src: str, frag: int, why: str) -> None:
    assert icmp_error(ip_packet(src, "10.5.9.9", frag=frag), 1, 3, 0) is None, why


def test_no_icmp_error_for_garbage() -> None:
    assert icmp_error(b"\x45" * 10, 1, 3, 0) is None
    assert icmp_error(b"\x60" + bytes(39), 1, 3, 0) is None  # IPv6
    bad_ihl = ip_packet("10.5.1.2", "10.5.9.9")
    bad_ihl[0] = 0x4F  # claims 60 bytes of header in a 34-byte packet
    assert icmp_error(bad_ihl, 1, 3, 0) is None


def test_first_fragment_with_more_fragments_flag_gets_error() -> None:
    assert icmp_error(ip_packet("10.5.1.2", "10.5.9.9", frag=0x2000), 1, 3, 0) is not None


# --- peer table ---------------------------------------------------------------------------------


def test_table_exact_and_miss() -> None:
    t = PeerTable.build(
        [(N4("10.5.2.0/24"), ("198.51.100.12", 8285)), (N4("10.5.3.0/24"), ("198.51.100.13", 1))],
        24,
    )
    assert len(t) == 2 and not t.longer and not t.shorter
    assert t.lookup(int(V4("10.5.2.77"))) == ("198.51.100.12", 8285)
    assert t.lookup(int(V4("10.5.3.0"))) == ("198.51.100.13", 1)
    assert t.lookup(int(V4("10.5.4.1"))) is None
    assert t.exact[int(V4("10.5.2.9")) >> t.shift] == ("198.51.100.12", 8285)


def test_table_longest_prefix_wins() -> None:
    t = PeerTable.build(
        [
            (N4("10.5.0.0/22"), ("a", 1)),
            (N4("10.5.2.0/24"), ("b", 1)),
            (N4("10.5.2.128/25"), ("c", 1)),
        ],
        24,
    )
    assert t.lookup(int(V4("10.5.2.200"))) == ("c", 1)
    assert t.lookup(int(V4("10.5.2.100"))) == ("b", 1)
    assert t.lookup(int(V4("10.5.1.1"))) == ("a", 1)
    assert t.lookup(int(V4("10.5.4.1"))) is None


def test_table_later_duplicate_wins() -> None:
    t = PeerTable.build([(N4("10.5.2.0/24"), ("a", 1)), (N4("10.5.2.0/24"), ("b", 1))], 24)
    assert t.lookup(int(V4("10.5.2.1"))) == ("b", 1) and len(t) == 1


@given(
    nets=st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(16, 30)), min_size=0, max_size=12
    ),
    probes=st.lists(st.integers(0, 2**32 - 1), max_size=20),
)
def test_table_is_longest_prefix_match(nets: list[tuple[int, int]], probes: list[int]) -> None:
    pairs = [(N4((ip, plen), strict=False), (f"p{i}", i)) for i, (ip, plen) in enumerate(nets)]
    table = PeerTable.build(pairs, 24)
    best: dict[N4, tuple[str, int]] = {}
    for net, addr in pairs:
        best[net] = addr  # later duplicates win
    # probe inside every network too
    probes = probes + [int(n.network_address) + 1 for n, _ in pairs]
    for dst in probes:
        cands = [n for n in best if dst >> (32 - n.prefixlen) == int(n.network_address) >> (
            32 - n.prefixlen)]  # fmt: skip
        want = best[max(cands, key=lambda n: n.prefixlen)] if cands else None
        assert table.lookup(dst) == want


# --- planning -----------------------------------------------------------------------------------

CTX = PlanContext(
    family=4,
    backend_type="",
    network=N4("10.5.0.0/16"),
    own_subnet=N4("10.5.1.0/24"),
    own_public_ip=V4("198.51.100.11"),
    dev_index=5,
    ext_index=2,
)


def lease(subnet: str, public: str, backend_type: str = "", rev: int = 0) -> Lease:
    data = {"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"} if backend_type == "vxlan" else None
    return Lease(
        N4(subnet),
        LeaseAttrs(public_ip=V4(public), backend_type=backend_type, backend_data=data),
        mod_revision=rev,
    )


def test_plan_table_accepts_udp_leases_only() -> None:
    leases = [
        lease("10.5.1.0/24", "198.51.100.11"),  # ours
        lease("10.5.2.0/24", "198.51.100.12"),
        lease("10.5.3.0/24", "198.51.100.13", "vxlan"),
        lease("10.5.4.0/24", "198.51.100.14", "host-gw"),
        lease("10.6.0.0/24", "198.51.100.15"),  # outside the Network
        lease("10.5.5.0/24", "127.0.0.1"),  # unusable public IP
    ]
    table, rejected = plan_table(leases, CTX, 24, 8285)
    assert table.exact == {int(V4("10.5.2.0")) >> 8: ("198.51.100.12", 8285)}
    reasons = {str(le.subnet): r for le, r in rejected}
    assert set(reasons) == {"10.5.1.0/24", "10.5.3.0/24", "10.5.4.0/24", "10.6.0.0/24",
                            "10.5.5.0/24"}  # fmt: skip
    assert reasons["10.5.1.0/24"].benign
    assert "BackendType 'vxlan'" in reasons["10.5.3.0/24"].reason
    assert not reasons["10.5.4.0/24"].benign


def test_plan_table_newest_duplicate_wins() -> None:
    dual = Lease(
        N4("10.5.2.0/24"),
        LeaseAttrs(public_ip=V4("198.51.100.22")),
        ipv6_subnet=ipaddress.IPv6Network("2001:db8:1::/64"),
        mod_revision=9,
    )
    table, _ = plan_table([dual, lease("10.5.2.0/24", "198.51.100.12", rev=3)], CTX, 24, 1)
    assert table.lookup(int(V4("10.5.2.1"))) == ("198.51.100.22", 1)


# --- the forwarding loops -----------------------------------------------------------------------

OWN = "10.5.1.0"


class FakeTun:
    """The kernel's end of the fake TUN: speaks virtio-net headers like a TUN with
    IFF_VNET_HDR."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, packet: bytes | bytearray, hdr: bytes = bytes(VNET_HDR_LEN)) -> None:
        self.sock.send(hdr + bytes(packet))

    def recv_raw(self) -> tuple[tuple[int, ...], bytes]:
        data = self.sock.recv(70000)
        return VNET_HDR.unpack_from(data), data[VNET_HDR_LEN:]

    def recv(self, _size: int = 0) -> bytes:
        hdr, pkt = self.recv_raw()
        assert hdr == (0, 0, 0, 0, 0, 0), f"unexpected virtio header {hdr}"
        return pkt

    def settimeout(self, t: float) -> None:
        self.sock.settimeout(t)

    def close(self) -> None:
        self.sock.close()


class Rig:
    """A forwarder between a fake TUN (datagram socket pair) and 127.0.0.1 UDP sockets."""

    def __init__(self, mode: Mode, **opts: bool) -> None:
        kernel_end, tun_ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.tun_kernel = FakeTun(kernel_end)
        self.tun_fd = os.dup(tun_ours.fileno())
        tun_ours.close()
        os.set_blocking(self.tun_fd, False)
        self.tun_kernel.settimeout(2.0)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.settimeout(2.0)
        table = PeerTable.build([(N4("10.5.2.0/24"), self.peer.getsockname())], 24)
        self.fwd = Forwarder(
            self.tun_fd,
            self.sock,
            icmp_src=int(V4(OWN)),
            own_net=int(V4(OWN)),
            own_len=24,
            table=table,
            mode=mode,
            **opts,
        )
        self.fwd.start()

    def close(self) -> None:
        self.fwd.stop()
        os.close(self.tun_fd)
        for s in (self.tun_kernel, self.sock, self.peer):
            s.close()

    def from_peer(self, pkt: bytes | bytearray) -> None:
        self.peer.sendto(pkt, self.sock.getsockname())

    def wait_stats(self, **want: int) -> None:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            got = self.fwd.stats.as_dict()
            if all(got[k] >= v for k, v in want.items()):
                return
            time.sleep(0.01)
        raise AssertionError(f"stats {self.fwd.stats} never reached {want}")


@pytest.fixture(params=["single", "split"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(request.param)
    try:
        yield r
    finally:
        r.close()


def test_outbound_goes_to_peer_with_ttl_decremented(rig: Rig) -> None:
    pkt = ip_packet("10.5.1.2", "10.5.2.7", ttl=64)
    rig.tun_kernel.send(pkt)
    data, src = rig.peer.recvfrom(65536)
    assert src == rig.sock.getsockname()
    assert data == ip_packet("10.5.1.2", "10.5.2.7", ttl=63)  # raw IPv4, no extra header
    rig.wait_stats(tx_packets=1, tx_bytes=len(pkt))


def test_outbound_no_route_answers_net_unreachable(rig: Rig) -> None:
    ping = echo_request("10.5.1.2", "10.5.7.7")
    rig.tun_kernel.send(ping)
    got = parse_icmp(rig.tun_kernel.recv(65536))
    assert (got["type"], got["code"], got["src"], got["dst"]) == (3, 0, OWN, "10.5.1.2")
    assert got["quoted"] == bytes(ping[:28])
    rig.wait_stats(no_route=1, icmp_sent=1)


def test_outbound_ttl_expiry_answers_time_exceeded(rig: Rig) -> None:
    rig.tun_kernel.send(ip_packet("10.5.1.2", "10.5.2.7", ttl=1))
    got = parse_icmp(rig.tun_kernel.recv(65536))
    assert (got["type"], got["code"], got["dst"]) == (11, 0, "10.5.1.2")
    rig.wait_stats(ttl_expired=1)


def test_inbound_for_us_is_written_to_tun(rig: Rig) -> None:
    big = b"x" * 9000  # larger than any MTU: still forwarded whole
    for payload in (b"small", big):
        rig.from_peer(ip_packet("10.5.2.7", "10.5.1.2", ttl=10, payload=payload))
        assert rig.tun_kernel.recv(65536) == ip_packet("10.5.2.7", "10.5.1.2", ttl=9,
                                                       payload=payload)  # fmt: skip
    rig.wait_stats(rx_packets=2)


def test_inbound_not_ours_and_garbage_are_dropped(rig: Rig) -> None:
    rig.from_peer(ip_packet("10.5.2.7", "8.8.8.8"))  # would make us a relay
    rig.from_peer(b"\x60" + bytes(59))  # IPv6
    rig.from_peer(b"short")
    rig.from_peer(ip_packet("10.5.2.7", "10.5.1.9", payload=b"marker"))
    assert rig.tun_kernel.recv(65536)[-6:] == b"marker"  # only the last one came through
    rig.wait_stats(not_ours=1, malformed=2, rx_packets=1)


def test_inbound_ttl_expiry_goes_back_to_the_sender(rig: Rig) -> None:
    rig.from_peer(ip_packet("10.5.2.7", "10.5.1.2", ttl=1))
    data = rig.peer.recv(65536)
    got = parse_icmp(data)
    assert (got["type"], got["src"], got["dst"]) == (11, OWN, "10.5.2.7")


def test_table_swap_while_running(rig: Rig) -> None:
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(2.0)
    try:
        rig.fwd.set_table(PeerTable.build([(N4("10.5.2.0/24"), other.getsockname())], 24))
        rig.tun_kernel.send(ip_packet("10.5.1.2", "10.5.2.7"))
        assert other.recv(65536)[16:20] == V4("10.5.2.7").packed
        rig.fwd.set_table(PeerTable.build([], 24))
        # A burst in progress keeps the table it started with; let it end.
        time.sleep(0.05)
        rig.tun_kernel.send(echo_request("10.5.1.2", "10.5.2.7"))
        assert parse_icmp(rig.tun_kernel.recv(65536))["type"] == 3
    finally:
        other.close()


def test_many_packets_both_ways(rig: Rig) -> None:
    # The fake TUN (an AF_UNIX pair) queues only a few datagrams, so go in small steps.
    out: set[int] = set()
    inn: set[int] = set()
    count, step = 400, 5
    for base in range(0, count, step):
        for i in range(base, base + step):
            rig.tun_kernel.send(ip_packet("10.5.1.2", "10.5.2.7", ident=i))
            rig.from_peer(ip_packet("10.5.2.7", "10.5.1.2", ident=i))
        for _ in range(step):
            out.add(struct.unpack_from("!H", rig.peer.recv(65536), 4)[0])
            inn.add(struct.unpack_from("!H", rig.tun_kernel.recv(65536), 4)[0])
    assert out == inn == set(range(count))
    rig.wait_stats(tx_packets=count, rx_packets=count)


def test_stop_is_prompt_and_idempotent() -> None:
    r = Rig("single")
    try:
        assert r.fwd.alive
        t0 = time.monotonic()
        r.fwd.stop()
        assert time.monotonic() - t0 < 1.0
        assert not r.fwd.alive and r.fwd.error is None
        r.fwd.stop()
    finally:
        r.close()


# --- TCP segments, partial checksums, GSO/GRO ---------------------------------------------------

UDP_SEGMENT = 103


def tcp_packet(
    seq: int,
    payload: bytes,
    *,
    flags: int = 0x10,
    src: str = "10.5.2.7",
    dst: str = "10.5.1.2",
    sport: int = 40000,
    dport: int = 5201,
    ack: int = 777,
    ttl: int = 64,
    ident: int = 100,
    options: bytes = b"\x01\x01\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x02",  # NOP NOP TS
) -> bytearray:
    """A valid IPv4/TCP packet (both checksums right)."""
    thl = 20 + len(options)
    tcp = bytearray(
        struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (thl // 4) << 4, flags, 501, 0, 0)
        + options
        + payload
    )
    pseudo = V4(src).packed + V4(dst).packed + struct.pack("!BBH", 0, 6, len(tcp))
    struct.pack_into("!H", tcp, 16, naive_checksum(pseudo + bytes(tcp)))
    return ip_packet(src, dst, ttl=ttl, proto=6, payload=bytes(tcp), ident=ident, frag=0x4000)


def test_pseudo_header_sum_and_complete_checksum() -> None:
    pkt = tcp_packet(1000, b"payload bytes!")
    want = bytes(pkt)
    src, dst = ipv4_src(pkt), ipv4_dst(pkt)
    ps = pseudo_header_sum(src, dst, 6, len(pkt) - 20)
    struct.pack_into("!H", pkt, 36, ps)  # what a CHECKSUM_PARTIAL packet carries
    complete_checksum(pkt, 20, 16)
    assert bytes(pkt) == want


def test_tcp_segments_cuts_like_the_kernel() -> None:
    mss = 100
    payloads = [bytes([i]) * mss for i in range(3)] + [b"tail"]
    segs = [
        tcp_packet(5000 + i * mss, p, ident=7 + i, flags=0x18 if i == 3 else 0x10)
        for i, p in enumerate(payloads)
    ]
    # the super-packet: first header, all payloads, PSH from the last segment
    sup = bytearray(segs[0][:52] + b"".join(payloads))
    sup[33] |= 0x08
    assert tcp_segments(sup, mss) == [bytes(s) for s in segs]


@pytest.fixture
def gso_rig() -> Iterator[Rig]:
    r = Rig("single")
    try:
        if not r.fwd.gro:
            pytest.skip("kernel without UDP_GRO")
        yield r
    finally:
        r.close()


def send_gso(rig: Rig, packets: list[bytearray]) -> None:
    """The peer sends equal-size packets in one UDP_SEGMENT batch (as a pyflannel peer does)."""
    size = len(packets[0])
    rig.peer.sendmsg(
        [bytes(p) for p in packets],
        [(socket.IPPROTO_UDP, UDP_SEGMENT, struct.pack("=H", size))],
        0,
        rig.sock.getsockname(),
    )


def test_inbound_tcp_run_is_written_as_one_gso_packet(gso_rig: Rig) -> None:
    mss = 200
    segs = [tcp_packet(9000 + i * mss, bytes([65 + i]) * mss, ident=50 + i) for i in range(6)]
    send_gso(gso_rig, segs)
    hdr, sup = gso_rig.tun_kernel.recv_raw()
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = hdr
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (1, 1, 52, mss, 20, 16)
    assert len(sup) == 52 + 6 * mss and checksum(sup[:20]) == 0
    expected = [bytes(tcp_packet(9000 + i * mss, bytes([65 + i]) * mss, ident=50 + i, ttl=63))
                for i in range(6)]  # fmt: skip
    assert tcp_segments(sup, gso_size) == expected
    gso_rig.wait_stats(rx_packets=6)


def test_inbound_runs_break_on_flow_gap_psh_and_short(gso_rig: Rig) -> None:
    mss = 100
    seq = 1
    pkts = [
        tcp_packet(seq, b"a" * mss),
        tcp_packet(seq + mss, b"b" * mss),
        tcp_packet(seq + 5 * mss, b"c" * mss),  # gap: new run
        tcp_packet(seq + 6 * mss, b"d" * mss, sport=1),  # another flow
        tcp_packet(seq + 7 * mss, b"e" * mss, sport=1, flags=0x18),  # PSH ends its run
        ip_packet("10.5.2.7", "10.5.1.2", payload=b"u" * (mss + 32)),  # UDP, same size
    ]
    send_gso(gso_rig, pkts)
    got = []
    for _ in range(4):
        hdr, pkt = gso_rig.tun_kernel.recv_raw()
        got.append((hdr[1], hdr[3], len(pkt)))
        segs = tcp_segments(pkt, hdr[3]) if hdr[1] else [pkt]
        assert all(s[8] == 63 for s in segs)
    assert got == [(1, mss, 52 + 2 * mss), (0, 0, 152), (1, mss, 52 + 2 * mss), (0, 0, 152)]


def test_outbound_partial_checksum_is_completed(rig: Rig) -> None:
    pkt = tcp_packet(42, b"zzz", src="10.5.1.2", dst="10.5.2.7")
    want = bytearray(pkt)
    decrement_ttl(want)
    ps = pseudo_header_sum(ipv4_src(pkt), ipv4_dst(pkt), 6, len(pkt) - 20)
    struct.pack_into("!H", pkt, 36, ps)
    rig.tun_kernel.send(pkt, VNET_HDR.pack(1, 0, 0, 0, 20, 16))
    assert rig.peer.recv(65536) == want


def test_outbound_gso_read_is_refused(rig: Rig) -> None:
    pkt = tcp_packet(42, b"z" * 300, src="10.5.1.2", dst="10.5.2.7")
    rig.tun_kernel.send(pkt, VNET_HDR.pack(1, 1, 52, 100, 20, 16))
    rig.wait_stats(malformed=1)
    assert rig.fwd.stats.tx_packets == 0


def test_outbound_batch_arrives_as_separate_datagrams(rig: Rig) -> None:
    """Packets read in one burst leave in one UDP_SEGMENT send, but the wire carries one
    datagram per packet (flanneld peers read exactly that)."""
    pkts = [ip_packet("10.5.1.2", "10.5.2.7", ident=i, payload=b"p" * 300) for i in range(8)]
    pkts.append(ip_packet("10.5.1.2", "10.5.2.7", ident=99, payload=b"short"))
    for p in pkts:
        rig.tun_kernel.send(p)
    got = [rig.peer.recv(65536) for _ in pkts]
    for p in pkts:
        decrement_ttl(p)
    assert got == [bytes(p) for p in pkts]


def udp_datagram(data: bytes, *, ident: int, sport: int = 7000, ttl: int = 64) -> bytearray:
    """An IPv4/UDP packet 10.5.2.7 → 10.5.1.2 with a valid UDP checksum."""
    udp = bytearray(struct.pack("!HHHH", sport, 53, 8 + len(data), 0) + data)
    pseudo = V4("10.5.2.7").packed + V4("10.5.1.2").packed + struct.pack("!BBH", 0, 17, len(udp))
    struct.pack_into("!H", udp, 6, naive_checksum(pseudo + bytes(udp)))
    return ip_packet("10.5.2.7", "10.5.1.2", proto=17, payload=bytes(udp), ident=ident, ttl=ttl,
                     frag=0x4000)  # fmt: skip


def test_inbound_udp_flow_is_written_as_one_udp_gso_packet(gso_rig: Rig) -> None:
    if not gso_rig.fwd.coalesce_udp:
        pytest.skip("kernel before 6.2: TUN takes no GSO_UDP_L4")
    size = 300
    datas = [bytes([i]) * size for i in range(5)] + [b"last"]
    pkts = [udp_datagram(d, ident=i) for i, d in enumerate(datas[:5])]
    send_gso(gso_rig, pkts)
    hdr, sup = gso_rig.tun_kernel.recv_raw()
    assert hdr == (1, 5, 28, size, 20, 6)
    total = 20 + 8 + 5 * size
    assert struct.unpack_from("!H", sup, 2)[0] == total == len(sup)
    assert checksum(sup[:20]) == 0 and sup[8] == 63
    assert struct.unpack_from("!H", sup, 24)[0] == 8 + 5 * size
    ps = pseudo_header_sum(ipv4_src(sup), ipv4_dst(sup), 17, 8 + 5 * size)
    assert struct.unpack_from("!H", sup, 26)[0] == ps
    assert sup[28:] == b"".join(datas[:5])
    # another source port is another flow; a different size ends nothing by itself
    send_gso(gso_rig, [udp_datagram(b"x" * 50, ident=9, sport=1)])
    assert gso_rig.tun_kernel.recv() == udp_datagram(b"x" * 50, ident=9, sport=1, ttl=63)


def test_loops_patch_checksums_like_a_full_recompute(rig: Rig) -> None:
    """The inlined TTL/checksum edits of both loops, on the RFC 1624 corner values."""
    corner = {}
    for ident in range(0x10000):
        hc = struct.unpack_from("!H", ip_packet("10.5.1.2", "10.5.2.7", ident=ident), 10)[0]
        if hc in (0xFEFF, 0xFF00, 0xFFFF, 0x0000, 0x00FF) and hc not in corner:
            corner[hc] = ident
    assert 0xFEFF in corner and 0xFF00 in corner
    for ident in corner.values():
        rig.tun_kernel.send(ip_packet("10.5.1.2", "10.5.2.7", ident=ident))
        assert rig.peer.recv(65536) == ip_packet("10.5.1.2", "10.5.2.7", ident=ident, ttl=63)
    for ident in range(0, 0x10000, 997):
        rig.from_peer(ip_packet("10.5.2.7", "10.5.1.2", ident=ident))
        assert rig.tun_kernel.recv() == ip_packet("10.5.2.7", "10.5.1.2", ident=ident, ttl=63)


def test_outbound_data_valid_flag_is_harmless(rig: Rig) -> None:
    rig.tun_kernel.send(ip_packet("10.5.1.2", "10.5.2.7"), VNET_HDR.pack(2, 0, 0, 0, 0, 0))
    assert rig.peer.recv(65536) == ip_packet("10.5.1.2", "10.5.2.7", ttl=63)
