"""The pure planner: exact op lists for the common cases, and properties over arbitrary leases."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.backend.base import PlanContext
from pyflannel.backend.plan import (
    Entry,
    MacClaim,
    Plan,
    ProgrammedState,
    entry_key,
    mac_losers,
    plan_events,
    plan_peer_add,
    plan_peer_remove,
    plan_reconcile,
    plan_reprogram,
)
from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs
from pyflannel.netlink.ops import (
    Delete,
    FdbEntry,
    NeighEntry,
    Op,
    Replace,
    RouteEntry,
)

V4 = ipaddress.IPv4Address
N4 = ipaddress.IPv4Network

DEV = 10
EXT = 2
CTX = PlanContext(
    family=4,
    backend_type="vxlan",
    network=N4("10.5.0.0/16"),
    own_subnet=N4("10.5.72.0/24"),
    own_public_ip=V4("198.51.100.1"),
    dev_index=DEV,
    ext_index=EXT,
    own_mac="0a:00:00:00:00:01",
)
HOSTGW = replace(CTX, backend_type="host-gw", dev_index=EXT, own_mac=None)

MAC_A = "0a:aa:aa:aa:aa:aa"
MAC_B = "0a:bb:bb:bb:bb:bb"


def vx(
    subnet: str, public: str, mac: str, *, exp: float | None = 1e9, btype: str = "vxlan"
) -> Lease:
    return Lease(
        subnet=N4(subnet),
        attrs=LeaseAttrs(
            public_ip=V4(public),
            backend_type=btype,
            backend_data={"VNI": 1, "VtepMAC": mac},
        ),
        expiration=exp,
        etcd_lease_id=0 if exp is None else 1,
    )


def hg(subnet: str, public: str) -> Lease:
    return Lease(subnet=N4(subnet), attrs=LeaseAttrs(public_ip=V4(public), backend_type="host-gw"))


def neigh(subnet: str, mac: str) -> NeighEntry:
    return NeighEntry(ip=N4(subnet).network_address, mac=mac, ifindex=DEV)


def fdb(mac: str, public: str) -> FdbEntry:
    return FdbEntry(mac=mac, dst=V4(public), ifindex=DEV)


def route(subnet: str) -> RouteEntry:
    return RouteEntry(dst=N4(subnet), gw=N4(subnet).network_address, ifindex=DEV, onlink=True)


def added(*leases: Lease) -> list[Event]:
    return [Event(EventKind.ADDED, le) for le in leases]


def removed(*leases: Lease) -> list[Event]:
    return [Event(EventKind.REMOVED, le) for le in leases]


A = vx("10.5.34.0/24", "198.51.100.2", MAC_A)
B = vx("10.5.35.0/24", "198.51.100.3", MAC_B)


# --- single peers ----------------------------------------------------------------------------


def test_vxlan_peer_add_is_neigh_fdb_route() -> None:
    assert plan_peer_add(A, CTX) == [
        Replace(neigh("10.5.34.0/24", MAC_A)),
        Replace(fdb(MAC_A, "198.51.100.2")),
        Replace(route("10.5.34.0/24")),
    ]


def test_vxlan_peer_remove_is_route_fdb_neigh() -> None:
    assert plan_peer_remove(A, CTX) == [
        Delete(route("10.5.34.0/24")),
        Delete(fdb(MAC_A, "198.51.100.2")),
        Delete(neigh("10.5.34.0/24", MAC_A)),
    ]


def test_direct_routing_peer_gets_only_a_route_via_its_public_ip() -> None:
    ctx = replace(CTX, direct_routes={V4("198.51.100.2"): EXT})
    expected = RouteEntry(dst=N4("10.5.34.0/24"), gw=V4("198.51.100.2"), ifindex=EXT)
    assert plan_peer_add(A, ctx) == [Replace(expected)]
    assert plan_peer_remove(A, ctx) == [Delete(expected)]
    # A peer not on our L2 still goes through the tunnel.
    assert len(plan_peer_add(B, ctx)) == 3


def test_hostgw_peer_is_a_route_via_public_ip_on_ext() -> None:
    expected = RouteEntry(dst=N4("10.5.34.0/24"), gw=V4("198.51.100.2"), ifindex=EXT)
    assert plan_peer_add(hg("10.5.34.0/24", "198.51.100.2"), HOSTGW) == [Replace(expected)]


def test_rejected_leases_plan_nothing() -> None:
    assert plan_peer_add(vx("10.6.0.0/24", "198.51.100.2", MAC_A), CTX) == []
    assert plan_peer_add(vx("10.5.72.0/25", "198.51.100.2", MAC_A), CTX) == []
    assert plan_peer_add(hg("10.5.34.0/24", "198.51.100.2"), CTX) == []
    assert plan_peer_remove(hg("10.5.34.0/24", "198.51.100.2"), CTX) == []


# --- events ----------------------------------------------------------------------------------


def test_events_add_then_renewal_costs_nothing() -> None:
    p1 = plan_events(added(A, B), ProgrammedState(), CTX)
    assert p1.ops == [
        Replace(neigh("10.5.34.0/24", MAC_A)),
        Replace(neigh("10.5.35.0/24", MAC_B)),
        Replace(fdb(MAC_A, "198.51.100.2")),
        Replace(fdb(MAC_B, "198.51.100.3")),
        Replace(route("10.5.34.0/24")),
        Replace(route("10.5.35.0/24")),
    ]
    renewed = replace(A, expiration=2e9)
    p2 = plan_events(added(renewed), p1.state, CTX)
    assert p2.ops == []
    assert p2.state.peers[N4("10.5.34.0/24")].lease.expiration == 2e9


def test_events_changed_mac_replaces_and_drops_old_fdb() -> None:
    p1 = plan_events(added(A), ProgrammedState(), CTX)
    moved = vx("10.5.34.0/24", "198.51.100.2", MAC_B)
    p2 = plan_events(added(moved), p1.state, CTX)
    assert p2.ops == [
        Replace(neigh("10.5.34.0/24", MAC_B)),
        Replace(fdb(MAC_B, "198.51.100.2")),
        Delete(fdb(MAC_A, "198.51.100.2")),
    ]


def test_events_changed_public_ip_only_moves_fdb() -> None:
    p1 = plan_events(added(A), ProgrammedState(), CTX)
    moved = vx("10.5.34.0/24", "198.51.100.9", MAC_A)
    assert plan_events(added(moved), p1.state, CTX).ops == [Replace(fdb(MAC_A, "198.51.100.9"))]


def test_events_remove_unknown_is_noop_and_attrless_remove_uses_state() -> None:
    assert plan_events(removed(A), ProgrammedState(), CTX).ops == []
    p1 = plan_events(added(A), ProgrammedState(), CTX)
    attrless = Lease(subnet=A.subnet, attrs=LeaseAttrs())
    p2 = plan_events(removed(attrless), p1.state, CTX)
    assert p2.ops == [
        Delete(route("10.5.34.0/24")),
        Delete(fdb(MAC_A, "198.51.100.2")),
        Delete(neigh("10.5.34.0/24", MAC_A)),
    ]
    assert p2.state.peers == {} and p2.state.owners == {}


def test_events_lease_turning_invalid_is_unprogrammed() -> None:
    p1 = plan_events(added(A), ProgrammedState(), CTX)
    bad = vx("10.5.34.0/24", "198.51.100.2", "ff:ff:ff:ff:ff:ff")
    p2 = plan_events(added(bad), p1.state, CTX)
    assert [(type(op), type(op.entry)) for op in p2.ops] == [
        (Delete, RouteEntry),
        (Delete, FdbEntry),
        (Delete, NeighEntry),
    ]
    assert len(p2.rejected) == 1 and "broadcast" in p2.rejected[0][1].reason


def test_events_node_with_new_subnet_keeps_shared_fdb_when_old_lease_expires() -> None:
    # The node came back with a new subnet but the same VTEP MAC and public IP; its old lease
    # expires later. flanneld deletes the shared FDB entry here; we must not.
    old = vx("10.5.34.0/24", "198.51.100.2", MAC_A)
    new = vx("10.5.40.0/24", "198.51.100.2", MAC_A)
    p1 = plan_events(added(old), ProgrammedState(), CTX)
    p2 = plan_events(added(new), p1.state, CTX)
    assert p2.ops == [
        Replace(neigh("10.5.40.0/24", MAC_A)),
        Replace(route("10.5.40.0/24")),
    ]
    p3 = plan_events(removed(old), p2.state, CTX)
    assert p3.ops == [Delete(route("10.5.34.0/24")), Delete(neigh("10.5.34.0/24", MAC_A))]


def with_rev(lease: Lease, rev: int) -> Lease:
    return replace(lease, create_revision=rev)


def test_events_mac_conflict_earlier_lease_keeps_mac_and_removal_lifts_refusal() -> None:
    """Issue 14: a lease reusing a live peer's VtepMAC took that peer's FDB entry."""
    a = with_rev(vx("10.5.34.0/24", "198.51.100.2", MAC_A), 5)
    clone = with_rev(vx("10.5.36.0/24", "198.51.100.7", MAC_A), 9)  # later, another node
    p1 = plan_events(added(a), ProgrammedState(), CTX)
    p2 = plan_events(added(clone), p1.state, CTX)
    assert p2.ops == []  # the victim's FDB entry still points at its own PublicIP
    [(lease, rej)] = p2.rejected
    assert lease is clone and "10.5.36.0-24" in rej.reason and "VtepMAC" in rej.reason
    # Renewals of the refused lease are refused quietly (one warning, not one per renewal).
    p3 = plan_events(added(clone), p2.state, CTX)
    assert (p3.ops, p3.rejected) == ([], [])
    # The conflict goes away: the clone is programmed.
    p4 = plan_events(removed(a), p3.state, CTX)
    assert Replace(fdb(MAC_A, "198.51.100.7")) in p4.ops
    assert Replace(route("10.5.36.0/24")) in p4.ops
    assert Delete(route("10.5.34.0/24")) in p4.ops
    assert p4.state.held == {}


def test_events_earlier_lease_arriving_later_evicts_the_usurper() -> None:
    a = with_rev(vx("10.5.34.0/24", "198.51.100.2", MAC_A), 5)
    clone = with_rev(vx("10.5.36.0/24", "198.51.100.7", MAC_A), 9)
    p1 = plan_events(added(clone), ProgrammedState(), CTX)
    p2 = plan_events(added(a), p1.state, CTX)
    assert Replace(fdb(MAC_A, "198.51.100.2")) in p2.ops
    assert Delete(route("10.5.36.0/24")) in p2.ops
    assert [le for le, _ in p2.rejected] == [clone]
    assert set(p2.state.peers) == {a.subnet} and set(p2.state.held) == {clone.subnet}


def test_reconcile_refuses_the_later_duplicate_mac() -> None:
    a = with_rev(vx("10.5.34.0/24", "198.51.100.2", MAC_A), 5)
    clone = with_rev(vx("10.5.36.0/24", "198.51.100.7", MAC_A), 9)
    plan = plan_reconcile([clone, a], [], [], [], CTX)
    assert Replace(fdb(MAC_A, "198.51.100.2")) in plan.ops
    assert not any(op.entry == route("10.5.36.0/24") for op in plan.ops)
    assert [le for le, _ in plan.rejected] == [clone]
    # Then the earlier one goes: the events path lifts the refusal.
    after = plan_events(removed(a), plan.state, CTX)
    assert Replace(fdb(MAC_A, "198.51.100.7")) in after.ops


def test_events_remove_then_readd_in_one_batch_keeps_entries() -> None:
    p1 = plan_events(added(A), ProgrammedState(), CTX)
    p2 = plan_events([*removed(A), *added(A)], p1.state, CTX)
    # The final word for every key is "present": nothing may be deleted after re-adding.
    assert not any(isinstance(op, Delete) for op in p2.ops)
    assert p2.state.programmed_entries() == p1.state.programmed_entries()


def test_events_add_then_remove_in_one_batch_ends_deleted() -> None:
    p = plan_events([*added(A), *removed(A)], ProgrammedState(), CTX)
    kernel = apply_ops({}, p.ops)
    assert kernel == {}


def test_reprogram_replaces_everything_in_add_order() -> None:
    st_ = plan_events(added(A, B), ProgrammedState(), CTX).state
    ops = plan_reprogram(st_)
    assert all(isinstance(op, Replace) for op in ops)
    assert [type(op.entry) for op in ops] == [NeighEntry] * 2 + [FdbEntry] * 2 + [RouteEntry] * 2


# --- reconcile -------------------------------------------------------------------------------


def test_reconcile_removes_stale_and_leaves_live_untouched() -> None:
    stale = vx("10.5.99.0/24", "198.51.100.99", "0a:99:99:99:99:99")
    routes = [route("10.5.34.0/24"), route("10.5.99.0/24")]
    neighs = [neigh("10.5.34.0/24", MAC_A), neigh("10.5.99.0/24", "0a:99:99:99:99:99")]
    fdbs = [fdb(MAC_A, "198.51.100.2"), fdb("0a:99:99:99:99:99", "198.51.100.99")]
    plan = plan_reconcile([A, B], routes, neighs, fdbs, CTX)
    assert plan.ops == [
        Replace(neigh("10.5.35.0/24", MAC_B)),
        Replace(fdb(MAC_B, "198.51.100.3")),
        Replace(route("10.5.35.0/24")),
        Delete(route("10.5.99.0/24")),
        Delete(fdb("0a:99:99:99:99:99", "198.51.100.99")),
        Delete(neigh("10.5.99.0/24", "0a:99:99:99:99:99")),
    ]
    assert set(plan.state.peers) == {A.subnet, B.subnet}
    assert stale.subnet not in plan.state.peers


def test_reconcile_replaces_different_entries() -> None:
    routes = [RouteEntry(dst=N4("10.5.34.0/24"), gw=V4("198.51.100.2"), ifindex=EXT)]  # host-gw era
    neighs = [neigh("10.5.34.0/24", MAC_B)]
    fdbs = [fdb(MAC_A, "198.51.100.50")]
    plan = plan_reconcile([A], routes, neighs, fdbs, CTX)
    assert plan.ops == plan_peer_add(A, CTX)


def test_reconcile_leaves_foreign_entries_alone() -> None:
    foreign_routes = [
        RouteEntry(dst=N4("10.5.50.0/24"), gw=None, ifindex=DEV),  # connected
        RouteEntry(dst=N4("10.6.0.0/24"), gw=V4("198.51.100.9"), ifindex=EXT),  # outside Network
        RouteEntry(dst=N4("10.5.72.0/24"), gw=V4("198.51.100.9"), ifindex=EXT),  # our subnet
        RouteEntry(dst=N4("10.5.51.0/24"), gw=V4("198.51.100.9"), ifindex=77),  # other device
        RouteEntry(dst=N4("0.0.0.0/0"), gw=V4("198.51.100.254"), ifindex=EXT),  # default route
    ]
    foreign_neighs = [
        NeighEntry(ip=V4("198.51.100.254"), mac=MAC_A, ifindex=EXT),
        NeighEntry(ip=V4("10.5.51.0"), mac=MAC_A, ifindex=77),
        NeighEntry(ip=V4("10.6.0.0"), mac=MAC_A, ifindex=DEV),
    ]
    foreign_fdb = [
        FdbEntry(mac="00:00:00:00:00:00", dst=V4("239.1.1.1"), ifindex=DEV),
        FdbEntry(mac="0a:00:00:00:00:01", dst=V4("198.51.100.1"), ifindex=DEV),  # own MAC
        FdbEntry(mac="33:33:00:00:00:01", dst=V4("198.51.100.1"), ifindex=DEV),
        FdbEntry(mac=MAC_B, dst=V4("198.51.100.9"), ifindex=77),
    ]
    assert plan_reconcile([], foreign_routes, foreign_neighs, foreign_fdb, CTX).ops == []


def test_reconcile_stale_hostgw_routes() -> None:
    live = hg("10.5.34.0/24", "198.51.100.2")
    live_route = RouteEntry(dst=N4("10.5.34.0/24"), gw=V4("198.51.100.2"), ifindex=EXT)
    stale_route = RouteEntry(dst=N4("10.5.99.0/24"), gw=V4("198.51.100.99"), ifindex=EXT)
    plan = plan_reconcile([live], [live_route, stale_route], [], [], HOSTGW)
    assert plan.ops == [Delete(stale_route)]


def test_reconcile_drops_extra_fdb_remotes() -> None:
    kernel = [fdb(MAC_A, "198.51.100.2"), fdb(MAC_A, "198.51.100.50")]
    plan = plan_reconcile([A], [route("10.5.34.0/24")], [neigh("10.5.34.0/24", MAC_A)], kernel, CTX)
    assert plan.ops == [Delete(fdb(MAC_A, "198.51.100.50"))]


def test_reconcile_rejects_hostile_and_reports_them() -> None:
    hostile = vx("10.5.72.0/23", "198.51.100.66", MAC_B)
    own = vx("10.5.72.0/24", "198.51.100.1", "0a:00:00:00:00:01")
    plan = plan_reconcile([hostile, own, A], [], [], [], CTX)
    assert plan.ops == plan_peer_add(A, CTX)
    reasons = {le.key_suffix: r for le, r in plan.rejected}
    assert not reasons["10.5.72.0-23"].benign
    assert reasons["10.5.72.0-24"].benign


def test_reconcile_conflict_prefers_earlier_created_lease_not_fresher() -> None:
    # Issue 14: the fresher (later-expiring) lease used to win, so a newcomer took the MAC.
    older = with_rev(vx("10.5.36.0/24", "198.51.100.2", MAC_A, exp=100.0), 3)
    newer = with_rev(vx("10.5.34.0/24", "198.51.100.7", MAC_A, exp=200.0), 8)
    for order in ([older, newer], [newer, older]):
        plan = plan_reconcile(order, [], [], [], CTX)
        fdbs = [op for op in plan.ops if isinstance(op, Replace) and isinstance(op.entry, FdbEntry)]
        assert fdbs == [Replace(fdb(MAC_A, "198.51.100.2"))]
        assert [le for le, _ in plan.rejected] == [newer]


def test_same_node_old_and_new_lease_share_the_mac() -> None:
    old = with_rev(vx("10.5.34.0/24", "198.51.100.2", MAC_A), 3)
    new = with_rev(vx("10.5.40.0/24", "198.51.100.2", MAC_A), 8)
    plan = plan_reconcile([old, new], [], [], [], CTX)
    assert plan.rejected == [] and set(plan.state.peers) == {old.subnet, new.subnet}


# --- properties ------------------------------------------------------------------------------

Kernel = dict[tuple[Any, ...], list[Entry]]


def apply_ops(kernel: Kernel, ops: Iterable[Op]) -> Kernel:
    """A tiny model of the kernel's replace/delete semantics (delete of a missing entry is OK)."""
    k = {key: list(v) for key, v in kernel.items()}
    for op in ops:
        e = op.entry
        key = entry_key(e)
        have = k.setdefault(key, [])
        if isinstance(op, Replace):
            if have:
                have[0] = e
            else:
                have.append(e)
        elif e in have:
            have.remove(e)
        if not have:
            del k[key]
    return k


