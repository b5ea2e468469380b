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

The judging is :mod:`pyflannel.inspect`'s (pure parts tested in
``tests/unit/test_status_render.py``); this module gathers, renders and exits.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pyflannel.backend.failing_file import read_failing
from pyflannel.cli import etcd_tool_opts as tool_opts
from pyflannel.inspect import findings
from pyflannel.inspect.datapath import data_path_findings, is_flannel_device
from pyflannel.inspect.findings import Finding, FindingsReport
from pyflannel.inspect.host import read_node
from pyflannel.inspect.leases import LeaseRow, find_own_lease, lease_rows, subnets_text
from pyflannel.inspect.rules import rule_findings
from pyflannel.inspect.sources import config_summary, evaluate_subnet_env, load_config, read_env

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from pyflannel.cli.flags import Options
    from pyflannel.errors import FlannelError

__all__ = ["SCHEMA", "TOOL", "StatusReport", "collect", "main"]

SCHEMA: Final = "pyflannel-status/1"


@dataclass(kw_only=True)
class StatusReport(FindingsReport):
    """Everything ``status`` found; printed by :meth:`render` / :meth:`document`.
    ``healthy`` (the document's word) is :attr:`ok`."""

    prefix: str
    endpoints: str
    subnet_file: str
    leases: list[LeaseRow] = field(default_factory=list)
    config: dict[str, Any] | None = None
    own_subnet: str | None = None

    @property
    def healthy(self) -> bool:
        """No FAIL finding."""
        return self.ok

    def render(self) -> str:
        """The human-readable report."""
        out = [f"leases in etcd ({self.prefix}/subnets/ at {self.endpoints}): {len(self.leases)}"]
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
        for r in self.leases:
            subnet = r.subnet if r.ipv6_subnet is None else f"{r.subnet} {r.ipv6_subnet}"
            public = r.public_ip if r.public_ipv6 is None else f"{r.public_ip} {r.public_ipv6}"
            rows.append(
                (
                    subnet,
                    public,
                    r.backend,
                    r.vtep_mac or "-",
                    findings.format_duration(r.expires_in) if not r.reservation else "never",
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
        where = f" (lease {self.own_subnet})" if self.own_subnet else ""
        out.append(f"this node{where}:")
        out += findings.render_findings(self.findings)
        warnings = findings.count_levels(self.findings)["warn"]
        healthy = f"healthy, {warnings} warning(s)" if warnings else "healthy"
        out += ["", findings.verdict_line(self.findings, healthy)]
        return "\n".join(out) + "\n"

    def document(self) -> dict[str, Any]:
        """The ``--output json`` document (``schema`` names its version)."""
        return {
            "schema": SCHEMA,
            "healthy": self.healthy,
            "etcd": {"endpoints": self.endpoints.split(","), "prefix": self.prefix},
            "config": self.config,
            "subnet_file": self.subnet_file,
            "own_subnet": self.own_subnet,
            "leases": [r.as_dict() for r in self.leases],
            **findings.findings_document(self.findings),
        }


async def collect(opts: Options, *, ip_masq_known: bool = False) -> StatusReport:
    """Read etcd and the kernel and evaluate everything (raises RegistryError when etcd is
    unreachable or refuses us). ``ip_masq_known``: ``opts.ip_masq`` came from a flag or the
    environment rather than the default."""
    report = StatusReport(prefix=opts.etcd_prefix, endpoints="", subnet_file=opts.subnet_file)
    async with tool_opts.new_registry(opts) as reg:
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
        report.config = config_summary(cfg) if cfg is not None else None
        report.own_subnet = subnets_text(own) if own is not None else None
        report.findings += cfg_findings
        has_device = any(is_flannel_device(link) for link in node.links)
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
        node.close()


def _error_document(exc: FlannelError) -> dict[str, Any]:
    # Scripts reading --output json get a document even when etcd could not be read.
    return {
        "schema": SCHEMA,
        "healthy": False,
        "error": exc.message,
        "hint": exc.hint,
        "findings": [Finding("FAIL", "etcd", "etcd", str(exc)).as_dict()],
    }


async def _collect(args: argparse.Namespace, opts: Options) -> StatusReport:
    # The rule check knows the wanted --ip-masq only when a flag or the environment set it.
    masq_known = args.ff_ip_masq is not None or bool(os.environ.get("FLANNELD_IP_MASQ"))
    return await collect(opts, ip_masq_known=masq_known)


TOOL: Final = tool_opts.ReportTool(
    name="status",
    description="Leases in etcd and this node's data-path health (exit 1 on problems).",
    flags=(*tool_opts.ETCD_FLAGS, *tool_opts.SUBNET_FILE_FLAGS, *tool_opts.TRAFFIC_FLAGS),
    collect=_collect,
    error_document=_error_document,
)


def main(argv: Sequence[str]) -> int:
    """``pyflannel status``; returns 0 when healthy, 1 when problems were found (kube mode: the
    Nodes')."""
    return tool_opts.run_report_tool(TOOL, argv)
