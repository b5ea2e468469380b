"""Allocation policy (pure): flanneld's tryAcquireLease order, reservations, out-of-subnets."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.config import NetworkConfig, parse_network_config
from pyflannel.errors import OutOfSubnets
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.subnet.allocation import (
    MAX_CANDIDATES,
    PreviousSubnets,
    ipv4_family,
    ipv6_family,
    is_ipv4_compatible,
    is_ipv6_compatible,
    pick_free_subnets,
    plan_acquisition,
    previous_subnets,
)
from pyflannel.subnet.subnet_env import SubnetEnv

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network
IP = ipaddress.IPv4Address

CFG = parse_network_config('{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}')
CFG_DUAL = parse_network_config(
    '{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:cafe:42::/56",'
    ' "Backend": {"Type": "vxlan"}}'
)
CFG_V6 = parse_network_config(
    '{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "2001:cafe:42::/56",'
    ' "Backend": {"Type": "vxlan"}}'
)
ME = LeaseAttrs(public_ip=IP("198.51.100.10"), backend_type="vxlan")
OTHER = LeaseAttrs(public_ip=IP("198.51.100.20"), backend_type="vxlan")


def lease(
    v4: str | None,
    attrs: LeaseAttrs = OTHER,
    v6: str | None = None,
    *,
    lease_id: int = 7,
    rev: int = 3,
) -> Lease:
    return Lease(
        subnet=None if v4 is None else V4(v4),
        attrs=attrs,
        ipv6_subnet=None if v6 is None else V6(v6),
        etcd_lease_id=lease_id,
        mod_revision=rev,
    )


def rng() -> random.Random:
    return random.Random(1234)


# --------------------------------------------------------------------------- compatibility


def test_ipv4_compatibility_range_and_prefix() -> None:
    assert is_ipv4_compatible(CFG, V4("10.5.1.0/24"))
    assert is_ipv4_compatible(CFG, V4("10.5.255.0/24"))
    assert not is_ipv4_compatible(CFG, V4("10.5.0.0/24")), "first subnet is below SubnetMin"
    assert not is_ipv4_compatible(CFG, V4("10.6.1.0/24"))
    assert not is_ipv4_compatible(CFG, V4("10.5.2.0/23")), "wrong prefix length"
    assert not is_ipv4_compatible(CFG, None)
    assert is_ipv4_compatible(CFG_V6, None), "IPv6-only: no IPv4 part is what fits"
    assert not is_ipv4_compatible(CFG_V6, V4("10.5.1.0/24"))


def test_ipv6_compatibility() -> None:
    assert is_ipv6_compatible(CFG, None), "IPv6 disabled: only 'none' fits"
    assert not is_ipv6_compatible(CFG, V6("2001:cafe:42:1::/64"))
    assert is_ipv6_compatible(CFG_DUAL, V6("2001:cafe:42:1::/64"))
    assert not is_ipv6_compatible(CFG_DUAL, V6("2001:cafe:42::/64")), "below IPv6SubnetMin"
    assert not is_ipv6_compatible(CFG_DUAL, V6("2001:cafe:42:1::/65"))
    assert not is_ipv6_compatible(CFG_DUAL, None)


# --------------------------------------------------------------------------- rule 1: PublicIP


def test_reuses_lease_with_our_public_ip() -> None:
    mine = lease("10.5.7.0/24", ME, rev=11)
    plan = plan_acquisition(
        CFG, [lease("10.5.1.0/24"), mine], ME, PreviousSubnets(V4("10.5.9.0/24")), rng()
    )
    assert plan.action == "reuse"
    assert plan.source == "public-ip"
    assert plan.existing == mine
    assert plan.subnet == V4("10.5.7.0/24")
    assert plan.stale == ()


def test_incompatible_lease_with_our_ip_is_deleted_and_another_picked() -> None:
    wrong_len = lease("10.5.8.0/23", ME)
    plan = plan_acquisition(CFG, [wrong_len], ME, PreviousSubnets(), rng())
    assert plan.action == "create"
    assert plan.stale == (wrong_len,)
    assert plan.source == "random"
    assert plan.subnet is not None and not plan.subnet.overlaps(V4("10.5.8.0/23")), (
        "like flanneld, the stale lease still counts as taken in this round"
    )


def test_compatible_lease_wins_and_incompatible_ones_are_stale() -> None:
    good = lease("10.5.4.0/24", ME)
    bad = lease("10.9.0.0/24", ME)
    plan = plan_acquisition(CFG, [bad, good], ME, PreviousSubnets(), rng())
    assert plan.action == "reuse" and plan.existing == good
    assert plan.stale == (bad,)


def test_v4_only_lease_is_incompatible_with_dual_stack_config() -> None:
    # flanneld's isIPv6SubnetConfigCompat: IPv6 enabled and no IPv6 part -> incompatible.
    old = lease("10.5.4.0/24", ME)
    plan = plan_acquisition(CFG_DUAL, [old], ME, PreviousSubnets(), rng())
    assert plan.action == "create"
    assert plan.stale == (old,)
    assert plan.ipv6_subnet is not None


def test_dual_stack_lease_reused() -> None:
    mine = lease("10.5.4.0/24", ME, "2001:cafe:42:4::/64")
    plan = plan_acquisition(CFG_DUAL, [mine], ME, PreviousSubnets(), rng())
    assert plan.action == "reuse"
    assert (plan.subnet, plan.ipv6_subnet) == (V4("10.5.4.0/24"), V6("2001:cafe:42:4::/64"))


def test_ipv6_only_matches_by_public_ipv6() -> None:
    me6 = LeaseAttrs(public_ipv6=ipaddress.IPv6Address("2001:db8::10"))
    other6 = LeaseAttrs(public_ipv6=ipaddress.IPv6Address("2001:db8::20"))
    theirs = lease(None, other6, "2001:cafe:42:1::/64")
    mine = lease(None, me6, "2001:cafe:42:5::/64")
    plan = plan_acquisition(CFG_V6, [theirs, mine], me6, PreviousSubnets(), rng())
    assert plan.action == "reuse" and plan.existing == mine


# --------------------------------------------------------------------------- reservations


def test_reservation_for_our_ip_is_reused_in_preference() -> None:
    ordinary = lease("10.5.3.0/24", ME, lease_id=5)
    reserved = lease("10.5.200.0/24", ME, lease_id=0)
    plan = plan_acquisition(CFG, [ordinary, reserved], ME, PreviousSubnets(), rng())
    assert plan.action == "reuse"
    assert plan.existing is not None and plan.existing.is_reservation
    assert plan.subnet == V4("10.5.200.0/24")


def test_reservation_of_another_host_is_never_picked() -> None:
    cfg = parse_network_config(
        '{"Network": "10.5.0.0/16", "SubnetMin": "10.5.1.0", "SubnetMax": "10.5.3.0"}'
    )
    leases = [lease("10.5.1.0/24"), lease("10.5.2.0/24", lease_id=0)]
    for seed in range(30):
        plan = plan_acquisition(cfg, leases, ME, PreviousSubnets(), random.Random(seed))
        assert plan.subnet == V4("10.5.3.0/24")
    prev = PreviousSubnets(V4("10.5.2.0/24"))
    plan = plan_acquisition(cfg, leases, ME, prev, rng())
    assert plan.subnet == V4("10.5.3.0/24"), "subnet.env must not steal a reservation"


# --------------------------------------------------------------------------- rule 2: subnet.env


def test_previous_subnet_reused_when_free_and_compatible() -> None:
    plan = plan_acquisition(
        CFG, [lease("10.5.1.0/24")], ME, PreviousSubnets(V4("10.5.77.0/24")), rng()
    )
    assert plan == plan_acquisition(
        CFG, [lease("10.5.1.0/24")], ME, PreviousSubnets(V4("10.5.77.0/24")), rng()
    )
    assert plan.action == "create" and plan.source == "subnet-env"
    assert plan.subnet == V4("10.5.77.0/24")


@pytest.mark.parametrize(
    "prev",
    [
        "10.5.1.0/24",  # held by someone else
        "10.5.0.0/23",  # overlaps a lease (and wrong length)
        "10.7.3.0/24",  # outside the network
        "10.5.0.0/24",  # below SubnetMin
        "10.5.4.0/25",  # wrong SubnetLen
    ],
)
def test_previous_subnet_ignored(prev: str) -> None:
    plan = plan_acquisition(CFG, [lease("10.5.1.0/24")], ME, PreviousSubnets(V4(prev)), rng())
    assert plan.source == "random"
    assert plan.subnet != V4(prev)
    assert plan.subnet is not None and not plan.subnet.overlaps(V4("10.5.1.0/24"))


def test_previous_subnet_excluded_after_losing_race() -> None:
    prev = PreviousSubnets(V4("10.5.77.0/24"))
    plan = plan_acquisition(CFG, [], ME, prev, rng(), exclude={V4("10.5.77.0/24")})
    assert plan.source == "random" and plan.subnet != V4("10.5.77.0/24")


def test_previous_subnets_from_subnet_env() -> None:
    env = SubnetEnv(
        subnet=ipaddress.IPv4Interface("10.5.72.1/24"),
        ipv6_subnet=ipaddress.IPv6Interface("2001:cafe:42:3::1/64"),
    )
    prev = previous_subnets(env)
    assert prev == PreviousSubnets(V4("10.5.72.0/24"), V6("2001:cafe:42:3::/64"))
    assert previous_subnets(None) == PreviousSubnets()
    plan = plan_acquisition(CFG_DUAL, [], ME, prev, rng())
    assert (plan.subnet, plan.ipv6_subnet, plan.source) == (
        V4("10.5.72.0/24"),
        V6("2001:cafe:42:3::/64"),
        "subnet-env",
    )


def test_previous_v4_kept_even_when_v6_missing() -> None:
    plan = plan_acquisition(CFG_DUAL, [], ME, PreviousSubnets(V4("10.5.72.0/24")), rng())
    assert plan.subnet == V4("10.5.72.0/24")
    assert plan.ipv6_subnet is not None
    assert is_ipv6_compatible(CFG_DUAL, plan.ipv6_subnet)


# --------------------------------------------------------------------------- rule 3: random


def test_candidates_walk_from_min_and_skip_overlaps() -> None:
    leases = [lease("10.5.1.0/24"), lease("10.5.2.0/23"), lease("10.5.6.0/24")]
    cands = ipv4_family(CFG).free_candidates(leases, limit=4)
    assert cands == [V4("10.5.4.0/24"), V4("10.5.5.0/24"), V4("10.5.7.0/24"), V4("10.5.8.0/24")]


def test_candidates_capped_at_100() -> None:
    assert len(ipv4_family(CFG).free_candidates([])) == MAX_CANDIDATES == 100
    assert ipv4_family(CFG).free_candidates([])[-1] == V4("10.5.100.0/24")


def test_candidates_skip_a_huge_lease_quickly() -> None:
    cfg = parse_network_config('{"Network": "10.0.0.0/8"}')
    big = lease("10.0.0.0/9")
    cands = ipv4_family(cfg).free_candidates([big], limit=2)
    assert cands == [V4("10.128.0.0/24"), V4("10.128.1.0/24")]


def test_random_pick_is_uniform_over_the_100_candidates() -> None:
    r = random.Random(99)
    counts: Counter[V4] = Counter()
    for _ in range(5000):
        v4, v6 = pick_free_subnets(CFG, [], r)
        assert v6 is None and v4 is not None
        counts[v4] += 1
    assert set(counts) == set(ipv4_family(CFG).free_candidates([]))
    assert min(counts.values()) > 20 and max(counts.values()) < 90


def test_ipv6_picked_independently() -> None:
    leases = [lease("10.5.1.0/24", v6="2001:cafe:42:1::/64")]
    cands6 = ipv6_family(CFG_DUAL).free_candidates(leases, limit=2)
    assert cands6 == [V6("2001:cafe:42:2::/64"), V6("2001:cafe:42:3::/64")]
    v4, v6 = pick_free_subnets(CFG_DUAL, leases, rng())
    assert v4 is not None and v6 is not None
    assert v6 != V6("2001:cafe:42:1::/64")


def test_ipv6_only_ignores_zero_ipv4_placeholder() -> None:
    # IPv6-only keys are 0.0.0.0-0&...; that placeholder must not block IPv4 (nor crash v6).
    leases = [lease(None, v6="2001:cafe:42:1::/64")]
    v4, v6 = pick_free_subnets(CFG_V6, leases, rng())
    assert v4 is None and v6 is not None and v6 != V6("2001:cafe:42:1::/64")
    v4d, _ = pick_free_subnets(CFG_DUAL, leases, rng())
    assert v4d is not None


# --------------------------------------------------------------------------- out of subnets


def small_cfg() -> NetworkConfig:
    return parse_network_config('{"Network": "10.5.0.0/28", "Backend": {"Type": "host-gw"}}')


def test_out_of_subnets_message_names_network_range_and_lease_count() -> None:
    cfg = small_cfg()  # /28 -> SubnetLen 30, range 10.5.0.4 .. 10.5.0.12 (3 subnets)
    leases = [lease(f"10.5.0.{i}/30") for i in (4, 8, 12)]
    with pytest.raises(OutOfSubnets) as info:
        plan_acquisition(cfg, leases, ME, PreviousSubnets(), rng(), prefix="/my/net")
    msg = str(info.value)
    assert "out of subnets" in msg
    assert "Network 10.5.0.0/28" in msg
    assert "SubnetLen 30" in msg
    assert "10.5.0.4 - 10.5.0.12" in msg
    assert "3 subnets" in msg
    assert "3 leases" in msg
    assert "/my/net/subnets/" in msg


def test_out_of_ipv6_subnets() -> None:
    cfg = parse_network_config(
        '{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:cafe::/124"}'
    )
    # /124 -> IPv6SubnetLen 126: subnets ::4, ::8, ::c
    leases = [
        lease(f"10.5.{i}.0/24", v6=f"2001:cafe::{h}/126") for i, h in ((1, 4), (2, 8), (3, "c"))
    ]
    with pytest.raises(OutOfSubnets, match=r"IPv6Network 2001:cafe::/124, IPv6SubnetLen 126"):
        pick_free_subnets(cfg, leases, rng())


@settings(max_examples=200, deadline=None)
@given(
    taken=st.sets(st.integers(min_value=0, max_value=63), max_size=64),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_pick_never_overlaps_and_only_fails_when_full(taken: set[int], seed: int) -> None:
    cfg = parse_network_config(
        '{"Network": "10.9.0.0/16", "SubnetLen": 22, "SubnetMin": "10.9.0.0",'
        ' "SubnetMax": "10.9.252.0"}'
    )  # 64 subnets of /22
    leases = [lease(f"10.9.{i * 4}.0/22") for i in taken]
    if len(taken) == 64:
        with pytest.raises(OutOfSubnets):
            pick_free_subnets(cfg, leases, random.Random(seed))
        return
    v4, _ = pick_free_subnets(cfg, leases, random.Random(seed))
    assert v4 is not None and v4.prefixlen == 22
    assert all(not v4.overlaps(x.subnet) for x in leases if x.subnet is not None)
    assert is_ipv4_compatible(cfg, v4)


def test_candidate_search_is_fast_with_10k_leases() -> None:
    import time

    cfg = parse_network_config('{"Network": "10.0.0.0/8"}')
    base = int(IP("10.0.1.0"))
    leases = [lease(str(V4((base + i * 256, 24)))) for i in range(10_000)]
    t0 = time.perf_counter()
    cands = ipv4_family(cfg).free_candidates(leases)
    elapsed = time.perf_counter() - t0
    assert len(cands) == 100
    assert cands[0] == V4((base + 10_000 * 256, 24))
    assert elapsed < 0.5, f"candidate walk took {elapsed:.2f}s"
