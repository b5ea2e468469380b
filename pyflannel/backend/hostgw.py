"""The host-gw backend: each peer subnet is routed via the peer's public IP on the external
interface (the nodes must share an L2 segment). No device, no encapsulation; MTU = ext MTU.

Like flanneld it refuses to run behind NAT (public IP ≠ interface IP). Unlike flanneld, the
periodic check (every ``resync_interval`` s, default 10 as flanneld) is a full reconcile: missing
or changed routes are replaced and stale routes into the Network on the external interface are
removed; flanneld only re-adds the routes it remembers. The NAT check covers IPv6 too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pyflannel.backend.base import (
    BackendBase,
    Family,
    OwnStack,
    PlanContext,
    Prepared,
    own_subnet,
)
from pyflannel.backend.kernel import NetlinkKernel
from pyflannel.backend.peers import PeerProgrammer
from pyflannel.backend.programmed import ProgrammedNetwork
from pyflannel.errors import ConfigError, InterfaceError
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.netlink.ops import IPAddress, IPNetwork
from pyflannel.netlink.worker import NetlinkWorker

if TYPE_CHECKING:
    from pyflannel.config import NetworkConfig
    from pyflannel.iface import ExternalInterface

__all__ = ["HostGwBackend", "HostGwNetwork", "HostGwPrepared", "plan_context"]

_Addr = TypeVar("_Addr", ipaddress.IPv4Address, ipaddress.IPv6Address)
_NAT_MESSAGE = (
    "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is "
    "not supported by host-gw backend"
)


def plan_context(own: OwnStack, *, ext_index: int) -> PlanContext:
    """What the planner needs to route peers via their public IPs on ``ext_index``."""
    return own.context(HostGwBackend.backend_type, dev_index=ext_index, ext_index=ext_index)


def _routable_public_ip(name: str, pub: _Addr | None, own: _Addr | None, *, v6: bool) -> _Addr:
    """The public IP of one family, refused when there is none or it is not the address of the
    interface ``name`` (``own``): behind NAT, peers could not route to us directly."""
    if pub is None:
        word = "IPv6" if v6 else "IPv4"
        raise InterfaceError(f"interface {name} has no {word} address for host-gw")
    if pub != own:
        field, shown, flag = (
            ("PublicIPv6", "IPv6", "public-ipv6") if v6 else ("PublicIP", "IP", "public-ip")
        )
        raise ConfigError(
            _NAT_MESSAGE.replace("PublicIP", field),
            hint=f"public {shown} {pub} vs {name} address {own}: use the vxlan backend, or "
            f"drop --{flag}",
        )
    return pub


@dataclass(frozen=True, slots=True)
class HostGwPrepared:
    """What :meth:`HostGwBackend.prepare` checked; :meth:`HostGwBackend.configure` consumes it."""

    ext: ExternalInterface
    stacks: tuple[tuple[Family, IPNetwork, IPAddress], ...]
    """Per enabled family: the Network and our public IP."""
    attrs: LeaseAttrs


class HostGwBackend(BackendBase):
    """Routes to peers via their public IPs; nothing to create before the lease."""

    backend_type = "host-gw"

    async def prepare(
        self, config: NetworkConfig, ext_iface: ExternalInterface, state_dir: Path
    ) -> HostGwPrepared:
        """Check the interface (no NAT); the result holds the lease attrs (no BackendData)."""
        del state_dir  # host-gw keeps no state
        pub: ipaddress.IPv4Address | None = None
        pub6: ipaddress.IPv6Address | None = None
        if config.enable_ipv4:
            pub = _routable_public_ip(
                ext_iface.name, ext_iface.public_ip, ext_iface.ipv4_addr, v6=False
            )
        if config.enable_ipv6:
            pub6 = _routable_public_ip(
                ext_iface.name, ext_iface.public_ipv6, ext_iface.ipv6_addr, v6=True
            )
        per_family: tuple[tuple[Family, IPNetwork | None, IPAddress | None], ...] = (
            (4, config.network, pub),
            (6, config.ipv6_network, pub6),
        )
        stacks = tuple(
            (f, net, ip) for f, net, ip in per_family if net is not None and ip is not None
        )
        attrs = LeaseAttrs(backend_type=self.backend_type, public_ipv6=pub6)
        if pub is not None:
            attrs = replace(attrs, public_ip=pub)
        return HostGwPrepared(ext_iface, stacks, attrs)

    async def configure(self, prepared: Prepared, lease: Lease) -> HostGwNetwork:
        """Nothing to configure on the kernel; return the network that programs routes."""
        if not isinstance(prepared, HostGwPrepared):
            raise TypeError(f"HostGwBackend.configure() takes a HostGwPrepared, not {prepared!r}")
        ext = prepared.ext
        contexts = []
        for family, network, public in prepared.stacks:
            own = own_subnet(lease, family)
            underlay = ext.ipv4_network if family == 4 else ext.ipv6_network
            stack = OwnStack(family, network, own, public, underlay)
            contexts.append(plan_context(stack, ext_index=ext.index))
        programmer = PeerProgrammer(
            NetlinkWorker(NetlinkKernel()), contexts, metrics=self.metrics, stats=self.stats
        )
        return HostGwNetwork(lease, ext.mtu, programmer, self.resync_interval)


class HostGwNetwork(ProgrammedNetwork):
    """The host-gw data path for our lease (``FLANNEL_MTU``: the external interface's MTU)."""

    async def run(self) -> None:
        """Re-check (reconcile) the routes every ``resync_interval`` s until cancelled."""
        await self.resync()
