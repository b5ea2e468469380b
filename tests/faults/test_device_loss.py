"""flannel.1 deleted under a running daemon while pods ping across it.

The kernel drops the device's routes, ARP and FDB entries with it; the daemon must re-create the
device with the same VTEP MAC (so the peers' entries, which point at that MAC, stay valid) and
re-program every peer. Measured: the longest run of lost probes on any pod pair.
"""

from __future__ import annotations

import time

import pytest

from pyflannel.lab.netns import run_in
from tests.e2e.helpers import DaemonLab
from tests.faults.helpers import PingMesh, wait_each_node

pytestmark = [pytest.mark.root, pytest.mark.slow]

INTERVAL = 0.05
MAX_GAP_SECONDS = 2.0


def longest_gap(missing: list[int]) -> int:
    """Length of the longest run of consecutive sequence numbers in ``missing``."""
    best = run = 0
    prev = None
    for seq in missing:
        run = run + 1 if prev is not None and seq == prev + 1 else 1
        best = max(best, run)
        prev = seq
    return best


def test_deleted_vxlan_device_is_back_with_same_mac_and_pings_within_2s(
    vxlan_lab: DaemonLab,
) -> None:
    lab = vxlan_lab
    n1 = lab.node("n1")
    before = lab.link(n1, "flannel.1")
    assert before is not None
    peers_before = {p: lab.vxlan_entries(p) for p in ("n2", "n3")}

    with PingMesh(lab, interval=INTERVAL) as mesh:
        run_in(n1.ns, ["ip", "link", "del", "flannel.1"])
        deleted = time.monotonic()
        took = wait_each_node(
            lab,
            "n1 re-created flannel.1 and re-programmed every peer",
            lambda n: lab.vxlan_entries(n) == lab.expected_vxlan_entries(n),
            timeout=5,
            nodes=["n1"],
            since=deleted,
        )["n1"]
        time.sleep(2.5)  # the pings must have come back, and stay back

    after = lab.link(n1, "flannel.1")
    assert after is not None
    assert after["ifindex"] != before["ifindex"], "the device really was re-created"
    assert after["address"] == before["address"], "same VTEP MAC"
    for p, entries in peers_before.items():
        assert lab.vxlan_entries(p) == entries, f"{p} did not need to change anything"
    gaps = {pair: longest_gap(miss) * INTERVAL for pair, miss in mesh.lost().items()}
    sent, lost = mesh.totals()
    print(
        f"\nflannel.1 deleted on n1: re-programmed {took:.2f}s after; {sent} probes, {lost} "
        f"lost; longest outage per pair: "
        + (", ".join(f"{k}={v:.2f}s" for k, v in sorted(gaps.items())) or "none")
    )
    assert all(gap <= MAX_GAP_SECONDS for gap in gaps.values()), gaps
    # Pairs not involving n1 never notice.
    assert not any("n1" not in pair for pair in mesh.lost()), mesh.lost()
    assert lab.ping_failures() == []
