"""``pyflannel mk-docker-opts``: flannel's ``dist/mk-docker-opts.sh`` without a shell.

Turns subnet.env into Docker daemon options and writes exactly the bytes the upstream script
writes (as run by ``/bin/sh`` = dash, or bash in POSIX mode) for the same inputs:

- ``-f FILE`` flannel env (default ``/run/flannel/subnet.env``), ``-d FILE`` output (default
  ``/run/docker_opts.env``), ``-i`` individual ``DOCKER_OPT_*`` vars, ``-c`` the combined var,
  ``-k KEY`` its name (default ``DOCKER_OPTS``), ``-m`` no ``--ip-masq``, ``-?`` usage
  (stderr, exit 1). Neither ``-i`` nor ``-c`` means both. Unlike the script, ``-h`` and
  ``--help`` print the usage on stdout and exit 0.
- ``FLANNEL_SUBNET`` → ``--bip``, ``FLANNEL_MTU`` → ``--mtu``, ``FLANNEL_IPMASQ`` inverted into
  ``--ip-masq`` (anything but true/false: "Invalid value of FLANNEL_IPMASQ", exit 1).
- Variables are listed in ``set`` order (sorted), so ``DOCKER_OPT_*`` variables already in the
  environment are included; a pre-set ``KEY`` variable is prepended to the combined value.
- Finally, if ``ip route show`` has a line matching the lease subnet (as a ``grep`` pattern)
  and containing ``via``, that is reported and the exit status is 1 (the file is written).

Every value is checked before anything is written (unlike the script, which copied shell code
from ``FLANNEL_SUBNET`` into a file that is later sourced): ``FLANNEL_SUBNET`` an IPv4
address/prefix, ``FLANNEL_MTU`` an integer MTU, ``FLANNEL_IPMASQ`` true/false (when used), the
``-k`` key a shell name, and ``DOCKER_OPT_*``/key values free of ``"``, ``$``, backquote and
backslash. Bad input: nothing is written, one line naming the key, exit 1. Valid input gives
the script's bytes.

Differences: subnet.env is *parsed* (``KEY=VALUE``, quotes, comments, ``export``), never
sourced, so shell code in it is not run and a malformed file is an error (exit 1); values are
not glob-expanded and backslashes are not interpreted by ``echo``; a relative ``-f`` path is
read relative to the working directory (``.`` in dash searches ``$PATH``).

Standard library only (it runs as a short-lived tool).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TextIO

from pyflannel.errors import ConfigError
from pyflannel.subnet.subnet_env import expected_value, read_subnet_env_vars

__all__ = ["ip_route_show", "main", "run"]

PROG: Final = "pyflannel mk-docker-opts"

_USAGE: Final = (
    "{prog} [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]\n"
    """
Generate Docker daemon options based on flannel env file
OPTIONS:
\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env
\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)

"""
)


@dataclass
class _Args:
    flannel_env: str = "/run/flannel/subnet.env"
    docker_env: str = "/run/docker_opts.env"
    combined_key: str = "DOCKER_OPTS"
    indiv: bool = False
    combined: bool = False
    ipmasq: bool = True


class _Usage(Exception):
    """getopts hit -?, a bad option, or (``requested``) -h/--help; ``str()`` is the message
    printed before usage."""

    def __init__(self, message: str, *, requested: bool = False) -> None:
        super().__init__(message)
        self.requested = requested


def _getopts(argv: Sequence[str]) -> _Args:
    """POSIX ``getopts "f:d:icmk:?h"`` as dash runs it (stops at the first non-option)."""
    args = _Args()
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            break
        if word == "--help":
            raise _Usage("", requested=True)
        if len(word) < 2 or word[0] != "-":
            break
        i += 1
        j = 1
        while j < len(word):
            opt = word[j]
            j += 1
            if opt in "fdk":
                if j < len(word):
                    value, j = word[j:], len(word)
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    raise _Usage(f"No arg for -{opt} option\n")
                if opt == "f":
                    args.flannel_env = value
                elif opt == "d":
                    args.docker_env = value
                else:
                    args.combined_key = value
            elif opt == "i":
                args.indiv = True
            elif opt == "c":
                args.combined = True
            elif opt == "m":
                args.ipmasq = False
            elif opt == "h":
                raise _Usage("", requested=True)
            elif opt == "?":
                raise _Usage("")
            else:
                raise _Usage(f"Illegal option -{opt}\n")
    if not args.indiv and not args.combined:
        args.indiv = args.combined = True
    return args


def _echo_unquoted(value: str) -> str:
    """``$(eval echo "\\$NAME")``: field splitting joins the words with single spaces."""
    return " ".join(value.split())


def _cut(text: str, delim: str, fields: Sequence[int]) -> str:
    """``cut -d DELIM -f FIELDS`` on one line (a line without DELIM passes unchanged)."""
    if delim not in text:
        return text
    parts = text.split(delim)
    return delim.join(parts[f - 1] for f in fields if f <= len(parts))


_SHELL_INT_RE: Final = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*", re.ASCII)
_SHELL_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def _shell_int(text: str) -> int | None:
    if _SHELL_INT_RE.fullmatch(text) and len(text) < 20:
        return int(text, 0) if text[:2].lower() == "0x" else int(text, 8 if text[0] == "0" else 10)
    return None


def _minus_one(text: str, variables: Mapping[str, str]) -> int:
    """dash's ``$((text-1))`` for the cases a subnet string can produce."""
    if text == "":
        return -1
    value = _shell_int(text)
    if value is None and _SHELL_NAME_RE.fullmatch(text):
        value = _shell_int(variables.get(text, "").strip() or "0")
    if value is None:
        raise ConfigError(
            f"arithmetic expression: cannot compute {text}-1 from FLANNEL_SUBNET",
            hint="FLANNEL_SUBNET must look like 10.5.72.1/24",
        )
    return value - 1