def split(kernel: Kernel) -> tuple[list[RouteEntry], list[NeighEntry], list[FdbEntry]]:
    flat = [e for v in kernel.values() for e in v]
    return (
        [e for e in flat if isinstance(e, RouteEntry)],
        [e for e in flat if isinstance(e, NeighEntry)],
        [e for e in flat if isinstance(e, FdbEntry)],
    )


octet = st.integers(0, 255)
macs = st.sampled_from(
    [
        MAC_A,
        MAC_B,
        "0a:00:00:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
        "bad",
        "0A-CC-00-00-00-01",
    ]
)
any_subnet = st.builds(
    lambda a, b, c, plen: (
        N4((a << 24) | (b << 16) | (c << 8), strict=False).supernet(new_prefix=plen)
        if plen <= 24
        else N4(f"{a}.{b}.{c}.0/{plen}")
    ),
    st.sampled_from([10, 10, 10, 0, 192]),
    st.sampled_from([5, 5, 5, 6, 0]),
    octet,
    st.integers(0, 28),
)
publics = st.sampled_from(
    [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "0.0.0.0",
        "10.5.72.5",
        "224.0.0.1",
        "203.0.113.9",
    ]
)
data = st.one_of(
    st.builds(lambda m: {"VNI": 1, "VtepMAC": m}, macs),
    st.sampled_from([None, "x", [], {}, {"VNI": "1", "VtepMAC": MAC_A}]),
)
any_lease = st.builds(
    lambda s, p, t, d, e: Lease(
        subnet=s,
        attrs=LeaseAttrs(public_ip=V4(p), backend_type=t, backend_data=d),
        expiration=e,
    ),
    any_subnet,
    publics,
    st.sampled_from(["vxlan", "vxlan", "vxlan", "host-gw", ""]),
    data,
    st.one_of(st.none(), st.floats(0, 1e9)),
)
kernel_routes = st.lists(
    st.builds(
        RouteEntry,
        dst=any_subnet,
        gw=st.one_of(st.none(), st.builds(V4, publics)),
        ifindex=st.sampled_from([DEV, EXT, 77]),
        onlink=st.booleans(),
    ),
    max_size=6,
)


