"""The nf_tables ruleset generation of a network namespace: a cheap "did any rule change?".

The kernel keeps one generation counter per network namespace and bumps it with every committed
nf_tables transaction: every ``nft`` change and every change made through the ``iptables-nft``
tools (iptables 1.8's default on Debian). Reading it is one netlink request
(``NFT_MSG_GETGEN``), where checking the rules means running ``iptables-save`` per table; so
the periodic resync reads the generation first and skips the check when it has not moved
since the last check that found everything in place. Changes made with ``iptables-legacy``
do not touch the counter: callers use this only for nf_tables-based tools.

Standard library only (the netlink framing comes from :mod:`pyflannel.netlink`, itself standard
library only).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

from pyflannel.netlink import consts as c
from pyflannel.netlink.encode import encode_message

__all__ = ["ruleset_generation"]

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_NFT_MSG_GETGEN = 16
_NFT_MSG_NEWGEN = 15
_NFTA_GEN_ID = 1
_NFGENMSG = struct.Struct("=BBH")


def _query(sock: socket.socket) -> int | None:
    seq = int.from_bytes(os.urandom(4), "little") or 1
    msg_type = (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_GETGEN
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
    sock.send(encode_message(msg_type, c.NLM_F_REQUEST | c.NLM_F_ACK, seq, body))
    gen: int | None = None
    while True:
        buf = sock.recv(65536)
        off = 0
        while off + 16 <= len(buf):
            length, mtype, _flags, mseq, _pid = c.NLMSGHDR.unpack_from(buf, off)
            if length < 16:
                return gen
            if mseq == seq:
                if mtype == c.NLMSG_ERROR:
                    return gen  # the ACK (or an error: then no generation)
                if mtype & 0xFF == _NFT_MSG_NEWGEN:
                    a = off + 16 + _NFGENMSG.size
                    while a + 4 <= off + length:
                        alen, atype = c.RTATTR.unpack_from(buf, a)
                        if alen < 4:
                            break
                        if atype & 0x7FFF == _NFTA_GEN_ID and alen >= 8:
                            gen = int.from_bytes(buf[a + 4 : a + 8], "big")
                        a += (alen + 3) & ~3
            off += (length + 3) & ~3


def ruleset_generation(netns: str | None = None) -> int | None:
    """The nf_tables generation of the current namespace (or named ``netns``), None when it
    cannot be read (no nf_tables in this kernel, no permission, ...)."""
    try:
        if netns is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
        else:
            from pyflannel.netlink.nsenter import in_netns

            with in_netns(netns):
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
    except OSError:
        return None
    with contextlib.closing(sock):
        try:
            sock.settimeout(5.0)
            sock.bind((0, 0))
            return _query(sock)
        except OSError:
            return None
