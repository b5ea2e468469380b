"""The typed messages from a peer watch to a data path: a full snapshot, or changes.

A watch (etcd today) sends :class:`PeerSnapshot` for its initial listing and for every
re-listing (after a compaction or an outage), and :class:`PeerChanges` for everything it sees in
between. A consumer never infers "this is the full list" from a message's position: a snapshot
*replaces* the wanted peer set, changes *edit* it. ``revision`` is the store revision the message
reflects (etcd's), for logs and ordering checks. Pure data, plus :class:`AppliesPeerMessages`,
the shorthand spellings every consumer offers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pyflannel.lease import Event, Lease

__all__ = ["AppliesPeerMessages", "PeerChanges", "PeerMessage", "PeerSnapshot"]


@dataclass(frozen=True, slots=True)
class PeerSnapshot:
    """Every peer lease that exists at ``revision`` (our own excluded)."""

    leases: tuple[Lease, ...]
    revision: int = 0


@dataclass(frozen=True, slots=True)
class PeerChanges:
    """Lease events observed up to ``revision``, in order (Added replaces, Removed deletes)."""

    events: tuple[Event, ...]
    revision: int = 0


PeerMessage = PeerSnapshot | PeerChanges


class AppliesPeerMessages:
    """Base of a consumer of peer messages (a data path, the peer programmer): it implements
    :meth:`apply`, and gets the shorthands tests and tools use."""

    async def apply(self, msg: PeerMessage) -> None:
        """Apply one message: a snapshot replaces the wanted peer set, changes edit it."""
        raise NotImplementedError

    async def apply_snapshot(self, leases: Iterable[Lease]) -> None:
        """Shorthand for ``apply(PeerSnapshot(leases))`` (our own lease in it is skipped)."""
        await self.apply(PeerSnapshot(tuple(leases)))

    async def apply_events(self, events: Iterable[Event]) -> None:
        """Shorthand for ``apply(PeerChanges(events))``."""
        await self.apply(PeerChanges(tuple(events)))
