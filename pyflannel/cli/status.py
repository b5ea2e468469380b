"""``pyflannel status``: the leases in etcd and the health of this node's data path.

What is shown:

- every lease under ``<prefix>/subnets/``: subnet, public IP, backend, VTEP MAC, time left,
  whether it is a reservation, and which one is *this node*'s (its subnet is subnet.env's
  ``FLANNEL_SUBNET``, or else its PublicIP is an address of this host);
- this node's data path, judged with the daemon's own planner
  (:func:`pyflannel.backend.plan.plan_reconcile`) against the kernel's dumps: the vxlan device
  is up and its MAC is the lease's VtepMAC; every peer lease has its route, neighbour and FDB
  entries (host-gw: its route via the peer's public IP); no stale entries for subnets nobody
  leases any more; the masquerade/forward rules are in place (the traffic manager's own diff).

Exit status 0 when nothing is wrong, 1 when a problem (FAIL) was found. ``--output json`` prints
one stable document (``"schema": "pyflannel-status/1"``) for scripts.

The evaluation and rendering functions at the top are pure (tested in
``tests/unit/test_status_render.py``); the I/O that feeds them is at the bottom.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pyflannel.backend.base import Family, PlanContext
from pyflannel.backend.failing_file import read_failing
from pyflannel.backend.validate import normalize_mac
from pyflannel.lease import Lease
from pyflannel.netlink.ops import (
    FdbDel,
    FdbEntry,
    FdbReplace,
    IPAddress,
    IPNetwork,
    NeighDel,
    NeighEntry,
    NeighReplace,
    RouteDel,
    RouteEntry,
    RouteReplace,
)

if TYPE_CHECKING:
    from pyflannel.cli.flags import Options
    from pyflannel.config import NetworkConfig
    from pyflannel.netlink.links import LinkInfo
    from pyflannel.netlink.nlsocket import NetlinkSocket
    from pyflannel.subnet.registry import EtcdRegistry
    from pyflannel.subnet.subnet_env import SubnetEnv

__all__ = [
    "SCHEMA",
    "Finding",
    "KernelView",
    "LeaseRow",
    "Level",
    "StatusReport",
    "count_levels",
    "describe_entry",
    "evaluate_device",
    "evaluate_peers",
    "evaluate_rules",
    "evaluate_subnet_env",
    "find_own_lease",
    "fix_command",
    "format_duration",
    "lease_rows",
    "main",
    "render_findings",
    "render_table",
    "report_document",
    "rule_findings",
]

PROG: Final = "pyflannel status"
SCHEMA: Final = "pyflannel-status/1"
# Above this many healthy peers the table shows one summary line instead of one line each.
MAX_OK_PEER_LINES: Final = 20

Level = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One checked fact: ``level``, which ``check``, about what ``subject``, a one-line
    ``message`` and, when there is one, the command that ``fix``-es it."""

    level: Level
    check: str
    subject: str
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The finding as a JSON object (stable keys)."""
        return {
            "level": self.level,
            "check": self.check,
            "subject": self.subject,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One lease as shown: text fields, times in seconds."""

    subnet: str
    ipv6_subnet: str | None
    public_ip: str
    public_ipv6: str | None
    backend: str
    vtep_mac: str | None
    expiration: float | None
    expires_in: float | None
    reservation: bool
    this_node: bool
    failing: str | None = None
    """Why the daemon quarantined this peer (e.g. ``ENETUNREACH``); None when programmed."""

    def as_dict(self) -> dict[str, Any]:
        """The row as a JSON object (stable keys)."""
        return {
            "subnet": self.subnet,
            "ipv6_subnet": self.ipv6_subnet,
            "public_ip": self.public_ip,
            "public_ipv6": self.public_ipv6,
            "backend": self.backend,
            "vtep_mac": self.vtep_mac,
            "expiration": self.expiration,
            "expires_in": None if self.expires_in is None else round(self.expires_in),
            "reservation": self.reservation,
            "this_node": self.this_node,
            "failing": self.failing,
        }


