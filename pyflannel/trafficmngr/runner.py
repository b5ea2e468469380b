"""Run iptables / nft / ip as subprocesses, optionally inside a network namespace.

Never through a shell: argv lists only. With ``netns`` set, every command is prefixed with
``ip netns exec <netns>`` (used by the tests; the daemon already runs in its namespace).
Failures become :class:`~pyflannel.errors.TrafficRuleError` naming the command, its stderr and
a hint.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from pyflannel.errors import FlannelError, TrafficRuleError

__all__ = ["CommandResult", "Runner", "hint_for", "parse_version"]

_HINTS = {
    "iptables": "is the iptables package installed and the nf_tables (or ip_tables) kernel "
    "module loaded? is another program holding the xtables lock?",
    "nft": "is the nftables package installed and the nf_tables kernel module loaded?",
    "ip": "is iproute2 installed?",
}


def hint_for(binary: str) -> str:
    """What to check when ``binary`` fails or is missing."""
    if "tables" in binary and not binary.startswith("nft"):
        return _HINTS["iptables"]
    return _HINTS.get(binary, f"is {binary} installed and on PATH?")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``iptables v1.8.9 (nf_tables)`` → (1, 8, 9); None when there is no version."""
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    if m is None:
        return None
    return int(m[1]), int(m[2]), int(m[3])


@dataclass(frozen=True, slots=True)
class CommandResult:
    """Outcome of one command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.returncode == 0


class Runner:
    """Runs commands (in ``netns`` when given) with a timeout."""

    def __init__(self, netns: str | None = None, *, timeout: float = 30.0) -> None:
        self.netns = netns
        self.timeout = timeout

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """The full argv, with the ``ip netns exec`` prefix when needed."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, *cmd]

    def have(self, binary: str) -> bool:
        """True when ``binary`` is on PATH (the namespace shares our file system)."""
        return shutil.which(binary) is not None

    def require(self, binary: str, *, error: type[FlannelError] = TrafficRuleError) -> None:
        """Raise ``error`` when ``binary`` (or ``ip`` for the netns prefix) is missing."""
        for b in [binary, "ip"] if self.netns else [binary]:
            if not self.have(b):
                raise error(f"required program {b!r} was not found on PATH", hint=hint_for(b))

    async def run(
        self,
        cmd: Sequence[str],
        *,
        stdin: str | None = None,
        check: bool = True,
        error: type[FlannelError] = TrafficRuleError,
    ) -> CommandResult:
        """Run ``cmd``; with ``check``, a non-zero exit raises ``error`` with stderr and a hint."""
        argv = self.argv(cmd)
        shown = " ".join(cmd)
        try:
            with trio.fail_after(self.timeout):
                proc = await trio.run_process(
                    argv,
                    stdin=stdin.encode() if stdin is not None else b"",
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
        except FileNotFoundError as exc:
            raise error(f"cannot run {shown!r}: {exc.strerror}", hint=hint_for(cmd[0])) from exc
        except trio.TooSlowError as exc:
            raise error(
                f"{shown!r} did not finish within {self.timeout:g}s", hint=hint_for(cmd[0])
            ) from exc
        res = CommandResult(
            tuple(argv),
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if check and not res.ok:
            raise self.failure(cmd, res, error)
        return res

    def failure(
        self,
        cmd: Sequence[str],
        res: CommandResult,
        error: type[FlannelError] = TrafficRuleError,
    ) -> FlannelError:
        """The error for a failed ``cmd``: the command, where, exit code, stderr, a hint."""
        return error(
            f"{' '.join(cmd)!r}{self._where()} failed with exit code {res.returncode}: "
            f"{_one_line(res.stderr) or _one_line(res.stdout) or '(no output)'}",
            hint=hint_for(cmd[0]),
        )

    def _where(self) -> str:
        return f" in netns {self.netns}" if self.netns else ""


def _one_line(text: str) -> str:
    # error messages are one line; nft prints the failing command and a caret line under it
    return " | ".join(ln.strip() for ln in text.splitlines() if ln.strip())
