"""Shared plumbing of the operator tools (``pyflannel status|config|doctor``).

The tools take the daemon's own flags — ``--etcd-*``, ``--subnet-file``, the interface flags and
the traffic-rule flags — with the daemon's semantics: they are declared on an ``argparse``
parser (next to each tool's own options) and then handed, in Go ``--flag=value`` form, to
:func:`pyflannel.cli.flags.parse_flags`. So value parsing (Go bools, comma-separated
endpoints), error messages and the ``FLANNELD_*`` environment fallback are exactly pyflanneld's,
and a tool run with the daemon's environment file talks to the same etcd with the same
credentials. Only the ``FLANNELD_*`` variables of the flags a tool declares are read, so an
unrelated variable can never stop a tool.

Also here: the etcd registry the tools use (short timeout), quiet logging and the runner of the
report tools. Reaching etcd's HTTP endpoints and the ``etcdctl`` line an operator can paste
are the inspection layer's (:mod:`pyflannel.inspect.etcd_http`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from pyflannel.cli.flags import FLAGS, Options, env_name, parse_flags
from pyflannel.errors import ConfigError, FlannelError
from pyflannel.inspect.findings import PrintableReport, print_report

if TYPE_CHECKING:
    from pyflannel.subnet.etcd.registry import EtcdRegistry

__all__ = [
    "ETCD_FLAGS",
    "IFACE_FLAGS",
    "SUBNET_FILE_FLAGS",
    "TOOL_ETCD_TIMEOUT",
    "TRAFFIC_FLAGS",
    "ReportTool",
    "ToolReport",
    "add_flanneld_flags",
    "add_output_flag",
    "new_registry",
    "options_from",
    "print_error",
    "run_report_tool",
    "setup_tool_logging",
    "tool_parser",
]


ETCD_FLAGS: Final = (
    "etcd-endpoints",
    "etcd-prefix",
    "etcd-keyfile",
    "etcd-certfile",
    "etcd-cafile",
    "etcd-username",
    "etcd-password",
)
SUBNET_FILE_FLAGS: Final = ("subnet-file",)
IFACE_FLAGS: Final = ("iface", "iface-regex", "iface-can-reach", "public-ip", "public-ipv6")
TRAFFIC_FLAGS: Final = ("ip-masq", "ip-masq-fully-random-disable", "iptables-forward-rules")

# A tool should answer in seconds, not wait out the daemon's 10 s per request and endpoint.
TOOL_ETCD_TIMEOUT: Final = 5.0

_BY_NAME: Final = {f.name: f for f in FLAGS}


def _dest(name: str) -> str:
    return "ff_" + name.replace("-", "_")


def add_flanneld_flags(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Declare pyflanneld's flags ``names`` on ``parser`` (``--name`` and Go's ``-name``).

    Values are kept as text (``None`` when absent) for :func:`options_from`. Bool flags take
    an optional ``=value`` as in Go (``--ip-masq``, ``--ip-masq=false``).
    """
    group = parser.add_argument_group("pyflanneld flags (default: FLANNELD_* environment)")
    for name in names:
        flag = _BY_NAME[name]
        spellings = [f"--{name}", f"-{name}"]
        shown = f"{flag.help} [env {env_name(name)}]"
        if flag.kind == "bool":
            group.add_argument(
                *spellings,
                dest=_dest(name),
                nargs="?",
                const="true",
                default=None,
                metavar="true|false",
                help=shown,
            )
            continue
        metavar = "IP" if name == "iface-can-reach" else name.rsplit("-", 1)[-1].upper()
        action = "append" if flag.kind == "list" else "store"
        group.add_argument(
            *spellings, dest=_dest(name), action=action, default=None, metavar=metavar, help=shown
        )


def add_output_flag(parser: argparse.ArgumentParser) -> None:
    """``--output table|json`` (``-o``)."""
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="table for people (default), json for scripts",
    )


def options_from(
    ns: argparse.Namespace, names: Iterable[str], environ: Mapping[str, str]
) -> Options:
    """Options from the flags parsed into ``ns`` plus the ``FLANNELD_*`` env of ``names``.

    Raises :class:`~pyflannel.errors.ConfigError` with pyflanneld's message for a bad value.
    """
    names = tuple(names)
    argv: list[str] = []
    for name in names:
        value = getattr(ns, _dest(name), None)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv += [f"--{name}={v}" for v in values]
    wanted_env = {env_name(n) for n in names}
    env = {k: v for k, v in environ.items() if k in wanted_env}
    return parse_flags(argv, env)


