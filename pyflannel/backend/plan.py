"""The pure planner: peer leases (+ what the kernel holds) → netlink operations.

Nothing here does I/O; every function maps plain data to a list of :mod:`pyflannel.netlink.ops`
operations that the executor applies in list order.

Per peer (one address family), the entries are:

* vxlan: neighbour ``<subnet network address> lladdr <VtepMAC> dev flannel.N``, FDB
  ``<VtepMAC> dst <PublicIP> dev flannel.N``, route ``<subnet> via <subnet network address> dev
  flannel.N onlink`` — added in that order so the kernel never resolves the gateway through a
  missing neighbour (flanneld's order);
* vxlan with DirectRouting, peer on our L2 (decided by the caller): only ``<subnet> via
  <PublicIP>`` on the interface that reaches it;
* host-gw: ``<subnet> via <PublicIP> dev <ext>``.

Removal goes the other way (route, FDB, neighbour). flanneld removes neighbour, then FDB, then
route; we drop the route first so that no packet is ever routed towards a gateway whose
neighbour entry is already gone (which would make the kernel ARP on the vxlan device).

Entries are identified by a *key* — a route by its destination, a neighbour by (IP, device), an
FDB entry by (MAC, device) — because that is what the kernel's replace operations match on. Two
leases may want the same key (a node that came back with a new subnet keeps its VTEP MAC, so its
old and new lease share an FDB entry until the old lease expires). The state therefore keeps,
per key, every owner in write order: the newest writer's entry is programmed, and an entry is
deleted only when its last owner goes away (flanneld deletes the shared FDB entry and cuts the
node off until its next renewal).

Two *nodes* must never share a VTEP MAC: the FDB entry ``<MAC> dst <PublicIP>`` would follow the
newest writer and take the other node's traffic (anyone who can write a lease could hijack a
peer that way). When leases with different PublicIPs claim one MAC, the one whose key etcd
created first keeps it; the others are refused (one warning each) and *held* in the state, and
programmed as soon as the conflict goes away (:func:`mac_losers`). Same MAC and same PublicIP
is one node's old and new lease, and is fine.

Only entries that belong to us are ever deleted during reconciliation: gateway routes into the
Network on the vxlan device, the external interface or a DirectRouting interface (never routes
overlapping our own subnet, never connected routes), and neighbour/FDB entries on the vxlan
device (never the all-zero, multicast or our own MAC).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import NamedTuple

from pyflannel.backend.base import PlanContext
from pyflannel.backend.validate import Peer, Rejection, validate_peer
from pyflannel.lease import Event, EventKind, Lease
from pyflannel.netlink.ops import (
    Delete,
    Entry,
    FdbEntry,
    IPAddress,
    IPNetwork,
    NeighEntry,
    Op,
    Replace,
    RouteEntry,
)

__all__ = [
    "Entry",
    "MacClaim",
    "Plan",
    "ProgrammedPeer",
    "ProgrammedState",
    "entry_key",
    "mac_losers",
    "peer_entries",
    "peer_id",
    "plan_events",
    "plan_peer_add",
    "plan_peer_remove",
    "plan_reconcile",
    "plan_reprogram",
]

EntryKey = tuple[int, int, int | str, int]
"""(kind, IP version, address as int / MAC, prefix length / ifindex): cheap to hash."""
PeerId = tuple[int, int, int]
"""(IP version, network address as int, prefix length) of a peer subnet."""
Owners = tuple[tuple[PeerId, Entry], ...]
"""The owners of one entry key, (peer, that peer's entry) in write order: the last one is what
the kernel holds. A tuple, not a dict: nearly every key has one owner, and at 10k peers (30k
keys) a one-item dict cost ~120 bytes more than a tuple of one pair, 3.6 MB in all."""


@dataclass(frozen=True, slots=True)
class ProgrammedPeer:
    """A peer as we programmed it: its lease and its entries, in add order."""

    lease: Lease
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class ProgrammedState:
    """What the planner believes is programmed. Treat as immutable; planners return new ones.

    ``owners`` maps each entry key to its owners ((peer id, that owner's entry) pairs) in write
    order; the last one is what the kernel holds.
    """

    peers: Mapping[IPNetwork, ProgrammedPeer] = field(default_factory=dict)
    owners: Mapping[EntryKey, Owners] = field(default_factory=dict)
    # Valid leases refused because an earlier-created lease of another node has their VTEP MAC.
    held: Mapping[IPNetwork, Lease] = field(default_factory=dict)

    def programmed_entries(self) -> dict[EntryKey, Entry]:
        """Key → the entry that should be in the kernel now."""
        return {k: v[-1][1] for k, v in self.owners.items() if v}


class Plan(NamedTuple):
    """A planner's answer: operations in order, the state after them, and refused leases."""

    ops: list[Op]
    state: ProgrammedState
    rejected: list[tuple[Lease, Rejection]]


@dataclass(frozen=True, slots=True)
class MacClaim:
    """One lease's claim on a VTEP MAC."""

    subnet: IPNetwork
    public_ip: IPAddress
    create_revision: int


def _claim_order(c: MacClaim) -> tuple[int, int, int, int]:
    # etcd create revisions are unique per key; the subnet only breaks ties of unknown (0) ones.
    return (c.create_revision, c.subnet.version, int(c.subnet.network_address), c.subnet.prefixlen)


def mac_losers(claims: Iterable[MacClaim]) -> dict[IPNetwork, MacClaim]:
    """Claims on one MAC → {subnet of each refused claim: the claim that keeps the MAC}.

    The earliest-created claim wins; claims with the winner's PublicIP (the same node) are not
    refused. Depends only on the set of claims, not their order.
    """
    claims = list(claims)
    if len(claims) < 2:
        return {}
    winner = min(claims, key=_claim_order)
    return {c.subnet: winner for c in claims if c.public_ip != winner.public_ip}


def _fdb_mac(peer: Peer, ctx: PlanContext) -> str | None:
    """The MAC of the FDB entry this peer needs (none for host-gw and DirectRouting peers)."""
    if peer.vtep_mac is None or peer.public_ip in ctx.direct_routes:
        return None
    return peer.vtep_mac


def _claim(peer: Peer) -> MacClaim:
    return MacClaim(peer.subnet, peer.public_ip, peer.lease.create_revision)


def _refusal(peer: Peer, winner: MacClaim) -> Rejection:
    return Rejection(
        f"lease {peer.lease.key_suffix}: VtepMAC {peer.vtep_mac} is already used by the"
        f" lease of {winner.subnet} (PublicIP {winner.public_ip}), created earlier; refusing"
        " this one until that lease goes away — give each node its own VTEP MAC"
    )


def entry_key(entry: Entry) -> EntryKey:
    """The identity the kernel's replace uses for ``entry``."""
    if isinstance(entry, RouteEntry):
        dst = entry.dst
        return (0, dst.version, int(dst.network_address), dst.prefixlen)
    if isinstance(entry, NeighEntry):
        return (1, entry.ip.version, int(entry.ip), entry.ifindex)
    return (2, 0, entry.mac, entry.ifindex)


def peer_id(subnet: IPNetwork) -> PeerId:
    """The owner id of a peer subnet in :attr:`ProgrammedState.owners`."""
    return (subnet.version, int(subnet.network_address), subnet.prefixlen)


def peer_entries(peer: Peer, ctx: PlanContext) -> tuple[Entry, ...]:
    """The entries for a validated peer, in add order (neighbour, FDB, route)."""
    if not ctx.is_vxlan:
        return (RouteEntry(dst=peer.subnet, gw=peer.public_ip, ifindex=ctx.ext_index),)
    direct_oif = ctx.direct_routes.get(peer.public_ip)
    if direct_oif is not None:
        return (RouteEntry(dst=peer.subnet, gw=peer.public_ip, ifindex=direct_oif),)
    assert peer.vtep_mac is not None  # validate_peer guarantees it for vxlan
    gw = peer.subnet.network_address
    return (
        NeighEntry(ip=gw, mac=peer.vtep_mac, ifindex=ctx.dev_index),
        FdbEntry(mac=peer.vtep_mac, dst=peer.public_ip, ifindex=ctx.dev_index),
        RouteEntry(dst=peer.subnet, gw=gw, ifindex=ctx.dev_index, onlink=True),
    )


def plan_peer_add(lease: Lease, ctx: PlanContext) -> list[Op]:
    """Operations that program one peer (empty if the lease is rejected)."""
    peer = validate_peer(lease, ctx)
    if isinstance(peer, Rejection):
        return []
    return [Replace(e) for e in peer_entries(peer, ctx)]


def plan_peer_remove(lease: Lease, ctx: PlanContext) -> list[Op]:
    """Operations that unprogram one peer computed from its lease (route, FDB, neighbour).

    Prefer :func:`plan_events`, which removes what was actually programmed.
    """
    peer = validate_peer(lease, ctx)
    if isinstance(peer, Rejection):
        return []
    return [Delete(e) for e in reversed(peer_entries(peer, ctx))]


def plan_events(
    events: Iterable[Event], state: ProgrammedState, ctx: PlanContext, *, in_place: bool = False
) -> Plan:
    """Apply a batch of watch events to ``state``.

    A re-Added lease whose entries did not change costs nothing (renewals re-emit Added); one
    whose MAC or public IP changed replaces what changed and deletes what it no longer needs; a
    lease that turned invalid is unprogrammed; a Removed event for a subnet we never programmed
    is a no-op.

    ``in_place=True`` edits ``state``'s mappings instead of copying them, and returns a state
    sharing them: for a caller that replaces its state with the result anyway. Copying costs
    O(peers) per batch (~3 ms at 10k peers), which dominated the latency of a single event.
    """
    w = _Writer(state, in_place=in_place)
    rejected: list[tuple[Lease, Rejection]] = []
    held_before = dict(state.held)  # small: only leases refused for a duplicate MAC
    touched: set[str] = set()  # VTEP MACs whose claims changed in this batch
    pending: dict[IPNetwork, tuple[str, Lease]] = {}  # vxlan peers, decided per MAC below
    for ev in events:
        subnet = ev.lease.subnet_of(ctx.family)
        if ev.kind == EventKind.REMOVED:
            if subnet is not None:
                pending.pop(subnet, None)
                touched.update(w.forget(subnet, ctx))
            continue
        peer = validate_peer(ev.lease, ctx)
        if isinstance(peer, Rejection):
            rejected.append((ev.lease, peer))
            if subnet is not None:  # a programmed peer whose lease turned bad: unprogram it
                pending.pop(subnet, None)
                touched.update(w.forget(subnet, ctx))
            continue
        mac = _fdb_mac(peer, ctx)
        if mac is not None:
            touched.update(w.programmed_macs(peer.subnet))  # the MAC may have changed
            touched.add(mac)
            pending[peer.subnet] = (mac, ev.lease)
            continue
        w.set_peer(peer.subnet, ProgrammedPeer(ev.lease, peer_entries(peer, ctx)))
    by_mac: dict[str, list[IPNetwork]] = {}
    for subnet, (mac, _) in pending.items():
        by_mac.setdefault(mac, []).append(subnet)
    for mac in sorted(touched):
        new = {s: pending[s][1] for s in by_mac.get(mac, ())}
        _settle_mac(w, mac, new, pending.keys(), ctx, held_before, rejected)
    return Plan(w.ops(), w.state(), rejected)


def _settle_mac(
    w: _Writer,
    mac: str,
    new: Mapping[IPNetwork, Lease],
    replaced: Collection[IPNetwork],
    ctx: PlanContext,
    held_before: Mapping[IPNetwork, Lease],
    rejected: list[tuple[Lease, Rejection]],
) -> None:
    """Program the claims on ``mac`` (programmed, held, ``new``) that win; hold the others.

    ``replaced``: subnets with a new lease in this batch (whatever its MAC); their older
    programmed or held lease no longer claims anything.
    """
    peers: list[Peer] = []
    for lease in w.claims(mac, new, replaced, ctx):
        peer = validate_peer(lease, ctx)
        if isinstance(peer, Peer) and _fdb_mac(peer, ctx) == mac:
            peers.append(peer)
    losers = mac_losers(_claim(p) for p in peers)
    for peer in peers:
        winner = losers.get(peer.subnet)
        if winner is None:
            w.release_hold(peer.subnet)
            w.set_peer(peer.subnet, ProgrammedPeer(peer.lease, peer_entries(peer, ctx)))
            continue
        w.remove_peer(peer.subnet)
        refused_before = held_before.get(peer.subnet)
        w.hold(peer.subnet, peer.lease)
        if refused_before is None or refused_before.attrs != peer.lease.attrs:
            rejected.append((peer.lease, _refusal(peer, winner)))  # once, not every renewal


def plan_reconcile(
    wanted_leases: Iterable[Lease],
    kernel_routes: Iterable[RouteEntry],
    kernel_neighs: Iterable[NeighEntry],
    kernel_fdb: Iterable[FdbEntry],
    ctx: PlanContext,
) -> Plan:
    """Make the kernel hold exactly the entries of ``wanted_leases``.

    Missing or different entries are replaced, correct ones are left alone (no churn), and
    entries of ours that no leased peer wants are deleted (flannel #2554). ``kernel_*`` are dumps
    of the vxlan device, the external interface and any DirectRouting interface (main table);
    entries outside what we own are ignored. Leases that want the same key are ordered by
    expiration (reservations first), then subnet, and the last one wins.
    """
    rejected: list[tuple[Lease, Rejection]] = []
    valid: list[Peer] = []
    by_mac: dict[str, list[Peer]] = {}
    for lease in wanted_leases:
        peer = validate_peer(lease, ctx)
        if isinstance(peer, Rejection):
            rejected.append((lease, peer))
            continue
        valid.append(peer)
        mac = _fdb_mac(peer, ctx)
        if mac is not None:
            by_mac.setdefault(mac, []).append(peer)
    w = _Writer(ProgrammedState())
    peers: list[tuple[Peer, tuple[Entry, ...]]] = []
    for peer in valid:
        mac = _fdb_mac(peer, ctx)
        group = by_mac.get(mac) if mac is not None else None
        winner = mac_losers(map(_claim, group)).get(peer.subnet) if group else None
        if winner is not None:
            rejected.append((peer.lease, _refusal(peer, winner)))
            w.hold(peer.subnet, peer.lease)
        else:
            peers.append((peer, peer_entries(peer, ctx)))
    peers.sort(key=lambda pe: _precedence(pe[0]))
    for peer, entries in peers:
        w.set_peer(peer.subnet, ProgrammedPeer(peer.lease, entries), emit=False)
    state = w.state()
    wanted = state.programmed_entries()

    # One pass over the dumps, without indexing them: at 10k peers a key -> [entries] index of
    # the 30k kernel entries was ~6 MB more at the peak of every full reconcile. ``missing``
    # ends as the wanted keys no kernel entry matched; ``wrong`` keeps, per wanted key, the
    # kernel entries that differ from what we want (rare), in dump order.
    missing = dict(wanted)
    wrong: dict[EntryKey, list[Entry]] = {}
    dels: list[Entry] = []
    dumped: Iterable[Entry] = itertools.chain(kernel_routes, kernel_neighs, kernel_fdb)
    for e in dumped:
        key = entry_key(e)
        want = wanted.get(key)
        if want is None:
            if _is_ours(e, ctx):
                dels.append(e)
        elif _same(want, e):
            missing.pop(key, None)
        else:
            wrong.setdefault(key, []).append(e)
    adds: list[Entry] = list(missing.values())
    for key, have in wrong.items():
        if key in missing:
            # A replace overwrites one kernel entry with this key; the others (several FDB
            # remotes for one MAC, several routes to one dst) must go.
            have = have[1:]
        dels.extend(e for e in have if _is_ours(e, ctx))
    ops: list[Op] = [Replace(e) for e in sorted(adds, key=_add_rank)]
    ops += [Delete(e) for e in sorted(dels, key=_del_rank)]
    return Plan(ops, state, rejected)


def plan_reprogram(state: ProgrammedState) -> list[Op]:
    """Replace every programmed entry (after the device was re-created and lost them all)."""
    return [Replace(e) for e in sorted(state.programmed_entries().values(), key=_add_rank)]


# --- internals -------------------------------------------------------------------------------


def _subnet_of(pid: PeerId) -> IPNetwork:
    version, address, prefixlen = pid
    cls = IPv4Network if version == 4 else IPv6Network
    return cls((address, prefixlen))


def _held_mac(lease: Lease, ctx: PlanContext) -> str | None:
    peer = validate_peer(lease, ctx)
    return _fdb_mac(peer, ctx) if isinstance(peer, Peer) else None


def _precedence(peer: Peer) -> tuple[float, int, int]:
    exp = peer.lease.expiration
    return (
        float("-inf") if exp is None else exp,
        int(peer.subnet.network_address),
        peer.subnet.prefixlen,
    )


def _is_ours(entry: Entry, ctx: PlanContext) -> bool:
    """May reconciliation delete this kernel entry when no peer wants it?"""
    if isinstance(entry, RouteEntry):
        dst = entry.dst
        return (
            entry.gw is not None
            and entry.ifindex in ctx.managed_ifindexes
            and dst.version == ctx.network.version
            and dst.prefixlen > 0
            and dst.subnet_of(ctx.network)  # type: ignore[arg-type]
            and not dst.overlaps(ctx.own_subnet)
        )
    if not ctx.is_vxlan or entry.ifindex != ctx.dev_index:
        return False
    if isinstance(entry, NeighEntry):
        return (
            entry.ip.version == ctx.network.version
            and entry.ip in ctx.network
            and entry.ip not in ctx.own_subnet
        )
    mac = entry.mac.lower()
    own = (ctx.own_mac or "").lower()
    return mac != "00:00:00:00:00:00" and not int(mac[:2], 16) & 0x01 and mac != own


def _same(want: Entry, have: Entry) -> bool:
    """Equal entries, given equal keys (cheaper than comparing the whole dataclasses)."""
    if isinstance(want, RouteEntry):
        return (
            isinstance(have, RouteEntry)
            and have.gw == want.gw
            and have.ifindex == want.ifindex
            and have.onlink == want.onlink
        )
    if isinstance(want, NeighEntry):
        return isinstance(have, NeighEntry) and have.mac == want.mac
    return isinstance(have, FdbEntry) and have.dst == want.dst


_ADD_ORDER = {NeighEntry: 0, FdbEntry: 1, RouteEntry: 2}


def _add_rank(e: Entry) -> int:
    return _ADD_ORDER[type(e)]


def _del_rank(e: Entry) -> int:
    return 2 - _ADD_ORDER[type(e)]


class _Writer:
    """Copy-on-write edits of a ProgrammedState that record the kernel operations they imply."""

    def __init__(self, state: ProgrammedState, *, in_place: bool = False) -> None:
        self._peers: dict[IPNetwork, ProgrammedPeer]
        self._owners: dict[EntryKey, Owners]
        self._held: dict[IPNetwork, Lease]
        if (
            in_place
            and isinstance(state.peers, dict)
            and isinstance(state.owners, dict)
            and isinstance(state.held, dict)
        ):
            self._peers, self._owners, self._held = state.peers, state.owners, state.held
        else:
            self._peers, self._owners = dict(state.peers), dict(state.owners)
            self._held = dict(state.held)
        # Pending kernel writes, one per key, the latest last (dicts keep insertion order).
        self._adds: dict[EntryKey, Entry] = {}
        self._dels: dict[EntryKey, Entry] = {}

    def state(self) -> ProgrammedState:
        return ProgrammedState(self._peers, self._owners, self._held)

    def hold(self, subnet: IPNetwork, lease: Lease) -> None:
        self._held[subnet] = lease

    def release_hold(self, subnet: IPNetwork) -> None:
        self._held.pop(subnet, None)

    def programmed_macs(self, subnet: IPNetwork) -> set[str]:
        """The VTEP MACs of ``subnet``'s programmed FDB entries."""
        old = self._peers.get(subnet)
        return set() if old is None else {e.mac for e in old.entries if isinstance(e, FdbEntry)}

    def forget(self, subnet: IPNetwork, ctx: PlanContext) -> set[str]:
        """Unprogram and unhold ``subnet``; the VTEP MACs it claimed (to settle again)."""
        macs = self.programmed_macs(subnet)
        self.remove_peer(subnet)
        held = self._held.pop(subnet, None)
        if held is not None:
            peer = validate_peer(held, ctx)
            mac = _fdb_mac(peer, ctx) if isinstance(peer, Peer) else None
            if mac is not None:
                macs.add(mac)
        return macs

    def claims(
        self,
        mac: str,
        new: Mapping[IPNetwork, Lease],
        replaced: Collection[IPNetwork],
        ctx: PlanContext,
    ) -> list[Lease]:
        """Leases claiming ``mac``: the programmed owners of its FDB entry and the held ones,
        unless ``replaced``, and the ``new`` ones (which claim ``mac``)."""
        leases: dict[IPNetwork, Lease] = dict(new)
        for pid, _ in self._owners.get((2, 0, mac, ctx.dev_index), ()):
            subnet = _subnet_of(pid)
            programmed = self._peers.get(subnet)
            if programmed is not None and subnet not in replaced:
                leases[subnet] = programmed.lease
        for subnet, lease in self._held.items():
            if subnet not in replaced and _held_mac(lease, ctx) == mac:
                leases[subnet] = lease
        return list(leases.values())

    def ops(self) -> list[Op]:
        # Every replace (neighbour, FDB, route), then every delete (route, FDB, neighbour). A
        # key both written and then released in this batch is replaced, then deleted: the
        # delete must name what the kernel will hold by then.
        ops: list[Op] = [Replace(e) for e in sorted(self._adds.values(), key=_add_rank)]
        ops += [Delete(e) for e in sorted(self._dels.values(), key=_del_rank)]
        return ops

    def set_peer(self, subnet: IPNetwork, new: ProgrammedPeer, *, emit: bool = True) -> None:
        old = self._peers.get(subnet)
        if old is not None and old.entries == new.entries:
            self._peers[subnet] = new  # fresher lease (expiration), same data path
            return
        self._peers[subnet] = new
        pid = peer_id(subnet)
        new_keys = [entry_key(e) for e in new.entries]
        for key, e in zip(new_keys, new.entries, strict=True):
            self._write(key, pid, e, emit)
        if old is not None:
            for e in reversed(old.entries):
                key = entry_key(e)
                if key not in new_keys:
                    self._release(key, pid, emit)

    def remove_peer(self, subnet: IPNetwork) -> None:
        old = self._peers.pop(subnet, None)
        if old is None:
            return
        pid = peer_id(subnet)
        for e in reversed(old.entries):
            self._release(entry_key(e), pid, True)

    def _write(self, key: EntryKey, pid: PeerId, e: Entry, emit: bool) -> None:
        prev = self._owners.get(key)
        if prev is None:
            current = None
            self._owners[key] = ((pid, e),)
        else:
            current = prev[-1][1]
            self._owners[key] = (*(o for o in prev if o[0] != pid), (pid, e))
        if emit and current != e:
            # A delete of this key queued earlier in the batch would run after the replace
            # (deletes go last) and undo it.
            self._dels.pop(key, None)
            self._adds.pop(key, None)
            self._adds[key] = e

    def _release(self, key: EntryKey, pid: PeerId, emit: bool) -> None:
        prev = self._owners.get(key)
        if prev is None or all(o[0] != pid for o in prev):
            return
        current = prev[-1][1]
        owners = tuple(o for o in prev if o[0] != pid)
        if owners:
            self._owners[key] = owners
            successor = owners[-1][1]
            if emit and successor != current:
                self._adds.pop(key, None)
                self._adds[key] = successor
        else:
            del self._owners[key]
            if emit:
                self._dels[key] = current
