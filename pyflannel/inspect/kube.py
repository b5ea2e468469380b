"""What ``pyflannel status`` and ``doctor`` show in kube mode: every Node as flannel sees it
(podCIDRs, annotations, NetworkUnavailable) and findings about this node and its peers.

:func:`collect` reads the API (one list); :func:`evaluate` and the report's ``render`` and
``document`` are pure, so the command (``pyflannel.cli.kube_inspect``) only chooses the output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pyflannel.config import parse_network_config
from pyflannel.errors import FlannelError
from pyflannel.inspect.findings import (
    Finding,
    count_levels,
    findings_document,
    render_findings,
)
from pyflannel.lease import LeaseDecodeError
from pyflannel.subnet.kube.annotations import AnnotationKeys, is_managed, lease_from_node
from pyflannel.subnet.kube.node import Node

__all__ = ["KubeReport", "NodeRow", "collect", "evaluate"]


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One Node in flannel's terms."""

    name: str
    pod_cidrs: str
    managed: bool
    backend_type: str
    public_ip: str
    vtep_mac: str
    network_unavailable: str
    refused: str = ""


@dataclass(frozen=True, slots=True)
class KubeReport:
    """Rows and findings for one node's view of the cluster."""

    server: str
    node: str
    rows: tuple[NodeRow, ...]
    findings: tuple[Finding, ...] = field(default=())

    @property
    def healthy(self) -> bool:
        """No FAIL finding."""
        return count_levels(self.findings)["fail"] == 0

    def render(self) -> str:
        """The human table and the findings."""
        header = (
            "NODE",
            "PODCIDRS",
            "FLANNEL",
            "BACKEND",
            "PUBLIC IP",
            "VTEP MAC",
            "NETWORKUNAVAILABLE",
        )
        rows = [header] + [
            (
                r.name + (" *" if r.name == self.node else ""),
                r.pod_cidrs,
                "refused" if r.refused else ("yes" if r.managed else "no"),
                r.backend_type,
                r.public_ip,
                r.vtep_mac,
                r.network_unavailable,
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        out = [f"Nodes at {self.server}: {len(self.rows)} (* = this node)"]
        out += [
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        out += render_findings(self.findings)
        return "\n".join(out) + "\n"

    def document(self) -> dict[str, Any]:
        """The JSON document (``--output json``)."""
        return {
            "mode": "kube",
            "server": self.server,
            "node": self.node,
            "healthy": self.healthy,
            "nodes": [asdict(r) for r in self.rows],
            **findings_document(self.findings),
        }


def _mac(node: Node, keys: AnnotationKeys) -> str:
    try:
        return str(json.loads(node.annotation(keys.backend_data) or "null")["VtepMAC"])
    except (ValueError, KeyError, TypeError):
        return "-"


def evaluate(
    nodes: Sequence[Node], own: str, keys: AnnotationKeys, net_conf: str | None, server: str = ""
) -> KubeReport:
    """Rows and findings from a Node listing (pure)."""
    config = None
    findings: list[Finding] = []
    if net_conf is not None:
        try:
            config = parse_network_config(net_conf)
        except FlannelError as exc:
            findings.append(Finding("FAIL", "net-conf", "net-conf.json", exc.message, exc.hint))
    rows: list[NodeRow] = []
    for n in sorted(nodes, key=lambda n: n.name):
        refused = ""
        if config is not None and is_managed(n, keys) and n.name != own:
            try:
                lease_from_node(n, keys, config)
            except LeaseDecodeError as exc:
                refused = exc.message
                findings.append(
                    Finding(
                        "WARN",
                        "peer",
                        n.name,
                        f"{refused}: not programmed",
                        f"fix the {keys.prefix}* annotations of Node {n.name}",
                    )
                )
        cond = n.condition("NetworkUnavailable")
        rows.append(
            NodeRow(
                name=n.name,
                pod_cidrs=",".join(n.pod_cidrs or ((n.pod_cidr,) if n.pod_cidr else ())) or "-",
                managed=is_managed(n, keys),
                backend_type=n.annotation(keys.backend_type) or "-",
                public_ip=n.annotation(keys.public_ip) or "-",
                vtep_mac=_mac(n, keys),
                network_unavailable=f"{cond.status} ({cond.reason})" if cond else "-",
                refused=refused,
            )
        )
    if own:
        me = next((n for n in nodes if n.name == own), None)
        if me is None:
            findings.append(
                Finding(
                    "FAIL",
                    "node",
                    own,
                    f"Node {own!r} does not exist: the daemon waits for it",
                    "check NODE_NAME, and that the kubelet has registered this node",
                )
            )
        elif not (me.pod_cidr or me.pod_cidrs):
            findings.append(
                Finding(
                    "FAIL",
                    "podCIDR",
                    own,
                    f"Node {own!r} has no podCIDR",
                    "enable the controller manager's --allocate-node-cidrs",
                )
            )
        else:
            findings.append(
                Finding(
                    "OK",
                    "podCIDR",
                    own,
                    f"Node {own!r} has podCIDR(s) {', '.join(me.pod_cidrs or (me.pod_cidr,))}",
                )
            )
            if not is_managed(me, keys):
                findings.append(
                    Finding(
                        "FAIL",
                        "annotations",
                        own,
                        f"Node {own!r} has no {keys.kube_managed}=true: pyflanneld has not "
                        "started here",
                        "check the pyflanneld log on this node",
                    )
                )
            else:
                findings.append(Finding("OK", "annotations", own, f"published ({keys.prefix}*)"))
            cond = me.condition("NetworkUnavailable")
            if cond is None or cond.status != "False":
                findings.append(
                    Finding(
                        "WARN",
                        "condition",
                        own,
                        f"Node {own!r} NetworkUnavailable is {cond.status if cond else 'unset'}: "
                        "the daemon is not ready yet or cannot patch nodes/status",
                        "check the daemon log and its RBAC (nodes/status: patch)",
                    )
                )
            else:
                findings.append(
                    Finding("OK", "condition", own, f"NetworkUnavailable=False ({cond.reason})")
                )
    return KubeReport(server, own, tuple(rows), tuple(findings))


async def collect(conn: Any, own: str, keys: AnnotationKeys, net_conf: str | None) -> KubeReport:
    """List the Nodes and evaluate them (KubeApiError when the API cannot be read)."""
    from pyflannel.subnet.kube.client import KubeClient

    client = KubeClient(conn)
    try:
        listing = await client.list_nodes()
    finally:
        await client.aclose()
    return evaluate(listing.nodes, own, keys, net_conf, conn.server)