def assert_safe(ops: Sequence[Op], ctx: PlanContext) -> None:
    for op in ops:
        e = op.entry
        if isinstance(e, RouteEntry):
            assert e.dst.subnet_of(ctx.network), op  # type: ignore[arg-type]
            assert not e.dst.overlaps(ctx.own_subnet), op
            assert e.dst.prefixlen > 0
            assert e.gw is not None
            if isinstance(op, Replace):
                assert e.gw != ctx.own_public_ip
        elif isinstance(e, NeighEntry):
            assert e.ip in ctx.network and e.ip not in ctx.own_subnet, op
            assert e.ifindex == ctx.dev_index
        else:
            assert e.ifindex == ctx.dev_index
            assert e.mac != ctx.own_mac and not int(e.mac[:2], 16) & 1
            if isinstance(op, Replace):
                assert e.dst != ctx.own_public_ip


@settings(max_examples=150, deadline=None)
@given(
    leases=st.lists(any_lease, max_size=8),
    routes=kernel_routes,
    hostgw=st.booleans(),
)
def test_property_never_programs_outside_network_or_over_own_subnet(
    leases: list[Lease], routes: list[RouteEntry], hostgw: bool
) -> None:
    ctx = HOSTGW if hostgw else CTX
    for le in leases:
        assert_safe(plan_peer_add(le, ctx), ctx)
        assert_safe(plan_peer_remove(le, ctx), ctx)
    assert_safe(plan_reconcile(leases, routes, [], [], ctx).ops, ctx)
    events = [
        Event(EventKind.ADDED if i % 3 else EventKind.REMOVED, le) for i, le in enumerate(leases)
    ]
    assert_safe(plan_events(events, ProgrammedState(), ctx).ops, ctx)


