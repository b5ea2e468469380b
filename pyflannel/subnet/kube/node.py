"""The few fields of a Kubernetes Node that flannel reads, parsed from the API's JSON. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Node", "NodeCondition", "parse_node"]


@dataclass(frozen=True, slots=True)
class NodeCondition:
    """One entry of ``status.conditions``."""

    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class Node:
    """A Node as flannel sees it. ``annotations`` is ``None`` when the object has none at all
    (flanneld panics on such a node; we treat it as not managed by flannel)."""

    name: str
    resource_version: str = ""
    annotations: Mapping[str, str] | None = field(default=None, compare=False)
    pod_cidr: str = ""
    pod_cidrs: tuple[str, ...] = ()
    conditions: tuple[NodeCondition, ...] = ()

    def annotation(self, key: str) -> str:
        """The annotation's value, ``""`` when absent (Go's map lookup)."""
        return (self.annotations or {}).get(key, "")

    def cidrs(
        self,
    ) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None, list[str]]:
        """The IPv4 and IPv6 pod CIDRs (last of each family wins, as flanneld) and the entries
        that did not parse. ``podCIDRs`` when set, else ``podCIDR``."""
        v4: ipaddress.IPv4Network | None = None
        v6: ipaddress.IPv6Network | None = None
        bad: list[str] = []
        for text in self.pod_cidrs or ((self.pod_cidr,) if self.pod_cidr else ()):
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                bad.append(text)
                continue
            if isinstance(net, ipaddress.IPv4Network):
                v4 = net
            else:
                v6 = net
        return v4, v6, bad

    def condition(self, kind: str) -> NodeCondition | None:
        """The condition of that type, if the node reports it."""
        return next((c for c in self.conditions if c.type == kind), None)


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def parse_node(obj: Mapping[str, Any]) -> Node:
    """A Node from the API's JSON object (unknown fields ignored, missing ones empty)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    raw_ann = meta.get("annotations")
    annotations = (
        {str(k): str(v) for k, v in raw_ann.items()} if isinstance(raw_ann, dict) else None
    )
    conditions = tuple(
        NodeCondition(
            type=str(c.get("type", "")),
            status=str(c.get("status", "")),
            reason=str(c.get("reason", "")),
            message=str(c.get("message", "")),
        )
        for c in status.get("conditions") or ()
        if isinstance(c, dict)
    )
    return Node(
        name=str(meta.get("name", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        annotations=annotations,
        pod_cidr=str(spec.get("podCIDR") or ""),
        pod_cidrs=_strs(spec.get("podCIDRs")),
        conditions=conditions,
    )
