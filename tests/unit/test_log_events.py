"""Log events follow one convention, and docs/architecture.md lists them all.

Every structlog event in ``pyflannel/`` and ``cni_plugin/`` is a dotted lower_snake
``component.event_name`` string literal (``lease.renewed``, ``vxlan.device_ready``), so logs can be
filtered by component and events are greppable in the source. This test finds them by parsing the
source: logger calls (``log.info("...")``, ``_log.warning(...)``), the helpers that take an event
name (``FailureLog(log, "...")``, which also logs ``<event>_resolved``; ``_log_retry``;
``_log_error``) and the few templated ones.

The list in docs/architecture.md (between the ``log-events`` markers) is generated:
``.venv/bin/python -m tests.unit.test_log_events`` prints it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pyflannel", "cni_plugin")
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- log-events:begin -->", "<!-- log-events:end -->"

EVENT = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*")
LEVELS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"})
LOGGER = re.compile(r"(?:^|\.)_?log(?:ger)?$|(?:^|\.)_?log(?:ger)?\.bind\(")
# callables that take an event name, and the position of that argument
EVENT_HELPERS = {"FailureLog": 1, "_log_retry": 1, "_log_error": 0}
# parameters through which those helpers forward the event they were given
FORWARDED = frozenset({"event", "self.event"})
# f-string events and the events they produce (empty: derived from events listed elsewhere)
TEMPLATES: dict[str, tuple[str, ...]] = {
    "{mode}.resync_failed": ("iptables.resync_failed", "nftables.resync_failed"),
    "{self.event}_resolved": (),  # FailureLog's "<event>_resolved", expanded below
    "{self.backend}.reconcile_failed": ("vxlan.reconcile_failed", "udp.reconcile_failed"),
    "{self.backend}.recreate_failed": ("vxlan.recreate_failed", "udp.recreate_failed"),
    "{self.backend}.device_repaired": ("vxlan.device_repaired", "udp.device_repaired"),
}

# Files left out of the scan (none: every event in pyflannel/ and cni_plugin/ is checked).
EXCLUDED_FOR_MERGE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Found:
    event: str
    """The literal, or an f-string's template with ``{expr}`` placeholders."""
    where: str
    """``path:line``."""
    template: bool = False
    failure_log: bool = False


def _excluded(rel: str) -> bool:
    return any(rel == x or (x.endswith("/") and rel.startswith(x)) for x in EXCLUDED_FOR_MERGE)


def _template(node: ast.JoinedStr) -> str:
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
        elif isinstance(value, ast.FormattedValue):
            parts.append("{" + ast.unparse(value.value) + "}")
    return "".join(parts)


def _event_arg(node: ast.expr, where: str, failure_log: bool = False) -> Found | None:
    """The event named by ``node``; None when it forwards a helper's parameter."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return Found(node.value, where, failure_log=failure_log)
    if isinstance(node, ast.JoinedStr):
        return Found(_template(node), where, template=True)
    if ast.unparse(node) in FORWARDED:
        return None
    return Found(f"<not a literal: {ast.unparse(node)}>", where)


def scan(include_excluded: bool = False) -> Iterator[Found]:
    """Every log event named in the packages' source, in file order."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if _excluded(rel) and not include_excluded:
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if not isinstance(node, ast.Call):
                    continue
                where = f"{rel}:{node.lineno}"
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in EVENT_HELPERS and len(node.args) > EVENT_HELPERS[name]:
                    arg = node.args[EVENT_HELPERS[name]]
                    found = _event_arg(arg, where, failure_log=name == "FailureLog")
                elif (
                    isinstance(func, ast.Attribute)
                    and func.attr in LEVELS
                    and LOGGER.search(ast.unparse(func.value))
                    and node.args
                ):
                    found = _event_arg(node.args[0], where)
                else:
                    continue
                if found is not None:
                    yield found


def events(found: list[Found]) -> set[str]:
    """The concrete event names, templates expanded."""
    out: set[str] = set()
    for f in found:
        if f.template:
            out.update(TEMPLATES.get(f.event, ()))
        else:
            out.add(f.event)
            if f.failure_log:
                out.add(f"{f.event}_resolved")
    return out


def render(names: set[str]) -> str:
    """The markdown list for docs/architecture.md: one line per component."""
    by_component: dict[str, list[str]] = {}
    for name in sorted(names):
        by_component.setdefault(name.split(".", 1)[0], []).append(name)
    return "\n".join(
        f"- `{component}`: " + ", ".join(f"`{n}`" for n in names)
        for component, names in sorted(by_component.items())
    )


def documented() -> set[str]:
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC} lost its {BEGIN} / {END} markers"
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return set(re.findall(r"`([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)`", section))


# --- tests --------------------------------------------------------------------------------------


def test_every_event_is_a_dotted_lower_snake_literal() -> None:
    found = list(scan())
    bad = [
        f"{f.where}: {f.event!r}"
        for f in found
        if (f.template and f.event not in TEMPLATES)
        or (not f.template and not EVENT.fullmatch(f.event))
    ]
    assert not bad, (
        "log events must be string literals of the form component.event_name "
        '(lower_snake, one dot), e.g. log.info("lease.renewed", subnet=...); '
        "f-string events must be listed in TEMPLATES:\n  " + "\n  ".join(bad)
    )


def test_the_scan_finds_the_events() -> None:
    names = events(list(scan()))
    # one from each kind of call site, so a scanner that finds nothing cannot pass
    assert {"lease.renewed", "backend.peers_programmed", "udp.send_failed"} <= names
    assert {"lease.reacquire_failed", "lease.reacquire_failed_resolved", "watch.broken"} <= names


def test_architecture_doc_lists_every_event() -> None:
    names = events(list(scan()))
    listed = documented()
    missing = sorted(names - listed)
    assert not missing, (
        f"events missing from {DOC.name}'s Log events list: {missing}; regenerate it with "
        "`.venv/bin/python -m tests.unit.test_log_events`"
    )
    if not EXCLUDED_FOR_MERGE:
        stale = sorted(listed - names)
        assert not stale, f"{DOC.name} lists events nothing logs any more: {stale}"


if __name__ == "__main__":
    print(render(events(list(scan(include_excluded=True)))))
