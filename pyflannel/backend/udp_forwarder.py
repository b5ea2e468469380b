"""The udp backend's data path: TUN ⇄ UDP forwarding in dedicated threads, off the trio loop.

Outbound (``tun → udp``): read one IPv4 packet from the TUN device, find the peer whose subnet
holds the destination, decrement the TTL and send the packet, unchanged otherwise, as the whole
payload of one UDP datagram to the peer's ``PublicIP:Port``. No peer: an ICMP "destination net
unreachable" goes back into the TUN. Inbound (``udp → tun``): receive one datagram, check it is
an IPv4 packet for our own subnet, decrement the TTL and write it to the TUN. This is flanneld's
``proxy_amd64.c`` wire format, so pyflannel and flanneld nodes interoperate.

Batching, none of which changes what is on the wire (one IPv4 packet per datagram):

* send: packets read in one burst that go to the same peer with the same size (the last may be
  shorter) leave in one ``sendmsg`` with ``UDP_SEGMENT`` (UDP GSO); the kernel cuts them apart.
* receive: ``UDP_GRO`` lets one ``recvmsg`` return several datagrams of one flow.
* TUN writes: consecutive TCP segments of one flow (what the kernel's GRO would merge) are
  written as one ``VIRTIO_NET_HDR_GSO_TCPV4`` packet through the TUN's virtio header, so the
  kernel forwards them to the pod as one buffer instead of one by one.

Two threading modes (``bench/udp_bench.py`` compares them, see bench/NOTES.md):

* ``"single"`` - one thread polls both file descriptors and drains each in bursts, like
  flanneld's C proxy. One GIL holder, no hand-offs between threads. The default.
* ``"split"`` - one thread per direction, each draining its own descriptor.

The hot loops are written for CPython: preallocated buffers (``readv``/``recvmsg_into``), the
header edits done in place, every attribute bound to a local, counters kept in locals and
flushed once per burst, and the peer table read once per burst (the owner swaps the reference;
a table is immutable, so a swap is atomic for the loop). The per-packet steps are those of
:func:`pyflannel.backend.udp_packet.decrement_ttl` and :meth:`PeerTable.lookup`, inlined; the
unit tests check the loops against those functions through real socket pairs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Final, Literal

import structlog

from pyflannel.backend.udp_packet import (
    ICMP_DEST_UNREACH,
    ICMP_NET_UNREACH,
    ICMP_TIME_EXCEEDED,
    ICMP_TTL_EXCEEDED,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_NONE,
    VNET_GSO_TCPV4,
    VNET_GSO_UDP_L4,
    VNET_HDR,
    VNET_HDR_LEN,
    PeerAddr,
    PeerTable,
    checksum,
    complete_checksum,
    icmp_error,
    pseudo_header_sum,
)

__all__ = ["BUFFER_SIZE", "Forwarder", "ForwarderStats", "Mode"]

log = structlog.get_logger(__name__)

Mode = Literal["single", "split"]

BUFFER_SIZE: Final = 65536  # any datagram fits; flanneld's MTU-sized buffer truncates bigger ones
BURST: Final = 64  # packets per direction before looking at the other one / the stop flag
_POLL_IN: Final = select.POLLIN
_POLL_BAD: Final = select.POLLERR | select.POLLHUP | select.POLLNVAL
_ERROR_LOG_INTERVAL: Final = 10.0


@dataclass
class ForwarderStats:
    """Counters of the data path (plain numbers; read them at any time)."""

    tx_packets: int = 0  # tun → udp, sent
    tx_bytes: int = 0
    rx_packets: int = 0  # udp → tun, written
    rx_bytes: int = 0
    no_route: int = 0  # outbound, no peer owns the destination (ICMP net unreachable)
    ttl_expired: int = 0  # either direction (ICMP time exceeded)
    icmp_sent: int = 0
    not_ours: int = 0  # inbound, destination outside our subnet (dropped)
    malformed: int = 0  # not an IPv4 packet / too short (dropped)
    send_errors: int = 0  # sendto failed (dropped)
    tun_write_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        """All counters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Forwarder:
    """Moves packets between a TUN file descriptor and a UDP socket until :meth:`stop`.

    ``tun_fd`` must be non-blocking (reads end a burst with ``EAGAIN``); ``sock`` must be a bound
    UDP socket in blocking mode (sends wait for buffer space; receives use ``MSG_DONTWAIT``).
    ``icmp_src`` is the source address of the ICMP errors we generate (see
    :func:`pyflannel.backend.udp.icmp_source`). Inbound packets whose destination is outside
    ``own_net``/``own_len`` are dropped: a stranger cannot use this node as a relay into other
    networks.
    """

    def __init__(
        self,
        tun_fd: int,
        sock: socket.socket,
        *,
        icmp_src: int,
        own_net: int,
        own_len: int,
        table: PeerTable,
        mode: Mode = "single",
        mtu: int = BUFFER_SIZE,
        gso: bool = True,
        gro: bool = True,
        coalesce: bool = True,
    ) -> None:
        self.tun_fd = tun_fd
        self.sock = sock
        self.icmp_src = icmp_src
        self.own_shift = 32 - own_len
        self.own_key = own_net >> self.own_shift
        self.table = table
        self.mode: Mode = mode
        # A TUN hands out packets of at most its MTU; the slack covers a larger MTU set later.
        self.slot_size = min(BUFFER_SIZE, max(mtu, 1500) + 512)
        self.gso = gso
        self.gro = gro and _enable_gro(sock)
        self.coalesce = coalesce
        # TUN accepts GSO_UDP_L4 packets from user space since Linux 6.2 (USO)
        self.coalesce_udp = coalesce and _kernel_at_least(6, 2)
        self.stats = ForwarderStats()
        self.error: BaseException | None = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._last_error_log = 0.0
        self._lock = threading.Lock()  # only for flushing counters from two threads

    # --- control (any thread) -------------------------------------------------------------

    def set_table(self, table: PeerTable) -> None:
        """Use ``table`` from the next burst on (an atomic reference swap)."""
        self.table = table

    def start(self) -> None:
        """Start the forwarding thread(s)."""
        if self._threads:
            raise RuntimeError("forwarder already started")
        targets: list[tuple[str, Callable[[], None]]]
        if self.mode == "single":
            targets = [("pyflannel-udp", self._run_single)]
        else:
            targets = [("pyflannel-udp-out", self._run_out), ("pyflannel-udp-in", self._run_in)]
        for name, target in targets:
            t = threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
            self._threads.append(t)
        for t in self._threads:
            t.start()

    @property
    def alive(self) -> bool:
        """True while every forwarding thread runs."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the threads to finish and wait for them; idempotent. Closes nothing it got."""
        self._stopping = True
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._stop_w, b"x")
        for t in self._threads:
            t.join(timeout)
        if any(t.is_alive() for t in self._threads):
            log.warning("udp.forwarder_stop_timeout", timeout=timeout)
            return
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # recorded for the owner, who decides what to do
            if self.error is None:
                self.error = exc
            self._stopping = True
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")  # wake the other thread

    def _log_error(self, event: str, **kw: object) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:
            self._last_error_log = now
            log.warning(event, **kw, stats=self.stats.as_dict())

    def _flush(self, counts: list[int]) -> None:
        # counts: tx_p, tx_b, rx_p, rx_b, no_route, ttl, icmp, not_ours, malformed, send_err,
        # tun_err
        with self._lock:
            s = self.stats
            s.tx_packets += counts[0]
            s.tx_bytes += counts[1]
            s.rx_packets += counts[2]
            s.rx_bytes += counts[3]
            s.no_route += counts[4]
            s.ttl_expired += counts[5]
            s.icmp_sent += counts[6]
            s.not_ours += counts[7]
            s.malformed += counts[8]
            s.send_errors += counts[9]
            s.tun_write_errors += counts[10]
        for i in range(len(counts)):
            counts[i] = 0

    # --- slow paths (rare packets) --------------------------------------------------------

    def _write_tun(self, packet: bytes | memoryview, counts: list[int]) -> bool:
        try:
            os.writev(self.tun_fd, [_ZERO_VNET, packet])
            return True
        except OSError as exc:
            counts[10] += 1
            if exc.errno in _TUN_GONE:
                raise
            self._log_error("udp.tun_write_failed", error=str(exc))
            return False

    def _icmp_to_tun(
        self, packet: memoryview, icmp_type: int, code: int, counts: list[int]
    ) -> None:
        reply = icmp_error(packet, self.icmp_src, icmp_type, code)
        if reply is not None and self._write_tun(reply, counts):
            counts[6] += 1

    def _icmp_to_peer(self, packet: memoryview, counts: list[int]) -> None:
        """Time exceeded for an inbound packet: back through the tunnel to its sender."""
        reply = icmp_error(packet, self.icmp_src, ICMP_TIME_EXCEEDED, ICMP_TTL_EXCEEDED)
        if reply is None:
            return
        src = (packet[12] << 24) | (packet[13] << 16) | (packet[14] << 8) | packet[15]
        addr = self.table.lookup(src)
        if addr is None:
            return
        try:
            self.sock.sendto(reply, addr)
            counts[6] += 1
        except OSError as exc:
            counts[9] += 1
            self._log_error("udp.send_failed", peer=addr[0], error=str(exc))

    def _unusual_vnet(self, hdr: bytearray, view: memoryview, n: int, counts: list[int]) -> bool:
        """A TUN read whose virtio header asks for work: finish a partial checksum; refuse GSO
        (never enabled on our TUN). True if the packet can be forwarded."""
        flags, gso_type, _hdr_len, _gso_size, csum_start, csum_offset = VNET_HDR.unpack(hdr)
        if gso_type != VNET_GSO_NONE:
            counts[8] += 1
            return False
        if flags & VNET_F_NEEDS_CSUM:
            if csum_start + csum_offset + 2 > n:
                counts[8] += 1
                return False
            complete_checksum(view[:n], csum_start, csum_offset)
        return True

    def _write_run(
        self,
        buf: bytearray,
        parts: list[memoryview],
        off: int,
        hl: int,
        mss: int,
        payload: int,
        psh: int,
        proto: int,
    ) -> None:
        """Write a run of coalesced packets into the TUN: alone if it is one packet, else as one
        ``GSO_TCPV4`` / ``GSO_UDP_L4`` packet.

        ``parts[0]`` is the first packet whole, the others are payloads only. The first packet's
        header becomes the super-packet's: total length and IP checksum fixed (UDP length too),
        PSH of the last TCP segment, and the L4 checksum field set to the pseudo-header sum,
        which ``NEEDS_CSUM`` tells the kernel to complete (per segment, if it segments again).
        """
        if len(parts) == 1:
            os.writev(self.tun_fd, [_ZERO_VNET, parts[0]])
            return
        l4_len = hl - 20 + payload
        total = 20 + l4_len
        buf[off + 2] = total >> 8
        buf[off + 3] = total & 0xFF
        buf[off + 10] = buf[off + 11] = 0
        ip_sum = checksum(buf[off : off + 20])
        buf[off + 10] = ip_sum >> 8
        buf[off + 11] = ip_sum & 0xFF
        ps = pseudo_header_sum(_U32_FROM(buf, off + 12)[0], _U32_FROM(buf, off + 16)[0], proto,
                               l4_len)  # fmt: skip
        if proto == 6:
            buf[off + 33] |= psh
            buf[off + 36] = ps >> 8
            buf[off + 37] = ps & 0xFF
            hdr = VNET_HDR.pack(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, hl, mss, 20, 16)
        else:
            buf[off + 24] = l4_len >> 8
            buf[off + 25] = l4_len & 0xFF
            buf[off + 26] = ps >> 8
            buf[off + 27] = ps & 0xFF
            hdr = VNET_HDR.pack(VNET_F_NEEDS_CSUM, VNET_GSO_UDP_L4, hl, mss, 20, 6)
        os.writev(self.tun_fd, [hdr, *parts])

    # --- the hot loops --------------------------------------------------------------------

    def _send_group(self, parts: list[memoryview], size: int, addr: PeerAddr) -> int:
        """Send equal-size packets (the last may be shorter) to one peer; bytes sent.

        Several packets go out in one ``sendmsg`` with ``UDP_SEGMENT``: the kernel cuts the
        payload every ``size`` bytes, so the wire carries one datagram per packet exactly as
        if each had been sent alone, but the batch crosses the stack as one buffer.
        """
        if len(parts) == 1 or not self.gso:
            total = 0
            for part in parts:
                total += self.sock.sendto(part, addr)
            return total
        cmsg = _SEGMENT_CMSG.get(size)
        if cmsg is None:
            cmsg = _SEGMENT_CMSG[size] = [(_SOL_UDP, _UDP_SEGMENT, _U16_NATIVE(size))]
        try:
            return self.sock.sendmsg(parts, cmsg, 0, addr)
        except OSError as exc:
            if exc.errno not in _GSO_UNSUPPORTED:
                raise
            # e.g. EIO: the route's device cannot checksum GSO; per packet from now on
            self.gso = False
            log.warning("udp.gso_disabled", error=str(exc), peer=addr[0])
            return self._send_group(parts, size, addr)

    def _flush_group(
        self, parts: list[memoryview], size: int, total: int, addr: PeerAddr, counts: list[int]
    ) -> None:
        """Send one group of :meth:`_out_burst` (``total`` bytes) and count it: sent packets
        and bytes, or the packets lost to a send error (logged)."""
        try:
            self._send_group(parts, size, addr)
        except OSError as exc:
            counts[9] += len(parts)
            self._log_error("udp.send_failed", peer=str(addr), error=str(exc))
            return
        counts[0] += len(parts)
        counts[1] += total

    def _out_burst(self, slots: list[_Slot], counts: list[int]) -> int:
        """Forward up to BURST packets TUN → UDP; the number read (0: the TUN is drained).

        Each packet is read into its own slot (behind its virtio header); runs of packets to
        the same peer with the same size (the last may be shorter) are sent together
        (:meth:`_send_group`).
        """
        readv = os.readv
        tun_fd = self.tun_fd
        flush = self._flush_group
        unusual = self._unusual_vnet
        unpack_hdr = _IP_HDR_FROM
        pack_ttl = _TTL_PROTO_CSUM_INTO
        table = self.table
        exact_get = table.exact.get
        shift = table.shift
        slow = bool(table.longer or table.shorter)
        lookup = table.lookup
        parts: list[memoryview] = []
        g_addr: PeerAddr | None = None
        g_size = g_total = 0
        g_open = False
        slot = 0
        done = 0
        try:
            while done < BURST:
                iov, hdr, buf, view = slots[slot]
                n = readv(tun_fd, iov) - _VNET_LEN
                done += 1
                # flags bit 1 (DATA_VALID) needs nothing; NEEDS_CSUM or a GSO type does
                if (hdr[1] or hdr[0] & 1) and not unusual(hdr, view, n, counts):
                    continue
                if n < 20:
                    counts[8] += 1
                    continue
                # one unpack and one pack per packet: fewer bytecodes than indexing each byte
                vihl, ttl, proto, csum, dst = unpack_hdr(buf, 0)
                if vihl & 0xF0 != 0x40:
                    counts[8] += 1
                    continue
                addr = lookup(dst) if slow else exact_get(dst >> shift)
                if addr is None:
                    counts[4] += 1
                    self._icmp_to_tun(view[:n], ICMP_DEST_UNREACH, ICMP_NET_UNREACH, counts)
                    continue
                if ttl <= 1:
                    counts[5] += 1
                    self._icmp_to_tun(view[:n], ICMP_TIME_EXCEEDED, ICMP_TTL_EXCEEDED, counts)
                    continue
                csum += 0x100  # RFC 1624 eqn. 3 for TTL - 1, see decrement_ttl()
                if csum >= 0xFFFF:
                    csum -= 0xFFFF
                pack_ttl(buf, 8, ttl - 1, proto, csum)
                slot += 1
                if addr is g_addr and g_open and n <= g_size and g_total + n <= _GSO_MAX_BYTES:
                    parts.append(view[:n])
                    g_total += n
                    g_open = n == g_size and len(parts) < _GSO_MAX_SEGMENTS
                    continue
                if parts:
                    flush(parts, g_size, g_total, g_addr, counts)  # type: ignore[arg-type]
                parts = [view[:n]]
                g_addr = addr
                g_size = g_total = n
                g_open = True
        except BlockingIOError:
            pass  # drained
        finally:
            if parts:
                flush(parts, g_size, g_total, g_addr, counts)  # type: ignore[arg-type]
        return done

    def _in_burst(
        self, iov: list[memoryview], buf: bytearray, view: memoryview, counts: list[int]
    ) -> int:
        """Forward up to BURST receives UDP → TUN; the number received (0: drained).

        With ``UDP_GRO`` one receive may hold several datagrams of ``gso_size`` bytes each (the
        last may be shorter), back to back; each is one IPv4 packet. Consecutive TCP segments
        of one flow among them are written to the TUN as one GSO packet (what GRO does in the
        kernel), so the kernel forwards them to the pod as one buffer.
        """
        recvmsg_into = self.sock.recvmsg_into
        writev = os.writev
        write_run = self._write_run
        tun_fd = self.tun_fd
        unpack_u32 = _U32_FROM
        own_shift = self.own_shift
        own_key = self.own_key
        dontwait = socket.MSG_DONTWAIT
        ancsize = _GRO_ANCSIZE if self.gro else 0
        coalesce = self.coalesce
        coalesce_udp = self.coalesce_udp
        zero = _ZERO_VNET
        rx_p = rx_b = 0
        done = 0
        # the pending super-packet: parts, first packet's offset, header length, MSS,
        # payload bytes, next sequence number, PSH seen
        parts: list[memoryview] | None = None
        s_off = s_hl = s_mss = s_payload = s_next = 0
        s_addrs = s_ports = s_ack = s_tos = s_frag = s_ttl = s_proto = -1
        s_opts: object = None
        unpack_tcp = _TCP_FIELDS_FROM
        unpack_opts12 = _OPTS12_FROM
        try:
            while done < BURST:
                total, anc, _flags, _addr = recvmsg_into(iov, ancsize, dontwait)
                done += 1
                seg = total
                if anc:
                    for level, kind, data in anc:
                        if level == _SOL_UDP and kind == _UDP_GRO:
                            seg = _I32_NATIVE_FROM(data)[0]
                off = 0
                while off < total:
                    end = off + seg
                    if end > total:
                        end = total
                    n = end - off
                    if n < 20 or buf[off] & 0xF0 != 0x40:
                        counts[8] += 1
                        off = end
                        continue
                    if unpack_u32(buf, off + 16)[0] >> own_shift != own_key:
                        counts[7] += 1
                        off = end
                        continue
                    ttl = buf[off + 8]
                    if ttl <= 1:
                        counts[5] += 1
                        self._icmp_to_peer(view[off:end], counts)
                        off = end
                        continue
                    buf[off + 8] = ttl - 1
                    csum = ((buf[off + 10] << 8) | buf[off + 11]) + 0x100
                    if csum >= 0xFFFF:
                        csum -= 0xFFFF
                    buf[off + 10] = csum >> 8
                    buf[off + 11] = csum & 0xFF
                    rx_p += 1
                    rx_b += n
                    # A TCP segment or UDP datagram that GRO could merge: no IP options, not a
                    # fragment, total length = datagram. TCP: flags ACK or ACK|PSH, some payload.
                    # It joins the pending run if all but the sequence number and payload match.
                    if coalesce and n > 40 and buf[off] == 0x45:
                        tos, tot, frag, ttl, proto, addrs, ports, seq, ack, doff, flags = (
                            unpack_tcp(buf, off)
                        )
                        if proto == 6:
                            hl = 20 + ((doff >> 4) << 2)
                            plen = n - hl
                            ok = flags & 0xF7 == 0x10 and not frag & 0x3FFF and tot == n
                            ok = ok and plen > 0
                        elif proto == 17 and coalesce_udp:
                            hl = 28
                            plen = n - 28
                            ok = not frag & 0x3FFF and tot == n and seq >> 16 == plen + 8
                            ack = flags = 0
                        else:
                            ok = False
                        if ok:
                            if hl == 52:  # TCP with the usual options: NOP NOP timestamps
                                opts: object = unpack_opts12(buf, off + 40)
                            elif hl <= 40:
                                opts = None
                            else:
                                opts = bytes(view[off + 40 : off + hl])
                            if (
                                parts is not None
                                and ports == s_ports
                                and addrs == s_addrs
                                and proto == s_proto
                                and (proto == 17 or seq == s_next)
                                and ack == s_ack
                                and opts == s_opts
                                and plen <= s_mss
                                and s_payload + plen <= _GSO_MAX_BYTES
                                and hl == s_hl
                                and tos == s_tos
                                and frag == s_frag
                                and ttl == s_ttl
                            ):
                                parts.append(view[off + hl : end])
                                s_payload += plen
                                s_next = (s_next + plen) & 0xFFFFFFFF
                                if plen < s_mss or flags & 0x08:  # short or PSH: run ends
                                    write_run(buf, parts, s_off, hl, s_mss, s_payload,
                                              flags & 8, proto)  # fmt: skip
                                    parts = None
                                off = end
                                continue
                            if parts is not None:
                                write_run(buf, parts, s_off, s_hl, s_mss, s_payload, 0, s_proto)
                            if flags & 0x08:
                                parts = None
                                writev(tun_fd, [zero, view[off:end]])
                            else:
                                parts = [view[off:end]]
                                s_off, s_hl, s_mss, s_payload, s_proto = off, hl, plen, plen, proto
                                s_next = (seq + plen) & 0xFFFFFFFF
                                s_addrs, s_ports, s_ack, s_opts = addrs, ports, ack, opts
                                s_tos, s_frag, s_ttl = tos, frag, ttl
                            off = end
                            continue
                    if parts is not None:
                        write_run(buf, parts, s_off, s_hl, s_mss, s_payload, 0, s_proto)
                        parts = None
                    writev(tun_fd, [zero, view[off:end]])
                    off = end
                if parts is not None:
                    write_run(buf, parts, s_off, s_hl, s_mss, s_payload, 0, s_proto)
                    parts = None
        except BlockingIOError:
            pass  # drained
        except OSError as exc:
            counts[10] += 1
            if exc.errno in _TUN_GONE:
                raise
            self._log_error("udp.tun_write_failed", error=str(exc))
        finally:
            counts[2] += rx_p
            counts[3] += rx_b
        return done

    def _poller(self, *fds: int) -> select.poll:
        p = select.poll()
        for fd in fds:
            p.register(fd, _POLL_IN)
        p.register(self._stop_r, _POLL_IN)
        return p

    def _check_events(self, events: list[tuple[int, int]]) -> None:
        for fd, ev in events:
            if fd == self.tun_fd and ev & _POLL_BAD:
                # The TUN device was deleted under us (poll reports POLLERR): the owner
                # re-creates it.
                raise OSError(errno.EBADFD, "the TUN device is gone")

    def _out_slots(self) -> list[_Slot]:
        slots = []
        for _ in range(BURST):
            hdr = bytearray(_VNET_LEN)
            buf = bytearray(self.slot_size)
            view = memoryview(buf)
            slots.append(([memoryview(hdr), view], hdr, buf, view))
        return slots

    def _in_buffers(self) -> tuple[list[memoryview], bytearray, memoryview]:
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        return [view], buf, view

    def _run_single(self) -> None:
        slots = self._out_slots()
        iov, in_buf, in_view = self._in_buffers()
        counts = [0] * 11
        poll = self._poller(self.tun_fd, self.sock.fileno()).poll
        out_burst = self._out_burst
        in_burst = self._in_burst
        while not self._stopping:
            self._check_events(poll())
            # Drain both directions until both are empty, then sleep in poll() again.
            while not self._stopping:
                moved = out_burst(slots, counts)
                moved += in_burst(iov, in_buf, in_view, counts)
                self._flush(counts)
                if not moved:
                    break

    def _run_out(self) -> None:
        slots = self._out_slots()
        counts = [0] * 11
        poll = self._poller(self.tun_fd).poll
        burst = self._out_burst
        while not self._stopping:
            self._check_events(poll())
            while not self._stopping and burst(slots, counts):
                self._flush(counts)
            self._flush(counts)

    def _run_in(self) -> None:
        iov, buf, view = self._in_buffers()
        counts = [0] * 11
        poll = self._poller(self.sock.fileno()).poll
        burst = self._in_burst
        while not self._stopping:
            poll()
            while not self._stopping and burst(iov, buf, view, counts):
                self._flush(counts)
            self._flush(counts)


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = os.uname().release.split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
    except OSError as exc:  # kernel < 5.0
        log.info("udp.gro_unavailable", error=str(exc))
        return False
    return True


