"""``pyflannel config get|set|validate``: the network config at ``<prefix>/config``.

- ``get`` prints the value stored in etcd.
- ``validate FILE|-`` checks a config offline with the daemon's own parser and messages
  (:func:`pyflannel.config.parse_network_config` plus the backend options); ``validate``
  without FILE checks what etcd holds.
- ``set FILE|-`` validates, shows a unified diff against the current value and writes only if
  the text changed, after ``--yes`` or a "y" on the terminal. The write is a compare-and-swap
  against the value shown, so a concurrent change is never overwritten unseen.

When the v3 key is missing, the most common cause (flannel #755, #1057, #1191, #1584) is a
config written through etcd's v2 API (``etcdctl set`` — etcdctl's default before etcd 3.4):
the v2 store is invisible to v3 clients. The tools ask the v2 API of the same endpoint
(``/v2/keys<prefix>/config``) and, if the key is there, say so and print the v3 command that
fixes it.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from pyflannel.cli.etcd_tool_opts import (
    ETCD_FLAGS,
    HttpAnswer,
    add_flanneld_flags,
    endpoint_urls,
    etcd_http_get,
    etcdctl_command,
    new_registry,
    options_from,
    print_error,
    setup_tool_logging,
)
from pyflannel.errors import ConfigError, FlannelError

if TYPE_CHECKING:
    from pyflannel.config import NetworkConfig
    from pyflannel.options import Options
    from pyflannel.subnet.etcd.registry import EtcdRegistry

__all__ = [
    "EXAMPLE_CONFIG",
    "V2Probe",
    "check_config_text",
    "classify_v2_answer",
    "config_diff",
    "describe_config",
    "main",
    "missing_config_summary",
    "missing_config_text",
    "probe_v2_config",
]

PROG: Final = "pyflannel config"
EXAMPLE_CONFIG: Final = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'

V2State = Literal["found", "absent", "v2-disabled", "unknown", "unreachable"]


@dataclass(frozen=True, slots=True)
class V2Probe:
    """What etcd's v2 API says about the config key.

    ``found``: the key exists in the v2 store (``value``); ``absent``: v2 is on, no such key;
    ``v2-disabled``: the endpoint has no v2 API (etcd >= 3.4 without ``--enable-v2``);
    ``unknown``: an answer we cannot interpret (e.g. v2 auth refused us); ``unreachable``: no
    endpoint answered over HTTP.
    """

    state: V2State
    url: str = ""
    value: str | None = None
    detail: str = ""


def classify_v2_answer(answer: HttpAnswer) -> V2Probe:
    """Interpret one ``GET /v2/keys<key>`` exchange (pure)."""
    if answer.status == 0:
        return V2Probe("unreachable", answer.url, detail=answer.error)
    doc = answer.json()
    if answer.status == 200 and isinstance(doc, dict):
        node = doc.get("node")
        if isinstance(node, dict) and isinstance(node.get("value"), str):
            return V2Probe("found", answer.url, value=node["value"])
        if isinstance(node, dict) and node.get("dir"):
            return V2Probe("absent", answer.url, detail="the v2 key is a directory")
    if answer.status == 404:
        if isinstance(doc, dict) and doc.get("errorCode") == 100:
            return V2Probe("absent", answer.url)
        # etcd 3.4+ without --enable-v2 answers its plain "404 page not found".
        return V2Probe("v2-disabled", answer.url)
    text = answer.body.decode("utf-8", "replace").strip()[:200]
    return V2Probe("unknown", answer.url, detail=f"HTTP {answer.status}: {text}")


def probe_v2_config(opts: Options, key: str, *, timeout: float = 3.0) -> V2Probe:
    """Ask the v2 API of each endpoint in turn for ``key`` until one answers."""
    import urllib.parse

    path = "/v2/keys" + urllib.parse.quote(key)
    last = V2Probe("unreachable")
    for base in endpoint_urls(opts):
        probe = classify_v2_answer(etcd_http_get(opts, base, path, timeout=timeout))
        if probe.state != "unreachable":
            return probe
        last = probe
    return last


def missing_config_text(key: str, endpoints: str, probe: V2Probe, fix_command: str) -> str:
    """What to tell the operator when ``key`` is missing from the v3 store (pure).

    ``fix_command`` is the ``etcdctl`` prefix (see
    :func:`~pyflannel.cli.etcd_tool_opts.etcdctl_command` without arguments).
    """
    head = (
        "flannel config not found in etcd store. Did you create your config using etcdv3 "
        f"API? (looked for {key} at {endpoints})"
    )
    if probe.state == "found":
        assert probe.value is not None
        return "\n".join(
            [
                head,
                f"{key} exists in etcd's v2 store: it was written through the v2 API "
                "(`etcdctl set`, etcdctl's default before etcd 3.4). pyflanneld, like flanneld "
                ">= 0.18, reads only the v3 key, and the v2 and v3 stores are separate.",
                "Fix: write it through the v3 API:",
                f"  {fix_command} put {shlex.quote(key)} {shlex.quote(probe.value)}",
            ]
        )
    lines = [
        head,
        "Create it through the v3 API, e.g.:",
        f"  {fix_command} put {shlex.quote(key)} {shlex.quote(EXAMPLE_CONFIG)}",
        "or with: pyflannel config set FILE",
    ]
    if probe.state == "absent":
        lines.append(f"(the v2 store has no {key} either)")
    elif probe.state == "v2-disabled":
        lines.append(
            "(etcd's v2 API is off, so a config written with `etcdctl set` could not be looked "
            "for; with etcd >= 3.4 `etcdctl put` already uses v3)"
        )
    elif probe.detail:
        lines.append(f"(could not look in etcd's v2 store: {probe.detail})")
    return "\n".join(lines)


def missing_config_summary(key: str, probe: V2Probe, fix_command: str) -> tuple[str, str]:
    """One-line diagnosis and the command that fixes it, for status/doctor findings (pure)."""
    if probe.state == "found":
        assert probe.value is not None
        return (
            f"{key} is missing from etcd's v3 store but exists in its v2 store: it was written "
            "with the v2 API (`etcdctl set`), which pyflanneld does not read",
            f"{fix_command} put {shlex.quote(key)} {shlex.quote(probe.value)}",
        )
    return (
        "flannel config not found in etcd store. Did you create your config using etcdv3 API? "
        f"(looked for {key})",
        f"{fix_command} put {shlex.quote(key)} {shlex.quote(EXAMPLE_CONFIG)}",
    )


def check_config_text(text: str | bytes) -> NetworkConfig:
    """Validate like the daemon: the network config, then the chosen backend's options.

    Raises :class:`~pyflannel.errors.ConfigError` with the daemon's message and a hint.
    """
    from pyflannel.config import parse_network_config, udp_options, vxlan_options

    cfg = parse_network_config(text)
    if cfg.backend_type == "vxlan":
        vxlan_options(cfg)
    elif cfg.backend_type == "udp":
        udp_options(cfg)
    return cfg


def _range_text(
    lo: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    hi: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    plen: int,
) -> str:
    if lo is None or hi is None:
        return ""
    count = (int(hi) - int(lo)) // (1 << (lo.max_prefixlen - plen)) + 1
    return f"subnets /{plen} from {lo} to {hi} ({count} subnets)"


def describe_config(cfg: NetworkConfig) -> list[str]:
    """The effective config, defaults included, one fact per line (pure)."""
    from pyflannel.config import udp_options, vxlan_options

    lines: list[str] = []
    if cfg.enable_ipv4:
        lines.append(
            f"Network {cfg.network}: " + _range_text(cfg.subnet_min, cfg.subnet_max, cfg.subnet_len)
        )
    if cfg.enable_ipv6:
        lines.append(
            f"IPv6Network {cfg.ipv6_network}: "
            + _range_text(cfg.ipv6_subnet_min, cfg.ipv6_subnet_max, cfg.ipv6_subnet_len)
        )
    backend = f"Backend {cfg.backend_type}"
    if cfg.backend_type == "vxlan":
        vx = vxlan_options(cfg)
        port = f"{vx.port}" if vx.port else "8472 (kernel default)"
        mtu = f"{vx.mtu} - 50" if vx.mtu else "interface MTU - 50"
        extras = [f"VNI {vx.vni}", f"UDP port {port}", f"device MTU = {mtu}"]
        extras += [name for name, on in (("GBP", vx.gbp), ("DirectRouting", vx.direct_routing),
                                         ("Learning", vx.learning)) if on]  # fmt: skip
        backend += f" ({', '.join(extras)})"
    elif cfg.backend_type == "udp":
        backend += f" (UDP port {udp_options(cfg).port})"
    lines.append(backend)
    lines.append(f"traffic rules: {'nftables' if cfg.enable_nftables else 'iptables'}")
    return lines


def config_diff(old: str | None, new: str, key: str, source: str) -> str:
    """Unified diff from the stored value (None: absent) to the new one (pure)."""
    before = [] if old is None else old.splitlines(keepends=True)
    after = new.splitlines(keepends=True)
    for lines in (before, after):
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
    label = f"{key} (etcd)" if old is not None else f"{key} (etcd, absent)"
    return "".join(difflib.unified_diff(before, after, fromfile=label, tofile=source))


# --- I/O ---------------------------------------------------------------------------------------


async def _get_stored(reg: EtcdRegistry) -> str | None:
    from pyflannel.subnet.etcd.errors import ConfigNotFound

    try:
        return await reg.get_config()
    except ConfigNotFound:
        return None


def _missing_text(opts: Options, reg: EtcdRegistry) -> str:
    probe = probe_v2_config(opts, reg.config_key)
    return missing_config_text(reg.config_key, reg.endpoints_text, probe, etcdctl_command(opts))


def _read_source(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"cannot read {source}: {reason}", hint="give the path of a JSON file, or - for stdin"
        ) from None


def _say_valid(source: str, cfg: NetworkConfig) -> None:
    from pyflannel.config import network_warnings

    print(f"{source}: valid flannel network config")
    for line in describe_config(cfg):
        print(f"  {line}")
    for warning in network_warnings(cfg):
        print(f"  warning: {warning}")


async def _read_stored(opts: Options) -> tuple[str, str] | None:
    """The stored config and its key; None, once the missing-config diagnosis is on stderr,
    when there is none."""
    async with new_registry(opts) as reg:
        value = await _get_stored(reg)
        if value is None:
            print(_missing_text(opts, reg), file=sys.stderr)
            return None
        return value, reg.config_key


async def _cmd_get(opts: Options) -> int:
    stored = await _read_stored(opts)
    if stored is None:
        return 1
    value, _ = stored
    print(value if value.endswith("\n") else value + "\n", end="")
    return 0


async def _cmd_validate_stored(opts: Options) -> int:
    stored = await _read_stored(opts)
    if stored is None:
        return 1
    value, key = stored
    try:
        cfg = check_config_text(value)
    except ConfigError as exc:
        print(f"{key}: invalid: {exc}", file=sys.stderr)
        return 1
    _say_valid(key, cfg)
    return 0


def _confirm(source: str, key: str, yes: bool) -> str | None:
    """None when we may write, else why not."""
    if yes:
        return None
    if source == "-":
        return (
            "refusing to write without confirmation: the new config came from stdin, so there "
            "is no terminal to confirm on; pass --yes"
        )
    if not sys.stdin.isatty():
        return "refusing to write without confirmation: stdin is not a terminal; pass --yes"
    try:
        answer = input(f"write this config to {key}? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return None
    return "not written (not confirmed)"


async def _cmd_set(opts: Options, source: str, yes: bool) -> int:
    # Like `etcdctl put KEY "$(cat FILE)"`: trailing newlines are not part of the value.
    new = _read_source(source).rstrip("\n")
    label = "stdin" if source == "-" else source
    try:
        cfg = check_config_text(new)
    except ConfigError as exc:
        print(f"{PROG} set: {label}: invalid, nothing written: {exc}", file=sys.stderr)
        return 1
    async with new_registry(opts) as reg:
        key = reg.config_key
        old = await _get_stored(reg)
        if old == new:
            print(f"{key} already holds this config; nothing written")
            return 0
        if old is None:
            probe = probe_v2_config(opts, key)
            if probe.state == "found":
                print(
                    f"note: {key} exists only in etcd's v2 store (written with `etcdctl set`); "
                    "this writes the v3 key pyflanneld reads"
                )
        print(config_diff(old, new, key, label), end="")
        for line in describe_config(cfg):
            print(f"  {line}")
        refusal = _confirm(source, key, yes)
        if refusal is not None:
            print(f"{PROG} set: {refusal}", file=sys.stderr)
            return 1
        if not await reg.put_config(new, expected=old):
            print(
                f"{PROG} set: {key} changed in etcd while this command ran; nothing written "
                "(run it again to see the new difference)",
                file=sys.stderr,
            )
            return 1
    print(f"wrote {key}")
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_flanneld_flags(common, ETCD_FLAGS)
    common.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Get, set or validate the flannel network config (<prefix>/config).",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="get|set|validate")
    sub.add_parser(
        "get", parents=[common], help="print the config stored in etcd", allow_abbrev=False
    )
    p_set = sub.add_parser(
        "set",
        parents=[common],
        help="validate FILE (- for stdin), show the diff, write it",
        allow_abbrev=False,
    )
    p_set.add_argument("file", metavar="FILE|-")
    p_set.add_argument("-y", "--yes", action="store_true", help="write without asking")
    p_val = sub.add_parser(
        "validate",
        parents=[common],
        help="validate FILE (- for stdin) offline, or the config in etcd",
        allow_abbrev=False,
    )
    p_val.add_argument("file", metavar="FILE|-", nargs="?")
    return parser


def main(argv: Sequence[str]) -> int:
    """``pyflannel config get|set|validate``; returns the exit code."""
    args = _parser().parse_args(list(argv))
    setup_tool_logging(args.verbose)
    prog = f"{PROG} {args.action}"
    if args.action == "validate" and args.file is not None:
        label = "stdin" if args.file == "-" else args.file
        try:
            cfg = check_config_text(_read_source(args.file))
        except ConfigError as exc:
            print(f"{label}: invalid: {exc}", file=sys.stderr)
            return 1
        _say_valid(label, cfg)
        return 0
    try:
        opts = options_from(args, ETCD_FLAGS, os.environ)
        import trio

        if args.action == "get":
            return trio.run(_cmd_get, opts)
        if args.action == "validate":
            return trio.run(_cmd_validate_stored, opts)
        return trio.run(_cmd_set, opts, args.file, args.yes)
    except FlannelError as exc:
        print_error(prog, exc)
        return 1
    except KeyboardInterrupt:
        return 130
