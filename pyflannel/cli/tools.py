"""``pyflannel``: the operator's tools, one subcommand each.

Each subcommand lives in its own module and is imported only when chosen, so ``pyflannel
mk-docker-opts`` (run from a docker unit's ExecStartPre) starts as fast as the interpreter.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["SUBCOMMANDS", "main"]

# name → (module, one-line help). Each module has ``main(argv: list[str]) -> int``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "mk-docker-opts": (
        "pyflannel.cli.mk_docker_opts",
        "write Docker's --bip/--mtu/--ip-masq options from subnet.env",
    ),
    "install-cni": ("pyflannel.cli.install_cni", "install the flannel CNI plugin executable"),
    "lab": ("pyflannel.lab.command", "a namespaced sandbox cluster on this box (up|check|down)"),
    "status": ("pyflannel.cli.status", "leases in etcd and this node's data-path health"),
    "config": ("pyflannel.cli.config_cmd", "get, set or validate the network config"),
    "doctor": ("pyflannel.cli.doctor", "check this node for common flannel problems"),
}


def _usage() -> str:
    lines = ["usage: pyflannel <command> [options]", "", "commands:"]
    lines += [f"  {name:<16}{text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "The daemon itself is `pyflanneld` (or `python -m pyflannel`)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"pyflannel: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    code: int = module.main(rest)
    return code


if __name__ == "__main__":
    sys.exit(main())
