"""Pure packet functions of the udp backend: TTL and checksum, ICMP errors, the peer table.

The udp backend carries every overlay packet as the payload of one UDP datagram, with no
header of its own (flanneld's ``proxy_amd64.c``), so a peer only needs raw IPv4 handling:

* :func:`decrement_ttl` - the hop the forwarder adds on each side, with the header checksum
  patched incrementally (RFC 1624, eqn. 3), in place.
* :func:`icmp_error` - "destination net unreachable" when no peer owns the destination, and
  "time exceeded" when the TTL runs out (flanneld only drops those).
* :class:`PeerTable` - subnet → peer ``(ip, port)``, an immutable longest-prefix-match table
  whose common case (every lease has the Network's ``SubnetLen``) is one dict lookup.

No I/O here; the forwarder (:mod:`pyflannel.backend.udp_forwarder`) inlines the per-packet
steps of :func:`decrement_ttl` and :meth:`PeerTable.lookup` for speed, and the unit tests hold
both versions to the same results.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ICMP_DEST_UNREACH",
    "ICMP_NET_UNREACH",
    "ICMP_TIME_EXCEEDED",
    "ICMP_TTL_EXCEEDED",
    "IPV4_MIN_HEADER",
    "VNET_F_NEEDS_CSUM",
    "VNET_GSO_NONE",
    "VNET_GSO_TCPV4",
    "VNET_GSO_UDP_L4",
    "VNET_HDR",
    "VNET_HDR_LEN",
    "PeerAddr",
    "PeerTable",
    "checksum",
    "complete_checksum",
    "decrement_ttl",
    "icmp_error",
    "ipv4_dst",
    "ipv4_src",
    "pseudo_header_sum",
    "tcp_segments",
]

IPV4_MIN_HEADER: Final = 20
ICMP_DEST_UNREACH: Final = 3
ICMP_NET_UNREACH: Final = 0
ICMP_TIME_EXCEEDED: Final = 11
ICMP_TTL_EXCEEDED: Final = 0
ICMP_ERROR_TTL: Final = 8  # the TTL flanneld gives its ICMP errors
_PROTO_ICMP: Final = 1
# ICMP types that are errors themselves: no error is ever sent about them (RFC 1122 3.2.2).
_ICMP_ERROR_TYPES: Final = frozenset({3, 4, 5, 11, 12})

# struct virtio_net_hdr (linux/virtio_net.h), which a TUN opened with IFF_VNET_HDR puts in
# front of every packet, both ways; native byte order (legacy virtio on a little-endian host).
VNET_HDR: Final = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start/offset
VNET_HDR_LEN: Final = VNET_HDR.size
VNET_F_NEEDS_CSUM: Final = 1
VNET_GSO_NONE: Final = 0
VNET_GSO_TCPV4: Final = 1
VNET_GSO_UDP_L4: Final = 5
_PROTO_TCP: Final = 6

_U32: Final = struct.Struct("!I")
_U16: Final = struct.Struct("!H")

PeerAddr = tuple[str, int]
"""A peer's UDP endpoint as ``socket.sendto`` takes it: ``("198.51.100.12", 8285)``."""


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of ``data``: ones' complement of the ones' complement sum.

    Uses ``2**16 ≡ 1 (mod 0xFFFF)``: the ones' complement sum of the 16-bit words is the whole
    buffer read as one big integer, modulo 0xFFFF (with 0 standing for 0xFFFF unless the data is
    all zeros). That keeps the loop in C.
    """
    raw = bytes(data)
    if len(raw) & 1:
        raw += b"\0"
    value = int.from_bytes(raw, "big")
    if value == 0:
        return 0xFFFF
    total = value % 0xFFFF or 0xFFFF
    return (~total) & 0xFFFF


def ipv4_dst(packet: bytes | bytearray | memoryview) -> int:
    """The destination address of an IPv4 packet as an integer."""
    value: int = _U32.unpack_from(packet, 16)[0]
    return value


def ipv4_src(packet: bytes | bytearray | memoryview) -> int:
    """The source address of an IPv4 packet as an integer."""
    value: int = _U32.unpack_from(packet, 12)[0]
    return value


def decrement_ttl(packet: bytearray | memoryview) -> bool:
    """Decrement the TTL of the IPv4 header at the start of ``packet`` in place.

    Returns False (and leaves the packet untouched) when the packet must not be forwarded, i.e.
    its TTL is 0 or 1. The header checksum is patched with RFC 1624 eqn. 3,
    ``HC' = ~(~HC + ~m + m')``: the 16-bit word holding TTL and protocol drops by 0x0100, which
    makes ``HC' = HC +' 0x0100`` in ones' complement arithmetic, except that eqn. 3 never yields
    0xFFFF (a full recompute never does either), hence the ``>= 0xFFFF`` fold below.
    flanneld's version lets a TTL of 0 wrap to 255 and forwards it.
    """
    ttl = packet[8]
    if ttl <= 1:
        return False
    packet[8] = ttl - 1
    csum = ((packet[10] << 8) | packet[11]) + 0x100
    if csum >= 0xFFFF:
        csum -= 0xFFFF
    packet[10] = csum >> 8
    packet[11] = csum & 0xFF
    return True


def icmp_error(
    offender: bytes | bytearray | memoryview, src: int, icmp_type: int, code: int
) -> bytes | None:
    """An ICMP error about ``offender`` (an IPv4 packet), sent from address ``src``; or None.

    The reply carries the offender's IP header plus the first 8 bytes of its payload (RFC 792),
    TTL 8 and the offender's source as destination, as flanneld builds its net-unreachable.
    None when RFC 1122/1812 forbid a reply: the offender is malformed, not the first fragment,
    itself an ICMP error, or came from an address that is not a unicast host (0.0.0.0,
    loopback, multicast, broadcast). Unlike flanneld, ICMP *queries* (ping) do get an error, so
    ``ping`` prints "Destination Net Unreachable" instead of timing out.
    """
    n = len(offender)
    if n < IPV4_MIN_HEADER or offender[0] >> 4 != 4:
        return None
    ihl = (offender[0] & 0x0F) * 4
    if ihl < IPV4_MIN_HEADER or ihl > n:
        return None
    if ((offender[6] << 8) | offender[7]) & 0x1FFF:
        return None  # not the first fragment
    if offender[9] == _PROTO_ICMP and (ihl >= n or offender[ihl] in _ICMP_ERROR_TYPES):
        return None
    dst = ipv4_src(offender)
    if dst == 0 or dst >> 24 == 127 or dst >> 28 >= 0xE:
        return None  # 0.0.0.0, loopback, multicast, class E and broadcast
    quoted = bytes(offender[: min(n, ihl + 8)])
    icmp = bytearray(8 + len(quoted))
    icmp[0] = icmp_type
    icmp[1] = code
    icmp[8:] = quoted
    _U16.pack_into(icmp, 2, checksum(icmp))
    total = IPV4_MIN_HEADER + len(icmp)
    header = bytearray(
        struct.pack("!BBHHHBBHII", 0x45, 0, total, 0, 0, ICMP_ERROR_TTL, _PROTO_ICMP, 0, src, dst)
    )
    _U16.pack_into(header, 10, checksum(header))
    return bytes(header + icmp)


@dataclass(frozen=True, slots=True)
class PeerTable:
    """Peer subnets → UDP endpoints, longest prefix first. Immutable: swap the reference.

    ``exact`` maps ``dst >> shift`` to the endpoint of every peer whose prefix length is the
    common ``subnet_len``, so the usual lookup is a shift and a dict ``get``. Peers with another
    prefix length (flanneld accepts them) go into ``longer`` (checked first, they are more
    specific) or ``shorter`` (checked after a miss), each a tuple of
    ``(prefix_len, shift, network >> shift, endpoint)`` ordered longest first.
    """

    subnet_len: int
    shift: int
    exact: Mapping[int, PeerAddr] = field(default_factory=dict)
    longer: tuple[tuple[int, int, int, PeerAddr], ...] = ()
    shorter: tuple[tuple[int, int, int, PeerAddr], ...] = ()

    @classmethod
    def build(
        cls,
        peers: Iterable[tuple[ipaddress.IPv4Network, PeerAddr]],
        subnet_len: int,
    ) -> PeerTable:
        """A table for ``(subnet, endpoint)`` pairs; a later duplicate subnet wins."""
        if not 0 <= subnet_len <= 32:
            raise ValueError(f"subnet_len must be 0..32, got {subnet_len}")
        shift = 32 - subnet_len
        exact: dict[int, PeerAddr] = {}
        other: dict[tuple[int, int], PeerAddr] = {}
        for subnet, addr in peers:
            plen = subnet.prefixlen
            if plen == subnet_len:
                exact[int(subnet.network_address) >> shift] = addr
            else:
                other[(plen, int(subnet.network_address))] = addr
        entries = sorted(
            ((plen, 32 - plen, net >> (32 - plen), addr) for (plen, net), addr in other.items()),
            key=lambda e: -e[0],
        )
        return cls(
            subnet_len=subnet_len,
            shift=shift,
            exact=exact,
            longer=tuple(e for e in entries if e[0] > subnet_len),
            shorter=tuple(e for e in entries if e[0] < subnet_len),
        )

    def __len__(self) -> int:
        return len(self.exact) + len(self.longer) + len(self.shorter)

    def lookup(self, dst: int) -> PeerAddr | None:
        """The endpoint of the most specific peer subnet holding address ``dst``, or None."""
        for _plen, shift, key, addr in self.longer:
            if dst >> shift == key:
                return addr
        hit = self.exact.get(dst >> self.shift)
        if hit is not None:
            return hit
        return self.lookup_shorter(dst)

    def lookup_shorter(self, dst: int) -> PeerAddr | None:
        """The slow path after an ``exact`` miss: peers shorter than ``subnet_len``."""
        for _plen, shift, key, addr in self.shorter:
            if dst >> shift == key:
                return addr
        return None


def pseudo_header_sum(src: int, dst: int, proto: int, length: int) -> int:
    """The folded (not complemented) ones' complement sum of the IPv4 pseudo header."""
    total = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + length
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


