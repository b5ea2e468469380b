"""From flannel's inputs to the delegate's config: CIDRs, subnet.env, the network config.

Pure logic apart from reading subnet.env. One module (not three) because every import costs the
plugin start-up time (~0.15 ms each, measured).

**CIDRs** are parsed with string operations: :mod:`ipaddress` imports :mod:`functools` and
friends and costs a couple of milliseconds. Output matches :mod:`ipaddress` (RFC 5952 for
IPv6; the unit tests compare the two); like Go's ``net.ParseCIDR``, IPv4 octets with leading
zeros and IPv6 zones are rejected.

**subnet.env** (written by flanneld) is read with flannel's rules (``loadFlannelSubnetEnv``):
one ``KEY=VALUE`` per line, split at the first ``=``, no trimming, quoting or comments; unknown
keys and blank lines are ignored; networks are comma lists (exact duplicates dropped, order
kept); subnets keep only their network address; ``FLANNEL_IPMASQ`` is true only for the exact
text ``true``. The plugin may not import :mod:`pyflannel` (third-party dependencies), hence its
own parser.

**The network config** of the flannel plugin (cni-spec §1.2): ``cniVersion``, ``name``,
``type``, ``subnetFile`` (default ``/run/flannel/subnet.env``), ``dataDir`` (default
``/var/lib/cni/flannel``), ``delegate`` (object), ``ipam`` (object), ``runtimeConfig``
(object). Unknown keys are ignored; ``null`` counts as absent, as in Go's decoder.
"""

from .delegation import DEFAULT_DATA_DIR, FileRefused, read_limited
from .protocol import (
    ERR_INTERNAL,
    ERR_INVALID_NETWORK_CONFIG,
    ERR_TRY_AGAIN_LATER,
    CniError,
    dumps,
    json_kind,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_SUBNET_FILE",
    "MAX_SUBNET_ENV_SIZE",
    "FlannelConf",
    "SubnetEnv",
    "build_delegate",
    "build_ipam",
    "delegate_type",
    "format_ipv6",
    "network_of",
    "parse_cidr",
    "parse_flannel_conf",
    "parse_ip",
    "parse_subnet_env",
    "read_subnet_env",
]


DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"

# ----------------------------------------------------------------------------------------------
# CIDRs

_DEC = "0123456789"
_HEX = "0123456789abcdefABCDEF"


