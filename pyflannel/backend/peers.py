"""Programs peers into the kernel: the I/O half shared by the vxlan and host-gw networks.

The path of a change: a typed message (:mod:`pyflannel.peer_messages`) edits the one owner of
the wanted peer set (:class:`~pyflannel.backend.wanted.WantedPeers`), then the kernel is brought
towards it — a snapshot by a reconcile (dumps, :func:`~pyflannel.backend.plan.plan_reconcile`),
changes incrementally (:func:`~pyflannel.backend.plan.plan_events`) — and the ops are applied by
the batched executor. Every netlink job (dumps, planning, applying, ``ip route get``) runs on the
programmer's own :class:`~pyflannel.netlink.worker.NetlinkWorker` thread; the trio loop only
awaits it. One trio lock serialises snapshot, changes and repairs.

Failures never change what is wanted. A kernel failure is classified:

* *permanent* (``ENETUNREACH``, ``EINVAL``, ...: retrying cannot help until the lease, the device
  or the node's addresses change): the lease is quarantined with one log line saying what to do,
  its partial entries are removed, and nothing retries it — other peers are not delayed;
* *transient* (``EBUSY``, a dump interrupted, a socket timeout, ...): the programmer is marked
  dirty and :meth:`PeerProgrammer.resync_loop` repairs the difference by a reconcile after a
  backoff (:mod:`pyflannel.retry`: 1 s doubling to 30 s, with jitter; reset on success), logging
  the first failure, every 30th, and the recovery.
"""

from __future__ import annotations

import errno as errno_mod
import ipaddress
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

import structlog
import trio

from pyflannel.backend.base import BackendStats, Family, PlanContext
from pyflannel.backend.kernel import PeerKernel, direct_oif, read_kernel
from pyflannel.backend.plan import (
    Plan,
    ProgrammedState,
    entry_key,
    plan_events,
    plan_reconcile,
)
from pyflannel.backend.rejections import RejectionLog
from pyflannel.backend.wanted import Failing, WantedPeers
from pyflannel.errors import NetlinkError
from pyflannel.lease import Event, EventKind, Lease
from pyflannel.metrics import METRICS, Metrics
from pyflannel.netlink import consts as nlc
from pyflannel.netlink.addresses import IPInterface
from pyflannel.netlink.changes import ChangeMonitor, KernelChanges
from pyflannel.netlink.executor import OpFailure
from pyflannel.netlink.ops import IPAddress, Op, Replace
from pyflannel.peer_messages import AppliesPeerMessages, PeerMessage, PeerSnapshot
from pyflannel.retry import Backoff, FailureLog

__all__ = ["PERMANENT_ERRNOS", "KernelWorker", "PeerProgrammer", "is_permanent"]

log = structlog.get_logger(__name__)

_PROGRESS_CHUNK = 4096
_MAX_FAILURE_LOGS = 20
REPAIR_BACKOFF_MIN = 1.0
REPAIR_BACKOFF_MAX = 30.0
# At most this many periodic resyncs in a row are skipped as unchanged (see resync_loop).
_FULL_RESYNC_EVERY = 30

PERMANENT_ERRNOS = frozenset(
    {
        errno_mod.ENETUNREACH,  # next hop not on any connected network (host-gw across L2)
        errno_mod.EHOSTUNREACH,
        errno_mod.EINVAL,  # an entry the kernel can never accept
        errno_mod.ERANGE,
        errno_mod.EAFNOSUPPORT,
        errno_mod.EOPNOTSUPP,
    }
)
"""Errors that retrying the same op cannot cure; everything else counts as transient."""


T = TypeVar("T")


class ChangeSource(Protocol):
    """Kernel change notifications (:class:`~pyflannel.netlink.changes.ChangeMonitor`)."""

    def drain(self, neigh_ifindexes: Collection[int]) -> KernelChanges:
        """What changed since the last call."""
        ...

    def close(self) -> None:
        """Stop listening."""
        ...


