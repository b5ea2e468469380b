"""flanneld's command line: its flags, Go ``flag`` parsing rules and ``FLANNELD_*`` env fallback.

Parsing follows Go's ``flag`` package, which flanneld uses: ``-flag`` and ``--flag`` are the
same, values come as ``-flag=v`` or ``-flag v``, a bool flag alone means true and is turned off
with ``-flag=false``, ``--`` or the first non-flag argument ends the flags, and ``-h``/``-help``
ask for usage. Then, as in flanneld's ``flagutil.SetFlagsFromEnv(…, "FLANNELD")``, every flag
*not* given on the command line is read from ``FLANNELD_<NAME>`` (upper case, ``-`` and ``.`` →
``_``); empty values are ignored, a list flag gets exactly one element, an invalid value is
reported and skipped, and ``FLANNELD_VERSION`` has no effect.

Kube-mode and klog-only flags are accepted and ignored (with a notice), so existing unit files
keep working. The result is an immutable :class:`Options`.

Standard library only: this runs before anything heavy is imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from pyflannel.errors import ConfigError
from pyflannel.options import Notice, Options

__all__ = [
    "ENV_PREFIX",
    "FLAGS",
    "Flag",
    "Notice",
    "Options",
    "env_name",
    "log_notices",
    "parse_flags",
    "usage_text",
]

ENV_PREFIX: Final = "FLANNELD"
_HELP_HINT: Final = "run 'pyflanneld --help' for the list of flags"

Kind = Literal["string", "bool", "int", "list", "level"]


@dataclass(frozen=True, slots=True)
class Flag:
    """One command-line flag. ``attr`` is the :class:`Options` field, ``None`` if ignored."""

    name: str
    kind: Kind
    default: Any
    help: str
    attr: str | None


_D = Options()

FLAGS: Final[tuple[Flag, ...]] = (
    Flag(
        "etcd-endpoints",
        "string",
        ",".join(_D.etcd_endpoints),
        "a comma-delimited list of etcd endpoints",
        "etcd_endpoints",
    ),
    Flag("etcd-prefix", "string", _D.etcd_prefix, "etcd prefix", "etcd_prefix"),
    Flag(
        "etcd-keyfile",
        "string",
        "",
        "SSL key file used to secure etcd communication",
        "etcd_keyfile",
    ),
    Flag(
        "etcd-certfile",
        "string",
        "",
        "SSL certification file used to secure etcd communication",
        "etcd_certfile",
    ),
    Flag(
        "etcd-cafile",
        "string",
        "",
        "SSL Certificate Authority file used to secure etcd communication",
        "etcd_cafile",
    ),
    Flag("etcd-username", "string", "", "username for BasicAuth to etcd", "etcd_username"),
    Flag("etcd-password", "string", "", "password for BasicAuth to etcd", "etcd_password"),
    Flag(
        "iface",
        "list",
        (),
        "interface to use (IP or name) for inter-host communication. Can be specified "
        "multiple times to check each option in order. Returns the first match found.",
        "iface",
    ),
    Flag(
        "iface-regex",
        "list",
        (),
        "regex expression to match the first interface to use (IP or name) for inter-host "
        "communication. Can be specified multiple times to check each regex in order. Returns "
        "the first match found. Regexes are checked after specific interfaces specified by the "
        "iface option have already been checked.",
        "iface_regex",
    ),
    Flag(
        "iface-can-reach",
        "string",
        "",
        "detect interface to use (IP or name) for inter-host communication based on which "
        "will be used for provided IP. This is exactly the interface to use of command "
        "'ip route get <ip-address>'",
        "iface_can_reach",
    ),
    Flag(
        "subnet-file",
        "string",
        _D.subnet_file,
        "filename where env variables (subnet, MTU, ... ) will be written to",
        "subnet_file",
    ),
    Flag(
        "public-ip",
        "string",
        "",
        "IP accessible by other nodes for inter-host communication",
        "public_ip",
    ),
    Flag(
        "public-ipv6",
        "string",
        "",
        "IPv6 accessible by other nodes for inter-host communication",
        "public_ipv6",
    ),
    Flag(
        "subnet-lease-renew-margin",
        "int",
        _D.subnet_lease_renew_margin,
        "subnet lease renewal margin, in minutes, ranging from 1 to 1439",
        "subnet_lease_renew_margin",
    ),
    Flag(
        "ip-masq",
        "bool",
        False,
        "setup IP masquerade rule for traffic destined outside of overlay network",
        "ip_masq",
    ),
    Flag(
        "ip-masq-fully-random-disable",
        "bool",
        False,
        "disable fully-random mode for MASQUERADE",
        "ip_masq_fully_random_disable",
    ),
    Flag(
        "kube-subnet-mgr",
        "bool",
        False,
        "contact the Kubernetes API for subnet assignment instead of etcd.",
        "kube_subnet_mgr",
    ),
    Flag(
        "kube-api-url",
        "string",
        "",
        "Kubernetes API server URL. Does not need to be specified if flannel is running in a pod.",
        "kube_api_url",
    ),
    Flag(
        "kube-annotation-prefix",
        "string",
        _D.kube_annotation_prefix,
        'Kubernetes annotation prefix. Can contain single slash "/", otherwise it will be '
        "appended at the end.",
        "kube_annotation_prefix",
    ),
    Flag(
        "kubeconfig-file",
        "string",
        "",
        "kubeconfig file location. Does not need to be specified if flannel is running in a pod.",
        "kubeconfig_file",
    ),
    Flag("version", "bool", False, "print version and exit", "version"),
    Flag(
        "healthz-ip",
        "string",
        _D.healthz_ip,
        "the IP address for healthz server to listen",
        "healthz_ip",
    ),
    Flag(
        "healthz-port",
        "int",
        0,
        "the port for healthz server to listen(0 to disable)",
        "healthz_port",
    ),
    Flag(
        "iptables-resync",
        "int",
        _D.iptables_resync,
        "resync period for iptables rules, in seconds",
        "iptables_resync",
    ),
    Flag(
        "iptables-forward-rules",
        "bool",
        True,
        "add default accept rules to FORWARD chain in iptables",
        "iptables_forward_rules",
    ),
    Flag(
        "ip-blackhole-route",
        "bool",
        False,
        "add blackroute route ont the node for the local podCIDR",
        "ip_blackhole_route",
    ),
    Flag(
        "net-config-path",
        "string",
        _D.net_config_path,
        "path to the network configuration file to use (kube mode)",
        "net_config_path",
    ),
    Flag(
        "set-node-network-unavailable",
        "bool",
        True,
        "set NodeNetworkUnavailable after ready (kube mode)",
        "set_node_network_unavailable",
    ),
    Flag("v", "level", 0, "number for the log level verbosity", "verbosity"),
    Flag("vmodule", "string", "", "IGNORED (klog per-file verbosity)", None),
    Flag("log_backtrace_at", "string", "", "IGNORED (klog backtrace location)", None),
    # pyflannel additions
    Flag(
        "log-format",
        "string",
        _D.log_format,
        "log output format on stderr: console or json (pyflannel)",
        "log_format",
    ),
    Flag(
        "subnet-lease-ttl",
        "int",
        _D.subnet_lease_ttl,
        "TTL of the subnet lease in etcd, in seconds; flanneld fixes it at 24h "
        "(pyflannel, for tests)",
        "subnet_lease_ttl",
    ),
    Flag(
        "subnet-lease-renew-retry",
        "int",
        _D.subnet_lease_renew_retry,
        "delay before retrying a failed lease renewal, in seconds; flanneld fixes it at 1 "
        "minute (pyflannel, for tests)",
        "subnet_lease_renew_retry",
    ),
)

_BY_NAME: Final = {f.name: f for f in FLAGS}
_LOG_FORMATS: Final = ("console", "json")


def env_name(flag_name: str) -> str:
    """The ``FLANNELD_*`` variable read for a flag: ``ip-masq`` → ``FLANNELD_IP_MASQ``."""
    return f"{ENV_PREFIX}_{flag_name.upper().replace('-', '_').replace('.', '_')}"


# ---------------------------------------------------------------------------------------
# Go value parsers (strconv semantics); each raises ValueError with Go's reason.

_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_GO_INT_RE: Final = re.compile(
    r"(?P<sign>[+-]?)(?:0[xX](?P<hex>_?[0-9a-fA-F](?:_?[0-9a-fA-F])*)"
    r"|0[bB](?P<bin>_?[01](?:_?[01])*)"
    r"|0[oO](?P<oct>_?[0-7](?:_?[0-7])*)"
    r"|0(?P<oct0>_?[0-7](?:_?[0-7])*)"
    r"|(?P<dec>[1-9](?:_?[0-9])*|0))",
    re.ASCII,
)


def _go_bool(text: str) -> bool:
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError("parse error")


def _go_int(text: str, *, bits: int = 64, base0: bool = True) -> int:
    """``strconv.ParseInt(text, 0, bits)`` (or base 10 when ``base0`` is false)."""
    if base0:
        m = _GO_INT_RE.fullmatch(text)
        if m is None:
            raise ValueError("parse error")
        digits, base = next(
            (m.group(g), b)
            for g, b in (("hex", 16), ("bin", 2), ("oct", 8), ("oct0", 8), ("dec", 10))
            if m.group(g) is not None
        )
        value = int(digits.replace("_", ""), base)
        if m.group("sign") == "-":
            value = -value
    else:
        if not re.fullmatch(r"[+-]?[0-9]+", text, re.ASCII) or len(text) > 40:
            raise ValueError("parse error")
        value = int(text, 10)
    if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise ValueError("value out of range")
    return value


def _convert(flag: Flag, text: str) -> Any:
    if flag.kind == "bool":
        return _go_bool(text)
    if flag.kind == "int":
        if len(text) > 100:  # keeps int() far from its huge-number guard
            raise ValueError("value out of range")
        return _go_int(text)
    if flag.kind == "level":
        return _go_int(text, bits=32, base0=False)
    return text


# ---------------------------------------------------------------------------------------


class _State:
    """Values being collected; ``cli_set`` names the flags seen on the command line."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.cli_set: set[str] = set()
        self.notices: list[Notice] = []

    def set(self, flag: Flag, text: str) -> None:
        value = _convert(flag, text)
        if flag.kind == "list":
            self.values[flag.name] = (*self.values.get(flag.name, ()), value)
        else:
            self.values[flag.name] = value


