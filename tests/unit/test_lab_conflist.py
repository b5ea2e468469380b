"""The lab attaches pods with exactly the conflist we ship for operators."""

from __future__ import annotations

import json
from pathlib import Path

from pyflannel.lab.cni import SEED_CONFLIST

SHIPPED = Path(__file__).resolve().parents[2] / "systemd" / "10-flannel.conflist"


def test_lab_uses_the_shipped_conflist() -> None:
    assert json.loads(SHIPPED.read_text()) == SEED_CONFLIST