def _grep_pattern(pattern: str) -> re.Pattern[str]:
    """A ``grep`` basic regular expression as built from a subnet string."""
    out = []
    for k, ch in enumerate(pattern):
        if ch == ".":
            out.append(".")
        elif ch == "*" and k > 0:
            out.append("*")
        elif ch == "^" and k == 0:
            out.append("^")
        elif ch == "$" and k == len(pattern) - 1:
            out.append("$")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


# Characters that keep their meaning inside a double-quoted shell word: a value holding one
# would run code when docker_opts.env is sourced.
_SHELL_ACTIVE: Final = frozenset('"$`\\')


def _invalid_input(variables: Mapping[str, str], args: _Args) -> str | None:
    """The one-line complaint about the first value that must not be written, if any."""
    for key in ("FLANNEL_SUBNET", "FLANNEL_MTU"):
        value = variables.get(key, "")
        expected = expected_value(key, value) if value else None
        if expected is not None:
            return f"{key}={value[:80]!r} is not {expected}"
    if not _SHELL_NAME_RE.fullmatch(args.combined_key):
        return f"-k {args.combined_key[:80]!r} is not a shell variable name"
    for name in [*sorted(_docker_opt_names(variables)), args.combined_key]:
        value = variables.get(name, "")
        if _SHELL_ACTIVE.intersection(value):
            return f'{name}={value[:80]!r} contains one of " $ ` \\'
    return None


def _docker_opt_names(variables: Mapping[str, str]) -> list[str]:
    """What ``set | grep DOCKER_OPT_`` lists: shell variables whose name contains it."""
    return [n for n in variables if "DOCKER_OPT_" in n and _SHELL_NAME_RE.fullmatch(n)]


def ip_route_show() -> str:
    """Text of ``ip route show`` in the current network namespace ('' if it cannot run)."""
    try:
        proc = subprocess.run(["ip", "route", "show"], capture_output=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.decode("utf-8", errors="replace")


def run(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    route_table: Callable[[], str] = ip_route_show,
    stderr: TextIO | None = None,
    stdout: TextIO | None = None,
    prog: str = PROG,
) -> int:
    """The tool with its inputs made explicit (for tests); returns the exit status."""
    err = sys.stderr if stderr is None else stderr
    try:
        args = _getopts(argv)
    except _Usage as usage:
        if usage.requested:
            (sys.stdout if stdout is None else stdout).write(_USAGE.format(prog=prog))
            return 0
        err.write(str(usage) + _USAGE.format(prog=prog))
        return 1

    # Shell variables as the script sees them after sourcing: the environment, then the file.
    variables = dict(environ)
    if os.path.isfile(args.flannel_env):
        try:
            variables.update(read_subnet_env_vars(args.flannel_env))
        except ConfigError as exc:
            err.write(f"{prog}: {exc}\n")
            return 1

    complaint = _invalid_input(variables, args)
    if complaint is not None:
        err.write(f"{prog}: {complaint}; nothing was written\n")
        return 1

    subnet = variables.get("FLANNEL_SUBNET", "")
    mtu = variables.get("FLANNEL_MTU", "")
    ipmasq = variables.get("FLANNEL_IPMASQ", "")
    if subnet:
        variables["DOCKER_OPT_BIP"] = f"--bip={subnet}"
    if mtu:
        variables["DOCKER_OPT_MTU"] = f"--mtu={mtu}"
    if ipmasq and args.ipmasq:
        if ipmasq == "true":
            variables["DOCKER_OPT_IPMASQ"] = "--ip-masq=false"
        elif ipmasq == "false":
            variables["DOCKER_OPT_IPMASQ"] = "--ip-masq=true"
        else:
            err.write(f"Invalid value of FLANNEL_IPMASQ: {ipmasq}\n")
            return 1

    docker_opts = variables.get(args.combined_key, "")
    if docker_opts:
        docker_opts += " "
    lines = []
    # `set | grep DOCKER_OPT_` lists every such variable, sorted as `set` prints them.
    for name in sorted(_docker_opt_names(variables), key=lambda n: n + "="):
        value = _echo_unquoted(variables[name])
        if args.indiv:
            lines.append(f'{name}="{value}"\n')
        docker_opts = f"{docker_opts} {value}"
    if args.combined:
        lines.append(f'{args.combined_key}="{docker_opts}"\n')
    try:
        with open(args.docker_env, "w", encoding="utf-8", newline="") as out:
            out.write("".join(lines))
    except OSError as exc:
        err.write(f"{prog}: cannot write {args.docker_env}: {exc.strerror or exc}\n")
        return 1

    if subnet:
        try:
            dot_four = _minus_one(_cut(_cut(subnet, ".", [4]), "/", [1]), variables)
        except ConfigError as exc:
            err.write(f"{prog}: {exc}\n")
            return 2
        subnets = f"{_cut(subnet, '.', [1, 2, 3])}.{dot_four}/{_cut(subnet, '/', [2])}"
        pattern = _grep_pattern(subnets)
        hits = [
            line for line in route_table().split("\n") if pattern.search(line) and "via" in line
        ]
        if hits:
            err.write("Your routing table already contains the subnet: " + "\n".join(hits) + "\n")
            return 1
    return 0


def main(argv: list[str]) -> int:
    """Entry point: ``argv`` without the program name; returns the exit status."""
    return run(argv, os.environ)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