@settings(max_examples=100, deadline=None)
@given(leases=st.lists(any_lease, max_size=8), routes=kernel_routes)
def test_property_reconcile_converges(leases: list[Lease], routes: list[RouteEntry]) -> None:
    kernel = apply_ops({}, [Replace(r) for r in routes])
    plan = plan_reconcile(leases, *split(kernel), CTX)
    kernel = apply_ops(kernel, plan.ops)
    again = plan_reconcile(leases, *split(kernel), CTX)
    assert again.ops == []
    # Everything the state says is programmed is in the kernel.
    flat = {e for v in kernel.values() for e in v}
    assert set(plan.state.programmed_entries().values()) <= flat


# Leases without key conflicts (one MAC per public IP, /24 only): incremental events and a full
# reconcile must agree exactly.
clean_lease = st.builds(
    lambda c, p, ok: Lease(
        subnet=N4(f"10.5.{c}.0/24"),
        attrs=LeaseAttrs(
            public_ip=V4(f"198.51.100.{p}"),
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": f"0a:00:00:00:01:{p:02x}" if ok else "bad"},
        ),
        expiration=1.0,
    ),
    st.integers(0, 12),
    st.integers(2, 6),
    st.booleans(),
)


def replay_and_reconcile(
    events: list[Event], batch: int
) -> tuple[ProgrammedState, dict[Any, Lease], Plan]:
    """Apply ``events`` in batches; check a full reconcile of the live leases then agrees.

    Returns the events path's state, the live leases and the reconcile plan.
    """
    state = ProgrammedState()
    kernel: Kernel = {}
    current: dict[Any, Lease] = {}
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        plan = plan_events(chunk, state, CTX)
        state = plan.state
        kernel = apply_ops(kernel, plan.ops)
        for ev in chunk:
            if ev.kind == EventKind.ADDED:
                current[ev.lease.subnet] = ev.lease
            else:
                current.pop(ev.lease.subnet, None)
    full = plan_reconcile(list(current.values()), *split(kernel), CTX)
    assert full.ops == []
    assert full.state.programmed_entries() == state.programmed_entries()
    return state, current, full


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), clean_lease), max_size=20), st.integers(1, 5))
def test_property_events_match_reconcile(steps: list[tuple[bool, Lease]], batch: int) -> None:
    events = [Event(EventKind.ADDED if add else EventKind.REMOVED, le) for add, le in steps]
    replay_and_reconcile(events, batch)


