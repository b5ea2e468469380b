"""End to end, the operator's sandbox: ``pyflannel lab up`` / ``check`` / ``up`` again / ``down``
run as commands, as the README tells a user to."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pyflannel.lab.netns import netns_pids, prefixed_netns
from pyflannel.lab.topology import default_state_root
from tests.e2e.helpers import run_lab

pytestmark = pytest.mark.root

NODES = 3


def _check_all_good(prefix: str) -> None:
    proc = run_lab("check", "--prefix", prefix)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # NODES leases, each listed with its vxlan VTEP MAC
    assert out.count("198.51.100.") == NODES, out
    assert out.count(" vxlan ") == NODES, out
    # the full matrix, self included: every cell a tick
    assert out.count("✓") == NODES * NODES, out
    assert "✗" not in out
    assert "all pods reach each other" in out


def _alive(pid: int, cmdline: bytes) -> bool:
    """True if ``pid`` is still the same live (non-zombie) process."""
    try:
        if Path(f"/proc/{pid}/cmdline").read_bytes() != cmdline:
            return False  # gone, or the pid was reused
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_lab_up_check_up_again_down(prefix: str) -> None:
    state_dir = default_state_root(prefix)

    up = run_lab("up", "--nodes", str(NODES), "--prefix", prefix)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"lab {prefix}: up in" in up.stdout
    assert state_dir.is_dir()
    _check_all_good(prefix)

    # idempotent: a second `up` of the same prefix works and the lab is whole again
    again = run_lab("up", "--nodes", str(NODES), "--prefix", prefix)
    assert again.returncode == 0, again.stdout + again.stderr
    _check_all_good(prefix)

    namespaces = prefixed_netns(prefix)
    assert len(namespaces) == 2 + NODES + NODES  # switch, etcd, nodes, pods
    procs = {
        pid: Path(f"/proc/{pid}/cmdline").read_bytes()
        for ns in namespaces
        for pid in netns_pids(ns)
    }
    # etcd plus one daemon per node, nothing left over from the first `up`
    daemons = [c for c in procs.values() if b"pyflannel" in c.split(b"\0")]
    assert len(daemons) == NODES, procs
    assert sum(1 for c in procs.values() if c.split(b"\0")[0].endswith(b"etcd")) == 1

    gone = run_lab("down", "--prefix", prefix)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert prefixed_netns(prefix) == []
    assert not [p for p, c in procs.items() if _alive(p, c)]
    ps = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True)
    assert [ln for ln in ps.stdout.splitlines() if prefix in ln] == []
    assert not state_dir.exists()
    assert not Path(f"/run/netns/{prefix}-n1").exists()


def test_lab_check_without_a_lab_fails_clearly(prefix: str) -> None:
    proc = run_lab("check", "--prefix", prefix)
    assert proc.returncode == 1
    assert f"no lab named {prefix!r} is up" in proc.stderr
