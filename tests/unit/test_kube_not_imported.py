"""Etcd mode must not pay for kube mode: httpx and pyflannel.subnet.kube stay unimported."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
import pyflannel.__main__, pyflannel.daemon, pyflannel.subnet.manager
import pyflannel.subnet.etcd.registry
from pyflannel.cli.flags import parse_flags
from pyflannel.daemon import Daemon
opts = parse_flags(["--etcd-endpoints=http://127.0.0.1:1"], {})
d = Daemon(opts)
d._make_manager().close()
kube = ("httpx", "httpcore", "yaml", "pyflannel.subnet.kube")
bad = sorted(m for m in sys.modules if m.split(".")[0] in kube or m.startswith(kube[-1]))
print(",".join(bad))
"""


def test_etcd_mode_imports_no_kube_client() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "", f"etcd mode imported kube-only modules: {out.stdout.strip()}"
