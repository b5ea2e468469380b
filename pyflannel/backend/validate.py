"""Peer-lease validation: a hostile or broken lease is never programmed.

Anyone with write access to etcd can put a lease; flanneld programs whatever it reads. Here a
lease becomes a :class:`Peer` only if programming it cannot hurt this node: its subnet lies inside
the Network and does not touch our own subnet, it is not a default route, its public IP is a
usable unicast address that is not ours, and (vxlan) its VTEP MAC is a valid unicast MAC that is
not ours. Anything else gives a :class:`Rejection` whose reason names the lease key, so the caller
can log one clear warning. Pure: no I/O.

flanneld accepts subnets of any prefix length inside the Network, so we do too; only overlap with
our own subnet and leaving the Network are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyflannel.backend.base import PlanContext
from pyflannel.lease import JSONValue, Lease
from pyflannel.netlink.ops import IPAddress, IPNetwork

__all__ = [
    "Peer",
    "Rejection",
    "net_contains",
    "net_overlaps",
    "normalize_mac",
    "validate_peer",
]

_MAC_COLON = re.compile(r"^[0-9a-fA-F]{2}([:-])(?:[0-9a-fA-F]{2}\1){4}[0-9a-fA-F]{2}$")
_MAC_DOT = re.compile(r"^[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}$")
_VNI_MAX = 2**32 - 1  # flanneld decodes the peer VNI into a uint32


@dataclass(frozen=True, slots=True)
class Peer:
    """A validated peer lease, reduced to what one address family needs."""

    subnet: IPNetwork
    public_ip: IPAddress
    vtep_mac: str | None  # lower-case, colon-separated; None for host-gw
    lease: Lease


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a lease is not programmed. ``benign`` ones (our own lease, a family the lease does
    not have) are expected and worth a debug line at most; the rest deserve a warning."""

    reason: str
    benign: bool = False


def normalize_mac(value: object) -> str | None:
    """A 6-byte MAC in any form Go's ``net.ParseMAC`` accepts, as ``aa:bb:cc:dd:ee:ff``.

    Returns None if ``value`` is not such a string.
    """
    if not isinstance(value, str):
        return None
    # fullmatch: with match, "$" also accepts a trailing newline, which the kernel would then
    # be asked to parse as part of the MAC.
    if _MAC_COLON.fullmatch(value):
        low = value.lower()
        if low == value and "-" not in value:
            return value  # already normal: share the lease's string, no copy per entry
        return low.replace("-", ":")
    if _MAC_DOT.fullmatch(value):
        h = value.replace(".", "").lower()
        return ":".join(h[i : i + 2] for i in range(0, 12, 2))
    return None


def validate_peer(lease: Lease, ctx: PlanContext) -> Peer | Rejection:
    """Check ``lease`` for the family and backend in ``ctx``; a Peer if it is safe to program."""
    attrs = lease.attrs
    if attrs.backend_type != ctx.backend_type:
        # flanneld logs "Ignoring non-<type> subnet" and skips it; an attr-less Removed lease
        # (backend_type "") lands here too.
        return _reject(
            lease,
            f"BackendType {attrs.backend_type!r} is not ours ({ctx.backend_type!r}); ignoring it",
        )
    subnet: IPNetwork | None
    public: IPAddress | None
    data: JSONValue
    if ctx.family == 4:
        subnet, public, data = lease.subnet, attrs.public_ip, attrs.backend_data
    else:
        subnet, public, data = lease.ipv6_subnet, attrs.public_ipv6, attrs.backend_v6_data
    if subnet is None:
        return _reject(lease, f"has no IPv{ctx.family} subnet", benign=True)
    if public is None:
        return _reject(lease, "has no PublicIPv6 for its IPv6 subnet")

    reason = _check_subnet(subnet, public, ctx)
    if reason is not None:
        return _reject(lease, reason, benign=_is_own(subnet, public, ctx))
    reason = _check_public_ip(subnet, public, ctx)
    if reason is not None:
        return _reject(lease, reason)

    mac: str | None = None
    if ctx.is_vxlan:
        mac, reason = _vtep_mac(data, ctx)
        if reason is not None:
            return _reject(lease, reason)
    return Peer(subnet=subnet, public_ip=public, vtep_mac=mac, lease=lease)


def net_contains(outer: IPNetwork, inner: IPNetwork) -> bool:
    """``inner.subnet_of(outer)`` for networks of the same version, without ipaddress' cost."""
    shift = outer.max_prefixlen - outer.prefixlen
    return (
        inner.prefixlen >= outer.prefixlen
        and int(inner.network_address) >> shift == int(outer.network_address) >> shift
    )


def net_overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    """``a.overlaps(b)`` for networks of the same version (one contains the other)."""
    shift = a.max_prefixlen - min(a.prefixlen, b.prefixlen)
    return int(a.network_address) >> shift == int(b.network_address) >> shift


def _reject(lease: Lease, reason: str, *, benign: bool = False) -> Rejection:
    # The key is only formatted for leases that are refused: validation runs for every peer.
    return Rejection(f"lease {lease.key_suffix}: {reason}", benign=benign)


def _is_own(subnet: IPNetwork, public: IPAddress, ctx: PlanContext) -> bool:
    return subnet == ctx.own_subnet and public == ctx.own_public_ip


