"""One checked fact (:class:`Finding`) and how a list of them is counted and printed."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, Protocol

__all__ = [
    "MAX_OK_PEER_LINES",
    "Finding",
    "FindingsReport",
    "Level",
    "PrintableReport",
    "count_levels",
    "findings_document",
    "format_duration",
    "print_report",
    "render_findings",
    "verdict_line",
]

# Above this many healthy peers the table shows one summary line instead of one line each.
MAX_OK_PEER_LINES: Final = 20

Level = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One checked fact: ``level``, which ``check``, about what ``subject``, a one-line
    ``message`` and, when there is one, the command that ``fix``-es it."""

    level: Level
    check: str
    subject: str
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The finding as a JSON object (stable keys: the fields, in order)."""
        return asdict(self)


def format_duration(seconds: float | None) -> str:
    """``23h59m``, ``5m03s``, ``42s``; ``never`` for None, ``expired`` at or below zero."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s <= 0:
        return "expired"
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def count_levels(findings: Iterable[Finding]) -> dict[str, int]:
    """``{"ok": n, "warn": n, "fail": n}``."""
    counts = {"ok": 0, "warn": 0, "fail": 0}
    for f in findings:
        counts[f.level.lower()] += 1
    return counts


@dataclass
class FindingsReport:
    """What a tool run found, in order: the base of the ``status`` and ``doctor`` reports."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No FAIL finding (the tool exits 0)."""
        return count_levels(self.findings)["fail"] == 0


def findings_document(findings: Sequence[Finding]) -> dict[str, Any]:
    """The ``findings`` and ``summary`` members every report document ends with."""
    return {"findings": [f.as_dict() for f in findings], "summary": count_levels(findings)}


class PrintableReport(Protocol):
    """A tool's report as it is printed: a text table or a JSON document."""

    def render(self) -> str:
        """The human-readable report."""
        ...

    def document(self) -> dict[str, Any]:
        """The ``--output json`` document."""
        ...


def print_report(report: PrintableReport, output: str) -> None:
    """Print a tool's ``report`` on stdout: its document as indented JSON when ``output`` is
    ``json`` (``--output json``), else its text."""
    if output == "json":
        print(json.dumps(report.document(), indent=2))
    else:
        print(report.render(), end="")


def verdict_line(findings: Sequence[Finding], ok: str) -> str:
    """A report's last line: ``ok`` when nothing failed, else the problem and warning counts."""
    counts = count_levels(findings)
    if not counts["fail"]:
        return ok
    return f"{counts['fail']} problem(s) found, {counts['warn']} warning(s)"


def render_findings(findings: Sequence[Finding], *, collapse_ok_peers: bool = True) -> list[str]:
    """One line per finding (``LEVEL  subject  message``), fixes indented below."""
    lines: list[str] = []
    shown = list(findings)
    ok_peers = [f for f in shown if f.level == "OK" and f.check == "peer"]
    if collapse_ok_peers and len(ok_peers) > MAX_OK_PEER_LINES:
        first = shown.index(ok_peers[0])
        shown = [f for f in shown if not (f.level == "OK" and f.check == "peer")]
        shown.insert(
            first,
            Finding("OK", "peer", f"{len(ok_peers)} peers", "routes and entries in place"),
        )
    cw = max((len(f.check) for f in shown), default=0)
    sw = max((len(f.subject) for f in shown), default=0)
    for f in shown:
        lines.append(f"  {f.level:<4}  {f.check:<{cw}}  {f.subject:<{sw}}  {f.message}")
        if f.fix and f.level != "OK":
            lines.append(f"  {'':<4}  {'':<{cw}}  {'':<{sw}}  fix: {f.fix}")
    return lines
