"""A node partitioned from etcd until its lease expires (short test TTL).

The daemons run with ``--subnet-lease-ttl=4 --subnet-lease-renew-margin=1
--subnet-lease-renew-retry=1``: the margin (60 s) exceeds the TTL, so the daemon renews at half
the TTL (every 2 s, see ``Daemon._renew_margin_minutes``) and retries a failed renewal every
second. n1 is cut off from etcd with an iptables DROP inside its namespace (the underlay stays
up, so pods can still reach each other while the lease is valid).

- Healed after the key expired and nobody took the subnet: n1 re-creates the same key (same
  subnet, same value) and the peers program it again; the daemon never restarts.
- Healed after another node took the subnet meanwhile: n1 exits non-zero with a message naming
  the subnet and the new holder (flanneld would keep running on a subnet it no longer owns).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyflannel.lab.topology import LabNode
from tests.e2e.helpers import DaemonLab, wait_for
from tests.faults.helpers import FakePeer, PingMesh, fault_lab, log_text
from tests.harness.fixtures import require_root

pytestmark = [pytest.mark.root, pytest.mark.slow]

TTL = 4
FLAGS = (
    f"--subnet-lease-ttl={TTL}",
    "--subnet-lease-renew-margin=1",
    "--subnet-lease-renew-retry=1",
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonLab]:
    require_root()
    with fault_lab(Path(tmp_path_factory.mktemp("expiry-lab")), daemon_flags=FLAGS) as lab:
        yield lab


def partition_rule(lab: DaemonLab) -> list[str]:
    host = lab.etcd.host
    return [
        "OUTPUT",
        "-d",
        f"{host}/32",
        "-m",
        "comment",
        "--comment",
        "faults-partition",
        "-j",
        "DROP",
    ]


def partition(lab: DaemonLab, node: LabNode) -> None:
    lab.iptables(node, "-I", *partition_rule(lab))


def heal(lab: DaemonLab, node: LabNode) -> None:
    lab.iptables(node, "-D", *partition_rule(lab))


def wait_expired(lab: DaemonLab, node: LabNode, subnet: object) -> float:
    """Block until the node's key is gone from etcd; seconds waited."""
    t0 = time.monotonic()
    wait_for(f"lease of {node.name} expired", lambda: subnet not in lab.leases(), timeout=TTL * 3)
    return time.monotonic() - t0


def test_lease_expired_during_partition_is_reacquired_with_the_same_subnet(
    lab: DaemonLab,
) -> None:
    n1 = lab.node("n1")
    rec = lab.lease_of(n1)
    pid = lab.daemons["n1"].pid
    with PingMesh(lab) as mesh:
        partition(lab, n1)
        try:
            expired_after = wait_expired(lab, n1, rec.subnet)
            # The peers saw the expiry like a deletion and dropped n1's routes.
            for peer in ("n2", "n3"):
                wait_for(
                    f"{peer} unprogrammed n1",
                    lambda p=peer: (
                        not any(  # type: ignore[misc]
                            r[0] == str(rec.subnet) for r in lab.vxlan_entries(p)["routes"]
                        )
                    ),
                    timeout=3,
                )
            time.sleep(1.0)
        finally:
            heal(lab, n1)
        healed = time.monotonic()
        back = wait_for("n1's key re-created", lambda: lab.leases().get(rec.subnet), timeout=20)
        key_back = time.monotonic() - healed
        lab.wait_converged(timeout=5)
        converged = time.monotonic() - healed
        time.sleep(0.5)
    sent, lost = mesh.totals()
    outage = {k: len(v) * 0.05 for k, v in mesh.lost().items()}
    print(
        f"\nn1 partitioned from etcd: key expired {expired_after:.1f}s after the cut; healed: "
        f"same key back {key_back:.2f}s later, every node converged {converged:.2f}s later; "
        f"pings {sent} sent, {lost} lost (peers tear down an expired lease, as flanneld does): "
        + ", ".join(f"{k}={v:.2f}s" for k, v in sorted(outage.items()))
    )
    assert back is not None
    assert back.value == rec.value, "same subnet, same PublicIP and VTEP MAC"
    assert back.etcd_lease != 0
    assert lab.daemons["n1"].poll() is None and lab.daemons["n1"].pid == pid
    assert "lease.reacquired" in log_text(lab, n1)
    # Pairs not involving n1 were never affected.
    assert not any("n1" not in pair for pair in mesh.lost()), mesh.lost()
    assert lab.ping_failures() == []


def test_subnet_taken_during_partition_makes_the_daemon_exit_nonzero(lab: DaemonLab) -> None:
    n1 = lab.node("n1")
    rec = lab.lease_of(n1)
    usurper = FakePeer(rec.subnet, "198.51.100.240", "0a:fd:00:00:00:01")
    partition(lab, n1)
    try:
        wait_expired(lab, n1, rec.subnet)
        usurper.put(lab.etcd, ttl=600)
    finally:
        heal(lab, n1)
    healed = time.monotonic()
    proc = lab.daemons["n1"]
    try:
        rc = proc.wait(timeout=30)
    except Exception:
        raise AssertionError("n1 kept running on a subnet it lost:\n" + lab.log_tail(n1)) from None
    took = time.monotonic() - healed
    log = log_text(lab, n1)
    print(
        f"\nsubnet {rec.subnet} taken while n1 was partitioned: n1 exited {rc} {took:.2f}s "
        "after the heal"
    )
    assert rc == 1
    assert "Traceback" not in log
    stopped = [line for line in log.splitlines() if "daemon.stopped" in line]
    assert stopped, log[-3000:]
    assert str(rec.subnet) in stopped[-1] and "198.51.100.240" in stopped[-1], stopped[-1]
    # The holder's lease was left alone.
    assert lab.leases()[rec.subnet].value.decode() == usurper.value

    # Restarted (as systemd would), n1 gets a fresh subnet and the lab converges again.
    usurper.delete(lab.etcd)
    lab.start_daemon(n1)
    lab.wait_ready(n1)
    lab.wait_converged(timeout=10)
    assert lab.ping_failures() == []
