"""Traffic rules: masquerade (``--ip-masq``) and forward-accept rules, iptables or nftables.

Use :func:`new_traffic_manager` with a :class:`TrafficSpec` (see :func:`spec_from`)::

    tm = new_traffic_manager(spec, nftables=cfg.enable_nftables, prev=prev)
    await tm.cleanup_other_mode()
    await tm.setup()
    nursery.start_soon(tm.resync_forever, opts.iptables_resync)
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from pyflannel.trafficmngr.blackhole import BlackholeOutcome, ensure_blackhole_route
from pyflannel.trafficmngr.iptables import IptablesManager, check_br_netfilter
from pyflannel.trafficmngr.nftables import NftablesManager
from pyflannel.trafficmngr.protocols import TrafficManager
from pyflannel.trafficmngr.rules import PreviousNetworks, TrafficSpec

__all__ = [
    "BlackholeOutcome",
    "IptablesManager",
    "NftablesManager",
    "PreviousNetworks",
    "TrafficManager",
    "TrafficSpec",
    "check_br_netfilter",
    "ensure_blackhole_route",
    "new_traffic_manager",
    "spec_from",
]


class _NetworkConfigLike(Protocol):
    @property
    def network(self) -> ipaddress.IPv4Network | None: ...
    @property
    def ipv6_network(self) -> ipaddress.IPv6Network | None: ...
    @property
    def enable_ipv4(self) -> bool: ...
    @property
    def enable_ipv6(self) -> bool: ...


class _LeaseLike(Protocol):
    @property
    def subnet(self) -> ipaddress.IPv4Network | None: ...
    @property
    def ipv6_subnet(self) -> ipaddress.IPv6Network | None: ...


def spec_from(
    config: _NetworkConfigLike,
    lease: _LeaseLike,
    *,
    ip_masq: bool,
    forward_rules: bool = True,
    random_fully_disable: bool = False,
    blackhole_route: bool = False,
) -> TrafficSpec:
    """Build the spec from a ``NetworkConfig``, our ``Lease`` and the flanneld flags."""
    return TrafficSpec(
        network=config.network if config.enable_ipv4 else None,
        subnet=lease.subnet if config.enable_ipv4 else None,
        ipv6_network=config.ipv6_network if config.enable_ipv6 else None,
        ipv6_subnet=lease.ipv6_subnet if config.enable_ipv6 else None,
        ip_masq=ip_masq,
        forward_rules=forward_rules,
        random_fully_disable=random_fully_disable,
        blackhole_route=blackhole_route,
    )


def new_traffic_manager(
    spec: TrafficSpec,
    *,
    nftables: bool,
    prev: PreviousNetworks | None = None,
    netns: str | None = None,
) -> TrafficManager:
    """The manager for the configured mode (``EnableNFTables``)."""
    if nftables:
        return NftablesManager(spec, prev=prev, netns=netns)
    return IptablesManager(spec, prev=prev, netns=netns)
