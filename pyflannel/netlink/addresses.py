"""Interface address management (``ip addr``) over the raw rtnetlink socket.

``ensure_address`` is flanneld's ``EnsureV4AddressOnLink``: keep the wanted address, remove
every *other* address of the same family that falls inside the flannel network (left over from
an earlier lease), add the wanted one if missing.
"""

from __future__ import annotations

import errno as errno_mod
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

import structlog

from pyflannel.netlink import consts as c
from pyflannel.netlink.encode import attr, ifaddrmsg
from pyflannel.netlink.nlsocket import KernelRefused, NetlinkSocket, parse_attrs

__all__ = [
    "IPInterface",
    "add_address",
    "delete_address",
    "ensure_address",
    "list_addresses",
    "list_all_addresses",
]

log = structlog.get_logger(__name__)

IPInterface = IPv4Interface | IPv6Interface


def list_addresses(sock: NetlinkSocket, ifindex: int, family: int = c.AF_INET) -> list[IPInterface]:
    """Addresses of one device and family (``AF_INET``/``AF_INET6``), as ``address/prefix``."""
    return [iface for idx, iface in list_all_addresses(sock, family) if idx == ifindex]


def list_all_addresses(
    sock: NetlinkSocket, family: int = c.AF_INET
) -> list[tuple[int, IPInterface]]:
    """Every address of one family in the namespace, as ``(ifindex, address/prefix)``."""
    what = f"list addresses (family {family})"
    items = sock.dump(c.RTM_GETADDR, ifaddrmsg(family, 0, 0), what=what)
    out: list[tuple[int, IPInterface]] = []
    for buf, start, end, mtype in items:
        if mtype != c.RTM_NEWADDR:
            continue
        fam, plen, _flags, _scope, idx = c.IFADDRMSG.unpack_from(buf, start)
        if fam != family:
            continue
        attrs = parse_attrs(buf, start + 8, end)
        raw = attrs.get(c.IFA_LOCAL) or attrs.get(c.IFA_ADDRESS)
        if raw is None:
            continue
        if fam == c.AF_INET and len(raw) == 4:
            out.append((idx, IPv4Interface((int.from_bytes(raw, "big"), plen))))
        elif fam == c.AF_INET6 and len(raw) == 16:
            out.append((idx, IPv6Interface((int.from_bytes(raw, "big"), plen))))
    return out


def _addr_body(ifindex: int, iface: IPInterface) -> bytes:
    ip = iface.ip
    if ip.version == 4:
        body = ifaddrmsg(c.AF_INET, iface.network.prefixlen, ifindex)
        body += attr(c.IFA_LOCAL, ip.packed) + attr(c.IFA_ADDRESS, ip.packed)
        if iface.network.prefixlen < 31:
            body += attr(c.IFA_BROADCAST, iface.network.broadcast_address.packed)
        return body
    return ifaddrmsg(c.AF_INET6, iface.network.prefixlen, ifindex) + attr(c.IFA_ADDRESS, ip.packed)


def add_address(sock: NetlinkSocket, ifindex: int, iface: IPInterface) -> None:
    """``ip addr replace <iface> dev <ifindex>``."""
    sock.request(
        c.RTM_NEWADDR,
        c.NLM_F_CREATE | c.NLM_F_REPLACE,
        _addr_body(ifindex, iface),
        what=f"ip addr add {iface} dev ifindex {ifindex}",
    )


def delete_address(sock: NetlinkSocket, ifindex: int, iface: IPInterface) -> None:
    """``ip addr del <iface> dev <ifindex>``; an absent address is fine."""
    try:
        sock.request(
            c.RTM_DELADDR,
            0,
            _addr_body(ifindex, iface),
            what=f"ip addr del {iface} dev ifindex {ifindex}",
        )
    except KernelRefused as exc:
        if exc.errno not in (errno_mod.EADDRNOTAVAIL, errno_mod.ENOENT):
            raise


def ensure_address(
    sock: NetlinkSocket,
    ifindex: int,
    iface: IPInterface,
    *,
    stale_within: IPv4Network | IPv6Network | None = None,
) -> None:
    """Make ``iface`` an address of the device and drop stale ones.

    Other addresses of the same family inside ``stale_within`` are removed (flanneld passes the
    flannel Network for IPv4; for IPv6 it removes every other non-link-local address, which is
    ``stale_within=IPv6Network("::/0")``). Link-local IPv6 addresses are always kept.
    """
    family = c.AF_INET if iface.version == 4 else c.AF_INET6
    have = False
    for existing in list_addresses(sock, ifindex, family):
        if existing == iface:
            have = True
            continue
        if existing.version == 6 and existing.ip.is_link_local:
            continue
        if stale_within is not None and existing.ip in stale_within:
            delete_address(sock, ifindex, existing)
            log.info("netlink.address_removed", address=str(existing), ifindex=ifindex)
    if not have:
        add_address(sock, ifindex, iface)
