"""The flannel network config (``<prefix>/config`` in etcd): model, defaults, validation.

:func:`parse_network_config` accepts exactly what flanneld's ``ParseConfig`` +
``CheckNetworkConfig`` accept, with Go ``encoding/json`` semantics: keys match case-insensitively
(an exact match is preferred, the last occurrence wins), unknown keys are ignored, JSON ``null``
leaves a plain field at its default, numbers must fit the Go field type, and the CIDR / IP fields
are parsed like flannel's ``ip.IP4Net`` / ``ip.IP4`` / ``ip.IP6`` unmarshalers. Validation errors
carry flanneld's exact message (``ConfigError.message``) plus a one-line hint.

Deliberate differences from flanneld:

- A config without ``Backend`` selects ``vxlan`` (flanneld's code picks ``udp``, its docs say
  vxlan).
- Backend types flanneld knows but pyflannel does not implement (ipip, ipsec, ...) are
  refused at parse time instead of after the interface was chosen.
- ``IPv6Network`` must be an IPv6 CIDR (flanneld silently mis-parses an IPv4 CIDR there), and
  VXLAN ``VNI``/``Port``/``MTU`` and the UDP ``Port`` are range-checked.

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog
from pydantic import BaseModel, ConfigDict

from pyflannel.errors import ConfigError

__all__ = [
    "DEFAULT_BACKEND_TYPE",
    "SUPPORTED_BACKENDS",
    "NetworkConfig",
    "UdpOptions",
    "VxlanOptions",
    "check_network_for_node",
    "network_warnings",
    "node_network_conflict",
    "parse_network_config",
    "udp_options",
    "vxlan_options",
]

_log = structlog.get_logger("pyflannel.config")

DEFAULT_BACKEND_TYPE: Final = "vxlan"
SUPPORTED_BACKENDS: Final = ("vxlan", "host-gw", "udp", "wireguard")
# Registered by flanneld (some on Windows only) but not implemented here.
_UPSTREAM_ONLY_BACKENDS: Final = frozenset({"ipip", "ipsec", "alloc", "extension", "tencent-vpc"})
# Removed from flanneld in v0.20.0; flanneld itself says "unknown backend type" for them.
_REMOVED_BACKENDS: Final = frozenset({"aws-vpc", "gce", "ali-vpc"})

_UINT64_MAX: Final = 2**64 - 1
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_VNI_MAX: Final = 2**24 - 1

_SUPPORTED_HINT: Final = (
    'set "Backend": {"Type": "vxlan"}; pyflannel supports vxlan, host-gw, udp and wireguard'
)

_FIELD_HINTS: Final = {
    "EnableIPv4": 'set "EnableIPv4" to true or false',
    "EnableIPv6": 'set "EnableIPv6" to true or false',
    "EnableNFTables": 'set "EnableNFTables" to true or false',
    "Network": 'set "Network" to an IPv4 CIDR string such as "10.5.0.0/16"',
    "IPv6Network": 'set "IPv6Network" to an IPv6 CIDR string such as "2001:db8:42::/56"',
    "SubnetMin": 'set "SubnetMin" to an IPv4 address string such as "10.5.1.0", or leave it out',
    "SubnetMax": 'set "SubnetMax" to an IPv4 address string such as "10.5.255.0", or leave it out',
    "IPv6SubnetMin": 'set "IPv6SubnetMin" to an IPv6 address string, or leave it out',
    "IPv6SubnetMax": 'set "IPv6SubnetMax" to an IPv6 address string, or leave it out',
    "SubnetLen": 'set "SubnetLen" to a whole number such as 24, or leave it out',
    "IPv6SubnetLen": 'set "IPv6SubnetLen" to a whole number such as 64, or leave it out',
}


class NetworkConfig(BaseModel):
    """A validated network config with every default applied.

    ``subnet_len``/``subnet_min``/``subnet_max`` (and their IPv6 twins) are filled in when the
    corresponding stack is enabled. ``backend`` is the raw ``Backend`` object with its keys as
    written (``{}`` when the config has none); ``backend_type`` is its lower-cased ``Type``.
    """

    model_config = ConfigDict(frozen=True)

    network: ipaddress.IPv4Network | None = None
    subnet_len: int = 0
    subnet_min: ipaddress.IPv4Address | None = None
    subnet_max: ipaddress.IPv4Address | None = None
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    enable_nftables: bool = False
    ipv6_network: ipaddress.IPv6Network | None = None
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: ipaddress.IPv6Address | None = None
    ipv6_subnet_max: ipaddress.IPv6Address | None = None
    backend_type: str = DEFAULT_BACKEND_TYPE
    backend: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class VxlanOptions:
    """``Backend`` options of the vxlan backend. ``port`` 0 = kernel default 8472, ``mtu`` 0 =
    external interface MTU."""

    vni: int = 1
    port: int = 0
    gbp: bool = False
    direct_routing: bool = False
    learning: bool = False
    mtu: int = 0


@dataclass(frozen=True, slots=True)
class UdpOptions:
    """``Backend`` options of the udp backend."""

    port: int = 8285


# --------------------------------------------------------------------------------------------
# Go encoding/json emulation


class _JSONNumber(str):
    """A JSON number literal with a fraction or exponent, kept verbatim.

    Go decides int-vs-float by the literal (``24.0`` does not fit a ``uint``), so floats are kept
    as their source text until a field type asks for them.
    """

    __slots__ = ()


class _JSONError(Exception):
    """A Go ``encoding/json`` error; ``str()`` is Go's message, ``field`` the Go field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _reject_constant(name: str) -> Any:
    # Python accepts NaN/Infinity, Go does not.
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


