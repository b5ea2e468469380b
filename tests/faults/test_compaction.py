"""etcd compaction past a daemon's watch revision.

n1's daemon is frozen (SIGSTOP) and etcd is restarted under it, so its watch stream is dead and
will have to be re-created from the last revision it saw. Meanwhile leases are added, removed
and changed, and etcd is compacted past all of that. On SIGCONT the watch cannot resume (its
revision is gone): the daemon must re-list and apply the difference -- no stale entry for the
removed lease, nothing missing for the added one, the changed VTEP MAC in place.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.e2e.helpers import ETCD_PREFIX, DaemonLab, wait_for
from tests.faults.helpers import (
    FakePeer,
    PingMesh,
    fake_peer,
    free_octets,
    log_text,
    peer_state,
    wait_each_node,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]


def current_revision(lab: DaemonLab) -> int:
    out = lab.etcd.etcdctl("get", f"{ETCD_PREFIX}/config", "-w", "json").stdout
    return int(json.loads(out)["header"]["revision"])


def test_watch_behind_compaction_resyncs_to_exactly_the_current_leases(
    vxlan_lab: DaemonLab,
) -> None:
    lab = vxlan_lab
    o_gone, o_changed, o_new = free_octets(lab, 3)
    gone, changed = fake_peer(o_gone), fake_peer(o_changed)
    new = fake_peer(o_new)
    changed_mac = FakePeer(changed.subnet, changed.public_ip, "0a:fb:00:00:00:01")
    for p in (gone, changed):
        p.put(lab.etcd)
    wait_each_node(
        lab,
        "fake peers programmed",
        lambda n: all(peer_state(lab, n, p) == "programmed" for p in (gone, changed)),
        timeout=5,
    )

    n1 = lab.node("n1")
    pid = lab.daemon_pid(n1)
    log_before = len(log_text(lab, n1))
    with PingMesh(lab) as mesh:
        os.kill(pid, signal.SIGSTOP)
        try:
            lab.etcd.stop()  # kills n1's watch streams while it cannot notice
            lab.etcd.restart()
            gone.delete(lab.etcd)
            new.put(lab.etcd)
            changed_mac.put(lab.etcd)
            for _ in range(5):  # revisions nobody but etcd sees
                lab.etcd.put(f"{ETCD_PREFIX}/faults-noise", "x")
            rev = current_revision(lab)
            lab.etcd.etcdctl("compact", str(rev))
            # n2, n3 were watching and follow along; n1 still holds everything stale.
            wait_each_node(
                lab,
                "running daemons applied the changes",
                lambda n: (
                    peer_state(lab, n, gone) == "absent"
                    and peer_state(lab, n, new) == "programmed"
                    and peer_state(lab, n, changed_mac) == "programmed"
                ),
                timeout=5,
                nodes=["n2", "n3"],
            )
            assert peer_state(lab, n1, gone) == "programmed"
            assert peer_state(lab, n1, new) == "absent"
        finally:
            resumed = time.monotonic()
            os.kill(pid, signal.SIGCONT)
        took = wait_each_node(
            lab,
            "n1 converged on exactly the current leases",
            lambda n: lab.vxlan_entries(n) == lab.expected_vxlan_entries(n),
            timeout=10,
            nodes=["n1"],
            since=resumed,
        )["n1"]
    lab.etcd.etcdctl("del", f"{ETCD_PREFIX}/faults-noise")

    got, want = lab.vxlan_entries(n1), lab.expected_vxlan_entries(n1)
    stale = {k: got[k] - want[k] for k in got if got[k] - want[k]}
    missing = {k: want[k] - got[k] for k in want if want[k] - got[k]}
    print(
        f"\ncompaction past the watch revision (compacted at {rev}): n1 resynced "
        f"{took:.2f}s after SIGCONT, {len(stale)} stale / {len(missing)} missing kinds of "
        f"entries; pings {mesh.totals()[0]} sent, {mesh.totals()[1]} lost"
    )
    assert stale == {} and missing == {}
    assert peer_state(lab, n1, gone) == "absent"
    assert peer_state(lab, n1, changed) != "programmed"  # the old MAC's entries are gone
    assert peer_state(lab, n1, changed_mac) == "programmed"
    # It got there through the compaction path, not by luck.
    log = log_text(lab, n1)[log_before:]
    assert "watch.compacted" in log, log[-3000:]
    assert lab.daemons["n1"].poll() is None
    assert mesh.lost() == {}, mesh.lost()
    wait_for("pods ping", lambda: lab.ping_failures() == [], timeout=5)