# Leases that share VTEP MACs across nodes: whatever the order of events, the kernel's FDB entry
# for a MAC points at the PublicIP of the earliest-created live lease that claims it, and the
# events path agrees with a full reconcile.
dup_lease = st.builds(
    lambda c, p, m: Lease(
        subnet=N4(f"10.5.{c}.0/24"),
        attrs=LeaseAttrs(
            public_ip=V4(f"198.51.100.{p}"),
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": f"0a:00:00:00:02:0{m}"},
        ),
        expiration=1.0,
    ),
    st.integers(0, 6),
    st.integers(2, 5),
    st.integers(0, 2),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), dup_lease), max_size=20), st.integers(1, 4))
def test_property_duplicate_mac_earliest_created_wins(
    steps: list[tuple[bool, Lease]], batch: int
) -> None:
    events: list[Event] = []
    live: dict[Any, int] = {}  # subnet -> create revision while the key exists (as etcd does)
    for revision, (add, le) in enumerate(steps, 1):
        if add:
            rev = live.setdefault(le.subnet, revision)
            events.append(Event(EventKind.ADDED, replace(le, create_revision=rev)))
        else:
            live.pop(le.subnet, None)
            events.append(Event(EventKind.REMOVED, le))
    state, current, full = replay_and_reconcile(events, batch)
    assert set(full.state.held) == set(state.held)
    for le in current.values():
        mac = le.attrs.backend_data["VtepMAC"]
        claims = [c for c in current.values() if c.attrs.backend_data["VtepMAC"] == mac]
        first = min(claims, key=lambda c: c.create_revision)
        fdbs = [e for e in state.programmed_entries().values() if isinstance(e, FdbEntry)]
        assert [e.dst for e in fdbs if e.mac == mac] == [first.attrs.public_ip]
        programmed = le.subnet in state.peers
        assert programmed == (le.attrs.public_ip == first.attrs.public_ip)