class _PairsList(list[tuple[str, Any]]):
    """What ``json.loads`` builds for an object before :func:`_mark_objects` runs."""

    __slots__ = ()


class _Obj(list[tuple[str, Any]]):
    """A decoded JSON object: its (key, value) pairs in source order, duplicates kept."""

    __slots__ = ()


def _mark_objects(value: Any) -> Any:
    """Tell objects (pairs lists) from arrays after decoding, recursively."""
    if isinstance(value, _PairsList):
        return _Obj((k, _mark_objects(v)) for k, v in value)
    if isinstance(value, list):
        return [_mark_objects(v) for v in value]
    return value


def _load_json_objects(raw: str | bytes) -> Any:
    """Decode JSON, turning objects into :class:`_Obj` pair lists (order and duplicates kept)."""
    if isinstance(raw, bytes | bytearray):
        raw = bytes(raw).decode("utf-8", errors="replace")
    try:
        decoded = json.loads(
            raw,
            object_pairs_hook=_PairsList,
            parse_float=_JSONNumber,
            parse_constant=_reject_constant,
        )
        return _mark_objects(decoded)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"invalid network config: not valid JSON: {err.msg} at line {err.lineno} "
            f"column {err.colno}",
            hint='write the config as a JSON object, e.g. {"Network": "10.5.0.0/16"}',
        ) from None
    except (ValueError, RecursionError) as err:
        raise ConfigError(
            f"invalid network config: not valid JSON: {err}",
            hint='write the config as a JSON object, e.g. {"Network": "10.5.0.0/16"}',
        ) from None


