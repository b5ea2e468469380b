"""Node listings and events → peer messages (flanneld's informer filters)."""

from __future__ import annotations

import ipaddress

from pyflannel.config import parse_network_config
from pyflannel.lease import EventKind
from pyflannel.peer_messages import PeerSnapshot
from pyflannel.subnet.kube.annotations import annotation_keys
from pyflannel.subnet.kube.node import Node
from pyflannel.subnet.kube.watch import NodeEvent, NodeFeed

K = annotation_keys()
CFG = parse_network_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}')


def node(name: str, n: int, ip: str = "", managed: str = "true", **extra: str) -> Node:
    ann = {
        K.kube_managed: managed,
        K.backend_type: "host-gw",
        K.backend_data: "null",
        K.public_ip: ip or f"198.51.100.{n}",
        **extra,
    }
    return Node(name, annotations=ann, pod_cidr=f"10.244.{n}.0/24")


def test_snapshot_skips_own_unmanaged_annotationless_and_malformed() -> None:
    feed = NodeFeed("n1", K, CFG)
    snap = feed.snapshot(
        [
            node("n1", 1),
            node("n2", 2),
            node("n3", 3, managed="false"),
            Node("n4", annotations=None, pod_cidr="10.244.4.0/24"),
            node("n5", 5, ip="nonsense"),
        ],
        42,
    )
    assert isinstance(snap, PeerSnapshot) and snap.revision == 42
    assert [le.subnet for le in snap.leases] == [ipaddress.IPv4Network("10.244.2.0/24")]
    assert [r.node for r in feed.refusals] == ["n5"]


def test_events_add_change_remove() -> None:
    feed = NodeFeed("n1", K, CFG)
    feed.snapshot([node("n2", 2)])
    assert feed.changes([NodeEvent("MODIFIED", node("n2", 2))]) is None  # resync: silent
    added = feed.changes([NodeEvent("ADDED", node("n3", 3))])
    assert added is not None and [e.kind for e in added.events] == [EventKind.ADDED]
    moved = feed.changes([NodeEvent("MODIFIED", node("n3", 3, ip="198.51.100.33"))])
    assert moved is not None
    assert [(e.kind, str(e.lease.attrs.public_ip)) for e in moved.events] == [
        (EventKind.ADDED, "198.51.100.33")
    ]
    gone = feed.changes([NodeEvent("DELETED", node("n3", 3))])
    assert gone is not None and [e.kind for e in gone.events] == [EventKind.REMOVED]
    assert feed.changes([NodeEvent("DELETED", node("n9", 9))]) is None


def test_node_turning_malformed_or_unmanaged_is_removed() -> None:
    feed = NodeFeed("n1", K, CFG)
    feed.snapshot([node("n2", 2), node("n3", 3)])
    bad = feed.changes([NodeEvent("MODIFIED", node("n2", 2, ip="x"))])
    assert bad is not None and [e.kind for e in bad.events] == [EventKind.REMOVED]
    off = feed.changes([NodeEvent("MODIFIED", node("n3", 3, managed=""))])
    assert off is not None and [e.kind for e in off.events] == [EventKind.REMOVED]
    assert feed.peers == {}
