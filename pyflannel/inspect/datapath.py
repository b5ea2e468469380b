"""This node's data path, judged with the daemon's own planner against the kernel's dumps.

Per backend: vxlan (device up, MAC = the lease's VtepMAC, its address; every peer's route,
neighbour and FDB entries), host-gw (every peer's route via its public IP), udp (the TUN up with
its address, MTU and the Network route; the forwarder's socket bound; which peers the forwarder
accepts). No stale entries for subnets nobody leases any more. Device names, MTUs and plan
contexts come from the backend modules, the dumps and DirectRouting decisions from
:mod:`pyflannel.backend.kernel`: nothing here restates what the daemon does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pyflannel.backend import hostgw, udp, vxlan
from pyflannel.backend.base import Family, OwnStack, PlanContext
from pyflannel.backend.kernel import KernelView, direct_routes, read_kernel
from pyflannel.backend.plan import entry_key, plan_reconcile
from pyflannel.errors import FlannelError
from pyflannel.inspect.entries import Entry, describe_entry, entry_kind, fix_command
from pyflannel.inspect.findings import Finding
from pyflannel.inspect.host import Node, bound_udp_ports
from pyflannel.inspect.leases import vtep_mac
from pyflannel.inspect.wireguard import wireguard_findings
from pyflannel.lease import Lease
from pyflannel.netlink.ops import Delete, IPNetwork, Replace, RouteEntry

if TYPE_CHECKING:
    from pyflannel.config import NetworkConfig
    from pyflannel.netlink.links import LinkInfo

__all__ = [
    "data_path_findings",
    "evaluate_device",
    "evaluate_peers",
    "evaluate_tun",
    "is_flannel_device",
]


def is_flannel_device(link: LinkInfo) -> bool:
    """A device one of flannel's backends creates (vxlan ``flannel.N``/``flannel-v6.N``, the
    udp TUN ``flannelN``)."""
    if link.kind == "vxlan":
        return vxlan.is_device_name(link.name)
    return link.kind == "tun" and udp.is_tun_name(link.name)


def evaluate_device(
    name: str,
    link: LinkInfo | None,
    lease_data: Any,
    *,
    own_subnet: IPNetwork | None = None,
    addresses: Sequence[IPNetwork] | None = None,
) -> list[Finding]:
    """The vxlan device: exists, is vxlan, is up, MAC = the lease's VtepMAC, has the lease's
    network address (``addresses`` as networks of the device's addresses; None = unknown)."""
    if link is None:
        return [
            Finding(
                "FAIL",
                "device",
                name,
                f"device {name} does not exist; pyflanneld creates it at start-up: is it "
                "running? (it re-creates a deleted device within seconds)",
                "systemctl restart pyflanneld",
            )
        ]
    if link.kind != "vxlan":
        return [
            Finding(
                "FAIL",
                "device",
                name,
                f"{name} is a {link.kind or 'plain'} device, not vxlan: something else owns "
                "the name",
                f"ip link del {name}  # then restart pyflanneld",
            )
        ]
    out: list[Finding] = []
    if not link.up:
        out.append(Finding("FAIL", "device", name, f"{name} is down", f"ip link set dev {name} up"))
    want = vtep_mac(lease_data)
    have = (link.mac or "").lower()
    if want is None:
        out.append(
            Finding(
                "FAIL",
                "device",
                name,
                "this node's lease has no VtepMAC in its BackendData, so peers cannot reach it",
                "restart pyflanneld so that it renews the lease with its device MAC",
            )
        )
    elif have != want:
        out.append(
            Finding(
                "FAIL",
                "device",
                name,
                f"{name} has MAC {have or '(none)'} but this node's lease advertises VtepMAC "
                f"{want}: peers address their packets to {want}, so this node's pods are "
                "unreachable (flannel #1788)",
                f"ip link set dev {name} address {want}",
            )
        )
    if own_subnet is not None and addresses is not None:
        gw = own_subnet.network_address
        if not any(gw == a.network_address and a.prefixlen == a.max_prefixlen for a in addresses):
            plen = own_subnet.max_prefixlen
            out.append(
                Finding(
                    "FAIL",
                    "device",
                    name,
                    f"{name} lacks the address {gw}/{plen} of this node's lease: traffic from "
                    "this host to remote pods leaves with the wrong source address",
                    f"ip addr add {gw}/{plen} dev {name}",
                )
            )
    if not out:
        out.append(
            Finding(
                "OK",
                "device",
                name,
                f"{name} is up, MAC {have} matches the lease's VtepMAC, MTU {link.mtu}",
            )
        )
    return out


def evaluate_peers(
    leases: Iterable[Lease], kernel: KernelView, ctx: PlanContext, names: Mapping[int, str]
) -> list[Finding]:
    """Every peer's entries and every stale entry, as the daemon's reconcile would see them.

    A FAIL per missing or wrong entry (subject: the peer subnet), one per stale entry (an entry
    of ours that no lease wants), an OK per peer whose entries are all right, and a WARN per
    lease the daemon refuses to program (benign refusals such as our own lease are skipped).
    """
    leases = list(leases)
    plan = plan_reconcile(leases, kernel.routes, kernel.neighbours, kernel.fdb, ctx)
    have: dict[Any, list[Entry]] = {}
    seen: list[Entry] = [
        *kernel.routes,
        *kernel.neighbours,
        *kernel.fdb,
    ]
    for e in seen:
        have.setdefault(entry_key(e), []).append(e)

    # entry -> the peers wanting it (several when two leases share a VTEP MAC)
    owners: dict[Entry, list[IPNetwork]] = {}
    for subnet, pp in plan.state.peers.items():
        for e in pp.entries:
            owners.setdefault(e, []).append(subnet)

    wrong: dict[IPNetwork, list[Finding]] = {}
    stale: list[Finding] = []
    for op in plan.ops:
        if isinstance(op, Replace):
            want = op.entry
            peers = owners.get(want, [])
            subject = str(peers[0]) if peers else describe_entry(want, names)
            found = have.get(entry_key(want))
            if found:
                msg = (
                    f"{entry_kind(want)} wrong: have {describe_entry(found[0], names)}, want "
                    f"{describe_entry(want, names)}"
                )
            else:
                msg = f"{entry_kind(want)} missing: want {describe_entry(want, names)}"
            finding = Finding("FAIL", "peer", subject, msg, fix_command(want, names, delete=False))
            if not peers:
                stale.append(finding)
            for p in peers:
                wrong.setdefault(p, []).append(finding)
        elif isinstance(op, Delete):
            e = op.entry
            stale.append(
                Finding(
                    "FAIL",
                    "stale",
                    str(e.dst) if isinstance(e, RouteEntry) else str(getattr(e, "ip", e.mac)),
                    f"stale {describe_entry(e, names)}: no current lease wants it (a peer that "
                    "left, or an old VTEP MAC)",
                    fix_command(e, names, delete=True),
                )
            )

    out: list[Finding] = []
    for subnet, pp in sorted(
        plan.state.peers.items(), key=lambda kv: (int(kv[0].network_address), kv[0].prefixlen)
    ):
        problems = wrong.get(subnet)
        if problems:
            out += problems
            continue
        public = pp.lease.attrs.public_ip if ctx.family == 4 else pp.lease.attrs.public_ipv6
        what = ", ".join(dict.fromkeys(entry_kind(e) for e in pp.entries))
        out.append(Finding("OK", "peer", str(subnet), f"via {public}: {what} in place"))
    out += stale
    for lease, rej in plan.rejected:
        if not rej.benign:
            subject = str(lease.subnet_of(ctx.family))
            out.append(Finding("WARN", "peer", subject, f"not programmed: {rej.reason}"))
    return out


def evaluate_tun(
    name: str,
    state: udp.TunState | None,
    own_subnet: IPNetwork,
    network: IPNetwork,
    mtu: int | None,
) -> list[Finding]:
    """The udp backend's TUN against what the daemon sets up (``state`` None: it is gone;
    ``mtu`` None: the external interface, hence the expected MTU, is unknown)."""
    if state is None:
        return [
            Finding(
                "FAIL",
                "device",
                name,
                f"TUN device {name} does not exist; it lives as long as pyflanneld runs: is it "
                "running?",
                "systemctl restart pyflanneld",
            )
        ]
    gw = f"{own_subnet.network_address}/32"
    out: list[Finding] = []
    if not state.up:
        out.append(Finding("FAIL", "device", name, f"{name} is down", f"ip link set dev {name} up"))
    if not state.has_address:
        out.append(
            Finding(
                "FAIL",
                "device",
                name,
                f"{name} lacks the address {gw} of this node's lease: traffic from this host "
                "to remote pods leaves with the wrong source address",
                f"ip addr add {gw} dev {name}",
            )
        )
    if not state.has_route:
        out.append(
            Finding(
                "FAIL",
                "device",
                name,
                f"no route for the Network {network} through {name}: traffic to remote pods "
                "never reaches the forwarder",
                f"ip route replace {network} dev {name}",
            )
        )
    if mtu is not None and state.mtu != mtu:
        out.append(
            Finding(
                "WARN",
                "device",
                name,
                f"{name} MTU {state.mtu}, expected {mtu} (external MTU - {udp.ENCAP_OVERHEAD})",
                f"ip link set dev {name} mtu {mtu}",
            )
        )
    if not out:
        out.append(
            Finding(
                "OK", "device", name, f"{name} is up, has {gw}, routes {network}, MTU {state.mtu}"
            )
        )
    return out


def _udp_findings(
    node: Node, cfg: NetworkConfig, own: Lease, leases: Sequence[Lease]
) -> list[Finding]:
    """The TUN, the forwarder's socket and the peers the forwarder's table holds."""
    from pyflannel.config import udp_options

    network, own_subnet, public = cfg.network, own.subnet, own.attrs.public_ip
    if network is None or own_subnet is None:
        return [_no_family(own, 4)]
    try:
        port = udp_options(cfg).port
    except FlannelError:
        return []  # the config finding already says what is wrong
    tuns = [link for link in node.links if link.kind == "tun" and udp.is_tun_name(link.name)]
    gw = own_subnet.network_address
    link = next(
        (t for t in tuns if any(a.ip == gw for a in node.addresses.get(t.ifindex, ()))),
        tuns[0] if tuns else None,
    )
    name = link.name if link is not None else udp.TUN_NAME_PATTERN % 0
    ext = node.link_holding(public)
    mtu = udp.tun_mtu(ext.mtu) if ext is not None else None
    state = udp.read_tun(node.sock, link.ifindex, own_subnet, network) if link else None
    out = evaluate_tun(name, state, own_subnet, network, mtu)
    bound = bound_udp_ports()
    if bound is not None and port not in bound:
        out.append(
            Finding(
                "FAIL",
                "device",
                f"udp {port}",
                f"no socket is bound to UDP port {port}: the forwarder is not running, so "
                "peers' packets are dropped",
                "systemctl restart pyflanneld",
            )
        )
    ctx = udp.plan_context(
        OwnStack(4, network, own_subnet, public),
        dev_index=link.ifindex if link is not None else 0,
        ext_index=ext.ifindex if ext is not None else 0,
    )
    _, rejected = udp.plan_table(leases, ctx, cfg.subnet_len, port)
    refused = {id(lease) for lease, _ in rejected}
    for lease in sorted(leases, key=lambda le: int(le.subnet.network_address) if le.subnet else 0):
        if id(lease) not in refused:
            out.append(
                Finding(
                    "OK",
                    "peer",
                    str(lease.subnet),
                    f"via {lease.attrs.public_ip}:{port}: in the forwarder's table",
                )
            )
    for lease, rej in rejected:
        if not rej.benign:
            out.append(Finding("WARN", "peer", str(lease.subnet), f"not programmed: {rej.reason}"))
    return out


def _no_family(own: Lease, family: Family) -> Finding:
    return Finding(
        "FAIL",
        "lease",
        str(own.key_suffix),
        f"IPv{family} is enabled but this node's lease has no IPv{family} subnet or public address",
    )


def data_path_findings(
    node: Node, cfg: NetworkConfig, own: Lease, leases: Sequence[Lease]
) -> list[Finding]:
    """Device and peer findings for every enabled family of ``cfg``."""
    from pyflannel.config import vxlan_options

    if cfg.backend_type == "udp":
        return _udp_findings(node, cfg, own, leases)
    if cfg.backend_type == "wireguard":
        return wireguard_findings(own, leases)
    out: list[Finding] = []
    v4: Family = 4
    v6: Family = 6
    fams = [f for f, on in ((v4, cfg.enable_ipv4), (v6, cfg.enable_ipv6)) if on]
    direct = False
    vni = 1
    if cfg.backend_type == "vxlan":
        vx = vxlan_options(cfg)
        direct, vni = vx.direct_routing, vx.vni
    elif cfg.backend_type != "host-gw":
        return [
            Finding(
                "WARN",
                "peer",
                cfg.backend_type,
                f"data-path checks are not implemented for the {cfg.backend_type} backend",
            )
        ]
    kernel = node.kernel()
    for family in fams:
        network = cfg.network if family == 4 else cfg.ipv6_network
        own_subnet = own.subnet_of(family)
        public = own.attrs.public_ip if family == 4 else own.attrs.public_ipv6
        if network is None or own_subnet is None or public is None:
            out.append(_no_family(own, family))
            continue
        own_stack = OwnStack(family, network, own_subnet, public)
        ctx: PlanContext
        if cfg.backend_type == "vxlan":
            name = vxlan.device_name(family, vni)
            link = node.link(name)
            data = own.attrs.backend_data if family == 4 else own.attrs.backend_v6_data
            addrs = [a.network for a in node.addresses.get(link.ifindex, ())] if link else None
            out += evaluate_device(name, link, data, own_subnet=own_subnet, addresses=addrs)
            if link is None or link.kind != "vxlan":
                continue
            ctx = vxlan.plan_context(
                own_stack,
                dev_index=link.ifindex,
                ext_index=link.vxlan.link if link.vxlan is not None else 0,
                own_mac=link.mac,
            )
            if direct:
                ctx = dataclasses.replace(ctx, direct_routes=direct_routes(kernel, leases, ctx))
        else:
            ext = node.link_holding(public)
            if ext is None:
                out.append(
                    Finding(
                        "FAIL",
                        "device",
                        str(public),
                        f"no interface of this host has the lease's public IP {public}; "
                        "host-gw routes go out through it",
                    )
                )
                continue
            ctx = hostgw.plan_context(own_stack, ext_index=ext.ifindex)
        out += evaluate_peers(leases, read_kernel(kernel, ctx), ctx, node.names)
    return out