def _kind(value: Any) -> str:
    """Go's name for a JSON value's kind, for both the marked tree (``_Obj``, ``_JSONNumber``)
    and plain ``json.loads`` values (the backend options)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    # _JSONNumber is a str subclass: test it before str.
    if isinstance(value, int | float | _JSONNumber):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _Obj | dict):
        return "object"
    return "array"


def _literal(value: Any) -> str:
    return str(value)


def _to_plain(value: Any) -> Any:
    """Turn decoded JSON (pairs, number literals) into ordinary Python values."""
    if isinstance(value, _Obj):
        return {k: _to_plain(v) for k, v in value}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, _JSONNumber):
        return float(value)
    return value


def _fold(name: str) -> str:
    # Go matches keys with Unicode simple folding; casefold is the closest stdlib equivalent.
    return name.casefold()


def _match_fields(
    pairs: Iterable[tuple[str, Any]], fields: Mapping[str, object]
) -> list[tuple[str, str, Any]]:
    """Map each (key, value) of a JSON object to (Go field, key, value), in source order.

    ``pairs`` is a decoded object (:class:`_Obj`) or a plain dict's ``items()``; ``fields`` is
    keyed by JSON key (Go tag or field name). A key equal to a tag wins over a case-insensitive
    match, as in Go; unmatched keys are dropped.
    """
    folded = {_fold(tag): tag for tag in fields}
    out: list[tuple[str, str, Any]] = []
    for key, value in pairs:
        tag = key if key in fields else folded.get(_fold(key))
        if tag is not None:
            out.append((tag, key, value))
    return out


def _type_error(kind: str, literal: str | None, struct: str, field: str, gotype: str) -> str:
    what = kind if literal is None else f"{kind} {literal}"
    return f"json: cannot unmarshal {what} into Go struct field {struct}.{field} of type {gotype}"


def _decode_field(value: Any, struct: str, field: str, gotype: str) -> Any:
    """Go ``encoding/json`` for one ``bool``, ``int`` (int64), ``uint`` (uint64) or ``string``
    field of ``struct``; ``None`` means JSON null (leave the default).

    Takes both the marked tree of :func:`_load_json_objects` (fractions as :class:`_JSONNumber`)
    and plain ``json.loads`` values (the backend options, fractions as ``float``). Raises
    :class:`_JSONError` with Go's message on a type mismatch.
    """
    if value is None:
        return None
    if gotype == "bool":
        if isinstance(value, bool):
            return value
        raise _JSONError(_type_error(_kind(value), None, struct, field, gotype))
    if gotype == "string":
        if isinstance(value, str) and not isinstance(value, _JSONNumber):
            return value
        raise _JSONError(_type_error(_kind(value), None, struct, field, gotype))
    # int / uint: Go decides by the literal, so 24.0 does not fit either
    if isinstance(value, bool) or not isinstance(value, int | float | _JSONNumber):
        raise _JSONError(_type_error(_kind(value), None, struct, field, gotype))
    if isinstance(value, float):
        raise _JSONError(_type_error("number", repr(value), struct, field, gotype))
    lo, hi = (0, _UINT64_MAX) if gotype == "uint" else (_INT64_MIN, _INT64_MAX)
    if isinstance(value, _JSONNumber) or not lo <= value <= hi:
        raise _JSONError(_type_error("number", _literal(value), struct, field, gotype))
    return value


def _unmarshaler_text(value: Any) -> str:
    """What flannel's ``UnmarshalJSON`` methods see after ``bytes.Trim(j, "\\"")``."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | _JSONNumber):
        return str(value)
    # objects and arrays: the raw text is not kept; any such value fails to parse anyway.
    return json.dumps(_to_plain(value), separators=(",", ":"))


def _cidr_parts(text: str) -> tuple[str, str] | None:
    """Split like Go's ``net.ParseCIDR``: exactly ``addr/decimal-prefix``, no zone."""
    addr, sep, prefix = text.partition("/")
    if not sep or not prefix or not (prefix.isascii() and prefix.isdigit()) or "%" in addr:
        return None
    return addr, prefix


def _parse_cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Go's ``net.ParseCIDR`` of a JSON string (either family; the caller checks which)."""
    text = _unmarshaler_text(value)
    parts = _cidr_parts(text)
    if parts is None:
        raise _JSONError(f"invalid CIDR address: {text}")
    try:
        return ipaddress.ip_network(f"{parts[0]}/{int(parts[1])}", strict=False)
    except ValueError:
        raise _JSONError(f"invalid CIDR address: {text}") from None


def _parse_ip4net(value: Any) -> ipaddress.IPv4Network:
    net = _parse_cidr(value)
    if not isinstance(net, ipaddress.IPv4Network):
        raise _JSONError("invalid IPv4 CIDR format")
    return net


