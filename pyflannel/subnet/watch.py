"""The peer-lease cache: turns etcd snapshots and changes into the events a backend applies.

Pure (no I/O): the manager feeds it what the registry read and sends the returned batches on.
It plays the part of flanneld's ``LeaseWatcher``:

- our own lease is never cached and never emitted (which also avoids flanneld's quirk of a
  spurious ``Removed`` for our own subnet after a second snapshot);
- ``Added`` replaces the cached lease and is always re-emitted (a renewed peer re-applies
  idempotently, like flanneld);
- ``Removed`` carries the *cached* lease, with its attrs (etcd's DELETE has none);
- :meth:`LeaseCache.reset` emits the difference between the cache and a full snapshot: removals
  first, then additions and leases whose attrs changed (flanneld only emits new subnets, so a
  VTEP MAC change that happened during a compaction gap would be missed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import structlog

from pyflannel.lease import Event, EventKind, Lease

__all__ = ["LeaseCache", "lease_identity"]

log = structlog.get_logger(__name__)

LeaseId = tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]


def lease_identity(lease: Lease) -> LeaseId:
    """What identifies a lease: its key, i.e. the IPv4 and IPv6 subnets."""
    return (lease.subnet, lease.ipv6_subnet)


class LeaseCache:
    """The peers' leases as last seen, minus our own."""

    def __init__(self, own: Lease | LeaseId | None = None) -> None:
        self._own: LeaseId | None = lease_identity(own) if isinstance(own, Lease) else own
        self._leases: dict[LeaseId, Lease] = {}

    @property
    def leases(self) -> list[Lease]:
        """The cached peer leases, in insertion order."""
        return list(self._leases.values())

    def __len__(self) -> int:
        return len(self._leases)

    def _is_own(self, ident: LeaseId) -> bool:
        return self._own is not None and ident == self._own

    def apply(self, changes: Iterable[Event]) -> list[Event]:
        """Apply etcd changes in order; return the events to hand to the backend.

        A ``REMOVED`` change only needs the subnets; the emitted event carries the cached
        lease. A removal of a lease we never saw is passed on as it came (attr-less), as
        flanneld does; backends that need attrs ignore it.
        """
        out: list[Event] = []
        for change in changes:
            ident = lease_identity(change.lease)
            if self._is_own(ident):
                continue
            if change.kind is EventKind.ADDED:
                self._leases[ident] = change.lease
                out.append(change)
                continue
            cached = self._leases.pop(ident, None)
            if cached is None:
                log.warning(
                    "lease removed that was never seen; passing it on without attrs",
                    subnet=str(change.lease.subnet),
                    ipv6_subnet=str(change.lease.ipv6_subnet),
                )
                out.append(change)
            else:
                out.append(Event(EventKind.REMOVED, cached))
        return out

    def reset(self, snapshot: Iterable[Lease]) -> list[Event]:
        """Replace the cache with a full snapshot; return the difference as events."""
        fresh: dict[LeaseId, Lease] = {}
        for lease in snapshot:
            ident = lease_identity(lease)
            if not self._is_own(ident):
                fresh[ident] = lease
        removed = [
            Event(EventKind.REMOVED, old)
            for ident, old in self._leases.items()
            if ident not in fresh
        ]
        added = [
            Event(EventKind.ADDED, new)
            for ident, new in fresh.items()
            if (old := self._leases.get(ident)) is None or old.attrs != new.attrs
        ]
        self._leases = fresh
        return removed + added
