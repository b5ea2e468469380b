"""A 3-member etcd cluster in the lab's etcd namespace: the leader killed, and one member down
for 20 s while the others take writes.

n2 and n3 get the endpoints of m1 and m2; n1 gets only m0, so stopping m0 is a full etcd outage
for n1 while the cluster carries on -- the way to have leases change *while* a node's etcd is
down. (The etcd client picks one of its endpoints at random, so the member a daemon really
talks to is read from its TCP connections.)
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyflannel.lab.netns import CommandFailed, run_in
from tests.e2e.helpers import DaemonLab, wait_for
from tests.faults.helpers import (
    ClusterLab,
    FakePeer,
    PingMesh,
    fake_peer,
    fault_lab,
    free_octets,
    lease_values,
    log_text,
    peer_state,
    wait_each_node,
)
from tests.harness.etcd import EtcdServer
from tests.harness.etcd_cluster import EtcdCluster
from tests.harness.fixtures import require_root

pytestmark = [pytest.mark.root, pytest.mark.slow]

FAILOVER_SECONDS = 5.0
OUTAGE_SECONDS = 20.0
CATCH_UP_SECONDS = 2.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLab]:
    require_root()
    with fault_lab(
        Path(tmp_path_factory.mktemp("cluster-lab")),
        etcd="cluster",
        node_endpoints=lambda c: {
            "n1": c[0].client_url,
            "n2": f"{c[1].client_url},{c[2].client_url}",
            "n3": f"{c[1].client_url},{c[2].client_url}",
        },
    ) as lab:
        assert isinstance(lab, ClusterLab)
        yield lab


def assert_no_duplicate_subnets(lab: DaemonLab) -> None:
    """Every real node holds exactly one lease, and no two leases overlap."""
    leases = lab.leases()
    owners = [rec.attrs.get("PublicIP") for rec in leases.values()]
    for node in lab.nodes:
        assert owners.count(str(node.ip)) == 1, f"{node.name}: {owners}"
    for a, b in itertools.combinations(leases, 2):
        assert not a.overlaps(b), f"{a} overlaps {b}"


def put_quietly(member: EtcdServer, peer: FakePeer) -> bool:
    try:
        peer.put(member, dial_timeout="1s")
    except CommandFailed:
        return False
    return True


def member_id_hex(member: EtcdServer) -> str:
    return f"{member.status()['member_id']:x}"


def connected_members(lab: ClusterLab, node: str) -> list[EtcdServer]:
    """The members the node's daemon has an established TCP connection to."""
    assert lab.cluster is not None
    out = run_in(lab.node(node).ns, ["ss", "-Htn", "state", "established"]).stdout
    ports = {int(m.group(1)) for m in re.finditer(r"\S+:(\d+)\s*$", out, re.M)}
    return [m for m in lab.cluster if int(m.client_url.rsplit(":", 1)[1]) in ports]


def make_leader(cluster: EtcdCluster, member: EtcdServer) -> None:
    leader = cluster.leader()
    if leader is not member:
        leader.etcdctl("move-leader", member_id_hex(member))
        wait_for(f"{member.name} leads", lambda: cluster.leader() is member, timeout=10)


