"""etcd stopped for 20 s under a running lab, with pods pinging each other the whole time.

The data path does not depend on etcd, so not one probe may be lost; the daemons must ride the
outage out (same process, same lease, /healthz answering) and, once etcd is back, apply lease
changes made right after it returned within 2 s (their watches were broken by the outage and
must have been re-created by then).

flanneld users see outages of a minute or more; 20 s is used here to keep CI time down. It is
long enough for every retry loop to reach its longest backoff, which is what matters.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.helpers import DaemonLab
from tests.faults.helpers import (
    PingMesh,
    fake_peer,
    free_octets,
    healthz,
    peer_state,
    wait_each_node,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

OUTAGE_SECONDS = 20.0
CATCH_UP_SECONDS = 2.0


@pytest.fixture
def lab(vxlan_lab: DaemonLab) -> DaemonLab:
    return vxlan_lab


def test_etcd_down_for_20s_loses_no_packet_and_daemons_catch_up(lab: DaemonLab) -> None:
    old_octet, new_octet = free_octets(lab, 2)
    gone, new = fake_peer(old_octet), fake_peer(new_octet)
    gone.put(lab.etcd)
    wait_each_node(
        lab,
        "peer to be removed is programmed",
        lambda n: peer_state(lab, n, gone) == "programmed",
        timeout=5,
    )
    leases = {n.name: lab.lease_of(n) for n in lab.nodes}
    pids = {name: proc.pid for name, proc in lab.daemons.items()}

    with PingMesh(lab) as mesh:
        lab.etcd.stop()
        time.sleep(OUTAGE_SECONDS / 2)
        for node in lab.nodes:
            assert lab.daemons[node.name].poll() is None, lab.log_tail(node)
            assert healthz(lab, node) == (200, b"flanneld is running")
            # Nothing was torn down: the peers' entries are all still there.
            assert peer_state(lab, node, gone) == "programmed"
        time.sleep(OUTAGE_SECONDS / 2)
        lab.etcd.restart()
        back = time.monotonic()
        new.put(lab.etcd)
        gone.delete(lab.etcd)
        added = wait_each_node(
            lab,
            "lease added after recovery is programmed",
            lambda n: peer_state(lab, n, new) == "programmed",
            timeout=15,
            since=back,
        )
        removed = wait_each_node(
            lab,
            "lease removed after recovery is unprogrammed",
            lambda n: peer_state(lab, n, gone) == "absent",
            timeout=15,
            since=back,
        )
        time.sleep(0.3)

    sent, lost = mesh.totals()
    print(
        f"\netcd outage {OUTAGE_SECONDS:.0f}s: {sent} probes over {len(mesh.results)} pod "
        f"pairs, {lost} lost; after recovery: add applied in "
        + ", ".join(f"{k}={v:.2f}s" for k, v in sorted(added.items()))
        + "; remove applied in "
        + ", ".join(f"{k}={v:.2f}s" for k, v in sorted(removed.items()))
    )
    assert mesh.lost() == {}, f"lost probes: {mesh.lost()}"
    assert sent >= len(mesh.results) * OUTAGE_SECONDS / 0.05 * 0.8
    assert max(added.values()) <= CATCH_UP_SECONDS, added
    assert max(removed.values()) <= CATCH_UP_SECONDS, removed
    for node in lab.nodes:
        proc = lab.daemons[node.name]
        assert proc.poll() is None and proc.pid == pids[node.name], "daemon never restarted"
        after = lab.lease_of(node)
        assert (after.subnet, after.value) == (leases[node.name].subnet, leases[node.name].value)
    lab.wait_converged(timeout=5)
    new.delete(lab.etcd)
    assert lab.ping_failures() == []
