"""Pure planning of the WireGuard peers: wanted leases → one peer per (device, key) → the UAPI
change that turns a device's current peer list into that.

Per lease (flanneld's ``handleSubnetEvents``, §6 of the reference):

* each enabled family is validated like every backend's peers
  (:func:`~pyflannel.backend.validate.validate_peer`), then its payload
  (``BackendData``/``BackendV6Data`` = ``{"PublicKey": <base64>, "Port": <uint16>}``) must carry a
  valid key that is not ours; a ``Port`` that is not a uint16 refuses the lease (flanneld's JSON
  decode fails there too);
* two leases advertising one key cannot both be peers (WireGuard has one peer per key, and the
  second would take over the first's AllowedIPs): the lease created first keeps it, the other is
  refused — the rule the vxlan backend applies to a VTEP MAC;
* ``separate``: an IPv4 peer on ``flannel-wg`` (AllowedIPs = Subnet, endpoint PublicIP) and an
  IPv6 peer on ``flannel-wg-v6``; other modes: one peer on ``flannel-wg`` with every subnet and
  the endpoint chosen by the mode (``auto``: flanneld's ``selectMode`` table).

Endpoint port: the peer's advertised ``Port`` of that family (flanneld HEAD), falling back to our
own port for payloads without one (flanneld v0.20 peers). In the single-tunnel modes the peer's
one device listens on ``ListenPort``, so its IPv4 payload's Port is used for either endpoint:
flanneld HEAD dials ``ListenPortV6`` for IPv6 there, which only works when both ports are equal
(docs/compatibility.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from pyflannel.backend.base import Family, PlanContext
from pyflannel.backend.validate import Peer, Rejection, validate_peer
from pyflannel.backend.wireguard.keys import KeyError_, decode_key
from pyflannel.backend.wireguard.options import DEVICE_NAME, DEVICE_NAME_V6, Mode
from pyflannel.backend.wireguard.uapi import DeviceState, Endpoint, PeerSet, PeerState, SetDevice
from pyflannel.lease import JSONValue, Lease
from pyflannel.netlink.ops import IPAddress, IPNetwork

__all__ = [
    "DeviceSpec",
    "PeerPlan",
    "WgContext",
    "device_specs",
    "diff_device",
    "go_is_private",
    "lease_payload",
    "plan_peers",
]

_GO_PRIVATE: Final = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("fc00::/7"),
)


def go_is_private(ip: IPAddress) -> bool:
    """Go's ``net.IP.IsPrivate`` (RFC 1918 and fc00::/7 only; Python's is_private is wider)."""
    return any(ip.version == n.version and ip in n for n in _GO_PRIVATE)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device of the mode: its name, listen port and the families routed through it."""

    name: str
    port: int
    families: tuple[Family, ...]


def device_specs(
    mode: Mode, ipv4: bool, ipv6: bool, port: int, port_v6: int
) -> tuple[DeviceSpec, ...]:
    """flanneld's devices: ``separate`` one per enabled family, else one ``flannel-wg``."""
    fams: tuple[Family, ...] = tuple(f for f, on in ((4, ipv4), (6, ipv6)) if on)  # type: ignore[misc]
    if mode == "separate":
        out = []
        if ipv4:
            out.append(DeviceSpec(DEVICE_NAME, port, (4,)))
        if ipv6:
            out.append(DeviceSpec(DEVICE_NAME_V6, port_v6, (6,)))
        return tuple(out)
    return (DeviceSpec(DEVICE_NAME, port, fams),)


def lease_payload(public_key: bytes, port: int) -> dict[str, JSONValue]:
    """Our BackendData / BackendV6Data, in flanneld HEAD's field order."""
    from pyflannel.backend.wireguard.keys import encode_key

    return {"PublicKey": encode_key(public_key), "Port": port}


