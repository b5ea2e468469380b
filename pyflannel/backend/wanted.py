"""The one owner of the wanted peer set: which peer leases the kernel should hold, and which of
them are quarantined because the kernel refuses them.

Every data path (vxlan, host-gw, udp) keeps exactly one :class:`WantedPeers`; the leases-known
gauge, the resync and ``pyflannel status`` read it, nothing keeps a second copy. It changes only
through typed messages (:mod:`pyflannel.peer_messages`):

* a :class:`~pyflannel.peer_messages.PeerSnapshot` *replaces* the set, whether or not the kernel
  apply that follows succeeds (a kernel failure only schedules a repair of the difference);
* a :class:`~pyflannel.peer_messages.PeerChanges` edits it.

A lease is *failing* (quarantined) when the kernel refused one of its entries for a reason that
cannot go away by retrying (``ENETUNREACH`` for a host-gw next hop that is not on link, ``EINVAL``
for an impossible entry). It stays wanted, but is not planned until its lease changes, or until
the device or the node's addresses change (:meth:`WantedPeers.release_all`). So one bad peer
never costs the others a retry loop. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from pyflannel.lease import Event, EventKind, Lease

__all__ = ["Failing", "WantedPeers"]


@dataclass(frozen=True, slots=True)
class Failing:
    """Why a wanted lease is not programmed: ``reason`` is a short code (``ENETUNREACH``),
    ``message`` one line naming the lease, what failed and what to do."""

    lease: Lease
    reason: str
    message: str


def _same_peer(a: Lease, b: Lease) -> bool:
    """Same key and the same attributes: a renewal (only the expiration moved)."""
    return a.subnet == b.subnet and a.ipv6_subnet == b.ipv6_subnet and a.attrs == b.attrs


class WantedPeers:
    """The wanted peer leases by key, with the quarantine of failing ones."""

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}
        self._failing: dict[str, Failing] = {}
        self.have_snapshot = False
        # Bumped whenever what should be programmed may have changed (see PeerProgrammer).
        self.generation = 0
        # Called with the failing set whenever it changes (the daemon publishes it for status).
        self.on_failing_change: Callable[[Mapping[str, Failing]], None] | None = None

    def __len__(self) -> int:
        return len(self._leases)

    @property
    def leases(self) -> list[Lease]:
        """Every wanted lease (failing ones included)."""
        return list(self._leases.values())

    @property
    def failing(self) -> Mapping[str, Failing]:
        """The quarantined leases by key."""
        return self._failing

    def programmable(self) -> list[Lease]:
        """The wanted leases that are not quarantined: what the planner should program."""
        if not self._failing:
            return list(self._leases.values())
        return [le for k, le in self._leases.items() if k not in self._failing]

    def replace(self, leases: Iterable[Lease]) -> None:
        """A snapshot: the wanted set becomes exactly ``leases``.

        A quarantine survives only for a lease that is still there unchanged.
        """
        self._leases = {le.key_suffix: le for le in leases}
        self.have_snapshot = True
        self.generation += 1
        stale = [
            k
            for k, f in self._failing.items()
            if k not in self._leases or not _same_peer(self._leases[k], f.lease)
        ]
        if stale:
            for k in stale:
                del self._failing[k]
            self._notify()

    def update(self, events: Sequence[Event]) -> list[Event]:
        """Changes: apply ``events`` in order; return the events the planner must see.

        A renewal of a quarantined lease is dropped (retrying cannot help); a changed or removed
        lease leaves the quarantine and is passed on.
        """
        out: list[Event] = []
        released = False
        for ev in events:
            key = ev.lease.key_suffix
            failing = self._failing.get(key)
            if ev.kind == EventKind.ADDED:
                self._leases[key] = ev.lease
                if failing is not None:
                    if _same_peer(failing.lease, ev.lease):
                        continue
                    del self._failing[key]
                    released = True
            else:
                self._leases.pop(key, None)
                if failing is not None:
                    del self._failing[key]
                    released = True
            out.append(ev)
        if released:
            self._notify()
        return out

    def quarantine(self, failing: Failing) -> bool:
        """Mark a wanted lease as failing; False if it is not wanted (any more) or already is."""
        key = failing.lease.key_suffix
        current = self._leases.get(key)
        if current is None or not _same_peer(current, failing.lease) or key in self._failing:
            return False
        self._failing[key] = failing
        self.generation += 1
        self._notify()
        return True

    def release_all(self) -> list[Lease]:
        """Lift every quarantine (the device or the node changed); returns the released leases."""
        released = [f.lease for f in self._failing.values()]
        if released:
            self._failing.clear()
            self.generation += 1
            self._notify()
        return released

    def touch(self) -> None:
        """Note that what the kernel should hold may have changed without a lease changing
        (a new device context, entries planned or refused): a periodic resync may not skip."""
        self.generation += 1

    def _notify(self) -> None:
        if self.on_failing_change is not None:
            self.on_failing_change(dict(self._failing))
