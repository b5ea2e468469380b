"""Link (device) management: look up, create/ensure the vxlan device, up, MTU, delete.

Infrequent operations (start-up, device re-creation), so plain one-request-at-a-time netlink,
sharing the raw socket and encoders with the per-peer hot path instead of pulling in pyroute2.

``ensure_vxlan`` follows flanneld's ``ensureLink``: try to add; when the name exists, compare the
existing device with what is wanted (type, VNI, VTEP device, local address, group, l2miss, port,
GBP — not MTU, learning or MAC) and, if they differ, delete and re-add it. The MAC is chosen
*before* the link is added so udev/systemd's ``MACAddressPolicy`` does not replace it.
"""

from __future__ import annotations

import errno as errno_mod
import os
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import structlog

from pyflannel.netlink import consts as c
from pyflannel.netlink.encode import attr, ifinfomsg, mac_to_bytes, mac_to_str, nested
from pyflannel.netlink.nlsocket import KernelRefused, NetlinkSocket, parse_attrs
from pyflannel.netlink.nsenter import run_in_socket_netns
from pyflannel.netlink.ops import IPAddress

__all__ = [
    "LinkInfo",
    "VxlanAttrs",
    "VxlanSpec",
    "create_vxlan",
    "delete_link",
    "disable_accept_ra",
    "ensure_vxlan",
    "get_link",
    "list_links",
    "parse_link",
    "random_mac",
    "set_link_mtu",
    "set_link_up",
    "vxlan_incompatibilities",
]

log = structlog.get_logger(__name__)

_BE16 = struct.Struct("!H")
_EXT_MASK = attr(c.IFLA_EXT_MASK, c.U32.pack(c.RTEXT_FILTER_SKIP_STATS))


