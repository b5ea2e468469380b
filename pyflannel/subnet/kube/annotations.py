"""flanneld's Node annotations: key names, the values this node publishes, and peer leases
read back from them. Byte-compatible with flanneld v0.20.2 (flannel-kube.md §4, §7). Pure.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from dataclasses import dataclass
from typing import TypeVar

from pyflannel.config import NetworkConfig
from pyflannel.errors import ConfigError
from pyflannel.lease import Lease, LeaseAttrs, LeaseDecodeError, go_json_dumps
from pyflannel.subnet.kube.node import Node

_Addr = TypeVar("_Addr", ipaddress.IPv4Address, ipaddress.IPv6Address)
_Net = TypeVar("_Net", ipaddress.IPv4Network, ipaddress.IPv6Network)

__all__ = [
    "DEFAULT_PREFIX",
    "LEASE_SECONDS",
    "AnnotationKeys",
    "annotation_keys",
    "condition_patch",
    "is_managed",
    "lease_from_node",
    "own_annotation_patch",
]

DEFAULT_PREFIX = "flannel.alpha.coreos.com"
LEASE_SECONDS = 24 * 60 * 60  # flanneld sets expiration = now + 24 h and never renews it
# flanneld's check, searched (Go's regexp.MatchString is not anchored at the start).
_PREFIX_RE = re.compile(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
# Backends whose leases may carry an IPv6 part (flanneld forces the others IPv4-only).
_DUAL_STACK_BACKENDS = frozenset({"vxlan", "host-gw", "wireguard"})


@dataclass(frozen=True, slots=True)
class AnnotationKeys:
    """The annotation names for one ``--kube-annotation-prefix``."""

    prefix: str
    kube_managed: str
    backend_data: str
    backend_v6_data: str
    backend_type: str
    public_ip: str
    public_ipv6: str
    public_ip_overwrite: str
    public_ipv6_overwrite: str


def annotation_keys(prefix: str = DEFAULT_PREFIX) -> AnnotationKeys:
    """Normalise ``prefix`` as flanneld does and build the keys; ConfigError when invalid."""
    slashes = prefix.count("/")
    if slashes > 1:
        raise ConfigError(
            f"invalid --kube-annotation-prefix {prefix!r}: prefix can contain at most single slash",
            hint="use e.g. flannel.alpha.coreos.com (the default) or example.com/name",
        )
    if slashes == 0:
        prefix += "/"
    if not prefix.endswith(("/", "-")):
        prefix += "-"
    if _PREFIX_RE.search(prefix) is None:
        raise ConfigError(
            f"invalid --kube-annotation-prefix {prefix!r}: prefix must be in a format: "
            "fqdn/[0-9a-z-_]*",
            hint="use lower-case letters, digits, '-', '_' and dots, e.g. example.com/net",
        )
    return AnnotationKeys(
        prefix=prefix,
        kube_managed=prefix + "kube-subnet-manager",
        backend_data=prefix + "backend-data",
        backend_v6_data=prefix + "backend-v6-data",
        backend_type=prefix + "backend-type",
        public_ip=prefix + "public-ip",
        public_ipv6=prefix + "public-ipv6",
        public_ip_overwrite=prefix + "public-ip-overwrite",
        public_ipv6_overwrite=prefix + "public-ipv6-overwrite",
    )


def is_managed(node: Node, keys: AnnotationKeys) -> bool:
    """flanneld only looks at nodes whose ``kube-subnet-manager`` annotation is ``true``."""
    return node.annotation(keys.kube_managed) == "true"


def own_annotation_patch(node: Node, attrs: LeaseAttrs, keys: AnnotationKeys) -> dict[str, str]:
    """The annotations flanneld would change on our own Node (empty: send no patch).

    Same rules as flanneld's AcquireLease: nothing is sent when every value already matches;
    otherwise backend-type and kube-subnet-manager always, backend-data + public-ip unless the
    backend is vxlan without data, and the IPv6 pair when the backend publishes IPv6. A
    ``public-ip-overwrite`` annotation replaces the detected address.
    """
    data = go_json_dumps(attrs.backend_data)
    v6data = go_json_dumps(attrs.backend_v6_data)
    public = str(attrs.public_ip)
    public6 = attrs.public_ipv6.compressed if attrs.public_ipv6 is not None else ""
    over = node.annotation(keys.public_ip_overwrite)
    over6 = node.annotation(keys.public_ipv6_overwrite)
    want: dict[str, str] = {}
    v4_stale = (
        node.annotation(keys.backend_data) != data
        or node.annotation(keys.backend_type) != attrs.backend_type
        or node.annotation(keys.public_ip) != public
        or node.annotation(keys.kube_managed) != "true"
        or (over != "" and over != public)
    )
    v6_stale = bool(public6) and (
        node.annotation(keys.backend_v6_data) != v6data
        or node.annotation(keys.backend_type) != attrs.backend_type
        or node.annotation(keys.public_ipv6) != public6
        or node.annotation(keys.kube_managed) != "true"
        or (over6 != "" and over6 != public6)
    )
    if v4_stale:
        want[keys.backend_type] = attrs.backend_type
        if attrs.backend_type != "vxlan" or data != "null":
            want[keys.backend_data] = data
            want[keys.public_ip] = over or public
        want[keys.kube_managed] = "true"
    if v6_stale:
        bt = attrs.backend_type
        writes_v6 = (
            (bt == "vxlan" and v6data != "null")
            or (bt == "wireguard" and v6data != "null")
            or bt == "host-gw"
        )
        want[keys.backend_type] = bt
        if writes_v6:
            want[keys.backend_v6_data] = v6data
            want[keys.public_ipv6] = over6 or public6
        want[keys.kube_managed] = "true"
    # A strategic-merge patch carries only what differs from the cached node.
    # An absent key differs from an empty value (udp's backend-type is ""), as in Go's diff.
    have = node.annotations or {}
    return {k: v for k, v in sorted(want.items()) if have.get(k) != v}


def condition_patch(now: float | None = None) -> dict[str, object]:
    """flanneld's NetworkUnavailable=False patch body (both timestamps = now, RFC 3339 ``Z``)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    return {
        "status": {
            "conditions": [
                {
                    "type": "NetworkUnavailable",
                    "status": "False",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                    "reason": "FlannelIsUp",
                    "message": "Flannel is running on this node",
                }
            ]
        }
    }


