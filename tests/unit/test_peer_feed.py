"""The peer feed (pure): listings become snapshots, batches changes; our lease never shows."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs
from pyflannel.peer_messages import PeerChanges, PeerSnapshot
from pyflannel.subnet.watch import PeerFeed

V4 = ipaddress.IPv4Network


def lease(third: int) -> Lease:
    attrs = LeaseAttrs(
        public_ip=ipaddress.IPv4Address(f"198.51.100.{third}"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"},
    )
    return Lease(subnet=V4(f"10.5.{third}.0/24"), attrs=attrs, etcd_lease_id=1)


OWN = lease(9)


def test_listing_becomes_a_snapshot_without_our_lease() -> None:
    feed = PeerFeed(OWN)
    assert feed.snapshot([lease(1), OWN, lease(2)], 7) == PeerSnapshot((lease(1), lease(2)), 7)
    assert feed.snapshot([], 8) == PeerSnapshot((), 8)  # empty, but still a full list


def test_batch_becomes_changes_and_only_own_changes_are_dropped() -> None:
    feed = PeerFeed(OWN)
    own_renewal = Event(EventKind.ADDED, OWN)
    gone = Event(EventKind.REMOVED, Lease(subnet=V4("10.5.1.0/24"), attrs=LeaseAttrs()))
    assert feed.changes([own_renewal], 3) is None
    assert feed.changes([own_renewal, gone], 4) == PeerChanges((gone,), 4)


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 12)), max_size=30))
def test_our_lease_never_appears(items: list[tuple[bool, int]]) -> None:
    feed = PeerFeed(OWN)
    events = [Event(EventKind.ADDED if put else EventKind.REMOVED, lease(n)) for put, n in items]
    changes = feed.changes(events)
    got = () if changes is None else changes.events
    assert all(ev.lease.subnet != OWN.subnet for ev in got)
    assert list(got) == [ev for ev in events if ev.lease.subnet != OWN.subnet]
    assert all(le.subnet != OWN.subnet for le in feed.snapshot([ev.lease for ev in events]).leases)