@dataclass(frozen=True, slots=True)
class VxlanAttrs:
    """The vxlan-specific attributes of an existing device (``ip -d link show``)."""

    vni: int
    link: int
    """Index of the underlay (VTEP) device, 0 if none."""
    local: IPAddress | None
    group: IPAddress | None
    port: int
    """UDP destination port in host order (the kernel reports its default 8472 too)."""
    gbp: bool
    learning: bool
    l2miss: bool
    l3miss: bool


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One network device as the kernel reports it."""

    ifindex: int
    name: str
    kind: str | None
    """``IFLA_INFO_KIND`` ("vxlan", "veth", "bridge", "tun", ...); None for plain devices."""
    mac: str | None
    mtu: int
    flags: int
    """``IFF_*`` flags."""
    vxlan: VxlanAttrs | None = None

    @property
    def up(self) -> bool:
        """Administratively up (``IFF_UP``)."""
        return bool(self.flags & c.IFF_UP)


@dataclass(frozen=True, slots=True)
class VxlanSpec:
    """What the vxlan device should look like (flanneld's ``vxlanDeviceAttrs``)."""

    name: str
    vni: int
    vtep_ifindex: int
    """The external interface; 0 lets the kernel route encapsulated packets freely."""
    local: IPAddress | None
    """Source address of encapsulated packets (flanneld ≥ 0.27.4: the public IP)."""
    port: int = 0
    """UDP port; 0 leaves the kernel default (8472)."""
    gbp: bool = False
    learning: bool = False
    mtu: int = 0
    """0 lets the kernel derive it from the VTEP device (its MTU minus 50)."""
    mac: str | None = None
    """Fixed MAC; None picks a random locally administered one before creation."""


def random_mac() -> str:
    """A random locally administered unicast MAC, as flanneld's ``mac.NewHardwareAddr``."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return mac_to_str(bytes(raw))


def _addr(raw: bytes) -> IPAddress | None:
    if len(raw) == 4:
        addr4 = IPv4Address(raw)
        return None if addr4 == IPv4Address(0) else addr4
    if len(raw) == 16:
        addr6 = IPv6Address(raw)
        return None if addr6 == IPv6Address(0) else addr6
    return None


def _u8(attrs: dict[int, bytes], key: int) -> bool:
    raw = attrs.get(key)
    return bool(raw and raw[0])


def _parse_vxlan(data: bytes) -> VxlanAttrs:
    attrs = parse_attrs(data, 0, len(data))

    def u32(key: int) -> int:
        raw = attrs.get(key)
        return c.U32.unpack(raw[:4])[0] if raw and len(raw) >= 4 else 0

    raw_port = attrs.get(c.IFLA_VXLAN_PORT)
    local_raw = attrs.get(c.IFLA_VXLAN_LOCAL) or attrs.get(c.IFLA_VXLAN_LOCAL6)
    group_raw = attrs.get(c.IFLA_VXLAN_GROUP) or attrs.get(c.IFLA_VXLAN_GROUP6)
    return VxlanAttrs(
        vni=u32(c.IFLA_VXLAN_ID),
        link=u32(c.IFLA_VXLAN_LINK),
        local=_addr(local_raw) if local_raw else None,
        group=_addr(group_raw) if group_raw else None,
        port=_BE16.unpack(raw_port[:2])[0] if raw_port and len(raw_port) >= 2 else 0,
        gbp=c.IFLA_VXLAN_GBP in attrs,
        learning=_u8(attrs, c.IFLA_VXLAN_LEARNING),
        l2miss=_u8(attrs, c.IFLA_VXLAN_L2MISS),
        l3miss=_u8(attrs, c.IFLA_VXLAN_L3MISS),
    )


def parse_link(payload: bytes, start: int = 0, end: int | None = None) -> LinkInfo:
    """Parse an ``RTM_NEWLINK`` payload (``ifinfomsg`` + attributes)."""
    end = len(payload) if end is None else end
    _fam, _type, index, flags, _change = c.IFINFOMSG.unpack_from(payload, start)
    attrs = parse_attrs(payload, start + 16, end)
    name = attrs.get(c.IFLA_IFNAME, b"").rstrip(b"\0").decode("utf-8", "replace")
    raw_mac = attrs.get(c.IFLA_ADDRESS)
    raw_mtu = attrs.get(c.IFLA_MTU)
    kind: str | None = None
    vx: VxlanAttrs | None = None
    raw_info = attrs.get(c.IFLA_LINKINFO)
    if raw_info:
        info = parse_attrs(raw_info, 0, len(raw_info))
        raw_kind = info.get(c.IFLA_INFO_KIND)
        if raw_kind:
            kind = raw_kind.rstrip(b"\0").decode("ascii", "replace")
        if kind == "vxlan" and c.IFLA_INFO_DATA in info:
            vx = _parse_vxlan(info[c.IFLA_INFO_DATA])
    return LinkInfo(
        ifindex=index,
        name=name,
        kind=kind,
        mac=mac_to_str(raw_mac) if raw_mac and len(raw_mac) == 6 else None,
        mtu=c.U32.unpack(raw_mtu[:4])[0] if raw_mtu else 0,
        flags=flags,
        vxlan=vx,
    )


def _ifname_attr(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) > 15 or b"/" in raw or b"\0" in raw:
        raise ValueError(f"invalid interface name {name!r} (1-15 bytes, no '/')")
    return attr(c.IFLA_IFNAME, raw + b"\0")


def get_link(sock: NetlinkSocket, ident: int | str) -> LinkInfo | None:
    """The device with this index or name, or None if there is none."""
    if isinstance(ident, int):
        body = ifinfomsg(ident) + _EXT_MASK
        what = f"look up link ifindex {ident}"
    else:
        body = ifinfomsg(0) + _ifname_attr(ident) + _EXT_MASK
        what = f"look up link {ident}"
    try:
        replies = sock.request(c.RTM_GETLINK, 0, body, what=what)
    except KernelRefused as exc:
        if exc.errno == errno_mod.ENODEV:
            return None
        raise
    for mtype, payload in replies:
        if mtype == c.RTM_NEWLINK:
            return parse_link(payload)
    return None


def list_links(sock: NetlinkSocket) -> list[LinkInfo]:
    """Every device in the namespace."""
    items = sock.dump(c.RTM_GETLINK, ifinfomsg(0) + _EXT_MASK, what="list links")
    return [parse_link(buf, s, e) for buf, s, e, t in items if t == c.RTM_NEWLINK]


def vxlan_incompatibilities(spec: VxlanSpec, existing: LinkInfo) -> list[str]:
    """Why ``existing`` cannot be reused for ``spec`` (empty: it can), as flanneld decides.

    Values only compared when both sides set them: VTEP device (> 0), local address, port
    (> 0). MTU, learning and the MAC are never compared.
    """
    if existing.kind != "vxlan" or existing.vxlan is None:
        return [f"link type: {existing.kind or 'unknown'} vs vxlan"]
    vx = existing.vxlan
    out: list[str] = []
    if vx.vni != spec.vni:
        out.append(f"vni: {vx.vni} vs {spec.vni}")
    if vx.link > 0 and spec.vtep_ifindex > 0 and vx.link != spec.vtep_ifindex:
        out.append(f"vtep (external) interface: {vx.link} vs {spec.vtep_ifindex}")
    if vx.local is not None and spec.local is not None and vx.local != spec.local:
        out.append(f"vtep (external) IP: {vx.local} vs {spec.local}")
    if vx.l2miss:
        out.append("l2miss: True vs False")
    if vx.port > 0 and spec.port > 0 and vx.port != spec.port:
        out.append(f"port: {vx.port} vs {spec.port}")
    if vx.gbp != spec.gbp:
        out.append(f"gbp: {vx.gbp} vs {spec.gbp}")
    return out


def _vxlan_body(spec: VxlanSpec, mac: str) -> bytes:
    u8 = struct.Struct("=B").pack
    data = [attr(c.IFLA_VXLAN_ID, c.U32.pack(spec.vni))]
    if spec.vtep_ifindex > 0:
        data.append(attr(c.IFLA_VXLAN_LINK, c.U32.pack(spec.vtep_ifindex)))
    if spec.local is not None:
        key = c.IFLA_VXLAN_LOCAL if spec.local.version == 4 else c.IFLA_VXLAN_LOCAL6
        data.append(attr(key, spec.local.packed))
    data += [
        attr(c.IFLA_VXLAN_TTL, u8(0)),
        attr(c.IFLA_VXLAN_TOS, u8(0)),
        attr(c.IFLA_VXLAN_LEARNING, u8(1 if spec.learning else 0)),
        attr(c.IFLA_VXLAN_L2MISS, u8(0)),
        attr(c.IFLA_VXLAN_L3MISS, u8(0)),
    ]
    if spec.port > 0:
        data.append(attr(c.IFLA_VXLAN_PORT, _BE16.pack(spec.port)))
    if spec.gbp:
        data.append(attr(c.IFLA_VXLAN_GBP, b""))
    body = ifinfomsg(0) + _ifname_attr(spec.name) + attr(c.IFLA_ADDRESS, mac_to_bytes(mac))
    if spec.mtu > 0:
        body += attr(c.IFLA_MTU, c.U32.pack(spec.mtu))
    return body + nested(
        c.IFLA_LINKINFO, attr(c.IFLA_INFO_KIND, b"vxlan"), nested(c.IFLA_INFO_DATA, *data)
    )


def _describe_spec(spec: VxlanSpec) -> str:
    parts = [f"ip link add {spec.name} type vxlan id {spec.vni}"]
    if spec.vtep_ifindex:
        parts.append(f"dev ifindex {spec.vtep_ifindex}")
    if spec.local is not None:
        parts.append(f"local {spec.local}")
    if spec.port:
        parts.append(f"dstport {spec.port}")
    if spec.gbp:
        parts.append("gbp")
    parts.append("learning" if spec.learning else "nolearning")
    return " ".join(parts)


def create_vxlan(sock: NetlinkSocket, spec: VxlanSpec) -> LinkInfo:
    """Add the vxlan device (fails with :class:`KernelRefused` EEXIST if the name is taken)."""
    mac = spec.mac if spec.mac is not None else random_mac()
    body = _vxlan_body(spec, mac)
    sock.request(c.RTM_NEWLINK, c.NLM_F_CREATE | c.NLM_F_EXCL, body, what=_describe_spec(spec))
    link = get_link(sock, spec.name)
    if link is None:
        raise KernelRefused(
            f"{_describe_spec(spec)} (device vanished right after creation)", errno_mod.ENODEV
        )
    return link


def ensure_vxlan(sock: NetlinkSocket, spec: VxlanSpec) -> LinkInfo:
    """Create the vxlan device, or reuse a compatible existing one (re-creating it otherwise).

    Afterwards ``net.ipv6.conf.<name>.accept_ra`` is set to 0 in the socket's namespace (errors
    ignored, as flanneld).
    """
    try:
        link = create_vxlan(sock, spec)
    except KernelRefused as exc:
        if exc.errno != errno_mod.EEXIST:
            raise
        existing = get_link(sock, spec.name)
        if existing is None:  # deleted between our add and our look-up
            link = create_vxlan(sock, spec)
        else:
            diffs = vxlan_incompatibilities(spec, existing)
            if diffs:
                log.warning(
                    "vxlan.device_incompatible",
                    device=spec.name,
                    differences="; ".join(diffs),
                    action="recreating device",
                )
                delete_link(sock, existing.ifindex)
                link = create_vxlan(sock, spec)
            else:
                link = existing
    run_in_socket_netns(sock.sock, disable_accept_ra, link.name)
    return link


def delete_link(sock: NetlinkSocket, ifindex: int) -> None:
    """Delete a device; an already absent one is fine."""
    try:
        sock.request(c.RTM_DELLINK, 0, ifinfomsg(ifindex), what=f"delete link ifindex {ifindex}")
    except KernelRefused as exc:
        if exc.errno != errno_mod.ENODEV:
            raise


def set_link_up(sock: NetlinkSocket, ifindex: int) -> None:
    """``ip link set dev <ifindex> up``."""
    sock.request(
        c.RTM_NEWLINK,
        0,
        ifinfomsg(ifindex, c.IFF_UP, c.IFF_UP),
        what=f"set link ifindex {ifindex} up",
    )


def set_link_mtu(sock: NetlinkSocket, ifindex: int, mtu: int) -> None:
    """``ip link set dev <ifindex> mtu <mtu>``."""
    sock.request(
        c.RTM_NEWLINK,
        0,
        ifinfomsg(ifindex) + attr(c.IFLA_MTU, c.U32.pack(mtu)),
        what=f"set link ifindex {ifindex} mtu {mtu}",
    )


def disable_accept_ra(name: str) -> None:
    """``sysctl net.ipv6.conf.<name>.accept_ra=0`` in the calling thread's namespace.

    Errors are ignored, as in flanneld (IPv6 may be disabled).
    """
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", "w") as f:
            f.write("0")
    except OSError as exc:
        log.debug("vxlan.accept_ra_not_set", device=name, error=str(exc))