def _parse_ip6net(value: Any) -> ipaddress.IPv6Network:
    net = _parse_cidr(value)
    if not isinstance(net, ipaddress.IPv6Network):
        # flanneld would store a mangled IPv4 network here; refuse it instead.
        raise _JSONError(f"invalid IPv6 CIDR format: {_unmarshaler_text(value)}")
    return net


def _parse_go_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Go's ``net.ParseIP``: dotted quad or IPv6 text, no zones, no CIDR."""
    if "%" in text or "/" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _parse_ip_value(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = _parse_go_ip(_unmarshaler_text(value))
    if addr is None:
        raise _JSONError("invalid IP address format")
    return addr


def _parse_ip4(value: Any) -> ipaddress.IPv4Address:
    addr = _parse_ip_value(value)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is None:
            raise _JSONError("invalid IPv4 address format")
        return addr.ipv4_mapped
    return addr


def _parse_ip6(value: Any) -> ipaddress.IPv6Address:
    addr = _parse_ip_value(value)
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{addr}")
    return addr


# Go field name -> (Go type, _RawConfig attribute), for the Config struct (BackendType is
# json:"-").
_CONFIG_FIELDS: Final = {
    "EnableIPv4": ("bool", "enable_ipv4"),
    "EnableIPv6": ("bool", "enable_ipv6"),
    "EnableNFTables": ("bool", "enable_nftables"),
    "Network": ("ip4net", "network"),
    "IPv6Network": ("ip6net", "ipv6_network"),
    "SubnetMin": ("ip4", "subnet_min"),
    "SubnetMax": ("ip4", "subnet_max"),
    "IPv6SubnetMin": ("*ip6", "ipv6_subnet_min"),
    "IPv6SubnetMax": ("*ip6", "ipv6_subnet_max"),
    "SubnetLen": ("uint", "subnet_len"),
    "IPv6SubnetLen": ("uint", "ipv6_subnet_len"),
    "Backend": ("raw", "backend"),
}


@dataclass
class _RawConfig:
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    enable_nftables: bool = False
    network: ipaddress.IPv4Network | None = None
    ipv6_network: ipaddress.IPv6Network | None = None
    subnet_min: ipaddress.IPv4Address | None = None
    subnet_max: ipaddress.IPv4Address | None = None
    ipv6_subnet_min: ipaddress.IPv6Address | None = None
    ipv6_subnet_max: ipaddress.IPv6Address | None = None
    subnet_len: int = 0
    ipv6_subnet_len: int = 0
    backend: Any = None
    backend_present: bool = False


_CUSTOM_PARSERS: Final[dict[str, Callable[[Any], Any]]] = {
    "ip4net": _parse_ip4net,
    "ip6net": _parse_ip6net,
    "ip4": _parse_ip4,
}


def _decode_config(doc: Any) -> _RawConfig:
    """Unmarshal into flannel's ``subnet.Config`` the way Go does."""
    cfg = _RawConfig()
    if doc is None:  # a JSON null document is a no-op in Go
        return cfg
    if not isinstance(doc, _Obj):
        raise _JSONError(f"json: cannot unmarshal {_kind(doc)} into Go value of type subnet.Config")
    # Go keeps decoding after a type mismatch and reports the first one at the end; errors
    # from UnmarshalJSON methods abort at once.
    first_type_error: _JSONError | None = None
    for field, _key, value in _match_fields(doc, _CONFIG_FIELDS):
        gotype, attr = _CONFIG_FIELDS[field]
        try:
            if gotype in ("bool", "uint"):
                decoded = _decode_field(value, "Config", field, gotype)
                if decoded is not None:
                    setattr(cfg, attr, decoded)
            elif gotype == "raw":
                cfg.backend = value
                cfg.backend_present = True
            elif gotype == "*ip6":
                # A pointer field: null resets it to nil instead of calling UnmarshalJSON.
                setattr(cfg, attr, None if value is None else _parse_ip6(value))
            else:
                setattr(cfg, attr, _CUSTOM_PARSERS[gotype](value))
        except _JSONError as err:
            err.field = field
            if not str(err).startswith("json: cannot unmarshal"):
                raise
            if first_type_error is None:
                first_type_error = err
    if first_type_error is not None:
        raise first_type_error
    return cfg


def _backend_type(backend: Any) -> str:
    """flanneld's ``parseBackendType`` (minus its udp default, see the module docstring)."""
    if not isinstance(backend, _Obj):
        if backend is None:
            return ""
        raise ConfigError(
            "error decoding Backend property of config: json: cannot unmarshal "
            f"{_kind(backend)} into Go value of type struct {{ Type string }}",
            hint='"Backend" must be an object such as {"Type": "vxlan"}',
        )
    bt = ""
    for _tag, _key, value in _match_fields(backend, {"Type": "string"}):
        try:
            decoded = _decode_field(value, "", "Type", "string")
        except _JSONError as err:
            raise ConfigError(
                f"error decoding Backend property of config: {err}",
                hint='"Backend.Type" must be a string such as "vxlan"',
            ) from None
        if decoded is not None:
            bt = decoded
    return bt


def _check_backend_type(bt: str) -> str:
    betype = bt.lower()
    if betype in SUPPORTED_BACKENDS:
        return betype
    if betype in _UPSTREAM_ONLY_BACKENDS:
        raise ConfigError(
            f"backend type {betype} is not supported by pyflannel",
            hint=_SUPPORTED_HINT,
        )
    hint = _SUPPORTED_HINT
    if betype in _REMOVED_BACKENDS:
        hint = f"{betype} was removed from flannel in v0.20.0; {_SUPPORTED_HINT}"
    elif betype == "":
        hint = f'"Backend" has no "Type"; {_SUPPORTED_HINT}'
    raise ConfigError(f"unknown backend type: {betype}", hint=hint)


# --------------------------------------------------------------------------------------------
# CheckNetworkConfig


def _fail(message: str, hint: str) -> ConfigError:
    return ConfigError(message, hint=hint)


_LOOPBACK4: Final = ipaddress.IPv4Network("127.0.0.0/8")
_LINK_LOCAL4: Final = ipaddress.IPv4Network("169.254.0.0/16")
_LINK_LOCAL6: Final = ipaddress.IPv6Network("fe80::/10")
_PICK_PRIVATE_HINT: Final = (
    "pick a private range that no node uses for anything else, such as 10.5.0.0/16"
)


@dataclass(frozen=True, slots=True)
class _Stack:
    """What differs between flanneld's IPv4 and IPv6 checks: field names, limits, wording."""

    prefix: str
    """"" or "IPv6", as in the field names (``{prefix}SubnetMin``)."""
    net_field: str
    len_field: str
    max_subnet_len: int
    """Longest SubnetLen: each host needs room for a tunnel and a bridge address."""
    smallest_net: int
    """Longest Network prefix accepted without an explicit SubnetLen."""
    default_subnet_len: int
    too_small_subject: str
    """flanneld's message starts with "network" for IPv4 and "IPv6Network" for IPv6."""
    missing_hint: str
    loopback: ipaddress.IPv4Network | ipaddress.IPv6Network
    loopback_words: str
    loopback_hint: str


_IPV4_STACK: Final = _Stack(
    prefix="",
    net_field="Network",
    len_field="SubnetLen",
    max_subnet_len=30,
    smallest_net=28,
    default_subnet_len=24,
    too_small_subject="network",
    missing_hint='add an IPv4 CIDR such as "Network": "10.5.0.0/16", or set "EnableIPv4": false',
    # Routes into 127/8 never leave the host: pods would be unreachable from other nodes and a
    # pod could be given the node's own loopback address.
    loopback=_LOOPBACK4,
    loopback_words="overlaps the loopback range 127.0.0.0/8",
    loopback_hint=_PICK_PRIVATE_HINT,
)
_IPV6_STACK: Final = _Stack(
    prefix="IPv6",
    net_field="IPv6Network",
    len_field="IPv6SubnetLen",
    max_subnet_len=126,
    smallest_net=124,
    default_subnet_len=64,
    too_small_subject="IPv6Network",
    missing_hint='add an IPv6 CIDR such as "IPv6Network": "2001:db8:42::/56", '
    'or set "EnableIPv6": false',
    loopback=ipaddress.IPv6Network("::1/128"),
    loopback_words="contains the loopback address ::1",
    loopback_hint="pick a unique-local or global range that no node uses otherwise, "
    "such as fd00:5::/56",
)


def _check_stack(
    stack: _Stack,
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None,
    subnet_len: int,
    lo: Any,
    hi: Any,
) -> tuple[int, Any, Any]:
    """flanneld's ``CheckNetworkConfig`` for one address family.

    Returns the effective (SubnetLen, SubnetMin, SubnetMax) with defaults filled in; raises
    ConfigError with flanneld's message for a missing, loopback or too small network or a
    SubnetLen that leaves fewer than four subnets.
    """
    if net is None or (int(net.network_address) == 0 and net.prefixlen == 0):
        raise _fail(
            f"please define a correct {stack.net_field} parameter in the flannel config",
            hint=stack.missing_hint,
        )
    if net.overlaps(stack.loopback):
        raise _fail(f"{stack.net_field} {net} {stack.loopback_words}", stack.loopback_hint)
    plen = net.prefixlen
    if subnet_len > 0:
        if subnet_len > stack.max_subnet_len:
            raise _fail(
                f"SubnetLen must be less than /{stack.max_subnet_len + 1}",
                hint=f"set {stack.len_field} between {plen + 2} and {stack.max_subnet_len}, "
                "or leave it out for the default",
            )
        # The first subnet is never used, so fewer than four subnets leave too few hosts.
        if subnet_len < plen + 2:
            raise _fail(
                "network must be able to accommodate at least four subnets",
                hint=f"set {stack.len_field} to at least {plen + 2} for {stack.net_field} {net},"
                f" or enlarge {stack.net_field}",
            )
    elif plen > stack.smallest_net:
        article = "an" if stack.prefix else "a"
        raise _fail(
            f"{stack.too_small_subject} is too small. Minimum useful network prefix is "
            f"/{stack.smallest_net}",
            hint=f"use {article} {stack.net_field} with a prefix of /{stack.smallest_net} or "
            f"shorter instead of {net}",
        )
    else:
        subnet_len = max(stack.default_subnet_len, plen + 2)
    lo, hi = _subnet_range(net, subnet_len, lo, hi, stack.prefix, stack.net_field)
    return subnet_len, lo, hi


def _subnet_range(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
    subnet_len: int,
    lo: Any,
    hi: Any,
    prefix: str,
    net_name: str,
) -> tuple[Any, Any]:
    """flanneld's SubnetMin/SubnetMax rules for one family: unset (or zero) means the second
    and the last subnet; a given one must lie in the network and start a subnet. ``prefix`` is
    "" or "IPv6", as in the field names and flanneld's messages."""
    addr_type = type(net.network_address)
    size = 1 << (net.max_prefixlen - subnet_len)
    base = int(net.network_address)
    if lo is None or int(lo) == 0:
        lo = addr_type(base + size)
    elif lo not in net:
        raise _fail(
            f"{prefix}SubnetMin is not in the range of the {net_name}",
            hint=f"pick a{'n' if prefix else ''} {prefix}SubnetMin inside {net}, or leave it out",
        )
    if hi is None or int(hi) == 0:
        hi = addr_type(base + net.num_addresses - size)
    elif hi not in net:
        raise _fail(
            f"{prefix}SubnetMax is not in the range of the {net_name}",
            hint=f"pick a{'n' if prefix else ''} {prefix}SubnetMax inside {net}, or leave it out",
        )
    mask = ((1 << net.max_prefixlen) - 1) ^ (size - 1)
    for name, addr in ((f"{prefix}SubnetMin", lo), (f"{prefix}SubnetMax", hi)):
        if int(addr) & mask != int(addr):
            raise _fail(
                f"{name} is not on a SubnetLen boundary: {addr}",
                hint=f"use the start of a /{subnet_len} subnet, e.g. {addr_type(int(addr) & mask)}",
            )
    return lo, hi


def network_warnings(cfg: NetworkConfig) -> list[str]:
    """Risky but accepted Networks, one sentence each: link-local ranges (169.254/16 holds
    cloud metadata services and is never routed between nodes; fe80::/10 the same for IPv6)."""
    warnings = []
    for net, link_local in ((cfg.network, _LINK_LOCAL4), (cfg.ipv6_network, _LINK_LOCAL6)):
        if net is not None and net.version == link_local.version and net.overlaps(link_local):
            warnings.append(
                f"Network {net} overlaps the link-local range {link_local}, which hosts use for"
                f" metadata services and never route between nodes; {_PICK_PRIVATE_HINT}"
            )
    return warnings


def node_network_conflict(
    cfg: NetworkConfig,
    addresses: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address | None],
) -> ConfigError | None:
    """The error for a Network containing one of this node's underlay ``addresses`` (``None``
    entries are skipped), or ``None``. Pure; see :func:`check_network_for_node`.

    Such a Network hands out this node's own address range as pod subnets: the overlay route
    for it would capture the node's traffic to the other nodes.
    """
    for addr in addresses:
        if addr is None:
            continue
        for net in (cfg.network, cfg.ipv6_network):
            if net is not None and net.version == addr.version and addr in net:
                return ConfigError(
                    f"Network {net} contains this node's underlay address {addr}: the overlay"
                    " would take over the network the nodes use to reach each other",
                    hint=_PICK_PRIVATE_HINT,
                )
    return None


