"""A daemon SIGKILLed and started again, while peers change behind its back.

The kernel state a daemon programmed outlives it, so pods keep talking while it is down. What
a restart must do beyond flanneld (flannel #2554): a peer whose lease disappeared while the
daemon was down has to be cleaned up from the kernel, and a peer that appeared meanwhile has to
be programmed -- both from the first listing after the restart.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.helpers import DaemonLab
from tests.faults.helpers import (
    PingMesh,
    fake_peer,
    free_octets,
    peer_state,
    wait_each_node,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_sigkill_restart_keeps_subnet_and_cleans_up_vanished_peers(vxlan_lab: DaemonLab) -> None:
    lab = vxlan_lab
    n2 = lab.node("n2")
    o_vanish, o_appear = free_octets(lab, 2)
    vanished, appeared = fake_peer(o_vanish), fake_peer(o_appear)
    vanished.put(lab.etcd)
    wait_each_node(
        lab,
        "peer programmed everywhere",
        lambda n: peer_state(lab, n, vanished) == "programmed",
        timeout=5,
    )
    lease = lab.lease_of(n2)
    link = lab.link(n2, "flannel.1")
    assert link is not None

    with PingMesh(lab) as mesh:
        rc = lab.stop_daemon(n2, signal.SIGKILL)
        assert rc == -signal.SIGKILL
        vanished.delete(lab.etcd)
        appeared.put(lab.etcd)
        wait_each_node(
            lab,
            "running peers applied the changes",
            lambda n: (
                peer_state(lab, n, vanished) == "absent"
                and peer_state(lab, n, appeared) == "programmed"
            ),
            timeout=5,
            nodes=["n1", "n3"],
        )
        # n2 is down: the vanished peer is still in its kernel (the stale state to clean up).
        assert peer_state(lab, n2, vanished) == "programmed"
        time.sleep(1.0)  # traffic keeps flowing with no daemon at all

        started = time.monotonic()
        lab.start_daemon(n2)
        lab.wait_ready(n2)
        ready = time.monotonic() - started
        took = wait_each_node(
            lab,
            "n2 cleaned up the vanished peer and programmed the new one",
            lambda n: lab.vxlan_entries(n) == lab.expected_vxlan_entries(n),
            timeout=10,
            nodes=["n2"],
            since=started,
        )["n2"]
        time.sleep(0.3)

    sent, lost = mesh.totals()
    print(
        f"\nSIGKILL + restart of n2: ready {ready:.2f}s after start, peers reconciled "
        f"{took:.2f}s after start; pings {sent} sent, {lost} lost"
    )
    assert mesh.lost() == {}, mesh.lost()
    assert peer_state(lab, n2, vanished) == "absent"
    assert peer_state(lab, n2, appeared) == "programmed"
    after = lab.lease_of(n2)
    assert after.subnet == lease.subnet and after.value == lease.value, "same subnet, same MAC"
    relink = lab.link(n2, "flannel.1")
    assert relink is not None and relink["address"] == link["address"]
    assert lab.ping_failures() == []
