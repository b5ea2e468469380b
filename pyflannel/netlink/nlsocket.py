"""A raw ``AF_NETLINK``/``NETLINK_ROUTE`` socket: single requests, dumps and ACK parsing.

Why not pyroute2: its message objects encode ~5,700 messages/s here, while the kernel applies
~29,000 route messages/s when they arrive in batches. This module moves bytes only; the message
bodies come from :mod:`pyflannel.netlink.encode` and the batching from
:mod:`pyflannel.netlink.executor`.

A socket belongs to the network namespace that was current for the creating *thread*, for its
whole life (see :mod:`pyflannel.netlink.nsenter`). One socket may be shared by threads: every
request/response exchange holds :attr:`NetlinkSocket.lock`.
"""

from __future__ import annotations

import errno as errno_mod
import os
import select
import socket
import threading
from collections.abc import Iterator

from pyflannel.closing import Closing
from pyflannel.errors import NetlinkError
from pyflannel.netlink import consts as c
from pyflannel.netlink.consts import I32, NLMSGHDR, RTATTR, U32

__all__ = [
    "DumpItem",
    "KernelRefused",
    "NetlinkSocket",
    "errno_hint",
    "iter_messages",
    "parse_attrs",
    "parse_error_payload",
]

DEFAULT_BUFSIZE = 8 << 20
_RECV_BUFSIZE = 256 << 10  # dump datagrams are at most 32 KiB; acks are tiny
_DUMP_RETRIES = 5

DumpItem = tuple[bytes, int, int, int]
"""One dumped message: (datagram, payload start, payload end, message type)."""

_HINTS: dict[int, str] = {
    errno_mod.EPERM: "run as root or with CAP_NET_ADMIN in this network namespace",
    errno_mod.EACCES: "run as root or with CAP_NET_ADMIN in this network namespace",
    errno_mod.ENODEV: "the device does not exist (any more) in this network namespace; "
    "check `ip link`, pyflanneld re-creates its own device when it is deleted",
    errno_mod.ENETUNREACH: "the gateway is not reachable through that device; "
    "a gateway outside every connected subnet needs the onlink flag",
    errno_mod.EEXIST: "an entry with the same key exists and replace was not requested",
    errno_mod.EINVAL: "the kernel rejected an attribute; see the kernel's message",
    errno_mod.EAFNOSUPPORT: "the device cannot use that address family (an IPv4 vxlan device "
    "takes only IPv4 remotes), or IPv6 is disabled in this namespace",
    errno_mod.EOPNOTSUPP: "the device type does not support this operation (FDB needs a vxlan "
    "device)",
    errno_mod.ENOBUFS: "the netlink socket buffer overflowed; the operation can be retried",
    errno_mod.EADDRNOTAVAIL: "the address is not configured on that device",
}


def errno_hint(err: int) -> str | None:
    """A short what-to-do for a kernel errno, or None when there is nothing useful to say."""
    return _HINTS.get(err)


class KernelRefused(NetlinkError):
    """The kernel answered a request with an error.

    :attr:`errno` is the positive errno, :attr:`kernel_message` the extended-ACK text when the
    kernel gave one.
    """

    def __init__(
        self, what: str, err: int, kernel_message: str | None = None, *, hint: str | None = None
    ) -> None:
        self.errno = err
        self.kernel_message = kernel_message
        name = errno_mod.errorcode.get(err, str(err))
        text = f"{what} failed: {os.strerror(err)} ({name})"
        if kernel_message:
            text += f"; kernel says: {kernel_message}"
        super().__init__(text, hint=hint if hint is not None else errno_hint(err))


