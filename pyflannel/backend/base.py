"""The backend seams (``Backend``, ``Network``) and the plain data the planners share.

A *backend* owns one data path (vxlan, host-gw). The daemon drives it in this order::

    backend = make_backend(cfg.backend_type)             # registry.py
    prepared = await backend.prepare(cfg, ext, state_dir)  # device, VTEP MAC; before the lease
    lease = await acquire(prepared.attrs)               # the lease advertises prepared.attrs
    network = await backend.configure(prepared, lease)  # address the device with our lease
    mtu = network.mtu                                   # FLANNEL_MTU for subnet.env
    nursery.start_soon(network.run)                     # repairs: device re-creation, resync
    await network.apply(message)                        # every PeerSnapshot / PeerChanges

``prepare`` returns what it set up as one frozen value (``VxlanPrepared``, ``UdpPrepared``,
``HostGwPrepared``) that ``configure`` consumes and hands to the ``Network``; a network never
reaches back into its backend.

Everything in this module is plain data, a ``typing.Protocol`` or the constructor every backend
with a resync loop shares (:class:`BackendBase`): no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, TypedDict, Unpack

from pyflannel.errors import LeaseError
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.metrics import METRICS, BackendStats, Metrics
from pyflannel.netlink.ops import IPAddress, IPNetwork

if TYPE_CHECKING:
    from pyflannel.backend.wanted import WantedPeers
    from pyflannel.config import NetworkConfig
    from pyflannel.iface import ExternalInterface
    from pyflannel.peer_messages import PeerMessage

__all__ = [
    "Backend",
    "BackendBase",
    "BackendOptions",
    "BackendStats",
    "Family",
    "Network",
    "OwnStack",
    "PlanContext",
    "Prepared",
    "own_subnet",
]

Family = Literal[4, 6]


def own_subnet(lease: Lease, family: Family) -> IPNetwork:
    """Our lease's subnet of ``family``, which the config enables; LeaseError when the lease
    was allocated without one (before the family was turned on)."""
    subnet = lease.subnet_of(family)
    if subnet is None:
        raise LeaseError(
            f"IPv{family} is enabled but lease {lease.key_suffix} has no IPv{family} subnet",
            hint="delete the lease in etcd so that a dual-stack one is allocated",
        )
    return subnet


@dataclass(frozen=True, slots=True)
class PlanContext:
    """Everything the pure planner and validator need to know about *this* node, per family.

    ``backend_type`` is the lease ``BackendType`` we program ("vxlan" or "host-gw"); leases of
    another type are ignored, as flanneld does. ``dev_index`` is the device peers are
    programmed on: the vxlan device, or for host-gw the external interface.

    ``direct_routes`` (vxlan DirectRouting only) maps a peer's public IP to the interface index
    the kernel uses to reach it directly (``ip route get`` gave one route without a gateway). The
    caller decides this with I/O before planning, so the planner stays pure.
    """

    family: Family
    backend_type: str
    network: IPNetwork
    own_subnet: IPNetwork
    own_public_ip: IPAddress
    dev_index: int
    ext_index: int
    own_mac: str | None = None
    direct_routes: Mapping[IPAddress, int] = field(default_factory=dict)
    # The external interface's network (None if unknown): its network and broadcast addresses
    # are no node's PublicIP.
    underlay: IPNetwork | None = None

    @property
    def is_vxlan(self) -> bool:
        """True when peers need neighbour and FDB entries (the vxlan backend)."""
        return self.backend_type == "vxlan"

    @property
    def managed_ifindexes(self) -> frozenset[int]:
        """Devices whose gateway routes into ``network`` we own (stale ones get removed)."""
        idx = {self.dev_index, self.ext_index, *self.direct_routes.values()}
        idx.discard(0)
        return frozenset(idx)


@dataclass(frozen=True, slots=True)
class OwnStack:
    """This node's side of one address family, the part of a :class:`PlanContext` that does not
    depend on the backend: our Network, subnet and public IP (and the underlay, when known).

    Each backend's ``plan_context(own, ...)`` adds what is its own (which device peers go on, the
    VTEP MAC, the lease type it accepts); the daemon and ``pyflannel.inspect`` both call those.
    """

    family: Family
    network: IPNetwork
    subnet: IPNetwork
    public_ip: IPAddress
    underlay: IPNetwork | None = None

    def context(
        self, backend_type: str, *, dev_index: int, ext_index: int, own_mac: str | None = None
    ) -> PlanContext:
        """The plan context of this family for a backend programming peers on ``dev_index``."""
        return PlanContext(
            family=self.family,
            backend_type=backend_type,
            network=self.network,
            own_subnet=self.subnet,
            own_public_ip=self.public_ip,
            dev_index=dev_index,
            ext_index=ext_index,
            own_mac=own_mac,
            underlay=self.underlay,
        )


class Network(Protocol):
    """A configured data path for our lease; programs peers from snapshots and events."""

    @property
    def mtu(self) -> int:
        """The MTU to advertise as ``FLANNEL_MTU``."""
        ...

    @property
    def lease(self) -> Lease:
        """Our own lease, as configured."""
        ...

    @property
    def stats(self) -> BackendStats:
        """This backend's counters (exported on /metrics by the daemon)."""
        ...

    @property
    def peers(self) -> WantedPeers:
        """The one owner of the wanted peer set (and of its quarantine)."""
        ...

    async def apply(self, msg: PeerMessage) -> None:
        """Apply one message of the peer watch: a snapshot replaces the wanted set, changes
        edit it; the kernel follows. Kernel failures are repaired or quarantined, not raised."""
        ...

    async def run(self) -> None:
        """Keep the data path healthy until cancelled (device re-creation, periodic resync)."""
        ...


class Prepared(Protocol):
    """What a backend set up before the lease: a frozen value of the backend's own type."""

    @property
    def attrs(self) -> LeaseAttrs:
        """The lease attrs to advertise (public IPs, BackendType, BackendData)."""
        ...


class Backend(Protocol):
    """A backend type; one instance per daemon."""

    backend_type: str

    async def prepare(
        self, config: NetworkConfig, ext_iface: ExternalInterface, state_dir: Path
    ) -> Prepared:
        """Set up what must exist before the lease (device, MAC); ``.attrs`` are our lease's."""
        ...

    async def configure(self, prepared: Prepared, lease: Lease) -> Network:
        """Finish the data path that ``prepared`` (this backend's ``prepare()`` result) began,
        for our acquired ``lease``, and return the live network."""
        ...


class BackendOptions(TypedDict, total=False):
    """The keyword options of :class:`BackendBase` (``make_backend(type, **options)``)."""

    resync_interval: float
    metrics: Metrics | None
    stats: BackendStats | None


class BackendBase:
    """What the host-gw, vxlan and wireguard backends are built with: how often their network
    re-checks the kernel (default :attr:`default_resync_interval` s), where metrics go (default:
    the process's ``METRICS``) and the counters their networks share (default: new ones)."""

    default_resync_interval: ClassVar[float] = 10.0

    def __init__(self, **options: Unpack[BackendOptions]) -> None:
        self.resync_interval = options.get("resync_interval", self.default_resync_interval)
        metrics = options.get("metrics")
        self.metrics = metrics if metrics is not None else METRICS
        stats = options.get("stats")
        self.stats = stats if stats is not None else BackendStats()