def check_network_for_node(
    cfg: NetworkConfig,
    addresses: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address | None],
) -> None:
    """Raise :func:`node_network_conflict`'s error, if any; log :func:`network_warnings`.

    Called by the daemon once the external interface is known.
    """
    error = node_network_conflict(cfg, addresses)
    if error is not None:
        raise error
    for warning in network_warnings(cfg):
        _log.warning("config.risky_network", warning=warning)


def parse_network_config(raw: str | bytes) -> NetworkConfig:
    """Parse and validate a flannel network config JSON document.

    Raises :class:`ConfigError` (flanneld's message, plus a hint) for invalid JSON, field type
    mismatches, a bad ``Backend``, every ``CheckNetworkConfig`` failure, "none defined stack"
    and unknown or unsupported backend types. Nothing else escapes.
    """
    doc = _load_json_objects(raw)
    try:
        decoded = _decode_config(doc)
    except _JSONError as err:
        hint = _FIELD_HINTS.get(
            err.field or "", 'the config must be a JSON object such as {"Network": "10.5.0.0/16"}'
        )
        raise ConfigError(f"invalid network config: {err}", hint=hint) from None

    # parseBackendType runs inside ParseConfig, i.e. before CheckNetworkConfig.
    backend_type = DEFAULT_BACKEND_TYPE if not decoded.backend_present else None
    if backend_type is None:
        backend_type = _backend_type(decoded.backend)

    if decoded.enable_ipv4:
        decoded.subnet_len, decoded.subnet_min, decoded.subnet_max = _check_stack(
            _IPV4_STACK, decoded.network, decoded.subnet_len, decoded.subnet_min, decoded.subnet_max
        )
    if decoded.enable_ipv6:
        decoded.ipv6_subnet_len, decoded.ipv6_subnet_min, decoded.ipv6_subnet_max = _check_stack(
            _IPV6_STACK,
            decoded.ipv6_network,
            decoded.ipv6_subnet_len,
            decoded.ipv6_subnet_min,
            decoded.ipv6_subnet_max,
        )
    if not decoded.enable_ipv4 and not decoded.enable_ipv6:
        raise ConfigError(
            "none defined stack",
            hint='set "EnableIPv4": true (the default) and/or "EnableIPv6": true',
        )
    backend_type = _check_backend_type(backend_type)

    backend = _to_plain(decoded.backend) if isinstance(decoded.backend, _Obj) else {}
    network = decoded.network
    if network is not None and int(network.network_address) == 0 and network.prefixlen == 0:
        network = None
    ipv6_network = decoded.ipv6_network
    if (
        ipv6_network is not None
        and int(ipv6_network.network_address) == 0
        and ipv6_network.prefixlen == 0
    ):
        ipv6_network = None
    subnet_min = decoded.subnet_min
    subnet_max = decoded.subnet_max
    if subnet_min is not None and int(subnet_min) == 0:
        subnet_min = None
    if subnet_max is not None and int(subnet_max) == 0:
        subnet_max = None
    ipv6_min = decoded.ipv6_subnet_min
    ipv6_max = decoded.ipv6_subnet_max
    if ipv6_min is not None and int(ipv6_min) == 0:
        ipv6_min = None
    if ipv6_max is not None and int(ipv6_max) == 0:
        ipv6_max = None
    return NetworkConfig(
        network=network,
        subnet_len=decoded.subnet_len,
        subnet_min=subnet_min,
        subnet_max=subnet_max,
        enable_ipv4=decoded.enable_ipv4,
        enable_ipv6=decoded.enable_ipv6,
        enable_nftables=decoded.enable_nftables,
        ipv6_network=ipv6_network,
        ipv6_subnet_len=decoded.ipv6_subnet_len,
        ipv6_subnet_min=ipv6_min,
        ipv6_subnet_max=ipv6_max,
        backend_type=backend_type,
        backend=backend,
    )