def _check_subnet(subnet: IPNetwork, public: IPAddress, ctx: PlanContext) -> str | None:
    if subnet.version != ctx.network.version:
        return f"subnet {subnet} is not an IPv{ctx.family} network"
    if subnet.prefixlen == 0:
        return f"subnet {subnet} is a default route; refusing to program it"
    if not net_contains(ctx.network, subnet):
        return f"subnet {subnet} lies outside the Network {ctx.network}"
    if net_overlaps(subnet, ctx.own_subnet):
        if _is_own(subnet, public, ctx):
            return "is our own lease"
        return f"subnet {subnet} overlaps our own subnet {ctx.own_subnet}"
    if subnet.prefixlen != ctx.own_subnet.prefixlen:
        # Every lease flanneld or pyflannel allocates is SubnetLen long (ours is too), and
        # aligned subnets of one length never partly overlap. A longer one inside a peer's
        # subnet would win the route lookup and share the peer's gateway neighbour entry, taking
        # that peer's traffic on every node; a shorter one would swallow several peers.
        return (
            f"subnet {subnet} is /{subnet.prefixlen} but this network's SubnetLen is "
            f"/{ctx.own_subnet.prefixlen}; it could shadow other nodes' subnets"
        )
    return None


def _unusable_v4(ip: int) -> bool:
    # 0.0.0.0, 127/8 loopback, 169.254/16 link-local (not routable between nodes), 224/4
    # multicast, 240/4 reserved (incl. 255.255.255.255 broadcast): no tunnel endpoint.
    return ip == 0 or ip >> 24 == 127 or ip >> 16 == 0xA9FE or ip >> 28 >= 0xE


def _unusable_v6(ip: IPAddress) -> bool:
    # ::, ::1, ff00::/8 multicast, fe80::/10 link-local (needs a zone; not one node's address)
    return ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_link_local


def _check_public_ip(subnet: IPNetwork, public: IPAddress, ctx: PlanContext) -> str | None:
    name = "PublicIP" if ctx.family == 4 else "PublicIPv6"
    if public.version != ctx.family:
        return f"{name} {public} is not an IPv{ctx.family} address"
    unusable = _unusable_v4(int(public)) if public.version == 4 else _unusable_v6(public)
    if unusable:
        return (
            f"{name} {public} is not a usable unicast address"
            " (loopback, link-local, multicast or reserved)"
        )
    if public == ctx.own_public_ip:
        return f"{name} {public} is our own public IP"
    # A tunnel endpoint inside its own subnet or ours would route the encapsulated packets
    # back into the overlay.
    if public in subnet:
        return f"{name} {public} lies inside the lease's own subnet {subnet}"
    if public in ctx.own_subnet:
        return f"{name} {public} lies inside our own subnet {ctx.own_subnet}"
    if public in ctx.network:
        return f"{name} {public} lies inside the flannel Network {ctx.network}"
    return _check_underlay(name, public, ctx.underlay)


def _check_underlay(name: str, public: IPAddress, underlay: IPNetwork | None) -> str | None:
    # Encapsulated packets to the underlay's network or broadcast address reach no single
    # node (or every node). /31 and /32 (/127, /128) have no such addresses.
    if underlay is None or underlay.version != public.version:
        return None
    if underlay.prefixlen >= underlay.max_prefixlen - 1:
        return None
    if public == underlay.network_address:
        return f"{name} {public} is the network address of the underlay {underlay}"
    if public.version == 4 and public == underlay.broadcast_address:
        return f"{name} {public} is the broadcast address of the underlay {underlay}"
    return None


def _vtep_mac(data: JSONValue, ctx: PlanContext) -> tuple[str | None, str | None]:
    """``(mac, None)`` or ``(None, reason)``, as Go decodes ``{VNI uint32; VtepMAC}``."""
    field = "BackendData" if ctx.family == 4 else "BackendV6Data"
    if not isinstance(data, dict):
        return None, f"{field} must be a JSON object with VtepMAC, got {_short(data)}"
    raw_mac: JSONValue = None
    for k, v in data.items():  # Go matches keys case-insensitively; the last one wins
        lk = str(k).lower()
        if lk == "vtepmac":
            raw_mac = v
        elif lk == "vni" and v is not None and not _is_go_uint32(v):
            return None, f"{field}.VNI must be an integer in 0..{_VNI_MAX}, got {_short(v)}"
    if raw_mac is None:
        return None, f"{field}.VtepMAC is missing"
    mac = normalize_mac(raw_mac)
    if mac is None:
        return None, f"{field}.VtepMAC {_short(raw_mac)} is not a 6-byte MAC address"
    first = int(mac[:2], 16)
    if first & 0x01:
        return None, f"{field}.VtepMAC {mac} is a multicast/broadcast MAC"
    if mac == "00:00:00:00:00:00":
        return None, f"{field}.VtepMAC {mac} is the all-zero MAC"
    if ctx.own_mac is not None and mac == ctx.own_mac.lower():
        return None, f"{field}.VtepMAC {mac} is our own VTEP MAC"
    return mac, None


def _is_go_uint32(v: JSONValue) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _VNI_MAX


def _short(v: JSONValue) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
