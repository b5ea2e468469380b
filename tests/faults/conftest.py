"""Fixtures of the fault tests (the helpers are in tests/faults/helpers.py).

``vxlan_lab`` is a 3-node vxlan lab (one per test module) for the fault tests that leave the lab
as they found it (compaction, kill, device loss, hostile leases); scenarios that change how the
daemons run (short TTLs, TLS, an etcd cluster) build labs of their own.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import DaemonLab
from tests.faults.helpers import drop_foreign_leases, fault_lab
from tests.harness.fixtures import require_root

__all__ = ["vxlan_lab"]


@pytest.fixture(scope="module")
def _shared_vxlan_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonLab]:
    require_root()
    with fault_lab(Path(tmp_path_factory.mktemp("faults-vxlan-lab"))) as lab:
        yield lab


@pytest.fixture
def vxlan_lab(_shared_vxlan_lab: DaemonLab) -> Iterator[DaemonLab]:
    """A 3-node vxlan lab with one pod per node, shared by the tests of a module. Each test
    starts from a converged lab with every daemon running (one a failed test left dead or
    frozen is revived) and the fake or hostile leases it added are removed after."""
    lab = _shared_vxlan_lab
    for node in lab.nodes:
        proc = lab.daemons.get(node.name)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # in case a failed test left it frozen
        else:
            lab.start_daemon(node)
            lab.wait_ready(node)
    drop_foreign_leases(lab)
    lab.wait_converged(timeout=10)
    yield lab
    drop_foreign_leases(lab)