class KernelWorker(Protocol):
    """Runs ``job(kernel, *args)`` off the trio loop (see :mod:`pyflannel.netlink.worker`)."""

    async def run(self, job: Callable[..., T], *args: object) -> T:
        """The job's result."""
        ...


def is_permanent(failure: OpFailure) -> bool:
    """True when ``failure`` cannot succeed until the lease, the device or the node changes."""
    return not failure.encodable or failure.errno in PERMANENT_ERRNOS


@dataclass
class _Family:
    ctx: PlanContext
    state: ProgrammedState = field(default_factory=ProgrammedState)
    # DirectRouting: peer public IP -> interface reaching it directly (None: not on our L2)
    direct: dict[IPAddress, int | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one kernel job did: ops applied, and failures split by kind."""

    ops: int = 0
    transient: int = 0
    quarantined: int = 0


class PeerProgrammer(AppliesPeerMessages):
    """Keeps the kernel's peer entries equal to the wanted peer set it owns."""

    def __init__(
        self,
        worker: KernelWorker,
        contexts: Sequence[PlanContext],
        *,
        direct_routing: bool = False,
        metrics: Metrics | None = None,
        stats: BackendStats | None = None,
        monitor: Callable[[], ChangeSource] = ChangeMonitor,
    ) -> None:
        """``worker`` runs the kernel jobs; ``monitor`` opens the change notifications."""
        self._worker = worker
        self._monitor_factory = monitor
        self._fams = {ctx.family: _Family(ctx) for ctx in contexts}
        self._direct_routing = direct_routing
        self.peers = WantedPeers()
        self._lock = trio.Lock()
        # resync_loop's inputs: a repair was requested (device re-created), or the kernel is
        # known to differ from the wanted set (a transient failure).
        self._requested = False
        self._dirty = False
        self._signal = trio.Event()
        # The node's addresses when the current quarantines were decided (see _settle).
        self._node_addresses: frozenset[tuple[int, IPInterface]] | None = None
        # A periodic resync is skipped while the wanted set's generation equals the one of the
        # last reconcile that found the kernel right and the kernel reported no change.
        self._clean_generation: int | None = None
        self.metrics = metrics if metrics is not None else METRICS
        self.stats = stats if stats is not None else BackendStats()
        self._rejections = RejectionLog(self.stats)

    # --- read-only views -----------------------------------------------------------------

    @property
    def leases(self) -> list[Lease]:
        """The peer leases currently wanted (read from the one owner)."""
        return self.peers.leases

    @property
    def dirty(self) -> bool:
        """True while the kernel is known to miss something a repair will fix."""
        return self._dirty

    def context(self, family: Family) -> PlanContext:
        """The planning context of one family."""
        return self._fams[family].ctx

    def programmed(self, family: Family) -> ProgrammedState:
        """What the planner believes is programmed for one family."""
        return self._fams[family].state

    @property
    def peers_programmed(self) -> int:
        """Number of peers with entries in the kernel (the larger family count)."""
        return max((len(f.state.peers) for f in self._fams.values()), default=0)

    # --- changes ---------------------------------------------------------------------------

    def set_context(self, ctx: PlanContext) -> None:
        """Replace a family's context (the device got a new ifindex); lifts every quarantine."""
        self._fams[ctx.family].ctx = ctx
        self.peers.release_all()
        self.peers.touch()

    async def apply(self, msg: PeerMessage) -> None:
        """Apply one message from the peer watch. Never raises for kernel failures: those are
        quarantined or repaired later (see the module docstring)."""
        if isinstance(msg, PeerSnapshot):
            await self._apply_snapshot(msg.leases)
        else:
            await self._apply_changes(msg.events)

    async def _apply_snapshot(self, leases: Iterable[Lease]) -> None:
        async with self._lock:
            # The wanted set is replaced first and for good: a kernel failure below only makes
            # the repair loop fix the difference, never shrinks what we defend.
            self.peers.replace(leases)
            self._publish()
            t0 = time.monotonic()
            try:
                out = await self._reconcile_locked("snapshot")
            except (NetlinkError, OSError) as exc:
                self._mark_dirty()
                log.warning("backend.snapshot_apply_failed", error=str(exc), action="repair soon")
                return
            elapsed = time.monotonic() - t0
        self.stats.last_snapshot_apply_seconds = elapsed
        self.stats.last_snapshot_ops = out.ops
        log.info(
            "backend.snapshot_applied",
            leases=len(self.peers),
            peers=self.peers_programmed,
            ops=out.ops,
            failing=len(self.peers.failing),
            seconds=round(elapsed, 3),
        )

    async def _apply_changes(self, events: Sequence[Event]) -> None:
        if not events:
            return
        async with self._lock:
            todo = self.peers.update(events)
            self._publish()
            if not todo:
                return
            for fam in self._fams.values():
                try:
                    plan, failures = await self._worker.run(self._events_job, fam, todo)
                except (NetlinkError, OSError) as exc:
                    # The (in-place) state may count entries the kernel did not get: a reconcile
                    # compares with the kernel's real tables and repairs that.
                    self._mark_dirty()
                    log.warning("backend.events_apply_failed", error=str(exc))
                    continue
                out = await self._settle(fam, plan, failures, "events")
                if plan.ops or plan.rejected:
                    # (A renewal re-emits Added with the same entries: nothing to re-check.)
                    self.peers.touch()
                if out.transient:
                    self._mark_dirty()

    async def reconcile(self, reason: str) -> int:
        """Compare the kernel with the wanted set and fix every difference; ops applied.

        Raises NetlinkError (or OSError) when a dump fails: the caller retries with backoff."""
        async with self._lock:
            out = await self._reconcile_locked(reason)
            if out.transient:
                self._mark_dirty()
            return out.ops

    async def reprogram(self, reason: str) -> int:
        """Program every wanted peer again (the device was re-created empty); ops applied.

        A full reconcile once a snapshot is known; before that, the peers known from events are
        replayed onto an empty state, which only adds entries. Never raises for kernel
        failures: a failed reprogram leaves the repair loop dirty.
        """
        async with self._lock:
            try:
                return await self._reprogram_locked(reason)
            except (NetlinkError, OSError) as exc:
                self._mark_dirty()
                log.warning("backend.reprogram_failed", reason=reason, error=str(exc))
                return 0

    async def _reprogram_locked(self, reason: str) -> int:
        if self.peers.have_snapshot:
            out = await self._reconcile_locked(reason)
            if out.transient:
                self._mark_dirty()
            return out.ops
        replay = [Event(EventKind.ADDED, le) for le in self.peers.programmable()]
        total = 0
        self.peers.touch()
        for fam in self._fams.values():
            fam.state = ProgrammedState()
            plan, failures = await self._worker.run(self._events_job, fam, replay)
            out = await self._settle(fam, plan, failures, reason)
            total += out.ops
            if out.transient:
                self._mark_dirty()
        return total

    def request_repair(self) -> None:
        """Ask :meth:`resync_loop` for a reconcile as soon as possible."""
        self._requested = True
        self._signal.set()

    def _mark_dirty(self) -> None:
        # Not a request: the loop reconciles after its backoff, never at once (a failure that
        # repeats must not become a busy loop).
        if not self._dirty:
            self._dirty = True
            self._signal.set()

    async def resync_loop(self, interval: float, *, backoff: Backoff | None = None) -> None:
        """Reconcile every ``interval`` seconds; while dirty, after a backoff (1 s → 30 s).

        A periodic reconcile is skipped when nothing it could repair can have changed: the
        kernel sent no relevant notification since the last reconcile that found the kernel
        right, and the wanted set is the same. Every ``_FULL_RESYNC_EVERY``-th one runs
        regardless, as do repairs and requested ones. A link or address change lifts every
        quarantine (a refused next hop may be reachable now).
        """
        backoff = (
            backoff if backoff is not None else Backoff.of(REPAIR_BACKOFF_MIN, REPAIR_BACKOFF_MAX)
        )
        flog = FailureLog(log, "backend.repair_failed")
        skipped = 0
        monitor = self._open_monitor()
        try:
            while True:
                await self._wait_turn(interval, backoff)
                requested, self._requested = self._requested, False
                repairing = self._dirty
                self.stats.resyncs_total += 1
                # Always drain the monitor, so a full reconcile starts from a clean slate.
                changes = self._drain(monitor)
                if changes.node and self.peers.failing:
                    await self._lift_quarantine_if_node_changed()
                unchanged = not changes.relevant and self._clean_generation == (
                    self.peers.generation
                )
                if unchanged and not (repairing or requested) and skipped + 1 < _FULL_RESYNC_EVERY:
                    skipped += 1
                    continue
                log.debug(
                    "backend.resync_started",
                    kernel_changed=changes.relevant,
                    wanted_changed=self._clean_generation != self.peers.generation,
                    repairing=repairing,
                    requested=requested,
                    skipped=skipped,
                )
                skipped = 0
                generation = self.peers.generation
                self._dirty = False
                try:
                    nops = await self.reconcile("repair" if repairing else "resync")
                except (NetlinkError, OSError) as exc:
                    self._dirty = True
                    nops = 0
                    flog.failed(error=str(exc))
                if nops:
                    self.stats.resync_repairs_total += 1
                if self._dirty:
                    self._clean_generation = None
                else:
                    flog.resolved()
                    backoff.reset()
                    clean = self.peers.have_snapshot and not nops
                    self._clean_generation = generation if clean else None
        finally:
            if monitor is not None:
                monitor.close()

    async def _wait_turn(self, interval: float, backoff: Backoff) -> None:
        """Sleep until the next reconcile is due: ``interval`` when clean, one backoff step
        when dirty, at once when requested. Becoming dirty while waiting shortens the wait to
        the backoff step; it never triggers a reconcile by itself."""
        delay = backoff.next() if self._dirty else interval
        with trio.move_on_after(delay) as scope:
            while not self._requested:
                await self._signal.wait()
                self._signal = trio.Event()
                if self._dirty and delay == interval:
                    delay = backoff.next()
                    scope.deadline = min(scope.deadline, trio.current_time() + delay)

    async def _lift_quarantine_if_node_changed(self) -> None:
        """Lift every quarantine when the node's addresses changed since they were set (a
        refused next hop may be on link now). Links and addresses change often for unrelated
        reasons (pod veths, IPv6 DAD), so the addresses are compared, not the notifications."""
        families = sorted({self._family_code(f) for f in self._fams.values()})
        try:
            now = await self._worker.run(_node_addresses, families)
        except (NetlinkError, OSError) as exc:
            log.debug("backend.address_dump_failed", error=str(exc))
            return
        if self._node_addresses is not None and now != self._node_addresses:
            released = self.peers.release_all()
            if released:
                why = "the node's addresses changed"
                log.info("backend.quarantine_lifted", why=why, leases=len(released))
        self._node_addresses = now

    def _open_monitor(self) -> ChangeSource | None:
        try:
            return self._monitor_factory()
        except OSError as exc:
            log.warning("backend.change_monitor_unavailable", error=str(exc))
            return None

    def _drain(self, monitor: ChangeSource | None) -> KernelChanges:
        if monitor is None:
            return KernelChanges(relevant=True, node=False)
        vxlan_devs = {f.ctx.dev_index for f in self._fams.values() if f.ctx.is_vxlan}
        changes = monitor.drain(vxlan_devs)
        if self._direct_routing:
            # DirectRouting decisions follow `ip route get` of underlay routes: always re-check.
            return KernelChanges(relevant=True, node=changes.node)
        return changes

    # --- internals -------------------------------------------------------------------------

    async def _reconcile_locked(self, reason: str) -> _Outcome:
        if not self.peers.have_snapshot:
            # Without the full peer list a reconcile would delete every peer programmed by our
            # previous run; events alone are applied incrementally meanwhile.
            log.debug("backend.reconcile_skipped", reason=reason, why="no snapshot yet")
            return _Outcome()
        leases = self.peers.programmable()
        ops = transient = quarantined = 0
        for fam in self._fams.values():
            plan, failures = await self._worker.run(self._reconcile_job, fam, leases)
            out = await self._settle(fam, plan, failures, reason)
            ops += out.ops
            transient += out.transient
            quarantined += out.quarantined
        return _Outcome(ops, transient, quarantined)

    async def _settle(
        self, fam: _Family, plan: Plan, failures: list[OpFailure], reason: str
    ) -> _Outcome:
        """Log a plan's outcome, quarantine leases refused for good and remove their entries."""
        self._log_plan(fam, plan, failures, reason)
        transient = 0
        newly: list[Lease] = []
        for f in failures:
            self.metrics.count_peer_failure(errno_mod.errorcode.get(f.errno, str(f.errno)))
            lease = _owner(plan.state, f.op) if is_permanent(f) else None
            if lease is None:
                transient += 1
                continue
            failing = Failing(lease, _reason(f), self._quarantine_message(lease, f, fam.ctx))
            if self.peers.quarantine(failing):
                newly.append(lease)
                if self._node_addresses is None:
                    self._node_addresses = await self._worker.run(
                        _node_addresses, sorted({self._family_code(x) for x in self._fams.values()})
                    )
                log.warning("backend.peer_failing", lease=lease.key_suffix, error=failing.message)
        if newly:
            # Nothing half-applied stays: the failing peers' other entries go.
            removals = [Event(EventKind.REMOVED, le) for le in newly]
            cleanup, more = await self._worker.run(self._events_job, fam, removals)
            self._log_plan(fam, cleanup, more, "quarantine")
            transient += len(more)
        self._publish()
        return _Outcome(len(plan.ops), transient, len(newly))

    def _quarantine_message(self, lease: Lease, failure: OpFailure, ctx: PlanContext) -> str:
        text = f"lease {lease.key_suffix}: {failure.message()}"
        if failure.errno in (errno_mod.ENETUNREACH, errno_mod.EHOSTUNREACH) and not ctx.is_vxlan:
            public = lease.attrs.public_ip if ctx.family == 4 else lease.attrs.public_ipv6
            text += (
                f"; host-gw needs every node on one L2 segment: {public} is not on a network "
                "of this node's external interface; use vxlan (or vxlan with DirectRouting)"
            )
        elif failure.errno in (errno_mod.ENETUNREACH, errno_mod.EHOSTUNREACH):
            text += "; the peer's public IP is not reachable from this node: check the underlay"
        else:
            text += "; fix or delete the lease in etcd (it is retried when it changes)"
        return text

    def _publish(self) -> None:
        self.metrics.leases_known = len(self.peers) + 1  # + our own lease
        self.metrics.peers_failing = len(self.peers.failing)

    def _family_code(self, fam: _Family) -> int:
        return nlc.AF_INET if fam.ctx.family == 4 else nlc.AF_INET6

    def _public_ip(self, lease: Lease, family: int) -> IPAddress | None:
        return lease.attrs.public_ip if family == 4 else lease.attrs.public_ipv6

    def _direct_ctx(
        self, kernel: PeerKernel, fam: _Family, leases: Iterable[Lease], refresh: bool
    ) -> PlanContext:
        """The context with DirectRouting decisions for every public IP in ``leases``."""
        if not (self._direct_routing and fam.ctx.is_vxlan):
            return fam.ctx
        if refresh:
            fam.direct = {}
        for le in leases:
            ip = self._public_ip(le, fam.ctx.family)
            if ip is not None and ip not in fam.direct and not ip.is_unspecified:
                fam.direct[ip] = direct_oif(kernel, ip, fam.ctx)
        routes = {ip: oif for ip, oif in fam.direct.items() if oif is not None}
        return replace(fam.ctx, direct_routes=routes)

    def _reconcile_job(
        self, kernel: PeerKernel, fam: _Family, leases: list[Lease]
    ) -> tuple[Plan, list[OpFailure]]:
        ctx = self._direct_ctx(kernel, fam, leases, refresh=True)
        view = read_kernel(kernel, ctx)
        # The plan rebuilds the state from the leases and the dumps; dropping the old one first
        # keeps two full states (~1.4 KB a peer each) from being alive at once. Nothing can plan
        # against the empty one meanwhile (the caller holds the lock); should planning fail,
        # the repair reconcile that follows rebuilds it.
        fam.state = ProgrammedState()
        plan = plan_reconcile(leases, view.routes, view.neighbours, view.fdb, ctx)
        fam.state = plan.state
        return plan, self._apply(kernel, plan.ops)

    def _events_job(
        self, kernel: PeerKernel, fam: _Family, events: Sequence[Event]
    ) -> tuple[Plan, list[OpFailure]]:
        added = [ev.lease for ev in events if ev.kind == EventKind.ADDED]
        ctx = self._direct_ctx(kernel, fam, added, refresh=False)
        # In place: copying the state per batch cost O(peers) (~3 ms at 10k peers).
        plan = plan_events(events, fam.state, ctx, in_place=True)
        fam.state = plan.state
        return plan, self._apply(kernel, plan.ops)

    def _apply(self, kernel: PeerKernel, ops: list[Op]) -> list[OpFailure]:
        failures: list[OpFailure] = []
        for start in range(0, len(ops), _PROGRESS_CHUNK):
            part = ops[start : start + _PROGRESS_CHUNK]
            failures.extend(kernel.apply(part))
            if len(ops) > _PROGRESS_CHUNK:
                log.info("backend.progress", applied=start + len(part), total=len(ops))
        self.metrics.netlink_ops_total += len(ops)
        self.metrics.netlink_errors_total += len(failures)
        return failures

    def _log_plan(self, fam: _Family, plan: Plan, failures: list[OpFailure], reason: str) -> None:
        self.metrics.peers_programmed = self.peers_programmed
        for lease, rej in plan.rejected:
            self._rejections.note(lease, rej)
        shown = [f for f in failures if not is_permanent(f)][:_MAX_FAILURE_LOGS]
        for f in shown:
            log.warning("backend.netlink_op_failed", family=fam.ctx.family, error=f.message())
        if len(failures) > _MAX_FAILURE_LOGS:
            log.warning(
                "backend.netlink_ops_failed",
                family=fam.ctx.family,
                failed=len(failures),
                logged=_MAX_FAILURE_LOGS,
            )
        if plan.ops:
            log.info(
                "backend.peers_programmed",
                reason=reason,
                family=fam.ctx.family,
                peers=len(plan.state.peers),
                ops=len(plan.ops),
                failed=len(failures),
            )


def _node_addresses(kernel: PeerKernel, families: list[int]) -> frozenset[tuple[int, IPInterface]]:
    return frozenset().union(*(kernel.node_addresses(f) for f in families))


def _owner(state: ProgrammedState, op: Op) -> Lease | None:
    """The lease whose entry ``op`` wrote (None for deletes and entries nobody owns)."""
    if not isinstance(op, Replace):
        return None
    owners = state.owners.get(entry_key(op.entry))
    if not owners:
        return None
    version, addr, plen = owners[-1][0]
    subnet = (
        ipaddress.IPv4Network((addr, plen)) if version == 4 else ipaddress.IPv6Network((addr, plen))
    )
    peer = state.peers.get(subnet)
    return None if peer is None else peer.lease


def _reason(failure: OpFailure) -> str:
    if not failure.encodable:
        return "unencodable"
    return errno_mod.errorcode.get(failure.errno, str(failure.errno))
