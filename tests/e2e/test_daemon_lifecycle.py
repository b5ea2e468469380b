"""End to end, the daemon's life cycle on a VXLAN lab: a lease deleted in etcd, the VXLAN device
deleted under a running daemon, and daemon restarts (SIGTERM, SIGKILL) with traffic flowing.

The lease and device tests share one lab: each ends only once the lab is back to its converged
state. The restart test mutates more (processes come and go), so it gets a lab of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyflannel.lab.netns import exec_argv, run_in
from tests.e2e.helpers import BackgroundPing, DaemonLab, LeaseRecord, daemon_lab, wait_for
from tests.harness.fixtures import require_root

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonLab]:
    require_root()
    with daemon_lab(Path(tmp_path_factory.mktemp("lifecycle-lab"))) as lab:
        yield lab


@pytest.fixture
def restart_lab(tmp_path: Path) -> Iterator[DaemonLab]:
    require_root()
    with daemon_lab(tmp_path / "restart-lab") as lab:
        yield lab


def _has_entries_for(lab: DaemonLab, node: str, rec: LeaseRecord) -> dict[str, bool]:
    """Which of route / ARP / FDB ``node`` has for the peer lease ``rec``."""
    got = lab.vxlan_entries(node)
    gw = str(rec.subnet.network_address)
    mac = rec.attrs["BackendData"]["VtepMAC"]
    return {
        "route": any(r[0] == str(rec.subnet) for r in got["routes"]),
        "neigh": any(n[0] == gw for n in got["neigh"]),
        "fdb": any(f[0] == mac for f in got["fdb"]),
    }


def _wait_key_back(lab: DaemonLab, rec: LeaseRecord, timeout: float) -> LeaseRecord:
    back = wait_for(
        f"lease key {rec.key} re-created",
        lambda: lab.leases().get(rec.subnet),
        timeout,
    )
    assert back is not None
    return back


def test_deleted_peer_lease_is_unprogrammed_then_retaken_by_its_owner(lab: DaemonLab) -> None:
    """n3 is frozen (SIGSTOP) so the removal can be observed on n1/n2 before n3 reacts; then
    n3 resumes, sees its own key deleted and re-acquires the same subnet (a deliberate
    difference: flanneld exits 0 there), and the peers program it again."""
    n3 = lab.node("n3")
    rec = lab.lease_of(n3)
    for peer in ("n1", "n2"):
        assert _has_entries_for(lab, peer, rec) == {"route": True, "neigh": True, "fdb": True}
    pid = lab.daemon_pid(n3)
    os.kill(pid, signal.SIGSTOP)
    try:
        lab.etcd.etcdctl("del", rec.key)
        for peer in ("n1", "n2"):
            wait_for(
                f"{peer} dropped route, ARP and FDB entries of {rec.subnet}",
                lambda p=peer: not any(_has_entries_for(lab, p, rec).values()),  # type: ignore[misc]
                timeout=3.0,
            )
        assert rec.subnet not in lab.leases()
    finally:
        os.kill(pid, signal.SIGCONT)

    back = _wait_key_back(lab, rec, timeout=5.0)
    assert back.key == rec.key
    assert back.value == rec.value, "same PublicIP, same VTEP MAC"
    assert back.etcd_lease != 0
    assert lab.daemons["n3"].poll() is None, "n3 keeps running after re-acquiring"
    lab.wait_converged(timeout=5.0)
    assert lab.ping_failures() == []
    assert "lease.reacquired" in lab.log_tail("n3", 20000)


def test_deleted_lease_of_a_live_node_flaps_on_peers_and_comes_back(lab: DaemonLab) -> None:
    """The same without freezing: the peers see the DELETE (their route is removed, seen with
    ``ip monitor``), then the owner's PUT, and end up programmed again."""
    rec = lab.lease_of("n3")
    monitor = subprocess.Popen(
        exec_argv(lab.node("n1").ns, ["ip", "monitor", "route"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(0.2)  # let the monitor subscribe
        lab.etcd.etcdctl("del", rec.key)
        back = _wait_key_back(lab, rec, timeout=5.0)
        assert back.value == rec.value
        lab.wait_converged(timeout=5.0)
    finally:
        monitor.terminate()
        out, _ = monitor.communicate(timeout=5)
    assert f"Deleted {rec.subnet} via {rec.subnet.network_address} dev flannel.1" in out, out
    assert lab.ping_failures() == []


def test_deleted_vxlan_device_is_recreated_with_the_same_mac(lab: DaemonLab) -> None:
    n1 = lab.node("n1")
    before = lab.link(n1, "flannel.1")
    assert before is not None
    lease_before = lab.lease_of(n1)
    peers_before = {p: lab.vxlan_entries(p) for p in ("n2", "n3")}

    run_in(n1.ns, ["ip", "link", "del", "flannel.1"])
    started = time.monotonic()
    after = wait_for(
        "flannel.1 re-created and up",
        lambda: (link := lab.link(n1, "flannel.1")) is not None and "UP" in link["flags"] and link,
        timeout=2.0,
    )
    assert isinstance(after, dict)
    assert after["ifindex"] != before["ifindex"], "the device really was re-created"
    assert after["address"] == before["address"]
    assert after["mtu"] == 1450
    assert after["linkinfo"]["info_data"]["local"] == str(n1.ip)
    addrs = lab.ip_json(n1, "-4", "addr", "show", "dev", "flannel.1")[0]["addr_info"]
    assert [a["local"] for a in addrs] == [str(lease_before.subnet.network_address)]

    # The kernel dropped n1's routes/ARP/FDB with the device; the daemon programs them again
    # (flanneld does not: its quirk, flannel-spec §6).
    wait_for(
        "n1 re-programmed its peers",
        lambda: lab.vxlan_entries(n1) == lab.expected_vxlan_entries(n1),
        timeout=3.0,
    )
    recovered = time.monotonic() - started
    assert lab.lease_of(n1).value == lease_before.value
    for p, entries in peers_before.items():
        assert lab.vxlan_entries(p) == entries
    assert lab.ping_failures() == [], f"pods after {recovered:.2f}s"


def test_restart_keeps_data_path_subnet_and_mac_without_losing_packets(
    restart_lab: DaemonLab,
) -> None:
    lab = restart_lab
    n2 = lab.node("n2")
    pod1, pod2, pod3 = (lab.pods[n] for n in ("n1", "n2", "n3"))
    for sig, want_rc in ((signal.SIGTERM, 0), (signal.SIGKILL, -signal.SIGKILL)):
        name = signal.Signals(sig).name
        lease = lab.lease_of(n2)
        link = lab.link(n2, "flannel.1")
        assert link is not None
        entries = lab.vxlan_entries(n2)
        nat, filt = lab.iptables_save(n2, "nat"), lab.iptables_save(n2, "filter")
        env_text = n2.subnet_env.read_text()
        pings = [BackgroundPing(pod1.ns, pod2.ip), BackgroundPing(pod3.ns, pod2.ip)]
        try:
            time.sleep(0.3)
            rc = lab.stop_daemon(n2, sig)
            assert rc == want_rc, f"{name}: exit status {rc}\n{lab.log_tail(n2)}"
            # nothing is torn down on the way out
            left = lab.link(n2, "flannel.1")
            assert left is not None
            assert (left["ifindex"], left["address"]) == (link["ifindex"], link["address"])
            assert lab.vxlan_entries(n2) == entries
            assert lab.iptables_save(n2, "nat") == nat
            assert lab.iptables_save(n2, "filter") == filt
            assert lab.lease_of(n2).value == lease.value
            assert n2.subnet_env.read_text() == env_text
            time.sleep(0.3)  # traffic keeps flowing with no daemon at all

            lab.start_daemon(n2)
            lab.wait_ready(n2)
            lab.wait_converged(timeout=5.0)
            time.sleep(0.3)
        finally:
            results = [p.stop() for p in pings]
        for sent, received, missing in results:
            assert sent >= 15, f"{name}: only {sent} probes sent"
            assert missing == [], f"{name}: lost {missing} ({received}/{sent} answered)"

        after = lab.lease_of(n2)
        assert after.subnet == lease.subnet
        assert after.value == lease.value, "same subnet, same VTEP MAC in etcd"
        relink = lab.link(n2, "flannel.1")
        assert relink is not None
        assert (relink["ifindex"], relink["address"]) == (link["ifindex"], link["address"])
        assert n2.subnet_env.read_text() == env_text
        assert lab.iptables_save(n2, "nat") == nat
        assert lab.ping_failures() == []
    assert "daemon.exiting" in lab.log_path(n2).read_text()