@dataclass(frozen=True, slots=True)
class WgContext:
    """What planning needs about this node: per-family validation contexts, our key, the mode,
    the devices, and the peer settings (PSK, keepalive) from the Backend options."""

    mode: Mode
    devices: tuple[DeviceSpec, ...]
    contexts: Mapping[Family, PlanContext]
    own_key: bytes
    listen_port: int
    listen_port_v6: int
    psk: bytes | None = None
    keepalive: int = 0
    # Our external addresses (for auto's choice), not necessarily the advertised public IPs.
    ext_ipv4: IPAddress | None = None
    ext_ipv6: IPAddress | None = None


@dataclass(frozen=True, slots=True)
class PeerPlan:
    """Wanted peers per device name (by public key), the leases refused, and which lease each
    peer key belongs to (for status)."""

    peers: Mapping[str, Mapping[bytes, PeerSet]]
    rejected: tuple[tuple[Lease, Rejection], ...] = ()
    owners: Mapping[bytes, Lease] = field(default_factory=dict)


def _payload(data: JSONValue, field_name: str) -> tuple[bytes, int] | str:
    """(key, port) from one payload, Go-decoded; or the reason it is refused."""
    if not isinstance(data, dict):
        return f"{field_name} must be a JSON object with PublicKey, got {_short(data)}"
    raw_key: JSONValue = None
    port: JSONValue = None
    for k, v in data.items():  # Go: case-insensitive keys, the last one wins
        lk = str(k).lower()
        if lk == "publickey":
            raw_key = v
        elif lk == "port":
            port = v
    if raw_key is None:
        return f"{field_name}.PublicKey is missing"
    try:
        key = decode_key(raw_key)
    except KeyError_ as exc:
        return f"{field_name}.PublicKey is not a WireGuard key: {exc}"
    if port is None:
        return key, 0
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        return f"{field_name}.Port must be an integer in 0..65535, got {_short(port)}"
    return key, port


def _short(v: JSONValue) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class _Candidate:
    lease: Lease
    peers: dict[Family, Peer]
    keys: dict[Family, bytes]
    ports: dict[Family, int]


def _candidate(lease: Lease, ctx: WgContext) -> _Candidate | Rejection:
    peers: dict[Family, Peer] = {}
    keys: dict[Family, bytes] = {}
    ports: dict[Family, int] = {}
    benign: Rejection | None = None
    for family, pctx in ctx.contexts.items():
        res = validate_peer(lease, pctx)
        if isinstance(res, Rejection):
            if not res.benign:
                return res
            benign = res
            continue
        name = "BackendData" if family == 4 else "BackendV6Data"
        data = lease.attrs.backend_data if family == 4 else lease.attrs.backend_v6_data
        got = _payload(data, name)
        if isinstance(got, str):
            return Rejection(f"lease {lease.key_suffix}: {got}")
        key, port = got
        if key == ctx.own_key:
            return Rejection(
                f"lease {lease.key_suffix}: {name}.PublicKey is our own public key; "
                "another node copied our key file"
            )
        peers[family], keys[family], ports[family] = res, key, port
    if not peers:
        assert benign is not None
        return benign
    if ctx.mode != "separate" and len(set(keys.values())) > 1:
        return Rejection(
            f"lease {lease.key_suffix}: BackendData and BackendV6Data carry different public "
            f"keys, but Mode {ctx.mode} uses one tunnel per peer"
        )
    return _Candidate(lease, peers, keys, ports)


def _select_family(c: _Candidate, ctx: WgContext) -> Family | None:
    """The endpoint family of a single-tunnel peer (flanneld's selectMode for auto)."""
    if ctx.mode == "ipv4":
        return 4 if 4 in c.peers else None
    if ctx.mode == "ipv6":
        return 6 if 6 in c.peers else None
    if 6 not in c.peers:
        return 4 if 4 in c.peers else None
    if 4 not in c.peers:
        return 6
    v4, v6 = c.peers[4].public_ip, c.peers[6].public_ip
    if not go_is_private(v4) and ctx.ext_ipv4 is not None:
        return 4
    if not go_is_private(v6) and ctx.ext_ipv6 is not None and not go_is_private(ctx.ext_ipv6):
        return 6
    return 4


