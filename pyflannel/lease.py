"""Leases and lease events, and their byte-compatible etcd codecs.

A *lease* is one node's claim on one subnet: the etcd key ``<prefix>/subnets/10.5.72.0-24``
(optionally ``&<ipv6>-<len>`` for dual stack) holding the JSON of :class:`LeaseAttrs`.
The encoders here produce exactly the bytes flanneld writes (Go ``json.Marshal``: compact, field
order ``PublicIP, PublicIPv6, BackendType, BackendData, BackendV6Data``, ``"PublicIPv6":null``),
and the decoders accept everything flanneld accepts (case-insensitive keys, unknown keys ignored).
Everything here is pure: no I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from pyflannel.errors import ConfigError

__all__ = [
    "Event",
    "EventKind",
    "JSONValue",
    "Lease",
    "LeaseAttrs",
    "LeaseDecodeError",
    "decode_attrs",
    "encode_attrs",
    "go_json_dumps",
    "make_subnet_key",
    "parse_subnet_key",
    "subnet_key_suffix",
]

JSONValue = Any  # what json.loads returns; kept loose on purpose (raw backend data)

# flanneld's regex (pkg/subnet/subnet.go), deliberately not anchored at the start: the key is
# matched with its prefix still attached. Note the unescaped dots, copied as is: "10.5.72x0-24"
# would match in flanneld too, and ipaddress then rejects it below.
_SUBNET_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")


_ZERO_IPV4 = ipaddress.IPv4Address("0.0.0.0")


class LeaseDecodeError(ConfigError):
    """A lease key or value that flanneld would also skip."""


class EventKind(enum.IntEnum):
    """Same numbering as flanneld's ``lease.EventType``."""

    ADDED = 0
    REMOVED = 1


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    """The JSON value stored under a lease key."""

    public_ip: ipaddress.IPv4Address = _ZERO_IPV4
    public_ipv6: ipaddress.IPv6Address | None = None
    backend_type: str = ""
    backend_data: JSONValue = None
    backend_v6_data: JSONValue = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A subnet lease as read from (or to be written to) etcd.

    ``expiration`` is a wall-clock UNIX time, or ``None`` for a reservation (a key written
    without an etcd lease, which never expires). ``etcd_lease_id`` is 0 for reservations.
    """

    subnet: ipaddress.IPv4Network | None
    attrs: LeaseAttrs
    ipv6_subnet: ipaddress.IPv6Network | None = None
    expiration: float | None = None
    etcd_lease_id: int = 0
    mod_revision: int = field(default=0, compare=False)
    # etcd's create revision of the key: the older of two leases claiming one VTEP MAC wins.
    create_revision: int = field(default=0, compare=False)

    @property
    def is_reservation(self) -> bool:
        """True when the key carries no etcd lease (flannel's documented reservation)."""
        return self.etcd_lease_id == 0

    @property
    def key_suffix(self) -> str:
        """The part after ``<prefix>/subnets/``."""
        return subnet_key_suffix(self.subnet, self.ipv6_subnet)

    def subnet_of(self, family: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The lease's subnet of one address family (4 or 6), None when it has none."""
        return self.subnet if family == 4 else self.ipv6_subnet


@dataclass(frozen=True, slots=True)
class Event:
    """A change of a peer's lease, as handed to a backend."""

    kind: EventKind
    lease: Lease


def subnet_key_suffix(
    subnet: ipaddress.IPv4Network | None, ipv6_subnet: ipaddress.IPv6Network | None = None
) -> str:
    """``10.5.72.0-24`` or ``10.5.72.0-24&2001:cafe:42:1::-64`` (Go's compressed v6 form)."""
    # flanneld writes IPv6-only leases with the zero IPv4 network in front.
    v4 = "0.0.0.0-0" if subnet is None else f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is None:
        return v4
    return f"{v4}&{ipv6_subnet.network_address.compressed}-{ipv6_subnet.prefixlen}"


def make_subnet_key(
    prefix: str,
    subnet: ipaddress.IPv4Network | None,
    ipv6_subnet: ipaddress.IPv6Network | None = None,
) -> str:
    """The full etcd key of a lease, e.g. ``/coreos.com/network/subnets/10.5.72.0-24``."""
    return f"{prefix.rstrip('/')}/subnets/{subnet_key_suffix(subnet, ipv6_subnet)}"


def parse_subnet_key(
    key: str,
) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]:
    """Parse a lease key (with or without its prefix) the way flanneld does.

    Raises :class:`LeaseDecodeError` naming the key when flanneld would skip it.
    """
    m = _SUBNET_KEY_RE.search(key)
    if m is None:
        raise LeaseDecodeError(f"lease key {key!r} is not of the form <ip>-<prefixlen>")
    try:
        v4 = ipaddress.IPv4Network(f"{m.group(1)}/{int(m.group(2))}", strict=False)
        v6 = None
        if m.group(3) is not None:
            v6 = ipaddress.IPv6Network(f"{m.group(3)}/{int(m.group(4))}", strict=False)
    except ValueError as exc:
        raise LeaseDecodeError(f"lease key {key!r} holds an invalid subnet: {exc}") from exc
    # flanneld parses "10.5.100.5-24" as 10.5.100.0/24: a second key for another node's subnet
    # (its Removed event would unprogram that node). Every writer uses the network address.
    for net, text in ((v4, m.group(1)), (v6, m.group(3))):
        if (
            net is not None
            and text is not None
            and ipaddress.ip_address(text) != net.network_address
        ):
            raise LeaseDecodeError(
                f"lease key {key!r} has host bits set (the subnet is {net}); lease keys hold"
                " network addresses only: delete this key"
            )
    subnet = None if (v4.prefixlen == 0 and v6 is not None) else v4
    return subnet, v6


def go_json_dumps(value: JSONValue) -> str:
    """Serialise like Go's ``json.Marshal``: compact, HTML-safe escapes, UTF-8 kept."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def encode_attrs(attrs: LeaseAttrs) -> str:
    """The lease value exactly as flanneld writes it."""
    parts = [
        f'"PublicIP":{go_json_dumps(str(attrs.public_ip))}',
        '"PublicIPv6":'
        + ("null" if attrs.public_ipv6 is None else go_json_dumps(attrs.public_ipv6.compressed)),
    ]
    if attrs.backend_type:
        parts.append(f'"BackendType":{go_json_dumps(attrs.backend_type)}')
    if attrs.backend_data is not None:
        parts.append(f'"BackendData":{go_json_dumps(attrs.backend_data)}')
    if attrs.backend_v6_data is not None:
        parts.append(f'"BackendV6Data":{go_json_dumps(attrs.backend_v6_data)}')
    return "{" + ",".join(parts) + "}"


def decode_attrs(raw: bytes | str, *, key: str = "?") -> LeaseAttrs:
    """Parse a lease value like Go's ``json.Unmarshal`` into ``LeaseAttrs``.

    Keys match case-insensitively, unknown keys are ignored, ``null`` leaves the default.
    Raises :class:`LeaseDecodeError` naming ``key`` for anything flanneld would reject.
    """
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LeaseDecodeError(f"lease {key}: value is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise LeaseDecodeError(f"lease {key}: value must be a JSON object")
    fields: dict[str, JSONValue] = {}
    for k, v in obj.items():
        fields[str(k).lower()] = v
    try:
        pub = fields.get("publicip")
        public_ip = _ZERO_IPV4 if pub is None else ipaddress.IPv4Address(_str(pub))
        pub6 = fields.get("publicipv6")
        public_ipv6 = None if pub6 is None else ipaddress.IPv6Address(_str(pub6))
        btype = fields.get("backendtype")
        # Interned, like the backend data's keys below: every lease repeats the same few
        # strings, and at 10k leases separate copies cost ~1.5 MB.
        backend_type = "" if btype is None else sys.intern(_str(btype))
    except (ValueError, TypeError) as exc:
        raise LeaseDecodeError(f"lease {key}: {exc}") from exc
    return LeaseAttrs(
        public_ip=public_ip,
        public_ipv6=public_ipv6,
        backend_type=backend_type,
        backend_data=_interned_keys(fields.get("backenddata")),
        backend_v6_data=_interned_keys(fields.get("backendv6data")),
    )


def _interned_keys(value: JSONValue) -> JSONValue:
    """A backend data object with its keys interned (``VtepMAC``, ``VNI``, …: shared by every
    lease instead of one copy each); anything else unchanged."""
    if not isinstance(value, dict):
        return value
    return {sys.intern(k): v for k, v in value.items()}


def _str(value: JSONValue) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a JSON string, got {type(value).__name__} {value!r}")
    return value
