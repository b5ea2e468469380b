"""Apply lists of :data:`~pyflannel.netlink.ops.Op` to the kernel, in order, in batches.

How a batch goes: up to ``batch_size`` messages are concatenated into one datagram, none of them
asking for an ACK, followed by an ``NLMSG_NOOP`` that does ask for one (a *barrier*). rtnetlink
processes the messages of a datagram one after the other, inside ``sendmsg``, and answers a
message without ``NLM_F_ACK`` only when it fails. So the answers to a batch are exactly its
failures (each carrying the failed message's sequence number, hence its op) followed by the
barrier's ACK. One ``sendmsg`` and usually one ``recvmsg`` per batch is what makes this ~10x
cheaper than one request at a time.

Every op is idempotent (replace, or delete where "already absent" counts as success), so if the
socket's receive buffer ever overflows (``ENOBUFS``: some answers were dropped) the batch is
simply applied again one op at a time with an ACK each.

Failures do not stop a batch: the remaining ops are still applied, and every failure is
returned as an :class:`OpFailure` naming its op. The caller decides what to roll back (flanneld
deletes a peer's ARP entry when its FDB entry failed, and both when its route failed).
"""

from __future__ import annotations

import dataclasses
import errno as errno_mod
import os
from collections.abc import Mapping, Sequence

from pyflannel.errors import NetlinkError
from pyflannel.netlink import consts as c
from pyflannel.netlink.encode import encode_op
from pyflannel.netlink.nlsocket import (
    NetlinkSocket,
    errno_hint,
    iter_messages,
    parse_error_payload,
)
from pyflannel.netlink.ops import Delete, NeighEntry, Op, RouteEntry

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "NetlinkExecutor",
    "OpFailure",
    "OpsFailed",
    "apply_ops",
    "apply_ops_checked",
    "describe_op",
]

DEFAULT_BATCH_SIZE = 1024
_ABSENT_OK = frozenset({errno_mod.ENOENT, errno_mod.ESRCH})


def _dev(ifindex: int, names: Mapping[int, str] | None) -> str:
    if ifindex == 0:
        return ""
    name = names.get(ifindex) if names else None
    return f" dev {name} (ifindex {ifindex})" if name else f" dev ifindex {ifindex}"


def describe_op(op: Op, names: Mapping[int, str] | None = None) -> str:
    """The op as the equivalent ``ip``/``bridge`` command line (for messages and logs)."""
    e = op.entry
    delete = isinstance(op, Delete)
    verb = "del" if delete else "replace"
    if isinstance(e, RouteEntry):
        via = f" via {e.gw}" if e.gw is not None else ""
        onlink = " onlink" if e.onlink else ""
        return f"ip route {verb} {e.dst}{via}{_dev(e.ifindex, names)}{onlink}"
    if isinstance(e, NeighEntry):
        if delete:
            return f"ip neigh del {e.ip}{_dev(e.ifindex, names)}"
        return f"ip neigh replace {e.ip} lladdr {e.mac}{_dev(e.ifindex, names)} nud permanent"
    return f"bridge fdb {verb} {e.mac}{_dev(e.ifindex, names)} dst {e.dst} self permanent"


def _ifindex_of(op: Op) -> int:
    return op.entry.ifindex


@dataclasses.dataclass(frozen=True, slots=True)
class OpFailure:
    """One op the kernel refused (or that could not be encoded)."""

    index: int
    """Position of the op in the sequence given to :func:`apply_ops`."""
    op: Op
    errno: int
    kernel_message: str | None = None
    """The kernel's extended-ACK text, or for an op that could not be encoded, why."""
    device: str | None = None
    """Name of the op's device when it could be resolved (filled in for messages)."""
    encodable: bool = True
    """False: the op never reached the kernel (e.g. a malformed MAC: a planner bug)."""

    def message(self) -> str:
        """One line: which op, on which device, which errno, what the kernel said."""
        names = {_ifindex_of(self.op): self.device} if self.device else None
        name = errno_mod.errorcode.get(self.errno, str(self.errno))
        if not self.encodable:
            return f"{describe_op(self.op, names)} not sent: {self.kernel_message}"
        text = f"{describe_op(self.op, names)} failed: {os.strerror(self.errno)} ({name})"
        if self.kernel_message:
            text += f"; kernel says: {self.kernel_message}"
        return text

    def to_error(self) -> NetlinkError:
        """This failure as a raisable :class:`~pyflannel.errors.NetlinkError`."""
        return NetlinkError(self.message(), hint=errno_hint(self.errno))


class OpsFailed(NetlinkError):
    """Some ops of an :func:`apply_ops_checked` call failed; the others were applied."""

    def __init__(self, failures: Sequence[OpFailure], total: int) -> None:
        self.failures = tuple(failures)
        first = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        super().__init__(
            f"{len(failures)} of {total} netlink operations failed; first: {first.message()}{more}",
            hint=errno_hint(first.errno),
        )


def _resolve_names(sock: NetlinkSocket, failures: list[OpFailure]) -> list[OpFailure]:
    if not failures:
        return failures
    # imported here: only failures need it, and links pulls in structlog
    from pyflannel.netlink.links import get_link

    names: dict[int, str | None] = {}
    out: list[OpFailure] = []
    for f in failures:
        idx = _ifindex_of(f.op)
        if idx and idx not in names:
            try:
                link = get_link(sock, idx)
            except NetlinkError:
                link = None
            names[idx] = link.name if link else None
        out.append(dataclasses.replace(f, device=names.get(idx) if idx else None))
    return out


