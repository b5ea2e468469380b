"""A data path whose peers a :class:`~pyflannel.backend.peers.PeerProgrammer` programs (host-gw,
vxlan): the wanted peers, the counters and :meth:`ProgrammedNetwork.apply` are the programmer's,
the periodic resync is its ``resync_loop``. What a backend adds (devices) is its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyflannel.backend.network_base import NetworkBase

if TYPE_CHECKING:
    from pyflannel.backend.peers import PeerProgrammer
    from pyflannel.lease import Lease
    from pyflannel.peer_messages import PeerMessage

__all__ = ["ProgrammedNetwork"]


class ProgrammedNetwork(NetworkBase):
    """The shared part of a :class:`~pyflannel.backend.base.Network` built on a programmer."""

    def __init__(
        self, lease: Lease, mtu: int, programmer: PeerProgrammer, resync_interval: float
    ) -> None:
        super().__init__(lease, mtu=mtu, stats=programmer.stats, peers=programmer.peers)
        self._resync_interval = resync_interval
        self.programmer = programmer

    async def apply(self, msg: PeerMessage) -> None:
        """Apply one peer message; the kernel entries (routes, neighbours, FDB) follow."""
        await self.programmer.apply(msg)

    async def resync(self) -> None:
        """Re-check (reconcile) the peers every resync interval until cancelled."""
        await self.programmer.resync_loop(self._resync_interval)
