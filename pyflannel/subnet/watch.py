"""The peer feed: turns what the registry read into the typed messages a data path applies.

Pure (no I/O): the manager feeds it each listing and each watch batch and sends the result on.
It plays the part of flanneld's ``LeaseWatcher``, without keeping a copy of the peer set (the
data path's :class:`~pyflannel.backend.wanted.WantedPeers` is the one owner):

- a listing becomes a :class:`~pyflannel.peer_messages.PeerSnapshot` (the initial one, and every
  re-listing after a compaction or an outage), so a consumer replaces its wanted set instead of
  guessing from a message's position;
- a watch batch becomes :class:`~pyflannel.peer_messages.PeerChanges`; ``Added`` is always passed
  on (a renewed peer re-applies idempotently, like flanneld); ``Removed`` carries the subnets
  only (etcd's DELETE has no value; the owner finds what was programmed by key);
- our own lease never appears (which also avoids flanneld's quirk of a spurious ``Removed`` for
  our own subnet after a second snapshot).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pyflannel.lease import Event, Lease
from pyflannel.peer_messages import PeerChanges, PeerSnapshot

__all__ = ["PeerFeed", "lease_identity"]

LeaseId = tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]


def lease_identity(lease: Lease) -> LeaseId:
    """What identifies a lease: its key, i.e. the IPv4 and IPv6 subnets."""
    return (lease.subnet, lease.ipv6_subnet)


class PeerFeed:
    """Builds peer messages from listings and watch batches, leaving our own lease out."""

    def __init__(self, own: Lease | LeaseId | None = None) -> None:
        self._own: LeaseId | None = lease_identity(own) if isinstance(own, Lease) else own

    def _is_peer(self, lease: Lease) -> bool:
        return self._own is None or lease_identity(lease) != self._own

    def snapshot(self, leases: Iterable[Lease], revision: int = 0) -> PeerSnapshot:
        """A full listing as a snapshot of the peers."""
        return PeerSnapshot(tuple(le for le in leases if self._is_peer(le)), revision)

    def changes(self, events: Iterable[Event], revision: int = 0) -> PeerChanges | None:
        """A watch batch as changes of the peers (None when only our own lease changed)."""
        mine = tuple(ev for ev in events if self._is_peer(ev.lease))
        return PeerChanges(mine, revision) if mine else None
