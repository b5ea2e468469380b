"""Subnet allocation policy: which subnet a node gets (flanneld's ``tryAcquireLease``), as data.

Everything here is pure. :func:`plan_acquisition` looks at the current leases and returns an
:class:`AcquirePlan`; the manager carries it out against etcd and, when it loses a race, asks
again with a fresh lease list.

The order of preference is flanneld's:

1. a lease whose ``PublicIP`` is ours (reused if it fits the config, deleted otherwise);
2. the subnet from the previous ``subnet.env``, if it is free and fits the config;
3. a uniformly random pick among the first :data:`MAX_CANDIDATES` free subnets, walking from
   ``SubnetMin`` to ``SubnetMax`` (IPv6 picked independently, the same way).

Deliberate differences from flanneld (see docs/compatibility.md):

- IPv6-only networks identify "our" lease by ``PublicIPv6`` (flanneld compares the IPv4
  ``PublicIP``, which is ``0.0.0.0`` for every IPv6-only node) and ignore the ``0.0.0.0/0``
  IPv4 placeholder of IPv6-only keys when looking for overlaps (flanneld treats it as
  overlapping every IPv4 candidate).
- Among several leases carrying our public IP, a compatible one (a reservation first) is reused
  and every incompatible one is deleted; flanneld looks at the first one only.
- The previous ``subnet.env`` subnets are taken per address family: a compatible, free IPv4
  subnet is reused even when the IPv6 one is not (flanneld then drops both). "Free" means no
  overlap with any lease, IPv6 included (flanneld only compares the IPv4 subnet for equality).
"""

from __future__ import annotations

import ipaddress
import random
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from pyflannel.config import NetworkConfig
from pyflannel.errors import OutOfSubnets
from pyflannel.lease import Lease, LeaseAttrs, subnet_key_suffix
from pyflannel.subnet.subnet_env import SubnetEnv

__all__ = [
    "MAX_CANDIDATES",
    "AcquirePlan",
    "PreviousSubnets",
    "SubnetFamily",
    "ipv4_family",
    "ipv6_family",
    "is_ipv4_compatible",
    "is_ipv6_compatible",
    "is_lease_compatible",
    "leases_of_node",
    "pick_free_subnets",
    "plan_acquisition",
    "previous_subnets",
]

# flanneld collects at most 100 free candidates before picking one at random.
MAX_CANDIDATES = 100

_Net = TypeVar("_Net", ipaddress.IPv4Network, ipaddress.IPv6Network)


@dataclass(frozen=True, slots=True)
class PreviousSubnets:
    """The lease subnets recorded in the previous subnet.env (masked to the network address)."""

    subnet: ipaddress.IPv4Network | None = None
    ipv6_subnet: ipaddress.IPv6Network | None = None


def previous_subnets(env: SubnetEnv | None) -> PreviousSubnets:
    """``FLANNEL_SUBNET=10.5.72.1/24`` → ``10.5.72.0/24`` (and likewise for IPv6).

    flanneld masks the gateway address back to the lease subnet when it reads the file.
    """
    if env is None:
        return PreviousSubnets()
    return PreviousSubnets(
        subnet=None if env.subnet is None else env.subnet.network,
        ipv6_subnet=None if env.ipv6_subnet is None else env.ipv6_subnet.network,
    )


