"""Choosing the external interface: flanneld's ``--iface`` / ``--iface-regex`` /
``--iface-can-reach`` / ``--public-ip`` rules (``main.go`` + ``pkg/ipmatch/match.go``).

Order, as in flanneld:

1. No ``--iface``, ``--iface-regex`` or ``--iface-can-reach``: the interface holding
   ``--public-ip`` (or ``--public-ipv6``), else the interface of the default route (IPv4, IPv6,
   or both, which must then agree).
2. Otherwise each ``--iface`` (a name or an IP) in order, then each ``--iface-regex`` (matched
   against the interfaces' IPs first, then their names), then ``--iface-can-reach`` (the
   interface and source address of ``ip route get``). First match wins.

The interface address is the first usable one (global or link-local unicast, not deprecated;
global before link-local, permanent before dynamic, non-temporary before temporary). The
public address is ``--public-ip`` if given, else the interface address.

The kernel is read once through pyflannel's own netlink code (imported lazily) into a
:class:`HostNetwork` snapshot; the choice itself is a pure function of that snapshot.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, Unpack

from pyflannel.errors import ConfigError, InterfaceError
from pyflannel.options import InterfaceFlags

if TYPE_CHECKING:
    from pyflannel.netlink.links import LinkInfo
    from pyflannel.netlink.nlsocket import NetlinkSocket

__all__ = [
    "Addr",
    "ExternalInterface",
    "HostNetwork",
    "Link",
    "read_host_network",
    "select_interface",
    "select_interface_from",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Stack = Literal["ipv4", "ipv6", "dual"]

# linux/if_addr.h
_IFA_F_TEMPORARY: Final = 0x01
_IFA_F_DEPRECATED: Final = 0x20
_IFA_F_PERMANENT: Final = 0x80
_IFA_FLAGS: Final = 8  # IFA_FLAGS attribute (u32)

_FIX_HINT: Final = (
    "pass --iface with the name or IP of the interface that reaches the other nodes; "
    "list them with 'ip -br addr'"
)


@dataclass(frozen=True, slots=True)
class ExternalInterface:
    """The interface flannel sends overlay traffic from, and the addresses it advertises."""

    name: str
    index: int
    ipv4_addr: ipaddress.IPv4Address | None
    ipv6_addr: ipaddress.IPv6Address | None
    public_ip: ipaddress.IPv4Address | None
    public_ipv6: ipaddress.IPv6Address | None
    mtu: int
    # The networks of ipv4_addr/ipv6_addr on the interface (None when not known): a peer
    # PublicIP equal to their network or broadcast address is refused.
    ipv4_network: ipaddress.IPv4Network | None = None
    ipv6_network: ipaddress.IPv6Network | None = None


@dataclass(frozen=True, slots=True)
class Addr:
    """One interface address with its ``IFA_F_*`` flags."""

    ip: IPAddress
    flags: int = _IFA_F_PERMANENT
    prefixlen: int | None = None


@dataclass(frozen=True, slots=True)
class Link:
    """One network interface as seen by netlink."""

    index: int
    name: str
    mtu: int
    addrs: tuple[Addr, ...] = ()


RouteGet = Callable[[IPAddress], tuple[int, IPAddress | None]]


@dataclass(frozen=True)
class HostNetwork:
    """What interface selection needs from the kernel, read once.

    ``default_v4``/``default_v6`` hold the output interface index of each default route in the
    main table, in kernel order (0 for a route without one, e.g. multipath). ``route_get``
    answers ``ip route get <ip>`` with (output index, preferred source).
    """

    links: tuple[Link, ...]
    default_v4: tuple[int, ...] = ()
    default_v6: tuple[int, ...] = ()
    route_get: RouteGet | None = field(default=None, compare=False)

    def by_index(self, index: int) -> Link | None:
        return next((link for link in self.links if link.index == index), None)

    def by_name(self, name: str) -> Link | None:
        return next((link for link in self.links if link.name == name), None)


# ------------------------------------------------------------------------------------------
# Reading the kernel


def read_host_network(sock: NetlinkSocket | None = None) -> HostNetwork:
    """Snapshot links, addresses and default routes of the current network namespace.

    ``sock`` is an open :class:`~pyflannel.netlink.nlsocket.NetlinkSocket`; without one, a
    private one is opened and closed. The returned snapshot's ``route_get`` opens its own
    socket when called.
    """
    # pyflannel's own netlink code (stdlib only): importing pyroute2 and opening an IPRoute
    # costs ~0.2-0.3 s and ~22 MiB of start-up (docs/decisions.md).
    from pyflannel.netlink.nlsocket import NetlinkSocket

    handle = NetlinkSocket() if sock is None else sock
    try:
        addrs = _dump_addrs(handle)
        links = tuple(
            sorted(
                (
                    Link(
                        index=info.ifindex,
                        name=info.name,
                        mtu=info.mtu,
                        addrs=tuple(addrs.get(info.ifindex, ())),
                    )
                    for info in _list_links(handle)
                ),
                key=lambda link: link.index,
            )
        )
        defaults = {
            family: _default_route_oifs(handle, family)
            for family in (socket.AF_INET, socket.AF_INET6)
        }
    finally:
        if sock is None:
            handle.close()
    return HostNetwork(
        links=links,
        default_v4=defaults[socket.AF_INET],
        default_v6=defaults[socket.AF_INET6],
        route_get=_kernel_route_get,
    )


def _list_links(sock: NetlinkSocket) -> list[LinkInfo]:
    from pyflannel.netlink.links import list_links

    return list_links(sock)


def _dump_addrs(sock: NetlinkSocket) -> dict[int, list[Addr]]:
    """Every address of every link (both families), with its ``IFA_F_*`` flags."""
    from pyflannel.netlink import consts as c
    from pyflannel.netlink.encode import ifaddrmsg
    from pyflannel.netlink.nlsocket import parse_attrs

    items = sock.dump(c.RTM_GETADDR, ifaddrmsg(c.AF_UNSPEC, 0, 0), what="list addresses")
    out: dict[int, list[Addr]] = {}
    for buf, start, end, mtype in items:
        if mtype != c.RTM_NEWADDR:
            continue
        _fam, plen, hdr_flags, _scope, index = c.IFADDRMSG.unpack_from(buf, start)
        attrs = parse_attrs(buf, start + c.IFADDRMSG.size, end)
        raw = attrs.get(c.IFA_LOCAL) or attrs.get(c.IFA_ADDRESS)
        if raw is None or len(raw) not in (4, 16):
            continue
        # IFA_FLAGS (32 bit) supersedes the 8-bit header field when present.
        raw_flags = attrs.get(_IFA_FLAGS)
        flags = c.U32.unpack(raw_flags[:4])[0] if raw_flags else hdr_flags
        out.setdefault(index, []).append(Addr(ipaddress.ip_address(raw), flags, plen))
    return out


def _default_route_oifs(sock: NetlinkSocket, family: int) -> tuple[int, ...]:
    """Output index of each default route (any type, any protocol) of the main table."""
    from pyflannel.netlink import consts as c
    from pyflannel.netlink.encode import rtmsg
    from pyflannel.netlink.nlsocket import parse_attrs

    items = sock.dump(c.RTM_GETROUTE, rtmsg(family, table=0), what="list default routes")
    out: list[int] = []
    for buf, start, end, mtype in items:
        if mtype != c.RTM_NEWROUTE:
            continue
        fam, dst_len, table = buf[start], buf[start + 1], buf[start + 4]
        if fam != family or dst_len != 0:
            continue
        attrs = parse_attrs(buf, start + 12, end)
        raw_table = attrs.get(c.RTA_TABLE)
        if raw_table:
            table = c.U32.unpack(raw_table[:4])[0]
        if table != c.RT_TABLE_MAIN:
            continue
        raw_oif = attrs.get(c.RTA_OIF)
        out.append(c.U32.unpack(raw_oif[:4])[0] if raw_oif else 0)
    return tuple(out)


def _kernel_route_get(ip: IPAddress) -> tuple[int, IPAddress | None]:
    from pyflannel.errors import NetlinkError
    from pyflannel.netlink.dump import route_get
    from pyflannel.netlink.nlsocket import NetlinkSocket

    with NetlinkSocket() as sock:
        try:
            found = route_get(sock, ip)
        except NetlinkError as err:
            raise LookupError(f"couldn't lookup route to {ip}: {err}") from None
    if found is None:
        raise LookupError(f"couldn't lookup route to {ip}: network is unreachable")
    return found.ifindex, found.prefsrc


# ------------------------------------------------------------------------------------------
# Pure selection (a port of LookupExtIface)


class _NoMatch(Exception):
    """One candidate did not yield an interface; ``str()`` says why (flanneld's wording)."""


def _is_global_unicast(ip: IPAddress) -> bool:
    # Go's net.IP.IsGlobalUnicast: private ranges count as global.
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return False
    return not (ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local)


def _usable_addrs(link: Link, version: int) -> list[IPAddress]:
    """``GetInterfaceIP4Addrs`` / ``GetInterfaceIP6Addrs``: filtered, in preference order."""

    def rank(addr: Addr) -> tuple[int, int, int]:
        return (
            0 if _is_global_unicast(addr.ip) else 1,
            0 if addr.flags & _IFA_F_PERMANENT else 1,
            1 if addr.flags & _IFA_F_TEMPORARY else 0,
        )

    candidates = [
        a
        for a in link.addrs
        if a.ip.version == version
        and (_is_global_unicast(a.ip) or a.ip.is_link_local)
        and not a.flags & _IFA_F_DEPRECATED
    ]
    return [a.ip for a in sorted(candidates, key=rank)]


def _link_with_ip(host: HostNetwork, ip: IPAddress) -> Link | None:
    return next((link for link in host.links if any(a.ip == ip for a in link.addrs)), None)


def _first_addr(link: Link, version: int) -> IPAddress:
    addrs = _usable_addrs(link, version)
    if not addrs:
        raise _NoMatch(f"failed to find IPv{version} address for interface {link.name}")
    return addrs[0]


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _link_with_ipv6(host: HostNetwork, ip: IPAddress, text: str) -> Link:
    """The link holding the IPv6 address ``ip`` (written ``text``); flanneld's error if none
    does or ``ip`` is not IPv6."""
    link = _link_with_ip(host, ip) if ip.version == 6 else None
    if link is None:
        raise _NoMatch(f"error looking up v6 interface {text}: no interface with given IPv6 found")
    return link


def _lookup(
    host: HostNetwork,
    stack: Stack,
    public_ipv6: str,
    *,
    ifname: str = "",
    regex: str = "",
    can_reach: str = "",
) -> tuple[Link, IPAddress | None, IPAddress | None]:
    """Find (link, v4 address, v6 address) for one candidate, or raise _NoMatch."""
    link: Link | None = None
    addr4: IPAddress | None = None
    addr6: IPAddress | None = None

    if ifname:
        ip = _parse_ip(ifname)
        if ip is not None:
            if stack == "ipv6":
                link, addr6 = _link_with_ipv6(host, ip, ifname), ip
            else:
                if ip.version == 4:
                    link = _link_with_ip(host, ip)
                    if link is None:
                        raise _NoMatch(
                            f"error looking up interface {ifname}: no interface with given IP found"
                        )
                    addr4 = ip
                if stack == "dual" and public_ipv6:
                    ip6 = _parse_ip(public_ipv6)
                    if ip6 is not None:
                        link6, addr6 = _link_with_ipv6(host, ip6, public_ipv6), ip6
                        if link is None:
                            link, addr4 = link6, None
                        elif link.name != link6.name:
                            raise _NoMatch(
                                f"v6 interface {link6.name} must be the same with v4 "
                                f"interface {link.name}"
                            )
                if link is None:
                    raise _NoMatch(
                        f"error looking up interface {ifname}: no interface with given IP found"
                    )
        else:
            link = host.by_name(ifname)
            if link is None:
                raise _NoMatch(f"error looking up interface {ifname}: no such network interface")
    elif regex:
        try:
            pattern = re.compile(regex)
        except re.error as err:
            raise _NoMatch(f"could not compile the IP address regex '{regex}': {err}") from None
        for cand in host.links:
            v4 = [str(a) for a in _usable_addrs(cand, 4)]
            v6 = [str(a) for a in _usable_addrs(cand, 6)]
            m4 = next((a for a in v4 if pattern.search(a)), None)
            m6 = next((a for a in v6 if pattern.search(a)), None)
            if stack == "ipv4" and m4 is not None:
                link, addr4 = cand, ipaddress.ip_address(m4)
                break
            if stack == "ipv6" and m6 is not None:
                link, addr6 = cand, ipaddress.ip_address(m6)
                break
            if stack == "dual" and v4 and v6 and m4 is not None:
                addr4 = ipaddress.ip_address(m4)
                if m6 is not None:
                    link, addr6 = cand, ipaddress.ip_address(m6)
                    break
        if link is None:
            # flanneld keeps an IPv4 match of an earlier interface here and pairs it with the
            # interface matched by name; we look the addresses up on that interface instead.
            addr4 = addr6 = None
            link = next((c for c in host.links if pattern.search(c.name)), None)
        if link is None:
            version = 6 if stack == "ipv6" else 4
            available = ", ".join(
                f"{c.name}:[{' '.join(str(a) for a in _usable_addrs(c, version))}]"
                for c in host.links
            )
            raise _NoMatch(
                f"could not match pattern {regex} to any of the available network interfaces "
                f"({available})"
            )
    elif can_reach:
        target = _parse_ip(can_reach)
        if target is None:
            raise _NoMatch(f"failed to get ifcanreach based interface: invalid IP {can_reach}")
        if host.route_get is None:
            raise _NoMatch("failed to get ifcanreach based interface: no route lookup available")
        try:
            oif, src = host.route_get(target)
        except LookupError as err:
            raise _NoMatch(f"failed to get ifcanreach based interface: {err}") from None
        link = host.by_index(oif)
        if link is None:
            raise _NoMatch(
                f"failed to get ifcanreach based interface: couldn't lookup interface: index {oif}"
            )
        # Like flanneld, the route's preferred source becomes the interface address.
        if isinstance(src, ipaddress.IPv4Address):
            addr4 = src
        elif src is not None:
            addr6 = src
    else:
        if stack in ("ipv4", "dual"):
            link = _default_link(host, host.default_v4, "")
        if stack in ("ipv6", "dual"):
            link6 = _default_link(host, host.default_v6, "v6 ")
            if link is not None and link.name != link6.name:
                raise _NoMatch(
                    f"v6 default route interface {link6.name} must be the same with v4 default "
                    f"route interface {link.name}"
                )
            link = link6

    assert link is not None
    if stack == "ipv4" and addr4 is None:
        addr4 = _first_addr(link, 4)
    elif stack == "ipv6" and addr6 is None:
        addr6 = _first_addr(link, 6)
    elif stack == "dual":
        if addr4 is None:
            addr4 = _first_addr(link, 4)
        if addr6 is None:
            addr6 = _first_addr(link, 6)
    return link, addr4, addr6


def _default_link(host: HostNetwork, oifs: tuple[int, ...], v6: str) -> Link:
    if not oifs:
        raise _NoMatch(f"failed to get default {v6}interface: unable to find default {v6}route")
    if oifs[0] <= 0:
        raise _NoMatch(
            f"failed to get default {v6}interface: found default {v6}route but could not "
            "determine interface"
        )
    link = host.by_index(oifs[0])
    if link is None:
        raise _NoMatch(f"failed to get default {v6}interface: no interface with index {oifs[0]}")
    return link


def _parse_public(text: str, version: int, flag: str) -> Any:
    if not text:
        return None
    ip = _parse_ip(text)
    if ip is None or ip.version != version:
        raise ConfigError(
            f"invalid public IP{'v6' if version == 6 else ''} address: {text}",
            hint=f"give {flag} an IPv{version} address of this host",
        )
    return ip


def select_interface_from(
    host: HostNetwork,
    *,
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    iface_can_reach: str = "",
    public_ip: str = "",
    public_ipv6: str = "",
    enable_ipv4: bool = True,
    enable_ipv6: bool = False,
) -> ExternalInterface:
    """Pure interface selection over a :class:`HostNetwork` snapshot (see module docstring).

    Raises InterfaceError when nothing matches (listing every candidate tried and why) or the
    chosen interface has MTU 0, ConfigError for an unparsable ``--public-ip[v6]`` or when
    neither IP stack is enabled.
    """
    if enable_ipv4 and enable_ipv6:
        stack: Stack = "dual"
    elif enable_ipv4:
        stack = "ipv4"
    elif enable_ipv6:
        stack = "ipv6"
    else:
        raise ConfigError(
            "none defined stack",
            hint='set "EnableIPv4": true (the default) and/or "EnableIPv6": true',
        )
    pub4 = _parse_public(public_ip, 4, "--public-ip")
    pub6 = _parse_public(public_ipv6, 6, "--public-ipv6")

    found: tuple[Link, IPAddress | None, IPAddress | None] | None = None
    if not iface and not iface_regex and not iface_can_reach:
        # With --public-ip the interface is the one holding that address.
        ifname = public_ip or public_ipv6
        try:
            found = _lookup(host, stack, public_ipv6, ifname=ifname)
        except _NoMatch as err:
            what = f"the interface holding {ifname}" if ifname else "the default route"
            hint = _FIX_HINT
            if ifname:
                hint = (
                    f"{ifname} must be an address of a local interface; behind NAT also pass "
                    "--iface with the local interface"
                )
            raise InterfaceError(
                f"Failed to find any valid interface to use: {err} (tried {what})", hint=hint
            ) from None
    else:
        tried: list[str] = []
        candidates: list[tuple[str, dict[str, str]]] = [
            *((f"--iface {name}", {"ifname": name}) for name in iface),
            *((f"--iface-regex {rx}", {"regex": rx}) for rx in iface_regex),
        ]
        if iface_can_reach:
            candidates.append(
                (f"--iface-can-reach {iface_can_reach}", {"can_reach": iface_can_reach})
            )
        for label, kwargs in candidates:
            try:
                found = _lookup(host, stack, public_ipv6, **kwargs)
                break
            except _NoMatch as err:
                tried.append(f"{label}: {err}")
        if found is None:
            raise InterfaceError(
                "Failed to find interface to use that matches the interfaces and/or regexes "
                f"provided; tried {'; '.join(tried)}",
                hint=_FIX_HINT,
            )

    link, addr4, addr6 = found
    if link.mtu == 0:
        raise InterfaceError(
            f"failed to determine MTU for {addr4 or addr6} interface ({link.name} has MTU 0)",
            hint=f"set an MTU on {link.name} (ip link set {link.name} mtu 1500) or choose "
            "another interface with --iface",
        )
    ext4 = pub4 if pub4 is not None else (addr4 if stack != "ipv6" else None)
    ext6 = pub6 if pub6 is not None else (addr6 if stack != "ipv4" else None)
    return ExternalInterface(
        name=link.name,
        index=link.index,
        ipv4_addr=addr4 if isinstance(addr4, ipaddress.IPv4Address) else None,
        ipv6_addr=addr6 if isinstance(addr6, ipaddress.IPv6Address) else None,
        public_ip=ext4 if isinstance(ext4, ipaddress.IPv4Address) else None,
        public_ipv6=ext6 if isinstance(ext6, ipaddress.IPv6Address) else None,
        mtu=link.mtu,
        ipv4_network=_network_of(link, addr4, ipaddress.IPv4Network),
        ipv6_network=_network_of(link, addr6, ipaddress.IPv6Network),
    )


_NetT = TypeVar("_NetT", ipaddress.IPv4Network, ipaddress.IPv6Network)


def _network_of(link: Link, addr: IPAddress | None, cls: type[_NetT]) -> _NetT | None:
    """The network of ``addr`` as configured on ``link`` (None if unknown)."""
    for a in link.addrs:
        if a.ip == addr and a.prefixlen is not None:
            net = ipaddress.ip_network((a.ip, a.prefixlen), strict=False)
            return net if isinstance(net, cls) else None
    return None


class InterfaceSelection(InterfaceFlags, total=False):
    """The keyword arguments of :func:`select_interface`/:func:`select_interface_from`: the
    flags and the config's stacks."""

    enable_ipv4: bool
    enable_ipv6: bool


def select_interface(**selection: Unpack[InterfaceSelection]) -> ExternalInterface:
    """Choose the external interface in the current network namespace, like flanneld.

    The keyword arguments are :func:`select_interface_from`'s: the flags (``Options.iface``
    etc.) and the config's stacks. Reads the kernel through pyflannel's own netlink code
    (:func:`read_host_network`); see :func:`select_interface_from` for the rules and errors.
    """
    return select_interface_from(read_host_network(), **selection)