def test_leader_killed_daemons_keep_working_through_other_endpoints(lab: ClusterLab) -> None:
    cluster = lab.cluster
    assert cluster is not None
    # Kill the member n2 talks to, made leader first: a leader loss for the cluster and a
    # failover for n2 (and for n3 if it uses the same member).
    used = wait_for("n2 connected to etcd", lambda: connected_members(lab, "n2"), timeout=5)
    assert isinstance(used, list) and len(used) == 1, used
    victim = used[0]
    make_leader(cluster, victim)
    failing_over = [n for n in ("n2", "n3") if victim in connected_members(lab, n)]
    (octet,) = free_octets(lab, 1)
    peer = fake_peer(octet)
    leases_before = lease_values(lab)
    log_start = len(log_text(lab, "n2"))

    try:
        with PingMesh(lab) as mesh:
            cluster.kill(victim)
            killed = time.monotonic()
            # Through the new leader as soon as there is one (a follower would forward the
            # request to the dead leader until etcdctl's 5 s timeout).
            wait_for(
                "lease written through the new leader",
                lambda: put_quietly(cluster.leader(), peer),
                timeout=15,
            )
            written = time.monotonic() - killed
            took = wait_each_node(
                lab,
                "lease change applied after the leader was killed",
                lambda n: peer_state(lab, n, peer) == "programmed",
                timeout=15,
                since=killed,
            )
            # A daemon started now gets its lease through the survivor (its client may well
            # pick the dead member first).
            lab.stop_daemon("n3")
            restarted = time.monotonic()
            lab.start_daemon("n3")
            lab.wait_ready("n3")
            ready = time.monotonic() - restarted
            lab.wait_converged(timeout=5)
            peer.delete(lab.etcd)
            wait_each_node(
                lab,
                "lease removal applied",
                lambda n: peer_state(lab, n, peer) == "absent",
                timeout=FAILOVER_SECONDS,
            )
    finally:
        cluster.restart(victim)
        cluster.leader()

    sent, lost = mesh.totals()
    print(
        f"\nleader {victim.name} (n2's member; also used by {failing_over}) killed: new lease "
        f"written {written:.2f}s later, applied "
        + ", ".join(f"{k}={v:.2f}s" for k, v in sorted(took.items()))
        + f" after the kill; n3 restarted with one member dead: ready in {ready:.2f}s; "
        f"pings {sent} sent, {lost} lost"
    )
    assert max(took.values()) <= FAILOVER_SECONDS, took
    assert mesh.lost() == {}, mesh.lost()
    assert lease_values(lab) == leases_before, "same subnets, same values"
    assert_no_duplicate_subnets(lab)
    for node in lab.nodes:
        assert lab.daemons[node.name].poll() is None, lab.log_tail(node)
    # n2 really failed over: its watches broke with the member and resumed on the other one.
    assert "watch.broken" in log_text(lab, "n2")[log_start:]


def test_changes_while_a_nodes_only_etcd_member_is_down_apply_within_2s(lab: ClusterLab) -> None:
    cluster = lab.cluster
    assert cluster is not None
    m0 = cluster[0]
    make_leader(cluster, cluster[1])  # writes during the outage need no election
    o_gone, o_new = free_octets(lab, 2)
    gone, new = fake_peer(o_gone), fake_peer(o_new)
    gone.put(lab.etcd)
    wait_each_node(
        lab, "peer programmed", lambda n: peer_state(lab, n, gone) == "programmed", timeout=5
    )
    leases_before = lease_values(lab)
    pid_n1 = lab.daemons["n1"].pid

    try:
        with PingMesh(lab) as mesh:
            cluster.kill(m0)
            time.sleep(2.0)
            # The cluster (two of three members) takes the changes; n1 cannot see them.
            writer = cluster[1]
            gone.delete(writer)
            new.put(writer)
            during = wait_each_node(
                lab,
                "multi-endpoint nodes follow during the outage",
                lambda n: (
                    peer_state(lab, n, gone) == "absent" and peer_state(lab, n, new) == "programmed"
                ),
                timeout=5,
                nodes=["n2", "n3"],
            )
            time.sleep(OUTAGE_SECONDS - 2.0 - max(during.values()))
            assert peer_state(lab, "n1", gone) == "programmed", "n1 cannot have seen it"
            assert lab.daemons["n1"].poll() is None, lab.log_tail("n1")
            cluster.restart(m0)
            back = time.monotonic()
            took = wait_each_node(
                lab,
                "n1 applied what changed while its etcd was down",
                lambda n: (
                    peer_state(lab, n, gone) == "absent" and peer_state(lab, n, new) == "programmed"
                ),
                timeout=15,
                nodes=["n1"],
                since=back,
            )["n1"]
            time.sleep(0.3)
    finally:
        if not m0.running:
            cluster.restart(m0)
    new.delete(lab.etcd)

    sent, lost = mesh.totals()
    print(
        f"\nm0 (n1's only endpoint) down {OUTAGE_SECONDS:.0f}s, lease added + removed through "
        f"m1 meanwhile: n2/n3 applied them in "
        + ", ".join(f"{k}={v:.2f}s" for k, v in sorted(during.items()))
        + f" during the outage, n1 {took:.2f}s after m0 was back; pings {sent} sent, {lost} lost"
    )
    assert took <= CATCH_UP_SECONDS
    assert mesh.lost() == {}, mesh.lost()
    assert lab.daemons["n1"].pid == pid_n1 and lab.daemons["n1"].poll() is None
    assert lease_values(lab) == leases_before
    assert_no_duplicate_subnets(lab)