def _parse_args(argv: Sequence[str], state: _State) -> tuple[bool, list[str]]:
    """Go ``FlagSet.Parse``. Returns (help requested, remaining positional arguments)."""
    args = list(argv)
    while args:
        s = args[0]
        if len(s) < 2 or s[0] != "-":
            break
        minuses = 2 if s[1] == "-" else 1
        if s == "--":
            args.pop(0)
            break
        name = s[minuses:]
        if not name or name[0] in "-=":
            raise ConfigError(f"bad flag syntax: {s}", hint=_HELP_HINT)
        args.pop(0)
        name, has_value, value = name.partition("=")
        flag = _BY_NAME.get(name)
        if flag is None:
            if name in ("help", "h"):
                return True, args
            raise ConfigError(f"flag provided but not defined: -{name}", hint=_HELP_HINT)
        if flag.kind == "bool" and not has_value:
            value = "true"
        elif not has_value:
            if not args:
                raise ConfigError(
                    f"flag needs an argument: -{name}",
                    hint=f"give a value, e.g. --{name}=VALUE",
                )
            value = args.pop(0)
        try:
            state.set(flag, value)
        except ValueError as err:
            kind = "boolean value" if flag.kind == "bool" else "value"
            where = f"-{name}" if flag.kind == "bool" else f"flag -{name}"
            raise ConfigError(
                f"invalid {kind} {value!r} for {where}: {err}",
                hint=_value_hint(flag),
            ) from None
        state.cli_set.add(name)
    return False, args