def _parse_ipv4(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not part or len(part) > 3 or part.strip(_DEC) or (len(part) > 1 and part[0] == "0"):
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = (value << 8) | octet
    return value


def _parse_groups(text: str) -> list[int] | None:
    if text == "":
        return []
    groups = []
    for part in text.split(":"):
        if not part or len(part) > 4 or part.strip(_HEX):
            return None
        groups.append(int(part, 16))
    return groups


def _parse_ipv6(text: str) -> int | None:
    if "%" in text or text.count("::") > 1:
        return None
    tail_v4: list[int] = []
    last_colon = text.rfind(":")
    if "." in text[last_colon + 1 :]:
        v4 = _parse_ipv4(text[last_colon + 1 :])
        if v4 is None or last_colon < 0:
            return None
        tail_v4 = [v4 >> 16, v4 & 0xFFFF]
        text = text[: last_colon + 1]
        if not text.endswith("::"):
            text = text[:-1]  # "a:b:1.2.3.4" → groups "a:b"; "::1.2.3.4" keeps its "::"
    if "::" in text:
        head_text, tail_text = text.split("::")
        head = _parse_groups(head_text)
        tail = _parse_groups(tail_text)
        if head is None or tail is None:
            return None
        tail += tail_v4
        missing = 8 - len(head) - len(tail)
        if missing < 1:
            return None
        groups = [*head, *([0] * missing), *tail]
    else:
        parsed = _parse_groups(text)
        if parsed is None:
            return None
        groups = parsed + tail_v4
        if len(groups) != 8:
            return None
    value = 0
    for group in groups:
        value = (value << 16) | group
    return value


def parse_ip(text: str) -> tuple[int, int] | None:
    """``(ip version, integer value)`` of an address, or ``None`` if it is not one."""
    if ":" in text:
        v6 = _parse_ipv6(text)
        return None if v6 is None else (6, v6)
    v4 = _parse_ipv4(text)
    return None if v4 is None else (4, v4)


def parse_cidr(text: str) -> tuple[int, int, int] | None:
    """``(ip version, address, prefix length)`` of ``a.b.c.d/n`` or ``x::y/n``, else ``None``."""
    addr, sep, prefix_text = text.partition("/")
    if not sep or not prefix_text or prefix_text.strip(_DEC) or len(prefix_text) > 3:
        return None
    if len(prefix_text) > 1 and prefix_text[0] == "0":
        return None
    parsed = parse_ip(addr)
    if parsed is None:
        return None
    version, value = parsed
    prefix = int(prefix_text)
    if prefix > (32 if version == 4 else 128):
        return None
    return version, value, prefix


def format_ipv6(value: int) -> str:
    """RFC 5952 text of an IPv6 address: lower case, longest run of >= 2 zero groups as ``::``."""
    groups = [(value >> shift) & 0xFFFF for shift in range(112, -1, -16)]
    best_start, best_len, run_start, run_len = -1, 0, -1, 0
    for i, group in enumerate(groups):
        if group == 0:
            if run_len == 0:
                run_start = i
            run_len += 1
            if run_len > best_len:
                best_start, best_len = run_start, run_len
        else:
            run_len = 0
    hexes = [f"{g:x}" for g in groups]
    if best_len < 2:
        return ":".join(hexes)
    head = ":".join(hexes[:best_start])
    tail = ":".join(hexes[best_start + best_len :])
    return f"{head}::{tail}"


def network_of(text: str) -> tuple[int, str] | None:
    """``(ip version, "network/prefix")`` with host bits cleared, or ``None`` if not a CIDR.

    ``10.244.1.1/24`` → ``(4, "10.244.1.0/24")``; ``fc00::1/64`` → ``(6, "fc00::/64")``.
    """
    parsed = parse_cidr(text)
    if parsed is None:
        return None
    version, value, prefix = parsed
    bits = 32 if version == 4 else 128
    value &= ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
    if version == 4:
        addr = f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    else:
        addr = format_ipv6(value)
    return version, f"{addr}/{prefix}"


# ----------------------------------------------------------------------------------------------
# subnet.env

_SUFFIX = ". Check the flannel pod log for this node."
_PREFIX = "failed to load flannel 'subnet.env' file: "
# flanneld writes a few hundred bytes; upstream's line scanner gives up at 64 KiB too.
MAX_SUBNET_ENV_SIZE = 64 * 1024


class SubnetEnv:
    """What subnet.env says; fields are ``None``/empty when the file does not mention them."""

    __slots__ = ("ipmasq", "ipv6_networks", "ipv6_subnet", "mtu", "networks", "subnet")

    def __init__(self) -> None:
        self.networks: list[str] = []
        self.ipv6_networks: list[str] = []
        self.subnet: str | None = None
        self.ipv6_subnet: str | None = None
        self.mtu: int | None = None
        self.ipmasq: bool | None = None

    def missing(self) -> list[str]:
        """Names of required keys that are absent, in flannel's order."""
        names = []
        if not self.networks and not self.ipv6_networks:
            names += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
        if self.subnet is None and self.ipv6_subnet is None:
            names += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
        if self.mtu is None:
            names.append("FLANNEL_MTU")
        if self.ipmasq is None:
            names.append("FLANNEL_IPMASQ")
        return names


def _network(value: str) -> str:
    parsed = network_of(value)
    if parsed is None:
        raise ValueError(f"invalid CIDR address: {value}")
    return parsed[1]


def _networks(value: str) -> list[str]:
    seen: list[str] = []
    for item in value.split(","):
        net = _network(item)
        if net not in seen:
            seen.append(net)
    return seen


def _mtu(value: str) -> int:
    # strconv.ParseUint(value, 10, 32) semantics and messages.
    if not value or not value.isascii() or not value.isdigit():
        raise ValueError(f'strconv.ParseUint: parsing "{value}": invalid syntax')
    if int(value) > 0xFFFFFFFF:
        raise ValueError(f'strconv.ParseUint: parsing "{value}": value out of range')
    return int(value)


_KEYS = (
    "FLANNEL_NETWORK",
    "FLANNEL_IPV6_NETWORK",
    "FLANNEL_SUBNET",
    "FLANNEL_IPV6_SUBNET",
    "FLANNEL_MTU",
    "FLANNEL_IPMASQ",
)


def parse_subnet_env(text: str) -> SubnetEnv:
    """Parse subnet.env content; raise ``ValueError`` (Go-style message) on a bad value.

    Completeness is not checked here; see :meth:`SubnetEnv.missing`.
    """
    env = SubnetEnv()
    for raw_line in text.split("\n"):
        line = raw_line[:-1] if raw_line.endswith("\r") else raw_line
        key, sep, value = line.partition("=")
        if key not in _KEYS:
            continue
        if not sep:
            # flannel's Go code would crash with an index panic here.
            raise ValueError(f'line "{line}" has no "=" and no value')
        if key == "FLANNEL_NETWORK":
            env.networks = _networks(value)
        elif key == "FLANNEL_IPV6_NETWORK":
            env.ipv6_networks = _networks(value)
        elif key == "FLANNEL_SUBNET":
            env.subnet = _network(value)
        elif key == "FLANNEL_IPV6_SUBNET":
            env.ipv6_subnet = _network(value)
        elif key == "FLANNEL_MTU":
            env.mtu = _mtu(value)
        else:
            env.ipmasq = value == "true"
    return env


def read_subnet_env(path: str) -> SubnetEnv:
    """Read and validate ``path``; every problem is a ``CniError``.

    A missing file means flanneld has not (yet) written it: code 11, "try again later" — the
    runtime retries, which is right while flanneld starts. flannel itself reports 999 here.
    Unreadable, malformed or incomplete files are permanent problems: code 999 with flannel's
    wording. Only a regular file of at most 64 KiB is read (unlike flannel, which would read
    ``/dev/zero`` until memory runs out and block forever on a FIFO).
    """
    try:
        data = read_limited(path, MAX_SUBNET_ENV_SIZE)
    except FileRefused as e:
        raise CniError(
            ERR_INTERNAL,
            f'{_PREFIX}{e}; "subnetFile" must name the subnet.env that flanneld writes'
            " (a regular file of at most 64 KiB)",
        ) from None
    except FileNotFoundError:
        raise CniError(
            ERR_TRY_AGAIN_LATER,
            f"flanneld is not running or not ready on this node: {path} missing",
        ) from None
    except OSError as e:
        reason = (e.strerror or str(e)).lower()  # Go's wording: "open <path>: permission denied"
        raise CniError(ERR_INTERNAL, f"{_PREFIX}open {path}: {reason}{_SUFFIX}") from None
    try:
        env = parse_subnet_env(data.decode("utf-8", "replace"))
    except ValueError as e:
        raise CniError(ERR_INTERNAL, f"{_PREFIX}{e}{_SUFFIX}") from None
    missing = env.missing()
    if missing:
        raise CniError(ERR_INTERNAL, f"{_PREFIX}{path} is missing {', '.join(missing)}{_SUFFIX}")
    return env


# ----------------------------------------------------------------------------------------------
# The flannel network config and the delegate config


class FlannelConf:
    """The parts of flannel's stdin config that the plugin uses."""

    __slots__ = (
        "cni_version",
        "data_dir",
        "delegate",
        "ipam",
        "name",
        "raw",
        "runtime_config",
        "subnet_file",
    )

    def __init__(self, raw: "dict[str, Any]") -> None:
        self.raw = raw
        self.cni_version: str = ""
        self.name: str = ""
        self.subnet_file = DEFAULT_SUBNET_FILE
        self.data_dir = DEFAULT_DATA_DIR
        self.delegate: dict[str, Any] | None = None
        self.ipam: dict[str, Any] | None = None
        self.runtime_config: dict[str, Any] | None = None


def _bad(msg: str) -> CniError:
    return CniError(ERR_INVALID_NETWORK_CONFIG, msg)


def _show(value: object) -> str:
    text = dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _string(raw: "dict[str, Any]", key: str, default: str) -> str:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad(
            f'failed to load flannel netconf: "{key}" must be a string,'
            f" got {json_kind(value)} {_show(value)}"
        )
    return value


def _object(raw: "dict[str, Any]", key: str) -> "dict[str, Any] | None":
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(
            f'failed to load flannel netconf: "{key}" must be a JSON object,'
            f" got {json_kind(value)} {_show(value)}"
        )
    return value


def parse_flannel_conf(raw: object) -> FlannelConf:
    """Type-check flannel's config (already JSON-decoded); raise ``CniError`` code 7 if wrong.

    ``cniVersion`` is validated separately (:func:`cni_plugin.versions.check_config_version`).
    The delegate rules are flannel's, with its messages: ``type`` must be a string, ``name``
    and ``ipam`` must not be set (flannel owns them).
    """
    if not isinstance(raw, dict):
        raise _bad(f"failed to load flannel netconf: expected a JSON object, got {json_kind(raw)}")
    conf = FlannelConf(raw)
    version = raw.get("cniVersion")
    conf.cni_version = version if isinstance(version, str) else ""
    conf.name = _string(raw, "name", "")
    conf.subnet_file = _string(raw, "subnetFile", DEFAULT_SUBNET_FILE)
    conf.data_dir = _string(raw, "dataDir", DEFAULT_DATA_DIR)
    if not conf.data_dir:
        conf.data_dir = DEFAULT_DATA_DIR
    if not conf.subnet_file:
        conf.subnet_file = DEFAULT_SUBNET_FILE
    conf.delegate = _object(raw, "delegate")
    conf.ipam = _object(raw, "ipam")
    conf.runtime_config = _object(raw, "runtimeConfig")
    delegate = conf.delegate
    if delegate is not None:
        if "type" in delegate and not isinstance(delegate["type"], str):
            raise _bad("'delegate' dictionary, if present, must have (string) 'type' field")
        if "name" in delegate:
            raise _bad("'delegate' dictionary must not have 'name' field, it'll be set by flannel")
        if "ipam" in delegate:
            raise _bad("'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")
    return conf


def delegate_type(conf: FlannelConf) -> str:
    """The plugin flannel delegates to: ``delegate.type``, default ``bridge``."""
    if conf.delegate is not None and "type" in conf.delegate:
        value: str = conf.delegate["type"]
        return value
    return "bridge"


def _user_routes(ipam: "dict[str, Any]") -> "list[Any]":
    routes = ipam.get("routes")
    if routes is None:
        return []
    prefix = "failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse"
    if not isinstance(routes, list):
        raise _bad(f"{prefix} ipam.routes: expected an array of routes, got {json_kind(routes)}")
    for route in routes:
        if not isinstance(route, dict):
            raise _bad(f"{prefix} ipam.routes: expected a route object, got {json_kind(route)}")
        dst = route.get("dst")
        if not isinstance(dst, str) or parse_cidr(dst) is None:
            raise _bad(f"{prefix} ipam.routes: invalid CIDR address: {dst}")
        gw = route.get("gw")
        if gw is not None and (not isinstance(gw, str) or parse_ip(gw) is None):
            raise _bad(f"{prefix} ipam.routes: invalid IP address: {gw}")
    return routes


def build_ipam(conf: FlannelConf, env: SubnetEnv) -> "dict[str, Any]":
    """The delegate's ``ipam``: the user's object (all keys kept), ``type`` default
    ``host-local``, ``ranges`` replaced by the node's subnets (IPv4 first), and ``routes`` =
    the user's routes (kept verbatim) followed by one route per flannel network (IPv4, IPv6).
    """
    ipam: dict[str, Any] = dict(conf.ipam) if conf.ipam is not None else {}
    ipam.setdefault("type", "host-local")
    ranges = []
    if env.subnet:
        ranges.append([{"subnet": env.subnet}])
    if env.ipv6_subnet:
        ranges.append([{"subnet": env.ipv6_subnet}])
    ipam["ranges"] = ranges
    routes = list(_user_routes(ipam))
    routes += [{"dst": net} for net in env.networks]
    routes += [{"dst": net} for net in env.ipv6_networks]
    ipam["routes"] = routes
    return ipam


def build_delegate(conf: FlannelConf, env: SubnetEnv) -> "dict[str, Any]":
    """The config flannel hands to its delegate (cni-spec §1.4, steps 4–6).

    Defaults only fill absent keys: ``type`` bridge, ``ipMasq`` = not FLANNEL_IPMASQ, ``mtu`` =
    FLANNEL_MTU, and for bridge ``isGateway`` true. Always set: ``name``, ``ipam``, and
    ``cniVersion`` (when flannel's is non-empty); ``runtimeConfig`` replaces the delegate's
    when flannel's config carries one.
    """
    delegate: dict[str, Any] = dict(conf.delegate) if conf.delegate is not None else {}
    if conf.runtime_config is not None:
        delegate["runtimeConfig"] = conf.runtime_config
    delegate["name"] = conf.name
    delegate.setdefault("type", "bridge")
    if "ipMasq" not in delegate:
        delegate["ipMasq"] = not env.ipmasq
    if "mtu" not in delegate:
        delegate["mtu"] = env.mtu
    if delegate["type"] == "bridge":
        delegate.setdefault("isGateway", True)
    if conf.cni_version:
        delegate["cniVersion"] = conf.cni_version
    delegate["ipam"] = build_ipam(conf, env)
    return delegate