claims = st.lists(
    st.builds(
        MacClaim,
        subnet=st.integers(0, 9).map(lambda c: N4(f"10.5.{c}.0/24")),
        public_ip=st.integers(2, 4).map(lambda p: V4(f"198.51.100.{p}")),
        create_revision=st.integers(0, 50),
    ),
    max_size=8,
    unique_by=lambda c: c.subnet,
)


@given(claims, st.randoms())
def test_property_mac_losers_order_independent_and_one_node_keeps_it(
    cs: list[MacClaim], rnd: Any
) -> None:
    losers = mac_losers(cs)
    shuffled = list(cs)
    rnd.shuffle(shuffled)
    assert mac_losers(shuffled) == losers
    keepers = {c.public_ip for c in cs if c.subnet not in losers}
    assert len(keepers) <= 1  # never two nodes on one MAC
    if cs:
        assert len(keepers) == 1


# --- plan_reconcile's one-pass diff against the index it replaced (memory at 10k peers) ----


def _reference_diff(
    wanted: dict[Any, Any], kernel_entries: Sequence[Any], ctx: PlanContext
) -> tuple[list[Any], list[Any]]:
    """The former diff: index every kernel entry by key, then compare per wanted key."""
    from pyflannel.backend.plan import _is_ours, _same, entry_key

    kernel: dict[Any, list[Any]] = {}
    for e in kernel_entries:
        kernel.setdefault(entry_key(e), []).append(e)
    adds: list[Any] = []
    dels: list[Any] = []
    for key, want in wanted.items():
        have = kernel.get(key)
        if have is None:
            adds.append(want)
            continue
        if any(_same(want, e) for e in have):
            extra = [e for e in have if not _same(want, e)]
        else:
            adds.append(want)
            extra = have[1:]
        dels.extend(e for e in extra if _is_ours(e, ctx))
    for key, have in kernel.items():
        if key not in wanted:
            dels.extend(e for e in have if _is_ours(e, ctx))
    return adds, dels


