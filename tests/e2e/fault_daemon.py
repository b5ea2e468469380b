"""The real daemon (``python -m pyflannel``) with one fault injected before it starts.

Used by tests/e2e/test_peer_pipeline.py as ``python tests/e2e/fault_daemon.py FLAGS...``: the
first route dump of peer programming fails as a busy node's would ("the kernel table kept
changing"), so the first snapshot's kernel apply fails. Nothing else differs from production.
"""

from __future__ import annotations

import runpy
import sys

from pyflannel.backend import kernel
from pyflannel.errors import NetlinkError

_real_routes = kernel.NetlinkKernel.routes
_failed: list[int] = []


def _routes_failing_once(self: kernel.NetlinkKernel, family: int) -> list[object]:
    if not _failed:
        _failed.append(family)
        raise NetlinkError("route dump: the kernel table kept changing during 5 dumps (injected)")
    return _real_routes(self, family)  # type: ignore[return-value]


kernel.NetlinkKernel.routes = _routes_failing_once  # type: ignore[method-assign,assignment]
sys.argv = ["pyflannel", *sys.argv[1:]]
runpy.run_module("pyflannel", run_name="__main__", alter_sys=True)