def _value_hint(flag: Flag) -> str:
    if flag.kind == "bool":
        return f"use --{flag.name}=true or --{flag.name}=false"
    if flag.kind in ("int", "level"):
        return f"give --{flag.name} a whole number, e.g. --{flag.name}={flag.default}"
    return _HELP_HINT


def _apply_env(environ: Mapping[str, str], state: _State) -> None:
    """flagutil.SetFlagsFromEnv: env only fills flags the command line left alone."""
    for flag in FLAGS:
        if flag.name in state.cli_set or flag.name == "version":
            # version is checked before the env is read, so FLANNELD_VERSION does nothing.
            continue
        key = env_name(flag.name)
        text = environ.get(key, "")
        if text == "":
            continue
        try:
            state.set(flag, text)
        except ValueError as err:
            state.notices.append(
                Notice(
                    "error",
                    f"invalid value {text!r} for {key}: {err}; keeping the default "
                    f"{_show_default(flag)}",
                )
            )
            continue
        if flag.attr is None:
            state.notices.append(Notice("warning", f"ignoring {key}: {_ignored_reason(flag)}"))


def _ignored_reason(flag: Flag) -> str:
    if flag.name in ("v", "vmodule", "log_backtrace_at"):
        return "klog option not supported by pyflannel"
    return "not supported by pyflannel"