@dataclass(frozen=True, slots=True)
class KernelView:
    """What the kernel holds for one address family (dumps of the main table)."""

    routes: tuple[RouteEntry, ...] = ()
    neighbours: tuple[NeighEntry, ...] = ()
    fdb: tuple[FdbEntry, ...] = ()


@dataclass
class StatusReport:
    """Everything ``status`` found; rendered by :func:`render_table` / :func:`report_document`."""

    prefix: str
    endpoints: str
    subnet_file: str
    leases: list[LeaseRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    config: dict[str, Any] | None = None
    own_subnet: str | None = None

    @property
    def healthy(self) -> bool:
        """No FAIL finding."""
        return not any(f.level == "FAIL" for f in self.findings)


# --- pure: leases --------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``23h59m``, ``5m03s``, ``42s``; ``never`` for None, ``expired`` at or below zero."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s <= 0:
        return "expired"
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _vtep_mac(data: Any) -> str | None:
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(k, str) and k.lower() == "vtepmac":
                return normalize_mac(v) or (str(v) if v is not None else None)
    return None


def find_own_lease(
    leases: Iterable[Lease], local_ips: Iterable[IPAddress], env_subnet: IPNetwork | None
) -> Lease | None:
    """This node's lease: the one holding subnet.env's subnet, else the one whose PublicIP is
    an address of this host (the freshest if several; a reservation counts as freshest)."""
    leases = list(leases)
    if env_subnet is not None:
        for lease in leases:
            if env_subnet in (lease.subnet, lease.ipv6_subnet):
                return lease
    local = set(local_ips)
    mine = [
        le
        for le in leases
        if le.attrs.public_ip in local
        or (le.attrs.public_ipv6 is not None and le.attrs.public_ipv6 in local)
    ]
    if not mine:
        return None
    return max(mine, key=lambda le: float("inf") if le.expiration is None else le.expiration)


def _sort_key(lease: Lease) -> tuple[int, int, int]:
    net = lease.subnet if lease.subnet is not None else lease.ipv6_subnet
    if net is None:
        return (9, 0, 0)
    return (net.version, int(net.network_address), net.prefixlen)


def lease_rows(
    leases: Iterable[Lease],
    own: Lease | None,
    now: float,
    failing: Mapping[str, str] | None = None,
) -> list[LeaseRow]:
    """The lease table, sorted by subnet (pure); ``failing`` maps lease keys the daemon
    quarantined to the reason."""
    failing = failing or {}
    rows = []
    for lease in sorted(leases, key=_sort_key):
        a = lease.attrs
        rows.append(
            LeaseRow(
                subnet=str(lease.subnet) if lease.subnet is not None else "-",
                ipv6_subnet=str(lease.ipv6_subnet) if lease.ipv6_subnet is not None else None,
                public_ip=str(a.public_ip),
                public_ipv6=str(a.public_ipv6) if a.public_ipv6 is not None else None,
                # flanneld's udp and alloc backends write no BackendType at all
                backend=a.backend_type or "udp",
                vtep_mac=_vtep_mac(a.backend_data),
                expiration=lease.expiration,
                expires_in=None if lease.expiration is None else lease.expiration - now,
                reservation=lease.is_reservation,
                this_node=own is not None
                and (lease.subnet, lease.ipv6_subnet) == (own.subnet, own.ipv6_subnet),
                failing=failing.get(lease.key_suffix),
            )
        )
    return rows


# --- pure: data path -----------------------------------------------------------------------


def _name(ifindex: int, names: Mapping[int, str]) -> str:
    return names.get(ifindex, f"if{ifindex}")


def describe_entry(entry: RouteEntry | NeighEntry | FdbEntry, names: Mapping[int, str]) -> str:
    """A kernel entry the way ``ip``/``bridge`` print it."""
    if isinstance(entry, RouteEntry):
        text = f"route {entry.dst}"
        if entry.gw is not None:
            text += f" via {entry.gw}"
        if entry.ifindex:
            text += f" dev {_name(entry.ifindex, names)}"
        return text + (" onlink" if entry.onlink else "")
    if isinstance(entry, NeighEntry):
        return f"neighbour {entry.ip} lladdr {entry.mac} dev {_name(entry.ifindex, names)}"
    return f"FDB {entry.mac} dst {entry.dst} dev {_name(entry.ifindex, names)}"


def fix_command(
    entry: RouteEntry | NeighEntry | FdbEntry, names: Mapping[int, str], *, delete: bool
) -> str:
    """The ``ip``/``bridge`` command that adds (replaces) or deletes ``entry``."""
    if isinstance(entry, RouteEntry):
        verb = "del" if delete else "replace"
        six = "-6 " if entry.dst.version == 6 else ""
        text = f"ip {six}route {verb} {entry.dst}"
        if entry.gw is not None:
            text += f" via {entry.gw}"
        if entry.ifindex:
            text += f" dev {_name(entry.ifindex, names)}"
        return text + (" onlink" if entry.onlink and not delete else "")
    dev = _name(entry.ifindex, names)
    if isinstance(entry, NeighEntry):
        if delete:
            return f"ip neigh del {entry.ip} dev {dev}"
        return f"ip neigh replace {entry.ip} lladdr {entry.mac} dev {dev} nud permanent"
    if delete:
        return f"bridge fdb del {entry.mac} dev {dev} dst {entry.dst} self"
    return f"bridge fdb replace {entry.mac} dev {dev} dst {entry.dst} self permanent"


def _kind(entry: RouteEntry | NeighEntry | FdbEntry) -> str:
    if isinstance(entry, RouteEntry):
        return "route"
    return "neighbour" if isinstance(entry, NeighEntry) else "FDB entry"


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
    want = _vtep_mac(lease_data)
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
    from pyflannel.backend.plan import entry_key, plan_reconcile

    leases = list(leases)
    plan = plan_reconcile(leases, kernel.routes, kernel.neighbours, kernel.fdb, ctx)
    have: dict[Any, list[RouteEntry | NeighEntry | FdbEntry]] = {}
    seen: list[RouteEntry | NeighEntry | FdbEntry] = [
        *kernel.routes,
        *kernel.neighbours,
        *kernel.fdb,
    ]
    for e in seen:
        have.setdefault(entry_key(e), []).append(e)

    # entry -> the peers wanting it (several when two leases share a VTEP MAC)
    owners: dict[RouteEntry | NeighEntry | FdbEntry, list[IPNetwork]] = {}
    for subnet, pp in plan.state.peers.items():
        for e in pp.entries:
            owners.setdefault(e, []).append(subnet)

    wrong: dict[IPNetwork, list[Finding]] = {}
    stale: list[Finding] = []
    for op in plan.ops:
        if isinstance(op, RouteReplace | NeighReplace | FdbReplace):
            want = op.entry
            peers = owners.get(want, [])
            subject = str(peers[0]) if peers else describe_entry(want, names)
            found = have.get(entry_key(want))
            if found:
                msg = (
                    f"{_kind(want)} wrong: have {describe_entry(found[0], names)}, want "
                    f"{describe_entry(want, names)}"
                )
            else:
                msg = f"{_kind(want)} missing: want {describe_entry(want, names)}"
            finding = Finding("FAIL", "peer", subject, msg, fix_command(want, names, delete=False))
            if not peers:
                stale.append(finding)
            for p in peers:
                wrong.setdefault(p, []).append(finding)
        elif isinstance(op, RouteDel | NeighDel | FdbDel):
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
        what = ", ".join(dict.fromkeys(_kind(e) for e in pp.entries))
        out.append(Finding("OK", "peer", str(subnet), f"via {public}: {what} in place"))
    out += stale
    for lease, rej in plan.rejected:
        if not rej.benign:
            subject = str(lease.subnet if ctx.family == 4 else lease.ipv6_subnet)
            out.append(Finding("WARN", "peer", subject, f"not programmed: {rej.reason}"))
    return out


def evaluate_rules(
    mode: str, problems: Sequence[str] | None, error: str | None = None
) -> list[Finding]:
    """The traffic manager's diff (its own problem strings) as findings."""
    if error is not None:
        return [Finding("WARN", "rules", mode, f"could not check the {mode} rules: {error}")]
    if not problems:
        return [Finding("OK", "rules", mode, f"flannel's {mode} masquerade/forward rules in place")]
    return [
        Finding(
            "FAIL",
            "rules",
            mode,
            p,
            "pyflanneld repairs its rules on the next resync (--iptables-resync, default 5 s); "
            "if this persists, restart it",
        )
        for p in problems
    ]


def evaluate_subnet_env(
    path: str,
    env: SubnetEnv | None,
    env_error: str | None,
    own: Lease | None,
    network: IPNetwork | None,
) -> list[Finding]:
    """subnet.env against this node's lease and the config's Network (pure)."""
    if env_error is not None:
        return [Finding("FAIL", "subnet.env", path, env_error)]
    if env is None:
        return [
            Finding(
                "FAIL",
                "subnet.env",
                path,
                f"{path} does not exist: pyflanneld writes it once it is ready, and the CNI "
                "plugin fails with 'no such file or directory' until then (flannel #2253)",
                "systemctl status pyflanneld  # is it running and ready?",
            )
        ]
    subnet = env.subnet.network if env.subnet is not None else None
    out: list[Finding] = []
    if own is None:
        out.append(
            Finding(
                "FAIL",
                "subnet.env",
                path,
                f"{path} names FLANNEL_SUBNET={env.subnet} but no lease in etcd holds it: the "
                "lease expired or was deleted (pyflanneld exits when it loses its lease)",
                "systemctl restart pyflanneld",
            )
        )
        return out
    if subnet is not None and own.subnet is not None and subnet != own.subnet:
        out.append(
            Finding(
                "FAIL",
                "subnet.env",
                path,
                f"FLANNEL_SUBNET={env.subnet} but this node's lease is {own.subnet}: pods get "
                "addresses another node's route points at",
                "systemctl restart pyflanneld",
            )
        )
    if network is not None and env.network is not None and env.network != network:
        out.append(
            Finding(
                "FAIL",
                "subnet.env",
                path,
                f"FLANNEL_NETWORK={env.network} but the network config says {network}: "
                "pyflanneld was started before the config changed",
                "systemctl restart pyflanneld",
            )
        )
    if not out:
        out.append(
            Finding(
                "OK",
                "subnet.env",
                path,
                f"FLANNEL_SUBNET={env.subnet} FLANNEL_MTU={env.mtu} matches this node's lease",
            )
        )
    return out


# --- pure: rendering -------------------------------------------------------------------------


def count_levels(findings: Iterable[Finding]) -> dict[str, int]:
    """``{"ok": n, "warn": n, "fail": n}``."""
    counts = {"ok": 0, "warn": 0, "fail": 0}
    for f in findings:
        counts[f.level.lower()] += 1
    return counts


def render_findings(findings: Sequence[Finding], *, collapse_ok_peers: bool = True) -> list[str]:
    """One line per finding (``LEVEL  subject  message``), fixes indented below."""
    lines: list[str] = []
    shown = list(findings)
    ok_peers = [f for f in shown if f.level == "OK" and f.check == "peer"]
    if collapse_ok_peers and len(ok_peers) > MAX_OK_PEER_LINES:
        first = shown.index(ok_peers[0])
        shown = [f for f in shown if not (f.level == "OK" and f.check == "peer")]
        shown.insert(
            first,
            Finding("OK", "peer", f"{len(ok_peers)} peers", "routes and entries in place"),
        )
    cw = max((len(f.check) for f in shown), default=0)
    sw = max((len(f.subject) for f in shown), default=0)
    for f in shown:
        lines.append(f"  {f.level:<4}  {f.check:<{cw}}  {f.subject:<{sw}}  {f.message}")
        if f.fix and f.level != "OK":
            lines.append(f"  {'':<4}  {'':<{cw}}  {'':<{sw}}  fix: {f.fix}")
    return lines


def render_table(report: StatusReport) -> str:
    """The human-readable report."""
    out = [f"leases in etcd ({report.prefix}/subnets/ at {report.endpoints}): {len(report.leases)}"]
    header = (
        "SUBNET",
        "PUBLIC IP",
        "BACKEND",
        "VTEP MAC",
        "EXPIRES IN",
        "RESERVED",
        "FAILING",
        "NODE",
    )
    rows: list[tuple[str, ...]] = [header]
    for r in report.leases:
        subnet = r.subnet if r.ipv6_subnet is None else f"{r.subnet} {r.ipv6_subnet}"
        public = r.public_ip if r.public_ipv6 is None else f"{r.public_ip} {r.public_ipv6}"
        rows.append(
            (
                subnet,
                public,
                r.backend,
                r.vtep_mac or "-",
                format_duration(r.expires_in) if not r.reservation else "never",
                "yes" if r.reservation else "no",
                r.failing or "-",
                "this node" if r.this_node else "",
            )
        )
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            cells = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
            out.append(("  " + cells).rstrip())
    out.append("")
    where = f" (lease {report.own_subnet})" if report.own_subnet else ""
    out.append(f"this node{where}:")
    out += render_findings(report.findings)
    out.append("")
    counts = count_levels(report.findings)
    if report.healthy:
        warn = f", {counts['warn']} warning(s)" if counts["warn"] else ""
        out.append(f"healthy{warn}")
    else:
        out.append(f"{counts['fail']} problem(s) found, {counts['warn']} warning(s)")
    return "\n".join(out) + "\n"


def report_document(report: StatusReport) -> dict[str, Any]:
    """The ``--output json`` document (``schema`` names its version)."""
    return {
        "schema": SCHEMA,
        "healthy": report.healthy,
        "etcd": {"endpoints": report.endpoints.split(","), "prefix": report.prefix},
        "config": report.config,
        "subnet_file": report.subnet_file,
        "own_subnet": report.own_subnet,
        "leases": [r.as_dict() for r in report.leases],
        "findings": [f.as_dict() for f in report.findings],
        "summary": count_levels(report.findings),
    }


# --- I/O -------------------------------------------------------------------------------------


def _local_addresses(sock: NetlinkSocket, links: Sequence[LinkInfo]) -> dict[int, list[Any]]:
    from pyflannel.netlink import consts as c
    from pyflannel.netlink.addresses import list_addresses

    out: dict[int, list[Any]] = {}
    for link in links:
        out[link.ifindex] = [
            *list_addresses(sock, link.ifindex, c.AF_INET),
            *list_addresses(sock, link.ifindex, c.AF_INET6),
        ]
    return out


def _direct_routes(
    sock: NetlinkSocket, leases: Iterable[Lease], ctx: PlanContext
) -> dict[IPAddress, int]:
    """DirectRouting decisions as the daemon makes them (``ip route get`` without gateway)."""
    from pyflannel.errors import NetlinkError
    from pyflannel.netlink.dump import route_get

    out: dict[IPAddress, int] = {}
    for lease in leases:
        ip = lease.attrs.public_ip if ctx.family == 4 else lease.attrs.public_ipv6
        if ip is None or ip.is_unspecified or ip in out:
            continue
        try:
            found = route_get(sock, ip)
        except NetlinkError:
            continue
        if found is None or found.gw is not None or found.local or found.ifindex == 0:
            continue
        if found.ifindex != ctx.dev_index:
            out[ip] = found.ifindex
    return out


def _kernel_view(sock: NetlinkSocket, ctx: PlanContext) -> KernelView:
    from pyflannel.netlink import consts as c
    from pyflannel.netlink.dump import dump_fdb, dump_neighbours, dump_routes

    family = c.AF_INET if ctx.family == 4 else c.AF_INET6
    routes = dump_routes(sock, None, family)
    neighs = dump_neighbours(sock, ctx.dev_index, family) if ctx.is_vxlan else []
    fdb = dump_fdb(sock, ctx.dev_index) if ctx.is_vxlan else []
    return KernelView(tuple(routes), tuple(neighs), tuple(fdb))


@dataclass
class _Node:
    """This host's kernel state, read once."""

    sock: NetlinkSocket
    links: list[LinkInfo]
    addresses: dict[int, list[Any]]

    @property
    def names(self) -> dict[int, str]:
        return {link.ifindex: link.name for link in self.links}

    @property
    def local_ips(self) -> set[IPAddress]:
        return {a.ip for addrs in self.addresses.values() for a in addrs}

    def link(self, name: str) -> LinkInfo | None:
        return next((link for link in self.links if link.name == name), None)

    def link_holding(self, ip: IPAddress | None) -> LinkInfo | None:
        for link in self.links:
            if any(a.ip == ip for a in self.addresses.get(link.ifindex, ())):
                return link
        return None


def read_node() -> _Node:
    """Links and addresses of the current network namespace."""
    from pyflannel.netlink.links import list_links
    from pyflannel.netlink.nlsocket import NetlinkSocket

    sock = NetlinkSocket()
    links = list_links(sock)
    return _Node(sock, links, _local_addresses(sock, links))


def data_path_findings(
    node: _Node, cfg: NetworkConfig, own: Lease, leases: Sequence[Lease]
) -> list[Finding]:
    """Device and peer findings for every enabled family of ``cfg``."""
    from pyflannel.config import vxlan_options

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
    for family in fams:
        network = cfg.network if family == 4 else cfg.ipv6_network
        own_subnet = own.subnet if family == 4 else own.ipv6_subnet
        public = own.attrs.public_ip if family == 4 else own.attrs.public_ipv6
        if network is None or own_subnet is None or public is None:
            out.append(
                Finding(
                    "FAIL",
                    "lease",
                    str(own.key_suffix),
                    f"IPv{family} is enabled but this node's lease has no IPv{family} subnet "
                    "or public address",
                )
            )
            continue
        if cfg.backend_type == "vxlan":
            name = f"flannel.{vni}" if family == 4 else f"flannel-v6.{vni}"
            link = node.link(name)
            data = own.attrs.backend_data if family == 4 else own.attrs.backend_v6_data
            addrs = [a.network for a in node.addresses.get(link.ifindex, ())] if link else None
            out += evaluate_device(name, link, data, own_subnet=own_subnet, addresses=addrs)
            if link is None or link.kind != "vxlan":
                continue
            ext_index = link.vxlan.link if link.vxlan is not None else 0
            ctx = PlanContext(
                family=family,
                backend_type="vxlan",
                network=network,
                own_subnet=own_subnet,
                own_public_ip=public,
                dev_index=link.ifindex,
                ext_index=ext_index,
                own_mac=link.mac,
            )
            if direct:
                routes = _direct_routes(node.sock, leases, ctx)
                ctx = dataclasses.replace(ctx, direct_routes=routes)
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
            ctx = PlanContext(
                family=family,
                backend_type="host-gw",
                network=network,
                own_subnet=own_subnet,
                own_public_ip=public,
                dev_index=ext.ifindex,
                ext_index=ext.ifindex,
            )
        out += evaluate_peers(leases, _kernel_view(node.sock, ctx), ctx, node.names)
    return out


async def _rule_differences(
    cfg: NetworkConfig, own: Lease, opts: Options, ip_masq: bool
) -> list[str]:
    """The traffic manager's own diff of the wanted rules against the kernel (read-only)."""
    from pyflannel.trafficmngr import IptablesManager, NftablesManager, spec_from
    from pyflannel.trafficmngr._exec import Runner
    from pyflannel.trafficmngr.iptables import IptablesTool
    from pyflannel.trafficmngr.nftables import list_nft_table
    from pyflannel.trafficmngr.plan import diff_iptables, diff_nft

    spec = spec_from(
        cfg,
        own,
        ip_masq=ip_masq,
        forward_rules=opts.iptables_forward_rules,
        random_fully_disable=opts.ip_masq_fully_random_disable,
    )
    runner = Runner()
    problems: list[str] = []
    if cfg.enable_nftables:
        runner.require("nft")
        nft = NftablesManager(spec)
        for family in spec.families():
            nft_table = await nft.wanted(family)
            listing = await list_nft_table(runner, nft_table.family, nft_table.name)
            problems += diff_nft(nft_table, listing)
        return problems
    ipt = IptablesManager(spec)
    for family in spec.families():
        tool = IptablesTool(family, runner)
        for table, (chains, unwanted) in (await ipt.wanted(family)).items():
            if not chains and not unwanted:
                continue
            saved = await tool.save(table)
            diff = diff_iptables(table, saved, chains, unwanted)
            problems += [f"{tool.binary} {p}" for p in diff]
    return problems


async def rule_findings(
    cfg: NetworkConfig, own: Lease, opts: Options, ip_masq: bool | None
) -> list[Finding]:
    """Findings for the masquerade/forward rules. ``ip_masq`` None means unknown (no
    subnet.env, no flag): both ways are compared and the closer one is reported, with a WARN
    saying so."""
    from pyflannel.errors import FlannelError

    mode = "nftables" if cfg.enable_nftables else "iptables"
    try:
        if ip_masq is not None:
            return evaluate_rules(mode, await _rule_differences(cfg, own, opts, ip_masq))
        on = await _rule_differences(cfg, own, opts, True)
        off = await _rule_differences(cfg, own, opts, False)
    except FlannelError as exc:
        return evaluate_rules(mode, None, str(exc))
    guess, problems = (True, on) if len(on) <= len(off) else (False, off)
    flag = "true" if guess else "false"
    return [
        Finding(
            "WARN",
            "rules",
            mode,
            f"pyflanneld's --ip-masq is unknown (no FLANNEL_IPMASQ in subnet.env); the rules "
            f"were checked as for --ip-masq={flag}, which they match best",
            f"pass --ip-masq={flag} (or the other value) to check against it",
        ),
        *evaluate_rules(mode, problems),
    ]


def _subnets_text(lease: Lease) -> str:
    return " ".join(str(s) for s in (lease.subnet, lease.ipv6_subnet) if s is not None)


def _config_summary(cfg: NetworkConfig) -> dict[str, Any]:
    return {
        "network": str(cfg.network) if cfg.network is not None else None,
        "ipv6_network": str(cfg.ipv6_network) if cfg.ipv6_network is not None else None,
        "backend": cfg.backend_type,
        "nftables": cfg.enable_nftables,
    }


async def load_config(
    reg: EtcdRegistry, opts: Options
) -> tuple[NetworkConfig | None, list[Finding]]:
    """The network config, or the findings that explain why there is none."""
    from pyflannel.cli.config_cmd import (
        check_config_text,
        missing_config_summary,
        probe_v2_config,
    )
    from pyflannel.cli.etcd_tool_opts import etcdctl_command
    from pyflannel.errors import ConfigError
    from pyflannel.subnet.registry import ConfigNotFound

    key = reg.config_key
    try:
        raw = await reg.get_config()
    except ConfigNotFound:
        probe = probe_v2_config(opts, key)
        message, fix = missing_config_summary(key, probe, etcdctl_command(opts))
        return None, [Finding("FAIL", "config", key, message, fix)]
    try:
        cfg = check_config_text(raw)
    except ConfigError as exc:
        return None, [
            Finding(
                "FAIL",
                "config",
                key,
                f"invalid network config: {exc}",
                "pyflannel config validate FILE; pyflannel config set FILE",
            )
        ]
    return cfg, []


def read_env(path: str) -> tuple[SubnetEnv | None, str | None]:
    """subnet.env (None if absent) or the reason it could not be read."""
    from pyflannel.errors import ConfigError
    from pyflannel.subnet.subnet_env import read_subnet_env

    if not os.path.lexists(path):
        return None, None
    try:
        return read_subnet_env(path), None
    except ConfigError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"


async def collect(opts: Options, *, ip_masq_known: bool = False) -> StatusReport:
    """Read etcd and the kernel and evaluate everything (raises RegistryError when etcd is
    unreachable or refuses us). ``ip_masq_known``: ``opts.ip_masq`` came from a flag or the
    environment rather than the default."""
    from pyflannel.cli.etcd_tool_opts import new_registry

    report = StatusReport(opts.etcd_prefix, "", opts.subnet_file)
    async with new_registry(opts) as reg:
        report.prefix = reg.prefix
        report.endpoints = reg.endpoints_text
        leases, _ = await reg.list_leases(with_ttl=True)
        cfg, cfg_findings = await load_config(reg, opts)
    now = time.time()
    env, env_error = read_env(opts.subnet_file)
    node = read_node()
    try:
        env_subnet = env.subnet.network if env is not None and env.subnet is not None else None
        own = find_own_lease(leases, node.local_ips, env_subnet)
        failing = read_failing(Path(opts.subnet_file).parent)
        report.leases = lease_rows(leases, own, now, failing)
        report.config = _config_summary(cfg) if cfg is not None else None
        report.own_subnet = _subnets_text(own) if own is not None else None
        report.findings += cfg_findings
        device_names = {"flannel.", "flannel-v6."}
        has_device = any(
            link.name.startswith(tuple(device_names)) and link.kind == "vxlan"
            for link in node.links
        )
        if own is None and env is None and env_error is None and not has_device:
            report.findings.append(
                Finding(
                    "WARN",
                    "node",
                    "this host",
                    f"this host holds no lease and has no {opts.subnet_file}: it is not a "
                    "flannel node (only the leases are shown)",
                )
            )
            return report
        network = cfg.network if cfg is not None else None
        report.findings += evaluate_subnet_env(opts.subnet_file, env, env_error, own, network)
        if own is None:
            report.findings.append(
                Finding(
                    "FAIL",
                    "lease",
                    "this host",
                    "no lease in etcd belongs to this host (none holds subnet.env's subnet, "
                    "none has a PublicIP of this host)",
                    "systemctl restart pyflanneld",
                )
            )
            return report
        if cfg is None:
            return report
        report.findings += data_path_findings(node, cfg, own, leases)
        ip_masq: bool | None = opts.ip_masq if ip_masq_known else None
        if env is not None and env.ipmasq is not None:
            ip_masq = env.ipmasq  # what the daemon actually ran with
        report.findings += await rule_findings(cfg, own, opts, ip_masq)
        return report
    finally:
        node.sock.close()


def _parser() -> argparse.ArgumentParser:
    from pyflannel.cli.etcd_tool_opts import (
        ETCD_FLAGS,
        SUBNET_FILE_FLAGS,
        TRAFFIC_FLAGS,
        add_flanneld_flags,
        add_output_flag,
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Leases in etcd and this node's data-path health (exit 1 on problems).",
        allow_abbrev=False,
    )
    add_output_flag(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    add_flanneld_flags(parser, (*ETCD_FLAGS, *SUBNET_FILE_FLAGS, *TRAFFIC_FLAGS))
    return parser


def main(argv: Sequence[str]) -> int:
    """``pyflannel status``; returns 0 when healthy, 1 when problems were found."""
    if "--kube-subnet-mgr" in argv or os.environ.get("FLANNELD_KUBE_SUBNET_MGR") == "true":
        # kube mode: Nodes instead of etcd leases (pyflannel/subnet/kube/inspect.py).
        from pyflannel.subnet.kube.inspect import main as kube_main

        return kube_main("status", argv)
    from pyflannel.cli.etcd_tool_opts import (
        ETCD_FLAGS,
        SUBNET_FILE_FLAGS,
        TRAFFIC_FLAGS,
        options_from,
        print_error,
        setup_tool_logging,
    )
    from pyflannel.errors import FlannelError

    args = _parser().parse_args(list(argv))
    setup_tool_logging(args.verbose)
    try:
        opts = options_from(args, (*ETCD_FLAGS, *SUBNET_FILE_FLAGS, *TRAFFIC_FLAGS), os.environ)
        import trio

        masq_known = args.ff_ip_masq is not None or bool(os.environ.get("FLANNELD_IP_MASQ"))
        report = trio.run(functools.partial(collect, opts, ip_masq_known=masq_known))
    except FlannelError as exc:
        if args.output == "json":
            doc = {
                "schema": SCHEMA,
                "healthy": False,
                "error": exc.message,
                "hint": exc.hint,
                "findings": [
                    Finding("FAIL", "etcd", "etcd", str(exc)).as_dict(),
                ],
            }
            print(json.dumps(doc, indent=2))
        print_error(PROG, exc)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.output == "json":
        print(json.dumps(report_document(report), indent=2))
    else:
        print(render_table(report), end="")
    return 0 if report.healthy else 1