def _is_failure(op: Op, err: int) -> bool:
    return not (err in _ABSENT_OK and isinstance(op, Delete))


def _apply_one_by_one(
    sock: NetlinkSocket, ops: Sequence[Op], base: int, failures: list[OpFailure]
) -> None:
    """Slow path after ENOBUFS: one message, one ACK, so no answer can be dropped."""
    for i, op in enumerate(ops):
        seq = sock.next_seqs(1)
        try:
            msg = encode_op(op, seq, ack=True)
        except ValueError as exc:
            failures.append(OpFailure(base + i, op, errno_mod.EINVAL, str(exc), encodable=False))
            continue
        sock.send(msg)
        while True:
            buf = sock.recv()
            done = False
            for mtype, mflags, mseq, start, end in iter_messages(buf):
                if mseq != seq or mtype != c.NLMSG_ERROR:
                    continue
                err, ext = parse_error_payload(buf, start, end, mflags)
                if err and _is_failure(op, err):
                    failures.append(OpFailure(base + i, op, err, ext))
                done = True
            if done:
                break


def _apply_batch(
    sock: NetlinkSocket, ops: Sequence[Op], base: int, failures: list[OpFailure]
) -> None:
    n = len(ops)
    first = sock.next_seqs(n + 1)
    parts: list[bytes] = []
    unencodable: list[OpFailure] = []
    for i, op in enumerate(ops):
        try:
            parts.append(encode_op(op, (first + i) & 0xFFFFFFFF, False))
        except ValueError as exc:
            unencodable.append(OpFailure(base + i, op, errno_mod.EINVAL, str(exc), encodable=False))
    barrier = (first + n) & 0xFFFFFFFF
    parts.append(c.NLMSGHDR.pack(16, c.NLMSG_NOOP, c.NLM_F_REQUEST | c.NLM_F_ACK, barrier, 0))
    data = b"".join(parts)
    if len(data) > sock.max_datagram and n > 1:
        # a small send buffer (no CAP_NET_ADMIN for SO_SNDBUFFORCE): halve until it fits
        half = n // 2
        _apply_batch(sock, ops[:half], base, failures)
        _apply_batch(sock, ops[half:], base + half, failures)
        return
    sock.send(data)
    batch_failures = unencodable
    try:
        while True:
            buf = sock.recv()
            for mtype, mflags, mseq, start, end in iter_messages(buf):
                if mtype != c.NLMSG_ERROR:
                    continue
                if mseq == barrier:
                    batch_failures.sort(key=lambda f: f.index)
                    failures.extend(batch_failures)
                    return
                i = (mseq - first) & 0xFFFFFFFF
                if i >= n:
                    continue  # an answer to an earlier, abandoned exchange
                err, ext = parse_error_payload(buf, start, end, mflags)
                if err and _is_failure(ops[i], err):
                    batch_failures.append(OpFailure(base + i, ops[i], err, ext))
    except OSError as exc:
        if exc.errno != errno_mod.ENOBUFS:
            raise
    # Answers were dropped: drain what is left (the kernel has finished the whole datagram by
    # the time sendmsg returned) and redo the batch with one ACK per op.
    while sock.recv_nowait() is not None:
        pass
    _apply_one_by_one(sock, ops, base, failures)


def apply_ops(
    sock: NetlinkSocket, ops: Sequence[Op], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> list[OpFailure]:
    """Apply ``ops`` in order and return the failures (empty list: everything applied).

    Deleting an entry that is already absent counts as success. Failures carry the op, errno,
    the kernel's extended-ACK text and the device name. Raises
    :class:`~pyflannel.errors.NetlinkError` only when the socket itself fails.
    """
    failures: list[OpFailure] = []
    with sock.lock:
        try:
            for base in range(0, len(ops), batch_size):
                _apply_batch(sock, ops[base : base + batch_size], base, failures)
        except TimeoutError:
            raise NetlinkError(
                f"applying {len(ops)} netlink operations failed: the kernel did not answer",
                hint="this is a bug in pyflannel or the kernel; retry, then report it",
            ) from None
        except OSError as exc:
            raise NetlinkError(
                f"applying {len(ops)} netlink operations failed: {exc}",
                hint=errno_hint(exc.errno or 0),
            ) from exc
    return _resolve_names(sock, failures)


def apply_ops_checked(
    sock: NetlinkSocket, ops: Sequence[Op], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> None:
    """Like :func:`apply_ops`, but raise :class:`OpsFailed` if any op failed.

    All ops are still attempted before raising.
    """
    failures = apply_ops(sock, ops, batch_size=batch_size)
    if failures:
        raise OpsFailed(failures, len(ops))


class NetlinkExecutor:
    """The executor seam for the backends: owns (or borrows) one rtnetlink socket.

    Create it in the network namespace it should act on. Methods block; call them from trio
    with ``trio.to_thread.run_sync``.
    """

    def __init__(
        self, sock: NetlinkSocket | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        self._own = sock is None
        self.sock = sock if sock is not None else NetlinkSocket()
        self.batch_size = batch_size

    def apply(self, ops: Sequence[Op]) -> list[OpFailure]:
        """See :func:`apply_ops`."""
        return apply_ops(self.sock, ops, batch_size=self.batch_size)

    def apply_checked(self, ops: Sequence[Op]) -> None:
        """See :func:`apply_ops_checked`."""
        apply_ops_checked(self.sock, ops, batch_size=self.batch_size)

    def close(self) -> None:
        """Close the socket if this executor created it."""
        if self._own:
            self.sock.close()
