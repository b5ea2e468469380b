"""The data every backend's :class:`~pyflannel.backend.base.Network` exposes, held in one place.

A network's lease, ``FLANNEL_MTU``, counters and wanted peer set are fixed when
``Backend.configure`` returns it; what differs between backends (how peers reach the data
path, how it is kept healthy) is the subclass's own:
:class:`~pyflannel.backend.programmed.ProgrammedNetwork` (host-gw, vxlan), ``UdpNetwork`` and
``WireguardNetwork``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyflannel.peer_messages import AppliesPeerMessages

if TYPE_CHECKING:
    from pyflannel.backend.wanted import WantedPeers
    from pyflannel.lease import Lease
    from pyflannel.metrics import BackendStats

__all__ = ["NetworkBase"]


class NetworkBase(AppliesPeerMessages):
    """The read-only part of a network: set once by the backend's ``configure()``."""

    def __init__(self, lease: Lease, *, mtu: int, stats: BackendStats, peers: WantedPeers) -> None:
        self._lease = lease
        self._mtu = mtu
        self._stats = stats
        self._peers = peers

    @property
    def lease(self) -> Lease:
        """Our own lease."""
        return self._lease

    @property
    def mtu(self) -> int:
        """``FLANNEL_MTU``, as the backend computed it (see its ``prepare()``)."""
        return self._mtu

    @property
    def stats(self) -> BackendStats:
        """The backend's counters (rejected leases, device re-creations, resyncs)."""
        return self._stats

    @property
    def peers(self) -> WantedPeers:
        """The one owner of the wanted peer set (and of its quarantine)."""
        return self._peers