_U32_FROM: Final = struct.Struct("!I").unpack_from
# IPv4 header: version/IHL, TTL, protocol, checksum, destination; and bytes 8-11 back.
_IP_HDR_FROM: Final = struct.Struct("!B7xBBH4xI").unpack_from
_TTL_PROTO_CSUM_INTO: Final = struct.Struct("!BBH").pack_into
# IPv4 (no options) + TCP header fields at a packet's start: TOS, total length, fragment
# field, TTL, protocol, src+dst, ports, seq, ack, data offset, flags.
_TCP_FIELDS_FROM: Final = struct.Struct("!xBHxxHBBxxQIIIBB").unpack_from
_OPTS12_FROM: Final = struct.Struct("!QI").unpack_from
_U16_NATIVE: Final = struct.Struct("=H").pack
_I32_NATIVE_FROM: Final = struct.Struct("=i").unpack_from
_SOL_UDP: Final = socket.IPPROTO_UDP
_UDP_SEGMENT: Final = 103  # linux/udp.h: GSO segment size for sendmsg
_UDP_GRO: Final = 104  # linux/udp.h: receive coalesced datagrams, gso_size in a cmsg
_GRO_ANCSIZE: Final = socket.CMSG_SPACE(4)
_GSO_MAX_SEGMENTS: Final = 64  # UDP_MAX_SEGMENTS of older kernels
_GSO_MAX_BYTES: Final = 65000  # below 65535 - IPv4 - UDP headers
_GSO_UNSUPPORTED: Final = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
_VNET_LEN: Final = VNET_HDR_LEN
_ZERO_VNET: Final = bytes(VNET_HDR_LEN)
# one read slot: (readv iovec: virtio header + packet, header, packet buffer, its memoryview)
_Slot = tuple[list[memoryview], bytearray, bytearray, memoryview]
_SEGMENT_CMSG: dict[int, list[tuple[int, int, bytes]]] = {}
# A TUN fd whose device was deleted answers EBADFD (tun_chr_read_iter / tun_get_user).
_TUN_GONE: Final = frozenset({errno.EBADFD, errno.EBADF, errno.ENODEV})
