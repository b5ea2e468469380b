"""The layering a newcomer can trust: the operator tools (``pyflannel.cli``) sit on top.

Nothing below them imports them -- not the daemon, not the inspection layer they render, not
the backends or the subnet managers -- so a change to a tool's flags or output can never reach
the node agent, and ``inspect/`` stays a library the tools ask, not one that asks them back.
Imports under ``TYPE_CHECKING`` and inside functions count too: a deferred import is still a
dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pyflannel

ROOT = Path(pyflannel.__file__).parent
# The entry point dispatches to the tools; the tools may import each other.
ALLOWED = {"__main__.py"}


def _imported_modules(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def test_nothing_below_the_cli_imports_it() -> None:
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "cli" or str(rel) in ALLOWED:
            continue
        upward = sorted(
            m
            for m in _imported_modules(path)
            if m == "pyflannel.cli" or m.startswith("pyflannel.cli.")
        )
        if upward:
            offenders.append(f"{rel}: {', '.join(upward)}")
    assert offenders == [], "modules below the CLI import it:\n" + "\n".join(offenders)
