"""The seams of the subnet package: what the daemon needs from a subnet manager, and what the
manager needs from lease storage. :class:`~pyflannel.subnet.etcd.registry.EtcdRegistry` and
:class:`~pyflannel.subnet.manager.EtcdSubnetManager` are the implementations.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, NoReturn, Protocol

from pyflannel.config import NetworkConfig
from pyflannel.lease import Event, Lease, LeaseAttrs

if TYPE_CHECKING:
    import trio

    from pyflannel.subnet.allocation import PreviousSubnets
    from pyflannel.subnet.etcd.leases import CreateResult
    from pyflannel.subnet.etcd.watch import WatchStream

__all__ = ["Registry", "SubnetManager"]


class Registry(Protocol):
    """Lease storage (etcd v3 in flanneld's key layout)."""

    @property
    def prefix(self) -> str:
        """The key prefix, e.g. ``/coreos.com/network``."""
        ...

    async def get_config(self) -> str:
        """The raw network config text; raises ``ConfigNotFound`` when absent."""
        ...

    async def list_leases(self, *, with_ttl: bool = True) -> tuple[list[Lease], int]:
        """Every parsable lease and the revision of the read."""
        ...

    async def get_lease(
        self, subnet: ipaddress.IPv4Network | None, ipv6_subnet: ipaddress.IPv6Network | None
    ) -> tuple[Lease | None, int]:
        """One lease (or ``None``) and the revision of the read."""
        ...

    async def create_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        attrs: LeaseAttrs,
        ttl: int,
        *,
        known_revision: int = 0,
    ) -> CreateResult:
        """Create the key with a fresh TTL only if no key holds either of its subnets.

        ``known_revision``: the revision of the listing the subnets were found free in (keys
        created later are checked by the registry)."""
        ...

    async def put_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        attrs: LeaseAttrs,
        ttl: int | None,
        *,
        if_mod_revision: int | None = None,
    ) -> CreateResult:
        """(Re)write the key; ``ttl=None`` writes a reservation (no etcd lease)."""
        ...

    async def delete_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        *,
        if_mod_revision: int | None = None,
    ) -> bool:
        """Delete the key; True if something was deleted."""
        ...

    def watch_leases(self, start_revision: int) -> AbstractAsyncContextManager[WatchStream]:
        """Watch all lease keys from a revision."""
        ...

    def watch_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        start_revision: int,
    ) -> AbstractAsyncContextManager[WatchStream]:
        """Watch one lease key from a revision."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class SubnetManager(Protocol):
    """What the daemon uses: config, our lease, its upkeep, and the peers' leases."""

    async def get_network_config(self) -> str:
        """The raw ``<prefix>/config`` text (parse it with ``pyflannel.config``)."""
        ...

    async def acquire_lease(
        self,
        config: NetworkConfig,
        attrs: LeaseAttrs,
        previous: PreviousSubnets | None = None,
    ) -> Lease:
        """Get (or re-use) this node's lease; raises ``OutOfSubnets``/``LeaseError``/
        ``RegistryError``."""
        ...

    async def run_renewal(
        self, lease: Lease, *, on_change: Callable[[Lease], None] | None = None
    ) -> NoReturn:
        """Keep the lease alive forever; raises ``LeaseLost`` when another node took it."""
        ...

    async def watch_leases(
        self, own_lease: Lease, send_channel: trio.MemorySendChannel[list[Event]]
    ) -> NoReturn:
        """Send batches of peer events forever (first batch: every current peer)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