def complete_checksum(packet: bytearray | memoryview, csum_start: int, csum_offset: int) -> None:
    """Finish a partial checksum in place (``VIRTIO_NET_HDR_F_NEEDS_CSUM``).

    The field at ``csum_start + csum_offset`` holds the pseudo-header sum; the checksum of
    everything from ``csum_start`` on, that field included, is the final value.
    """
    at = csum_start + csum_offset
    value = checksum(packet[csum_start:])
    # 0 would mean "no checksum" for UDP; ones' complement has two zeros, send the other one
    packet[at] = value >> 8 if value else 0xFF
    packet[at + 1] = value & 0xFF if value else 0xFF


def tcp_segments(packet: bytes | bytearray | memoryview, gso_size: int) -> list[bytes]:
    """Cut an IPv4/TCP super-packet (``VNET_GSO_TCPV4``) into packets of ``gso_size`` payload
    bytes, as the kernel's TCP segmentation does: consecutive IP IDs and sequence numbers,
    FIN/PSH only on the last segment, CWR only on the first, every checksum computed in full
    (the super-packet's TCP checksum field is ignored).
    """
    raw = bytes(packet)
    ihl = (raw[0] & 0x0F) * 4
    thl = (raw[ihl + 12] >> 4) * 4
    hl = ihl + thl
    payload = raw[hl:]
    ident = (raw[4] << 8) | raw[5]
    seq: int = _U32.unpack_from(raw, ihl + 4)[0]
    flags = raw[ihl + 13]
    src = ipv4_src(raw)
    dst = ipv4_dst(raw)
    chunks = [payload[i : i + gso_size] for i in range(0, len(payload), gso_size)] or [b""]
    out: list[bytes] = []
    for i, chunk in enumerate(chunks):
        seg = bytearray(raw[:hl] + chunk)
        _U16.pack_into(seg, 2, hl + len(chunk))
        _U16.pack_into(seg, 4, (ident + i) & 0xFFFF)
        seg[10] = seg[11] = 0
        _U16.pack_into(seg, 10, checksum(seg[:ihl]))
        _U32.pack_into(seg, ihl + 4, (seq + i * gso_size) & 0xFFFFFFFF)
        f = flags
        if i != len(chunks) - 1:
            f &= ~0x09  # FIN, PSH
        if i != 0:
            f &= ~0x80  # CWR
        seg[ihl + 13] = f
        seg[ihl + 16] = seg[ihl + 17] = 0
        _U16.pack_into(seg, ihl + 16, pseudo_header_sum(src, dst, _PROTO_TCP, thl + len(chunk)))
        complete_checksum(seg, ihl, 16)
        out.append(bytes(seg))
    return out