def _peer_set(key: bytes, endpoint: Endpoint, nets: Iterable[IPNetwork], ctx: WgContext) -> PeerSet:
    return PeerSet(
        public_key=key,
        preshared_key=ctx.psk,
        endpoint=endpoint,
        keepalive=ctx.keepalive,
        allowed_ips=tuple(sorted(nets, key=lambda n: (n.version, int(n.network_address)))),
    )


def plan_peers(leases: Iterable[Lease], ctx: WgContext) -> PeerPlan:
    """The wanted peers of ``leases`` per device, and the leases refused (pure)."""
    rejected: list[tuple[Lease, Rejection]] = []
    candidates: list[_Candidate] = []
    for lease in leases:
        res = _candidate(lease, ctx)
        if isinstance(res, Rejection):
            rejected.append((lease, res))
        else:
            candidates.append(res)
    # One key, one peer: the lease created first keeps it.
    candidates.sort(key=lambda c: (c.lease.create_revision, c.lease.key_suffix))
    owners: dict[bytes, Lease] = {}
    peers: dict[str, dict[bytes, PeerSet]] = {d.name: {} for d in ctx.devices}
    for c in candidates:
        clash = next((owners[k] for k in c.keys.values() if k in owners), None)
        if clash is not None:
            rejected.append(
                (
                    c.lease,
                    Rejection(
                        f"lease {c.lease.key_suffix}: its PublicKey is already used by lease "
                        f"{clash.key_suffix}; two nodes cannot share a WireGuard key"
                    ),
                )
            )
            continue
        for k in c.keys.values():
            owners[k] = c.lease
        if ctx.mode == "separate":
            for dev in ctx.devices:
                fam = dev.families[0]
                if fam not in c.peers:
                    continue
                own_port = ctx.listen_port if fam == 4 else ctx.listen_port_v6
                port = c.ports[fam] or own_port
                peer = c.peers[fam]
                peers[dev.name][c.keys[fam]] = _peer_set(
                    c.keys[fam], (peer.public_ip, port), [peer.subnet], ctx
                )
            continue
        chosen = _select_family(c, ctx)
        if chosen is None:
            want = "PublicIP" if ctx.mode == "ipv4" else "PublicIPv6"
            rejected.append(
                (c.lease, Rejection(f"lease {c.lease.key_suffix}: Mode {ctx.mode} needs {want}"))
            )
            continue
        key = c.keys[6] if 6 in c.keys else c.keys[4]  # flanneld: the last family parsed wins
        port = c.ports.get(4) or ctx.listen_port
        dev = ctx.devices[0]
        peers[dev.name][key] = _peer_set(
            key, (c.peers[chosen].public_ip, port), (p.subnet for p in c.peers.values()), ctx
        )
    return PeerPlan(peers=peers, rejected=tuple(rejected), owners=owners)


def _same(want: PeerSet, have: PeerState) -> bool:
    return (
        want.endpoint == have.endpoint
        and want.keepalive == have.keepalive
        and (want.preshared_key or bytes(32)) == have.preshared_key
        and set(want.allowed_ips) == set(have.allowed_ips)
    )


def diff_device(want: Mapping[bytes, PeerSet], have: DeviceState) -> SetDevice:
    """The ``set`` that makes the device hold exactly ``want``: changed or missing peers are
    (re)written, peers not wanted (stale leases, rotated keys, foreign ones) are removed."""
    current = {p.public_key: p for p in have.peers}
    ops: list[PeerSet] = [PeerSet(public_key=k, remove=True) for k in current if k not in want]
    ops.extend(p for k, p in want.items() if k not in current or not _same(p, current[k]))
    return SetDevice(peers=tuple(ops))


def count_peers(plan: PeerPlan) -> int:
    """How many peers the plan programs over all devices."""
    return sum(len(v) for v in plan.peers.values())