# --------------------------------------------------------------------------------------------
# Backend options (host-gw has none)


def _decode_backend_fields(
    backend: dict[str, Any], struct: str, fields: dict[str, str], label: str
) -> dict[str, Any]:
    """Unmarshal ``backend`` into a Go struct whose JSON tags/types are ``fields``.

    Returns tag -> value for the keys present (null ones dropped). A type mismatch raises
    ConfigError with ``error decoding <label> backend config: json: cannot unmarshal ...``.
    """
    out: dict[str, Any] = {}
    for tag, key, value in _match_fields(backend.items(), fields):
        try:
            decoded = _decode_field(value, struct, tag, fields[tag])
        except _JSONError as err:
            wanted = "true or false" if fields[tag] == "bool" else "a whole number"
            raise ConfigError(
                f"error decoding {label} backend config: {err}",
                hint=f'set "Backend.{key}" to {wanted}',
            ) from None
        if decoded is not None:
            out[tag] = decoded
    return out


def _check_range(value: int, lo: int, hi: int, what: str, hint: str) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"invalid {what} {value} in Backend: must be {lo}..{hi}", hint=hint)


def vxlan_options(cfg: NetworkConfig) -> VxlanOptions:
    """The vxlan ``Backend`` options of ``cfg`` (keys matched case-insensitively, like Go).

    Raises ConfigError for wrongly typed values and for VNI/Port/MTU out of range.
    """
    got = _decode_backend_fields(
        cfg.backend,
        "VXLANConfig",
        {
            "vni": "int",
            "port": "int",
            "mtu": "int",
            "gbp": "bool",
            "learning": "bool",
            "directRouting": "bool",
        },
        "VXLAN",
    )
    opts = VxlanOptions(
        vni=got.get("vni", 1),
        port=got.get("port", 0),
        gbp=got.get("gbp", False),
        direct_routing=got.get("directRouting", False),
        learning=got.get("learning", False),
        mtu=got.get("mtu", 0),
    )
    _check_range(opts.vni, 0, _VNI_MAX, "VXLAN VNI", 'use e.g. "VNI": 1 (the default)')
    _check_range(
        opts.port, 0, 65535, "VXLAN Port", 'use e.g. "Port": 8472, or 0 for the kernel default'
    )
    _check_range(
        opts.mtu, 0, 65535, "VXLAN MTU", 'leave "MTU" out to use the external interface MTU'
    )
    return opts


def udp_options(cfg: NetworkConfig) -> UdpOptions:
    """The udp ``Backend`` options of ``cfg``: ``Port`` (default 8285)."""
    got = _decode_backend_fields(cfg.backend, "", {"Port": "int"}, "UDP")
    opts = UdpOptions(port=got.get("Port", 8285))
    _check_range(opts.port, 1, 65535, "UDP Port", 'use e.g. "Port": 8285 (the default)')
    return opts