@dataclass(frozen=True, slots=True)
class SubnetFamily(Generic[_Net]):
    """One address family of the network config as allocation sees it. flanneld keeps the
    IPv4 fields (``Network``, ``SubnetLen``, ``SubnetMin``/``SubnetMax``) and their ``IPv6``
    twins side by side and applies the same rules to both; :func:`ipv4_family` and
    :func:`ipv6_family` build the two views."""

    enabled: bool
    network: _Net | None
    first: _Net | None
    """The subnet at ``SubnetMin`` (its prefix is ``SubnetLen``); None when unset."""
    subnet_max: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    of_lease: Callable[[Lease], _Net | None]
    """A lease's subnet of this family."""
    field_prefix: str
    """"" or "IPv6", as in the config's field names (``{prefix}SubnetLen``)."""
    out_of_subnets_fix: str
    """What to change in the config when every subnet is taken."""

    def fits(self, subnet: _Net | None) -> bool:
        """flanneld's ``isSubnetConfigCompat`` (``isIPv6SubnetConfigCompat``): in [SubnetMin,
        SubnetMax] with prefix SubnetLen. With the family disabled only "no subnet" fits."""
        if not self.enabled:
            return subnet is None
        if subnet is None or self.first is None or self.subnet_max is None:
            return False
        start = int(subnet.network_address)
        if not int(self.first.network_address) <= start <= int(self.subnet_max):
            return False
        return subnet.prefixlen == self.first.prefixlen

    def free_candidates(
        self,
        leases: Iterable[Lease],
        *,
        limit: int = MAX_CANDIDATES,
        exclude: Collection[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    ) -> list[_Net]:
        """The first ``limit`` subnets in [SubnetMin, SubnetMax] that overlap no lease and
        are not in ``exclude`` (subnets of the other family there are ignored)."""
        if not self.enabled or self.first is None or self.subnet_max is None:
            return []
        taken = _Taken(net for lease in leases if (net := self.of_lease(lease)) is not None)
        return _free_candidates(self.first, int(self.subnet_max), taken, limit, exclude)

    def reusable(
        self,
        subnet: _Net | None,
        leases: Iterable[Lease],
        exclude: Collection[ipaddress.IPv4Network | ipaddress.IPv6Network],
    ) -> bool:
        """``subnet`` (from the previous subnet.env) may be created again: it fits the config,
        overlaps no lease of this family and is not one this node just lost a race for."""
        if subnet is None or subnet in exclude or not self.fits(subnet):
            return False
        return not any(
            net is not None and subnet.overlaps(net) for net in map(self.of_lease, leases)
        )


def ipv4_family(cfg: NetworkConfig) -> SubnetFamily[ipaddress.IPv4Network]:
    """The IPv4 view of ``cfg``."""
    lo = cfg.subnet_min
    first = None if lo is None else ipaddress.IPv4Network((lo, cfg.subnet_len))
    fix = "a larger Network, a smaller SubnetLen or a wider SubnetMin/SubnetMax"
    return SubnetFamily(
        cfg.enable_ipv4, cfg.network, first, cfg.subnet_max, lambda le: le.subnet, "", fix
    )


def ipv6_family(cfg: NetworkConfig) -> SubnetFamily[ipaddress.IPv6Network]:
    """The IPv6 view of ``cfg``."""
    lo = cfg.ipv6_subnet_min
    first = None if lo is None else ipaddress.IPv6Network((lo, cfg.ipv6_subnet_len))
    fix = "a larger IPv6Network or a smaller IPv6SubnetLen"
    network, hi = cfg.ipv6_network, cfg.ipv6_subnet_max
    return SubnetFamily(cfg.enable_ipv6, network, first, hi, lambda le: le.ipv6_subnet, "IPv6", fix)


def is_ipv4_compatible(cfg: NetworkConfig, subnet: ipaddress.IPv4Network | None) -> bool:
    """flanneld's ``isSubnetConfigCompat``: in [SubnetMin, SubnetMax] with prefix SubnetLen.

    With IPv4 disabled only "no IPv4 subnet" fits.
    """
    return ipv4_family(cfg).fits(subnet)


def is_ipv6_compatible(cfg: NetworkConfig, subnet: ipaddress.IPv6Network | None) -> bool:
    """flanneld's ``isIPv6SubnetConfigCompat``; with IPv6 disabled only "none" fits."""
    return ipv6_family(cfg).fits(subnet)


def is_lease_compatible(cfg: NetworkConfig, lease: Lease) -> bool:
    """Both halves of the lease fit the config."""
    return is_ipv4_compatible(cfg, lease.subnet) and is_ipv6_compatible(cfg, lease.ipv6_subnet)


def leases_of_node(cfg: NetworkConfig, leases: Iterable[Lease], attrs: LeaseAttrs) -> list[Lease]:
    """The leases that carry our public IP (``PublicIPv6`` on IPv6-only networks)."""
    if cfg.enable_ipv4:
        return [lease for lease in leases if lease.attrs.public_ip == attrs.public_ip]
    if attrs.public_ipv6 is None:
        return []
    return [lease for lease in leases if lease.attrs.public_ipv6 == attrs.public_ipv6]


class _Taken:
    """The address ranges held by leases, merged and sorted, for fast overlap tests."""

    def __init__(self, nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        # half-open [start, end); the size from the prefix length, not broadcast_address:
        # that cached property (and the hostmask it needs) cost ~20 µs and ~150 bytes per
        # lease, which with 10k leases was a noticeable part of start-up.
        spans = sorted(
            (start, start + (1 << (n.max_prefixlen - n.prefixlen)))
            for n in nets
            for start in (int(n.network_address),)
        )
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                if end > merged[-1][1]:
                    merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        self._starts = [s for s, _ in merged]
        self._spans = merged

    def blocking_end(self, start: int, end: int) -> int | None:
        """End of a taken span overlapping ``[start, end)``, or ``None`` when it is free."""
        i = bisect_right(self._starts, start) - 1
        if i >= 0 and self._spans[i][1] > start:
            return self._spans[i][1]
        if i + 1 < len(self._spans) and self._spans[i + 1][0] < end:
            return self._spans[i + 1][1]
        return None


def _free_candidates(
    first: _Net,
    last_start: int,
    taken: _Taken,
    limit: int,
    exclude: Collection[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> list[_Net]:
    size = first.num_addresses
    cls = type(first)
    prefixlen = first.prefixlen
    excluded = {
        int(n.network_address)
        for n in exclude
        if n.version == first.version and n.prefixlen == prefixlen
    }
    out: list[_Net] = []
    cur = int(first.network_address)
    while cur <= last_start and len(out) < limit:
        blocked = taken.blocking_end(cur, cur + size)
        if blocked is not None:
            # Jump straight past the taken span, staying on a subnet boundary: a big lease
            # (or thousands of small ones) costs one step, not one per covered candidate.
            cur = max(cur + size, cur + ((blocked - cur + size - 1) // size) * size)
            continue
        if cur not in excluded:
            out.append(cls((cur, prefixlen)))
        cur += size
    return out


def _count_range(first: int, last: int, size: int) -> int:
    return 0 if last < first else (last - first) // size + 1


def _out_of_subnets(family: SubnetFamily[_Net], n_leases: int, prefix: str) -> OutOfSubnets:
    assert family.first is not None and family.subnet_max is not None
    lo, hi, p = family.first.network_address, family.subnet_max, family.field_prefix
    total = _count_range(int(lo), int(hi), family.first.num_addresses)
    what = (
        f"{p}Network {family.network}, {p}SubnetLen {family.first.prefixlen}, range {lo} - "
        f"{hi} ({total} subnets)"
    )
    return OutOfSubnets(
        f"out of subnets: every subnet of {what} overlaps one of the {n_leases} leases in etcd",
        hint=(
            f"delete stale leases (ETCDCTL_API=3 etcdctl get --prefix {prefix}/subnets/ "
            f"lists them) or use {family.out_of_subnets_fix} in {prefix}/config"
        ),
    )


def _pick(
    family: SubnetFamily[_Net],
    leases: Sequence[Lease],
    rng: random.Random,
    prefix: str,
    exclude: Collection[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> _Net | None:
    if not family.enabled:
        return None
    candidates = family.free_candidates(leases, exclude=exclude)
    if not candidates:
        raise _out_of_subnets(family, len(leases), prefix)
    return rng.choice(candidates)


def pick_free_subnets(
    cfg: NetworkConfig,
    leases: Sequence[Lease],
    rng: random.Random,
    *,
    prefix: str = "/coreos.com/network",
    exclude: Collection[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]:
    """flanneld's ``allocateSubnet``: a uniformly random free subnet per enabled family.

    Raises :class:`OutOfSubnets` naming the network, the subnet length, the range and the
    number of leases when an enabled family has no free subnet.
    """
    v4 = _pick(ipv4_family(cfg), leases, rng, prefix, exclude)
    return v4, _pick(ipv6_family(cfg), leases, rng, prefix, exclude)


@dataclass(frozen=True, slots=True)
class AcquirePlan:
    """What the manager should do next.

    - ``action == "reuse"``: rewrite ``existing`` (a lease or reservation carrying our public
      IP) with our attrs; reservations stay reservations.
    - ``action == "create"``: create ``subnet``/``ipv6_subnet`` if its key is still absent.

    ``stale`` are leases carrying our public IP that no longer fit the config; they are deleted
    first. ``source`` says where the subnet came from, for the log.
    """

    action: Literal["reuse", "create"]
    subnet: ipaddress.IPv4Network | None
    ipv6_subnet: ipaddress.IPv6Network | None
    source: Literal["public-ip", "subnet-env", "random"]
    existing: Lease | None = None
    stale: tuple[Lease, ...] = field(default=())

    @property
    def key_suffix(self) -> str:
        """The lease key after ``<prefix>/subnets/``."""
        return subnet_key_suffix(self.subnet, self.ipv6_subnet)


def plan_acquisition(
    cfg: NetworkConfig,
    leases: Sequence[Lease],
    attrs: LeaseAttrs,
    previous: PreviousSubnets,
    rng: random.Random,
    *,
    prefix: str = "/coreos.com/network",
    exclude: Collection[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> AcquirePlan:
    """Decide how to get a lease, following flanneld's order (see the module docstring).

    ``exclude`` lists subnets this node just lost a race for; they are not picked again even if
    the lease list handed in is older than the winner's write.
    """
    mine = leases_of_node(cfg, leases, attrs)
    compatible = [lease for lease in mine if is_lease_compatible(cfg, lease)]
    stale = tuple(lease for lease in mine if not is_lease_compatible(cfg, lease))
    if compatible:
        # A reservation made for this host wins over an ordinary lease it also holds.
        chosen = next((lease for lease in compatible if lease.is_reservation), compatible[0])
        return AcquirePlan(
            action="reuse",
            subnet=chosen.subnet,
            ipv6_subnet=chosen.ipv6_subnet,
            source="public-ip",
            existing=chosen,
            stale=stale,
        )

    v4: ipaddress.IPv4Network | None = None
    v6: ipaddress.IPv6Network | None = None
    if ipv4_family(cfg).reusable(previous.subnet, leases, exclude):
        v4 = previous.subnet
    if ipv6_family(cfg).reusable(previous.ipv6_subnet, leases, exclude):
        v6 = previous.ipv6_subnet
    from_env = v4 is not None or v6 is not None

    need4 = cfg.enable_ipv4 and v4 is None
    need6 = cfg.enable_ipv6 and v6 is None
    if need4 or need6:
        pick4, pick6 = pick_free_subnets(
            _only_families(cfg, need4, need6), leases, rng, prefix=prefix, exclude=exclude
        )
        v4 = pick4 if need4 else v4
        v6 = pick6 if need6 else v6
    source: Literal["subnet-env", "random"] = "subnet-env" if from_env else "random"
    return AcquirePlan(action="create", subnet=v4, ipv6_subnet=v6, source=source, stale=stale)


def _only_families(cfg: NetworkConfig, v4: bool, v6: bool) -> NetworkConfig:
    if v4 == cfg.enable_ipv4 and v6 == cfg.enable_ipv6:
        return cfg
    return cfg.model_copy(update={"enable_ipv4": v4, "enable_ipv6": v6})