def iter_messages(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield ``(type, flags, seq, payload_start, payload_end)`` for each message in a datagram."""
    off = 0
    n = len(buf)
    unpack = NLMSGHDR.unpack_from
    while off + 16 <= n:
        length, mtype, flags, seq, _pid = unpack(buf, off)
        if length < 16 or off + length > n:
            break  # truncated or corrupt; the kernel never sends this
        yield mtype, flags, seq, off + 16, off + length
        off += (length + 3) & ~3


def parse_attrs(buf: bytes, start: int, end: int) -> dict[int, bytes]:
    """Parse a run of rtattrs/nlattrs into ``{type: payload}`` (nested flag stripped)."""
    out: dict[int, bytes] = {}
    unpack = RTATTR.unpack_from
    off = start
    while off + 4 <= end:
        alen, atype = unpack(buf, off)
        if alen < 4 or off + alen > end:
            break
        out[atype & c.NLA_TYPE_MASK] = buf[off + 4 : off + alen]
        off += (alen + 3) & ~3
    return out


def parse_error_payload(buf: bytes, start: int, end: int, flags: int) -> tuple[int, str | None]:
    """Decode an ``NLMSG_ERROR`` payload into (positive errno or 0, extended-ACK message)."""
    (neg,) = I32.unpack_from(buf, start)
    err = -neg
    if err == 0 or not flags & c.NLM_F_ACK_TLVS:
        return err, None
    # struct nlmsgerr = error + the offending nlmsghdr (+ its payload unless capped), then TLVs
    (orig_len,) = U32.unpack_from(buf, start + 4)
    tlv_start = start + 4 + (16 if flags & c.NLM_F_CAPPED else ((orig_len + 3) & ~3))
    attrs = parse_attrs(buf, tlv_start, end)
    raw = attrs.get(c.NLMSGERR_ATTR_MSG)
    msg = raw.rstrip(b"\0").decode("utf-8", "replace") if raw else None
    return err, msg or None


def _set_buffer(sock: socket.socket, force_opt: int, opt: int, size: int) -> None:
    # The *FORCE variants ignore net.core.[rw]mem_max but need CAP_NET_ADMIN; without it fall
    # back to the capped size, which still works, only with smaller batches in flight.
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)


class NetlinkSocket(Closing):
    """An rtnetlink socket in the current thread's network namespace.

    ``groups`` is a multicast bitmask (e.g. ``RTMGRP_LINK``) for monitors; request sockets use 0.
    ``bufsize`` sets both socket buffers (``rcvbuf`` overrides the receive side).
    ``timeout`` bounds every wait for a kernel answer (the kernel always answers rtnetlink
    requests; the bound only turns a bug into an error instead of a hang).
    """

    def __init__(
        self,
        *,
        groups: int = 0,
        bufsize: int = DEFAULT_BUFSIZE,
        rcvbuf: int | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            _set_buffer(sock, c.SO_SNDBUFFORCE, socket.SO_SNDBUF, bufsize)
            _set_buffer(sock, c.SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf or bufsize)
            # Error ACKs without the echoed request (we keep the request ourselves) and with the
            # kernel's human-readable reason, which goes into NetlinkError messages.
            sock.setsockopt(c.SOL_NETLINK, c.NETLINK_CAP_ACK, 1)
            sock.setsockopt(c.SOL_NETLINK, c.NETLINK_EXT_ACK, 1)
            sock.bind((0, groups))
            sock.settimeout(timeout)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.pid: int = sock.getsockname()[0]
        # netlink_sendmsg refuses a datagram longer than sk_sndbuf - 32 with EMSGSIZE
        self.max_datagram: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 32
        self.lock = threading.Lock()
        self._next_seq = int.from_bytes(os.urandom(2), "little") + 1
        self._buf = bytearray(_RECV_BUFSIZE)
        self._view = memoryview(self._buf)

    # --- plumbing ---------------------------------------------------------------------------
    @property
    def sock(self) -> socket.socket:
        """The underlying socket (for ``select``/trio ``wait_readable``)."""
        return self._sock

    def fileno(self) -> int:
        """File descriptor of the socket."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket; further use raises."""
        self._sock.close()

    def next_seqs(self, count: int) -> int:
        """Reserve ``count`` consecutive sequence numbers and return the first (mod 2**32).

        Call with :attr:`lock` held.
        """
        first = self._next_seq
        self._next_seq = (first + count) & 0xFFFFFFFF
        return first

    def send(self, data: bytes) -> None:
        """Send one datagram (one or many concatenated messages) to the kernel."""
        self._sock.sendto(data, (0, 0))

    def recv(self) -> bytes:
        """Receive one datagram. Raises ``TimeoutError`` after the socket timeout."""
        n = self._sock.recv_into(self._buf)
        return bytes(self._view[:n])

    def recv_nowait(self) -> bytes | None:
        """Receive one datagram if one is queued, else None."""
        # With a socket timeout Python polls for readability before every recv, MSG_DONTWAIT
        # or not; so ask select() first (an error such as ENOBUFS also counts as readable).
        if self._sock.gettimeout() != 0.0 and not select.select([self._sock], [], [], 0)[0]:
            return None
        try:
            n = self._sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        return bytes(self._view[:n])

    # --- request / response -----------------------------------------------------------------
    def request(
        self, msg_type: int, flags: int, body: bytes, *, what: str
    ) -> list[tuple[int, bytes]]:
        """Send one request with ``NLM_F_ACK`` and return the kernel's reply messages.

        Returns ``[(type, payload), ...]`` of the non-ACK messages (e.g. the answer of an
        ``RTM_GETLINK`` by name). Raises :class:`KernelRefused` (its message starts with
        ``what``) when the kernel answers with an error.
        """
        with self.lock:
            seq = self.next_seqs(1)
            hdr = NLMSGHDR.pack(
                16 + len(body), msg_type, flags | c.NLM_F_REQUEST | c.NLM_F_ACK, seq, 0
            )
            self.send(hdr + body)
            replies: list[tuple[int, bytes]] = []
            while True:
                buf = self._recv_or_raise(what)
                for mtype, mflags, mseq, start, end in iter_messages(buf):
                    if mseq != seq:
                        continue  # a late answer to an earlier, abandoned request
                    if mtype == c.NLMSG_ERROR:
                        err, ext = parse_error_payload(buf, start, end, mflags)
                        if err:
                            raise KernelRefused(what, err, ext)
                        return replies
                    if mtype == c.NLMSG_DONE:
                        return replies
                    replies.append((mtype, buf[start:end]))

    def dump(self, msg_type: int, body: bytes, *, what: str) -> list[DumpItem]:
        """Run an ``NLM_F_DUMP`` request and return every answer message.

        A dump interrupted by a concurrent change (``NLM_F_DUMP_INTR``) is restarted so that the
        result is one consistent snapshot.
        """
        for _ in range(_DUMP_RETRIES):
            items, interrupted = self._dump_once(msg_type, body, what)
            if not interrupted:
                return items
        raise NetlinkError(
            f"{what} failed: the kernel table kept changing during {_DUMP_RETRIES} dumps",
            hint="something else is rewriting it in a loop; retry later",
        )

    def _dump_once(self, msg_type: int, body: bytes, what: str) -> tuple[list[DumpItem], bool]:
        with self.lock:
            seq = self.next_seqs(1)
            hdr = NLMSGHDR.pack(16 + len(body), msg_type, c.NLM_F_REQUEST | c.NLM_F_DUMP, seq, 0)
            self.send(hdr + body)
            items: list[DumpItem] = []
            interrupted = False
            while True:
                buf = self._recv_or_raise(what)
                for mtype, mflags, mseq, start, end in iter_messages(buf):
                    if mseq != seq:
                        continue
                    if mflags & c.NLM_F_DUMP_INTR:
                        interrupted = True
                    if mtype == c.NLMSG_DONE:
                        if end - start >= 4:
                            (neg,) = I32.unpack_from(buf, start)
                            if neg:
                                raise KernelRefused(what, -neg)
                        return items, interrupted
                    if mtype == c.NLMSG_ERROR:
                        err, ext = parse_error_payload(buf, start, end, mflags)
                        if err:
                            raise KernelRefused(what, err, ext)
                        return items, interrupted
                    items.append((buf, start, end, mtype))

    def _recv_or_raise(self, what: str) -> bytes:
        try:
            return self.recv()
        except TimeoutError:
            raise NetlinkError(
                f"{what} failed: no answer from the kernel within {self._sock.gettimeout()} s",
                hint="this is a bug in pyflannel or the kernel; retry, then report it",
            ) from None