def _raw_json(text: str, what: str, node: str) -> object:
    try:
        return json.loads(text) if text else None
    except ValueError as exc:
        raise LeaseDecodeError(
            f"node {node!r}: annotation {what} is not valid JSON: {exc}"
        ) from exc


def _family_part(
    node: Node,
    address: type[_Addr],
    ip_key: str,
    podcidr: _Net | None,
    data_key: str,
) -> tuple[_Addr, object, _Net]:
    """One address family's half of a peer's lease: its public-ip annotation parsed by
    ``address`` (``IPv4Address``/``IPv6Address``), its podCIDR and its backend-data JSON."""
    family = address.__name__.removesuffix("Address")  # "IPv4" / "IPv6", as in the messages
    text = node.annotation(ip_key)
    try:
        public = address(text)
    except ValueError as exc:
        raise LeaseDecodeError(
            f"node {node.name!r}: annotation {ip_key}={text!r} is not an {family} address"
        ) from exc
    if podcidr is None:
        raise LeaseDecodeError(f"node {node.name!r} has no {family} podCIDR")
    return public, _raw_json(node.annotation(data_key), data_key, node.name), podcidr


def lease_from_node(node: Node, keys: AnnotationKeys, config: NetworkConfig) -> Lease:
    """A peer's lease from its Node (flanneld's ``nodeToLease``).

    Raises :class:`LeaseDecodeError` naming the node and the annotation for anything flanneld
    would also fail to turn into a lease (bad public-ip, bad podCIDR) and for backend data that
    is not JSON. Hostile but well-formed values pass: the backend's validator refuses them.
    """
    v4net, v6net, bad = node.cidrs()
    if bad:
        raise LeaseDecodeError(f"node {node.name!r}: podCIDR {bad[0]!r} is not a CIDR")
    backend_type = node.annotation(keys.backend_type)
    public_ip = ipaddress.IPv4Address("0.0.0.0")
    data: object = None
    subnet: ipaddress.IPv4Network | None = None
    if config.enable_ipv4:
        public_ip, data, subnet = _family_part(
            node, ipaddress.IPv4Address, keys.public_ip, v4net, keys.backend_data
        )
    public6: ipaddress.IPv6Address | None = None
    v6data: object = None
    subnet6: ipaddress.IPv6Network | None = None
    if config.enable_ipv6 and backend_type in _DUAL_STACK_BACKENDS:
        public6, v6data, subnet6 = _family_part(
            node, ipaddress.IPv6Address, keys.public_ipv6, v6net, keys.backend_v6_data
        )
    return Lease(
        subnet=subnet,
        ipv6_subnet=subnet6,
        attrs=LeaseAttrs(
            public_ip=public_ip,
            public_ipv6=public6,
            backend_type=backend_type,
            backend_data=data,
            backend_v6_data=v6data,
        ),
        # Peers' leases never expire in kube mode; None keeps equal leases equal.
        expiration=None,
    )
