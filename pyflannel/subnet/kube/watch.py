"""Node listings and Node watch events → the typed peer messages. Pure (no I/O).

flanneld's node informer handlers, with the same filters: nodes whose
``<prefix>kube-subnet-manager`` is not ``true`` are skipped (including nodes with no annotations
at all, on which flanneld panics), our own node never appears, and an update is passed on only
when the lease it yields changed (backend type/data, public IPs, subnets): resyncs and podCIDR-only
or unrelated edits are silent. A node that cannot be turned into a lease is refused with one
warning (:class:`Refusal`), like a malformed etcd lease. Unlike etcd's DELETE, a deleted Node
carries its last state, but the feed still removes the lease it last *passed on* for that name,
so a node whose annotations went bad or lost ``kube-subnet-manager=true`` is removed too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pyflannel.config import NetworkConfig
from pyflannel.lease import Event, EventKind, Lease, LeaseDecodeError
from pyflannel.peer_messages import PeerChanges, PeerSnapshot
from pyflannel.subnet.kube.annotations import AnnotationKeys, is_managed, lease_from_node
from pyflannel.subnet.kube.node import Node

__all__ = ["NodeEvent", "NodeFeed", "Refusal"]


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """One watch event: ``kind`` is ``ADDED``, ``MODIFIED`` or ``DELETED``."""

    kind: str
    node: Node


@dataclass(frozen=True, slots=True)
class Refusal:
    """A node that is flannel-managed but whose annotations or podCIDR do not make a lease."""

    node: str
    reason: str


def _same(a: Lease, b: Lease) -> bool:
    return (a.subnet, a.ipv6_subnet, a.attrs) == (b.subnet, b.ipv6_subnet, b.attrs)


class NodeFeed:
    """Turns listings and watch events into PeerSnapshot / PeerChanges for one node.

    Keeps, per node name, the lease it last passed on (a Removed event must name what was
    programmed, even when the deleted node's last state no longer parses). ``refusals`` collects
    the nodes refused since the caller last cleared it, for logging.
    """

    def __init__(self, own_name: str, keys: AnnotationKeys, config: NetworkConfig) -> None:
        self._own = own_name
        self._keys = keys
        self._config = config
        self._sent: dict[str, Lease] = {}
        self.refusals: list[Refusal] = []

    @property
    def peers(self) -> Mapping[str, Lease]:
        """The leases passed on, by node name (read-only view for status output)."""
        return self._sent

    def _lease(self, node: Node) -> Lease | None:
        if node.name == self._own or not is_managed(node, self._keys):
            return None
        try:
            return lease_from_node(node, self._keys, self._config)
        except LeaseDecodeError as exc:
            self.refusals.append(Refusal(node.name, exc.message))
            return None

    def snapshot(self, nodes: Iterable[Node], revision: int = 0) -> PeerSnapshot:
        """A full listing: replaces what was passed on before."""
        self._sent = {}
        for node in nodes:
            lease = self._lease(node)
            if lease is not None:
                self._sent[node.name] = lease
        return PeerSnapshot(tuple(self._sent.values()), revision)

    def changes(self, events: Iterable[NodeEvent], revision: int = 0) -> PeerChanges | None:
        """Watch events as peer changes (None when nothing relevant changed)."""
        out: list[Event] = []
        for ev in events:
            name = ev.node.name
            old = self._sent.get(name)
            new = None if ev.kind == "DELETED" else self._lease(ev.node)
            if new is None:
                if old is not None:
                    del self._sent[name]
                    out.append(Event(EventKind.REMOVED, old))
                continue
            if old is not None and _same(old, new):
                continue
            if old is not None and (old.subnet, old.ipv6_subnet) != (new.subnet, new.ipv6_subnet):
                # A different subnet is a different lease key: remove the old one first.
                out.append(Event(EventKind.REMOVED, old))
            self._sent[name] = new
            out.append(Event(EventKind.ADDED, new))
        return PeerChanges(tuple(out), revision) if out else None
