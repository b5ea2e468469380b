"""The peer-lease cache (pure): own-lease filter, Removed with cached attrs, snapshot diffs."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs
from pyflannel.subnet.watch import LeaseCache

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


def attrs(n: int, mac: str = "aa:bb:cc:dd:ee:01") -> LeaseAttrs:
    return LeaseAttrs(
        public_ip=ipaddress.IPv4Address(f"198.51.100.{n}"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": mac},
    )


def lease(third: int, n: int | None = None, *, mac: str = "aa:bb:cc:dd:ee:01") -> Lease:
    return Lease(subnet=V4(f"10.5.{third}.0/24"), attrs=attrs(n or third, mac), etcd_lease_id=1)


def deleted(third: int) -> Event:
    # What the registry produces for an etcd DELETE: subnets only, no attrs.
    return Event(EventKind.REMOVED, Lease(subnet=V4(f"10.5.{third}.0/24"), attrs=LeaseAttrs()))


def added(x: Lease) -> Event:
    return Event(EventKind.ADDED, x)


OWN = lease(9)


def test_first_snapshot_emits_added_for_every_peer_but_us() -> None:
    cache = LeaseCache(OWN)
    events = cache.reset([lease(1), OWN, lease(2)])
    assert events == [added(lease(1)), added(lease(2))]
    assert len(cache) == 2


def test_removed_carries_cached_attrs() -> None:
    cache = LeaseCache(OWN)
    cache.reset([lease(1)])
    events = cache.apply([deleted(1)])
    assert events == [Event(EventKind.REMOVED, lease(1))]
    assert events[0].lease.attrs.backend_data == {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"}
    assert len(cache) == 0


def test_removed_of_unknown_lease_is_passed_on_attr_less() -> None:
    cache = LeaseCache(OWN)
    assert cache.apply([deleted(4)]) == [deleted(4)]


def test_own_lease_filtered_in_watch_events() -> None:
    cache = LeaseCache(OWN)
    assert cache.apply([added(OWN), deleted(9)]) == []


def test_second_reset_has_no_spurious_removed_for_own_lease() -> None:
    # flanneld's Reset quirk: its cache copy includes our lease, so a second Reset emits
    # Removed for our own subnet. Ours never caches it.
    cache = LeaseCache(OWN)
    cache.reset([OWN, lease(1)])
    assert cache.reset([lease(1)]) == []
    assert cache.reset([OWN, lease(1)]) == []


def test_renewed_peer_is_re_emitted() -> None:
    cache = LeaseCache(OWN)
    cache.reset([lease(1)])
    assert cache.apply([added(lease(1))]) == [added(lease(1))]


def test_reset_emits_difference_removed_first() -> None:
    cache = LeaseCache(OWN)
    cache.reset([lease(1), lease(2), lease(3)])
    changed = lease(3, mac="aa:bb:cc:dd:ee:99")
    events = cache.reset([lease(2), changed, lease(4)])
    assert events == [Event(EventKind.REMOVED, lease(1)), added(changed), added(lease(4))]
    assert {x.subnet for x in cache.leases} == {
        V4("10.5.2.0/24"),
        V4("10.5.3.0/24"),
        V4("10.5.4.0/24"),
    }


def test_dual_stack_identity_is_the_whole_key() -> None:
    dual = Lease(subnet=V4("10.5.1.0/24"), attrs=attrs(1), ipv6_subnet=V6("2001:db8:1::/64"))
    cache = LeaseCache(OWN)
    cache.reset([dual])
    gone = Lease(subnet=V4("10.5.1.0/24"), attrs=LeaseAttrs(), ipv6_subnet=V6("2001:db8:1::/64"))
    assert cache.apply([Event(EventKind.REMOVED, gone)]) == [Event(EventKind.REMOVED, dual)]


def test_events_keep_etcd_order() -> None:
    cache = LeaseCache(None)
    seq = [added(lease(1)), added(lease(2)), deleted(1), added(lease(1, 7))]
    out = cache.apply(seq)
    assert [e.kind for e in out] == [
        EventKind.ADDED,
        EventKind.ADDED,
        EventKind.REMOVED,
        EventKind.ADDED,
    ]
    assert out[2].lease == lease(1)
    assert out[3].lease.attrs.public_ip == ipaddress.IPv4Address("198.51.100.7")


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.integers(min_value=1, max_value=6), st.integers(1, 3)),
        max_size=40,
    ),
    snapshot=st.sets(st.integers(min_value=1, max_value=6)),
)
def test_applying_events_then_reset_converges(
    ops: list[tuple[bool, int, int]], snapshot: set[int]
) -> None:
    """A consumer applying every emitted batch ends with exactly the true lease set."""
    cache = LeaseCache(lease(6))
    view: dict[V4 | None, Lease] = {}

    def consume(events: list[Event]) -> None:
        for e in events:
            if e.kind is EventKind.ADDED:
                view[e.lease.subnet] = e.lease
            else:
                view.pop(e.lease.subnet, None)

    for is_put, third, n in ops:
        consume(cache.apply([added(lease(third, n)) if is_put else deleted(third)]))
    truth = [lease(t, t + 10) for t in sorted(snapshot)]
    consume(cache.reset(truth))
    expected = {x.subnet: x for x in truth if x.subnet != V4("10.5.6.0/24")}
    assert view == expected