def _show_default(flag: Flag) -> str:
    if flag.kind == "list":
        return "[]"
    if flag.kind == "bool":
        return "true" if flag.default else "false"
    if flag.kind in ("int", "level"):
        return str(flag.default)
    return f'"{flag.default}"'


def _split_endpoints(text: str) -> tuple[str, ...]:
    endpoints = tuple(e.strip() for e in text.split(",") if e.strip())
    if not endpoints:
        raise ConfigError(
            f"--etcd-endpoints {text!r} names no endpoint",
            hint="pass e.g. --etcd-endpoints=http://127.0.0.1:2379",
        )
    return endpoints


def _validate(opts: Options) -> None:
    if not 0 < opts.subnet_lease_renew_margin < 24 * 60:
        raise ConfigError(
            "Invalid subnet-lease-renew-margin option, out of acceptable range",
            hint=f"--subnet-lease-renew-margin is {opts.subnet_lease_renew_margin}; "
            "give minutes between 1 and 1439 (default 60)",
        )
    if opts.log_format not in _LOG_FORMATS:
        raise ConfigError(
            f"invalid --log-format {opts.log_format!r}",
            hint="use --log-format=console or --log-format=json",
        )
    # flanneld would panic (time.NewTicker) or spin on these; refuse them up front.
    checks: tuple[tuple[str, int, int, int], ...] = (
        ("iptables-resync", opts.iptables_resync, 1, 2**31),
        ("subnet-lease-ttl", opts.subnet_lease_ttl, 1, 2**31),
        ("subnet-lease-renew-retry", opts.subnet_lease_renew_retry, 1, 2**31),
        ("healthz-port", opts.healthz_port, 0, 65535),
    )
    for name, value, lo, hi in checks:
        if not lo <= value <= hi:
            raise ConfigError(
                f"invalid --{name} {value}: must be between {lo} and {hi}",
                hint=f"pass --{name}={_BY_NAME[name].default} (the default) or another value "
                "in range",
            )


def parse_flags(argv: Sequence[str], environ: Mapping[str, str]) -> Options:
    """Parse flanneld's command line (without the program name) plus ``FLANNELD_*`` env.

    Raises ConfigError for unknown flags, bad flag syntax, a missing or invalid value on the
    command line, and values out of range (including flanneld's renew-margin check). With
    ``-h``/``--help``, or ``--version``, the returned Options has ``help``/``version`` set and
    the environment is not read; the caller prints :func:`usage_text` or the version.
    """
    state = _State()
    want_help, rest = _parse_args(argv, state)
    if want_help:
        return Options(help=True)
    if state.values.get("version"):
        return Options(version=True)
    if rest:
        state.notices.append(
            Notice("warning", f"ignoring arguments after the flags: {' '.join(rest)}")
        )
    for name in sorted(state.cli_set):
        flag = _BY_NAME[name]
        if flag.attr is None:
            state.notices.append(Notice("warning", f"ignoring --{name}: {_ignored_reason(flag)}"))
    _apply_env(environ, state)

    kwargs: dict[str, Any] = {}
    for flag in FLAGS:
        if flag.attr is None or flag.name not in state.values:
            continue
        value = state.values[flag.name]
        if flag.name == "etcd-endpoints":
            value = _split_endpoints(value)
        kwargs[flag.attr] = value
    opts = replace(_D, **kwargs, notices=tuple(state.notices))
    _validate(opts)
    return opts


def usage_text(prog: str = "pyflanneld") -> str:
    """The ``--help`` text: every flag, sorted like Go's ``PrintDefaults``, with its default."""
    lines = [f"Usage: {prog} [OPTION]..."]
    for flag in sorted(FLAGS, key=lambda f: f.name):
        arg = {"string": " string", "int": " int", "list": " value", "level": " value"}.get(
            flag.kind, ""
        )
        lines.append(f"  -{flag.name}{arg}")
        env = "" if flag.name == "version" else f" [env {env_name(flag.name)}]"
        lines.append(f"    \t{flag.help} (default {_show_default(flag)}){env}")
    return "\n".join(lines) + "\n"


def log_notices(opts: Options, log: Callable[..., Any] | None = None) -> None:
    """Send ``opts.notices`` to structlog (imported lazily) or to ``log(level, message)``."""
    if log is not None:
        for notice in opts.notices:
            log(notice.level, notice.message)
        return
    import structlog

    logger = structlog.get_logger(__name__)
    for notice in opts.notices:
        getattr(logger, notice.level)("flag_notice", detail=notice.message)
