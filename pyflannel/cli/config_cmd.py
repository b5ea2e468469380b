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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pyflannel.cli.etcd_tool_opts import (
    ETCD_FLAGS,
    add_flanneld_flags,
    new_registry,
    options_from,
    print_error,
    setup_tool_logging,
)
from pyflannel.errors import ConfigError, FlannelError
from pyflannel.inspect.etcd_http import etcdctl_command
from pyflannel.inspect.missing_config import (
    check_config_text,
    missing_config_text,
    probe_v2_config,
)

if TYPE_CHECKING:
    from pyflannel.config import NetworkConfig
    from pyflannel.options import Options
    from pyflannel.subnet.etcd.registry import EtcdRegistry

__all__ = ["config_diff", "describe_config", "main"]

PROG: Final = "pyflannel config"


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
    from pyflannel.backend.vxlan import ENCAP_OVERHEAD, KERNEL_DEFAULT_PORT
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
        port = f"{vx.port}" if vx.port else f"{KERNEL_DEFAULT_PORT} (kernel default)"
        mtu = f"{vx.mtu or 'interface MTU'} - {ENCAP_OVERHEAD}"
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
