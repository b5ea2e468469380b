"""Generic-netlink messages of the kernel ``wireguard`` family (``include/uapi/linux/wireguard.h``)
and a small client for them: the kernel path of the device (``ip link add … type wireguard``).

The same :class:`~pyflannel.backend.wireguard.uapi.SetDevice` / ``DeviceState`` values as the
userspace path go in and come out, so the planner does not know which path runs. The encoders
and the decoder are pure and unit-tested; the client needs the kernel module.

Limit: one ``WG_CMD_SET_DEVICE`` message carries all peers of a request; a request larger than
the socket buffer (thousands of peers) would need splitting, which we leave to the caller
(the planner sends one peer per message when a batch is refused).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from typing import Final

from pyflannel.backend.wireguard.uapi import (
    DeviceState,
    PeerState,
    SetDevice,
    UapiError,
    request_socket,
)
from pyflannel.netlink import consts as nlc
from pyflannel.netlink.encode import attr, encode_message, nested
from pyflannel.netlink.nlsocket import iter_messages, parse_attrs, parse_error_payload
from pyflannel.netlink.ops import IPNetwork

__all__ = [
    "GENL_ID_CTRL",
    "WG_CMD_GET_DEVICE",
    "WG_CMD_SET_DEVICE",
    "GenlWireguard",
    "encode_get_device",
    "encode_get_family",
    "encode_set_device",
    "parse_device_messages",
    "parse_family_id",
]

NETLINK_GENERIC: Final = 16
GENL_ID_CTRL: Final = 0x10
CTRL_CMD_GETFAMILY: Final = 3
CTRL_ATTR_FAMILY_ID: Final = 1
CTRL_ATTR_FAMILY_NAME: Final = 2
WG_GENL_NAME: Final = "wireguard"
WG_GENL_VERSION: Final = 1
WG_CMD_GET_DEVICE: Final = 0
WG_CMD_SET_DEVICE: Final = 1

WGDEVICE_A_IFINDEX: Final = 1
WGDEVICE_A_IFNAME: Final = 2
WGDEVICE_A_PRIVATE_KEY: Final = 3
WGDEVICE_A_PUBLIC_KEY: Final = 4
WGDEVICE_A_FLAGS: Final = 5
WGDEVICE_A_LISTEN_PORT: Final = 6
WGDEVICE_A_FWMARK: Final = 7
WGDEVICE_A_PEERS: Final = 8
WGDEVICE_F_REPLACE_PEERS: Final = 1

WGPEER_A_PUBLIC_KEY: Final = 1
WGPEER_A_PRESHARED_KEY: Final = 2
WGPEER_A_FLAGS: Final = 3
WGPEER_A_ENDPOINT: Final = 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: Final = 5
WGPEER_A_LAST_HANDSHAKE_TIME: Final = 6
WGPEER_A_RX_BYTES: Final = 7
WGPEER_A_TX_BYTES: Final = 8
WGPEER_A_ALLOWEDIPS: Final = 9
WGPEER_F_REMOVE_ME: Final = 1
WGPEER_F_REPLACE_ALLOWEDIPS: Final = 2

WGALLOWEDIP_A_FAMILY: Final = 1
WGALLOWEDIP_A_IPADDR: Final = 2
WGALLOWEDIP_A_CIDR_MASK: Final = 3

_GENLHDR: Final = struct.Struct("=BBH")


def _genl(cmd: int, version: int = WG_GENL_VERSION) -> bytes:
    return _GENLHDR.pack(cmd, version, 0)


def encode_get_family(seq: int, name: str = WG_GENL_NAME) -> bytes:
    """``CTRL_CMD_GETFAMILY`` for ``name``: the kernel answers with the family id."""
    body = _genl(CTRL_CMD_GETFAMILY, 1) + attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    return encode_message(GENL_ID_CTRL, nlc.NLM_F_REQUEST | nlc.NLM_F_ACK, seq, body)


def parse_family_id(payload: bytes) -> int:
    """The family id in a ``CTRL_CMD_NEWFAMILY`` answer (payload after the nlmsghdr)."""
    attrs = parse_attrs(payload, _GENLHDR.size, len(payload))
    raw = attrs.get(CTRL_ATTR_FAMILY_ID)
    if raw is None or len(raw) < 2:
        raise ValueError("family answer has no CTRL_ATTR_FAMILY_ID")
    return int(struct.unpack_from("=H", raw)[0])


def _sockaddr(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bytes:
    if ip.version == 4:
        return struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) + ip.packed + bytes(8)
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack(">H", port)
        + bytes(4)
        + ip.packed
        + bytes(4)
    )


def _allowed_ip(net: IPNetwork) -> bytes:
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    return nested(
        0,
        attr(WGALLOWEDIP_A_FAMILY, struct.pack("=H", family)),
        attr(WGALLOWEDIP_A_IPADDR, net.network_address.packed),
        attr(WGALLOWEDIP_A_CIDR_MASK, struct.pack("=B", net.prefixlen)),
    )


def encode_set_device(family_id: int, seq: int, ifname: str, req: SetDevice) -> bytes:
    """``WG_CMD_SET_DEVICE`` for ``req`` on the device ``ifname``, as one message."""
    parts = [attr(WGDEVICE_A_IFNAME, ifname.encode() + b"\0")]
    if req.private_key is not None:
        parts.append(attr(WGDEVICE_A_PRIVATE_KEY, req.private_key))
    if req.listen_port is not None:
        parts.append(attr(WGDEVICE_A_LISTEN_PORT, struct.pack("=H", req.listen_port)))
    if req.replace_peers:
        parts.append(attr(WGDEVICE_A_FLAGS, struct.pack("=I", WGDEVICE_F_REPLACE_PEERS)))
    peers: list[bytes] = []
    for p in req.peers:
        pa = [attr(WGPEER_A_PUBLIC_KEY, p.public_key)]
        if p.remove:
            pa.append(attr(WGPEER_A_FLAGS, struct.pack("=I", WGPEER_F_REMOVE_ME)))
        else:
            pa.append(attr(WGPEER_A_FLAGS, struct.pack("=I", WGPEER_F_REPLACE_ALLOWEDIPS)))
            pa.append(attr(WGPEER_A_PRESHARED_KEY, p.preshared_key or bytes(32)))
            if p.endpoint is not None:
                pa.append(attr(WGPEER_A_ENDPOINT, _sockaddr(*p.endpoint)))
            pa.append(attr(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, struct.pack("=H", p.keepalive)))
            pa.append(nested(WGPEER_A_ALLOWEDIPS, *(_allowed_ip(n) for n in p.allowed_ips)))
        peers.append(nested(0, *pa))
    if peers or req.replace_peers:
        parts.append(nested(WGDEVICE_A_PEERS, *peers))
    body = _genl(WG_CMD_SET_DEVICE) + b"".join(parts)
    return encode_message(family_id, nlc.NLM_F_REQUEST | nlc.NLM_F_ACK, seq, body)


def encode_get_device(family_id: int, seq: int, ifname: str) -> bytes:
    """``WG_CMD_GET_DEVICE`` (a dump: big devices answer in several messages)."""
    body = _genl(WG_CMD_GET_DEVICE) + attr(WGDEVICE_A_IFNAME, ifname.encode() + b"\0")
    return encode_message(family_id, nlc.NLM_F_REQUEST | nlc.NLM_F_ACK | nlc.NLM_F_DUMP, seq, body)


def _attr_list(buf: bytes) -> Iterable[tuple[int, bytes]]:
    off = 0
    while off + 4 <= len(buf):
        length, atype = struct.unpack_from("=HH", buf, off)
        if length < 4:
            break
        yield atype & nlc.NLA_TYPE_MASK, buf[off + 4 : off + length]
        off += (length + 3) & ~3


def _parse_sockaddr(raw: bytes) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from(">H", raw, 2)[0]
    if family == socket.AF_INET:
        return ipaddress.IPv4Address(raw[4:8]), port
    return ipaddress.IPv6Address(raw[8:24]), port


def _parse_peer(raw: bytes) -> PeerState:
    a = dict(_attr_list(raw))
    nets: list[IPNetwork] = []
    for _, aip in _attr_list(a.get(WGPEER_A_ALLOWEDIPS, b"")):
        f = dict(_attr_list(aip))
        addr = f[WGALLOWEDIP_A_IPADDR]
        mask = f[WGALLOWEDIP_A_CIDR_MASK][0]
        nets.append(ipaddress.ip_network((ipaddress.ip_address(addr), mask), strict=False))
    hs = a.get(WGPEER_A_LAST_HANDSHAKE_TIME)
    last = 0.0
    if hs is not None and len(hs) >= 16:
        sec, nsec = struct.unpack_from("=qq", hs)
        last = sec + nsec / 1e9
    ep = a.get(WGPEER_A_ENDPOINT)
    return PeerState(
        public_key=a[WGPEER_A_PUBLIC_KEY],
        preshared_key=a.get(WGPEER_A_PRESHARED_KEY, bytes(32)),
        endpoint=_parse_sockaddr(ep) if ep else None,
        keepalive=struct.unpack("=H", a[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL])[0]
        if WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL in a
        else 0,
        allowed_ips=tuple(nets),
        last_handshake=last,
        rx_bytes=struct.unpack("=Q", a[WGPEER_A_RX_BYTES])[0] if WGPEER_A_RX_BYTES in a else 0,
        tx_bytes=struct.unpack("=Q", a[WGPEER_A_TX_BYTES])[0] if WGPEER_A_TX_BYTES in a else 0,
    )


def parse_device_messages(payloads: Iterable[bytes]) -> DeviceState:
    """Merge the messages of a ``WG_CMD_GET_DEVICE`` dump into one DeviceState.

    The kernel splits a big peer (or peer list) across messages; a peer whose key repeats the
    previous one continues it (its allowed IPs are appended).
    """
    private: bytes | None = None
    port = 0
    fwmark = 0
    peers: list[PeerState] = []
    for payload in payloads:
        a = dict(_attr_list(payload[_GENLHDR.size :]))
        if WGDEVICE_A_PRIVATE_KEY in a:
            private = a[WGDEVICE_A_PRIVATE_KEY]
        if WGDEVICE_A_LISTEN_PORT in a:
            port = struct.unpack("=H", a[WGDEVICE_A_LISTEN_PORT])[0]
        if WGDEVICE_A_FWMARK in a:
            fwmark = struct.unpack("=I", a[WGDEVICE_A_FWMARK])[0]
        for _, raw in _attr_list(a.get(WGDEVICE_A_PEERS, b"")):
            peer = _parse_peer(raw)
            if peers and peers[-1].public_key == peer.public_key:
                prev = peers[-1]
                peers[-1] = PeerState(
                    **{
                        **{s: getattr(prev, s) for s in PeerState.__slots__},
                        "allowed_ips": prev.allowed_ips + peer.allowed_ips,
                    }
                )
            else:
                peers.append(peer)
    return DeviceState(private_key=private, listen_port=port, fwmark=fwmark, peers=tuple(peers))


class GenlWireguard:
    """The kernel device ``ifname`` over a generic-netlink socket of the calling thread's
    network namespace (one request at a time)."""

    def __init__(self, ifname: str) -> None:
        self.device = ifname
        self._seq = int.from_bytes(os.urandom(2), "little") + 1
        self._family: int | None = None

    def request(self, msg: bytes, seq: int) -> list[bytes]:
        """Send one generic netlink message (sequence ``seq``); the answer payloads."""
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC
        )
        sock.settimeout(10.0)
        with request_socket(sock, f"generic netlink request for {self.device}"):
            sock.bind((0, 0))
            sock.send(msg)
            out: list[bytes] = []
            while True:
                buf = sock.recv(1 << 20)
                for mtype, mflags, mseq, start, end in iter_messages(buf):
                    if mseq != seq:
                        continue
                    if mtype == nlc.NLMSG_ERROR:
                        err, ext = parse_error_payload(buf, start, end, mflags)
                        if err:
                            raise UapiError(
                                f"kernel refused a wireguard request for {self.device}: "
                                f"{os.strerror(err)}{f' ({ext})' if ext else ''}",
                                errno=err,
                            )
                        return out
                    if mtype == nlc.NLMSG_DONE:
                        return out
                    out.append(buf[start:end])

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def family(self) -> int:
        """The ``wireguard`` family id (resolved once)."""
        if self._family is None:
            seq = self._next()
            answers = self.request(encode_get_family(seq), seq)
            if not answers:
                raise UapiError("the kernel has no wireguard generic netlink family")
            try:
                self._family = parse_family_id(answers[0])
            except (ValueError, struct.error) as exc:
                raise UapiError(f"bad generic netlink family answer: {exc}") from exc
        return self._family

    def get(self) -> DeviceState:
        """The device's configuration and per-peer counters."""
        seq = self._next()
        answers = self.request(encode_get_device(self.family(), seq, self.device), seq)
        try:
            return parse_device_messages(answers)
        except (ValueError, KeyError, IndexError, struct.error) as exc:
            raise UapiError(f"bad wireguard netlink answer for {self.device}: {exc!r}") from exc

    def set(self, req: SetDevice) -> None:
        """Apply ``req``."""
        seq = self._next()
        self.request(encode_set_device(self.family(), seq, self.device, req), seq)