_SUBNETS = [f"10.5.{i}.0/24" for i in range(30, 38)] + ["10.6.1.0/24", "10.5.72.0/24"]
_PUBLICS = ["198.51.100.2", "198.51.100.3", "198.51.100.9"]
_MACS = [MAC_A, MAC_B, "0a:cc:cc:cc:cc:cc"]


@st.composite
def _kernel_entry(draw: st.DrawFn) -> Any:
    subnet = draw(st.sampled_from(_SUBNETS))
    kind = draw(st.sampled_from(["route", "neigh", "fdb", "other-dev-route"]))
    if kind == "route":
        return route(subnet)
    if kind == "other-dev-route":
        return RouteEntry(dst=N4(subnet), gw=V4(draw(st.sampled_from(_PUBLICS))), ifindex=EXT)
    if kind == "neigh":
        return neigh(subnet, draw(st.sampled_from(_MACS)))
    return fdb(draw(st.sampled_from(_MACS)), draw(st.sampled_from(_PUBLICS)))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_SUBNETS[:8]), st.sampled_from(_PUBLICS), st.sampled_from(_MACS)),
        max_size=6,
    ),
    st.lists(_kernel_entry(), max_size=14),
)
def test_reconcile_diff_matches_the_indexed_reference(
    specs: list[tuple[str, str, str]], kernel_entries: list[Any]
) -> None:
    leases = [vx(s, p, m) for s, p, m in specs]
    routes = [e for e in kernel_entries if isinstance(e, RouteEntry)]
    neighs = [e for e in kernel_entries if isinstance(e, NeighEntry)]
    fdbs = [e for e in kernel_entries if isinstance(e, FdbEntry)]
    plan = plan_reconcile(leases, routes, neighs, fdbs, CTX)
    adds, dels = _reference_diff(plan.state.programmed_entries(), [*routes, *neighs, *fdbs], CTX)
    got_adds = [op.entry for op in plan.ops if isinstance(op, Replace)]
    got_dels = [op.entry for op in plan.ops if not isinstance(op, Replace)]
    assert sorted(map(repr, got_adds)) == sorted(map(repr, adds))
    assert sorted(map(repr, got_dels)) == sorted(map(repr, dels))