def new_registry(opts: Options, *, timeout: float = TOOL_ETCD_TIMEOUT) -> EtcdRegistry:
    """An :class:`~pyflannel.subnet.etcd.registry.EtcdRegistry` for ``opts`` (no I/O yet)."""
    from pyflannel.subnet.etcd.registry import EtcdRegistry

    return EtcdRegistry(
        opts.etcd_endpoints,
        opts.etcd_prefix,
        **opts.etcd_credentials(),
        request_timeout=timeout,
    )


def setup_tool_logging(verbose: bool) -> None:
    """Log to stderr only: errors by default, everything with ``-v``. Tools report through
    their output; the registry's warnings (e.g. "connecting to etcd with http") would only be
    noise there, and must never mix into ``--output json`` on stdout."""
    import structlog

    from pyflannel.log import configure_logging

    configure_logging("console", 1 if verbose else 0)
    if not verbose:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def print_error(prog: str, exc: FlannelError | ConfigError) -> None:
    """One clear line on stderr: ``prog: message (hint)``."""
    print(f"{prog}: {exc}", file=sys.stderr)


def tool_parser(prog: str, description: str, names: Iterable[str]) -> argparse.ArgumentParser:
    """A report tool's parser: ``--output``, ``--verbose`` and pyflanneld's flags ``names``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    add_output_flag(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    add_flanneld_flags(parser, names)
    return parser


class ToolReport(PrintableReport, Protocol):
    """What a report tool's ``collect`` returns: printable, with a verdict for the exit code."""

    @property
    def ok(self) -> bool:
        """Nothing failed: the tool exits 0."""
        ...


@dataclass(frozen=True, slots=True)
class ReportTool:
    """One report tool (``status``, ``doctor``) declared as a value, run by
    :func:`run_report_tool`: its subcommand ``name``, the ``--help`` ``description``, the
    pyflanneld ``flags`` it takes, how it ``collect``-s its report (which prints itself) and,
    when a script should get a ``--output json`` document even when etcd could not be read, its
    ``error_document``."""

    name: str
    description: str
    flags: tuple[str, ...]
    collect: Callable[[argparse.Namespace, Options], Awaitable[ToolReport]]
    error_document: Callable[[FlannelError], dict[str, Any]] | None = None

    @property
    def prog(self) -> str:
        """``pyflannel <name>``: the name in usage and error lines."""
        return f"pyflannel {self.name}"


def run_report_tool(tool: ReportTool, argv: Sequence[str]) -> int:
    """The ``main`` of a report tool: in kube mode (``--kube-subnet-mgr`` or
    ``FLANNELD_KUBE_SUBNET_MGR=true``) the kube report of Nodes
    (:mod:`pyflannel.cli.kube_inspect`); else parse ``argv`` (:func:`tool_parser`), build the
    options from the tool's flags (and their ``FLANNELD_*`` environment), run its ``collect``
    under trio and print the report (:func:`~pyflannel.inspect.findings.print_report`). Returns
    the exit code: 0 when the report is ``ok``, 1 otherwise or on a
    :class:`~pyflannel.errors.FlannelError` (one line on stderr; with ``--output json`` also
    the ``error_document`` on stdout when the tool has one), 130 on Ctrl-C.
    """
    if "--kube-subnet-mgr" in argv or os.environ.get("FLANNELD_KUBE_SUBNET_MGR") == "true":
        # kube mode: Nodes instead of etcd leases.
        from pyflannel.cli.kube_inspect import main as kube_main

        return kube_main(tool.name, argv)
    args = tool_parser(tool.prog, tool.description, tool.flags).parse_args(list(argv))
    setup_tool_logging(args.verbose)
    try:
        opts = options_from(args, tool.flags, os.environ)
        import trio

        report = trio.run(tool.collect, args, opts)
    except FlannelError as exc:
        if args.output == "json" and tool.error_document is not None:
            print(json.dumps(tool.error_document(exc), indent=2))
        print_error(tool.prog, exc)
        return 1
    except KeyboardInterrupt:
        return 130
    print_report(report, args.output)
    return 0 if report.ok else 1
