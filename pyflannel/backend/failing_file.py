"""The quarantined peers, published beside subnet.env for ``pyflannel status``.

``<state dir>/peers-failing.json`` holds ``{"<lease key>": {"reason": ..., "message": ...}}``
for every wanted peer the kernel refuses (see :mod:`pyflannel.backend.wanted`); the daemon
rewrites it atomically whenever that set changes, and removes it when the set is empty.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pyflannel.backend.wanted import Failing

__all__ = ["FAILING_FILE", "read_failing", "write_failing"]

FAILING_FILE = "peers-failing.json"
_MAX_BYTES = 1 << 20


def write_failing(state_dir: Path, failing: Mapping[str, Failing]) -> None:
    """Replace the file with ``failing`` (remove it when empty)."""
    path = Path(state_dir) / FAILING_FILE
    if not failing:
        path.unlink(missing_ok=True)
        return
    doc = {k: {"reason": f.reason, "message": f.message} for k, f in sorted(failing.items())}
    tmp = path.with_name(f".{FAILING_FILE}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def read_failing(state_dir: Path) -> dict[str, str]:
    """Lease key → reason, from the file (empty when absent or unreadable)."""
    path = Path(state_dir) / FAILING_FILE
    try:
        with path.open("rb") as fh:
            doc = json.loads(fh.read(_MAX_BYTES))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[str, str] = {}
    for key, value in doc.items():
        reason = value.get("reason") if isinstance(value, dict) else None
        if isinstance(key, str) and isinstance(reason, str):
            out[key] = reason
    return out
