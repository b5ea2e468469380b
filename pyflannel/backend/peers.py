"""Programs peers into the kernel: the I/O half shared by the vxlan and host-gw networks.

It owns the list of current peer leases and, per address family, the planner state. Every
change goes the same way: read what is needed (dumps for a reconcile, ``ip route get`` for
DirectRouting), plan with the pure functions of :mod:`pyflannel.backend.plan`, apply the ops with
the batched executor. Blocking netlink work runs in a worker thread on sockets opened by the
caller (so namespace membership is fixed when the socket is created); one trio lock serialises
snapshot, events and repairs.

Failed operations are logged and repaired by a reconcile shortly after (``resync_loop``) rather
than rolled back one by one: a reconcile compares with what the kernel really holds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import structlog
import trio

from pyflannel.backend.base import BackendStats, Family, PlanContext
from pyflannel.backend.plan import Plan, ProgrammedState, plan_events, plan_reconcile
from pyflannel.backend.validate import Rejection
from pyflannel.errors import NetlinkError
from pyflannel.lease import Event, EventKind, Lease
from pyflannel.metrics import METRICS, Metrics
from pyflannel.netlink import consts as nlc
from pyflannel.netlink.changes import ChangeMonitor
from pyflannel.netlink.dump import dump_fdb, dump_neighbours, dump_routes, route_get
from pyflannel.netlink.executor import NetlinkExecutor, OpFailure
from pyflannel.netlink.nlsocket import NetlinkSocket
from pyflannel.netlink.ops import IPAddress, Op

__all__ = ["PeerProgrammer"]

log = structlog.get_logger(__name__)

_PROGRESS_CHUNK = 4096
_MAX_FAILURE_LOGS = 20
_REPAIR_BACKOFF_MIN = 1.0
_REPAIR_BACKOFF_MAX = 30.0
# At most this many periodic resyncs in a row are skipped as unchanged (see resync_loop).
_FULL_RESYNC_EVERY = 30
# Event batches up to this size are planned and applied on the trio thread (see apply_events).
_INLINE_EVENTS = 16


@dataclass
class _Family:
    ctx: PlanContext
    state: ProgrammedState = field(default_factory=ProgrammedState)
    # DirectRouting: peer public IP -> interface reaching it directly (None: not on our L2)
    direct: dict[IPAddress, int | None] = field(default_factory=dict)


class PeerProgrammer:
    """Keeps the kernel's peer entries equal to the leases it is given."""

    def __init__(
        self,
        sock: NetlinkSocket,
        contexts: Sequence[PlanContext],
        *,
        direct_routing: bool = False,
        metrics: Metrics | None = None,
        stats: BackendStats | None = None,
    ) -> None:
        self._sock = sock
        self._exec = NetlinkExecutor(sock)
        self._fams = {ctx.family: _Family(ctx) for ctx in contexts}
        self._direct_routing = direct_routing
        self._leases: dict[str, Lease] = {}
        self._have_snapshot = False
        self._last_failed = False
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._warned: set[tuple[str, str]] = set()
        # Bumped whenever the wanted entries may have changed; a periodic resync is skipped
        # while it equals _clean_generation and the kernel reported no relevant change.
        self._generation = 0
        self._clean_generation: int | None = None
        self.metrics = metrics if metrics is not None else METRICS
        self.stats = stats if stats is not None else BackendStats()

    # --- read-only views -----------------------------------------------------------------

    @property
    def leases(self) -> list[Lease]:
        """The peer leases currently wanted (from the last snapshot plus events)."""
        return list(self._leases.values())

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
        """Replace a family's context (e.g. the device got a new ifindex); reconcile next."""
        self._fams[ctx.family].ctx = ctx
        self._generation += 1

    async def apply_snapshot(self, leases: Iterable[Lease]) -> None:
        """Replace the wanted leases with ``leases`` and reconcile the kernel against them."""
        async with self._lock:
            self._leases = {le.key_suffix: le for le in leases}
            self._have_snapshot = True
            self._generation += 1
            t0 = time.monotonic()
            nops = await self._reconcile_locked("snapshot")
            elapsed = time.monotonic() - t0
        self.metrics.last_snapshot_apply_seconds = elapsed
        self.stats.last_snapshot_ops = nops
        log.info(
            "backend.snapshot_applied",
            leases=len(self._leases),
            peers=self.peers_programmed,
            ops=nops,
            seconds=round(elapsed, 3),
        )

    async def apply_events(self, events: Sequence[Event]) -> None:
        """Apply one watch batch incrementally."""
        if not events:
            return
        async with self._lock:
            for ev in events:
                if ev.kind == EventKind.ADDED:
                    self._leases[ev.lease.key_suffix] = ev.lease
                else:
                    self._leases.pop(ev.lease.key_suffix, None)
            failed = False
            for fam in self._fams.values():
                try:
                    if len(events) <= _INLINE_EVENTS:
                        # A few ops are well under a millisecond of netlink work: doing them
                        # here saves two thread hand-offs, most of the latency under load.
                        plan, failures = self._events_sync(fam, events)
                    else:
                        plan, failures = await trio.to_thread.run_sync(
                            self._events_sync, fam, events
                        )
                except BaseException:
                    # The (in-place) state may already count entries the kernel did not get:
                    # a reconcile compares with the kernel's real tables and repairs that.
                    self._wake.set()
                    raise
                self._log_plan(fam, plan, failures, "events")
                failed |= bool(failures)
                if plan.ops or plan.rejected:
                    # (A renewal re-emits Added with the same entries: nothing to re-check.)
                    self._generation += 1
        if failed:
            self._wake.set()

    async def reconcile(self, reason: str) -> int:
        """Compare the kernel with the wanted leases and fix every difference; ops applied."""
        async with self._lock:
            return await self._reconcile_locked(reason)

    async def reprogram(self, reason: str) -> int:
        """Program every wanted peer again (the device was re-created empty); ops applied.

        A full reconcile once a snapshot is known; before that, the peers known from events are
        replayed onto an empty state, which only adds entries.
        """
        async with self._lock:
            if self._have_snapshot:
                return await self._reconcile_locked(reason)
            replay = [Event(EventKind.ADDED, le) for le in self._leases.values()]
            total = 0
            self._generation += 1
            for fam in self._fams.values():
                fam.state = ProgrammedState()
                plan, failures = await trio.to_thread.run_sync(self._events_sync, fam, replay)
                self._log_plan(fam, plan, failures, reason)
                total += len(plan.ops)
            return total

    def request_repair(self) -> None:
        """Ask :meth:`resync_loop` for a reconcile as soon as possible."""
        self._wake.set()

    async def resync_loop(self, interval: float) -> None:
        """Reconcile every ``interval`` seconds, and soon after a failure (backoff 1 s → 30 s).

        A periodic reconcile is skipped when nothing it could repair can have changed: the
        kernel sent no relevant notification since the last reconcile that found the kernel
        right (see :mod:`pyflannel.netlink.changes`), and the wanted entries are the same. Every
        ``_FULL_RESYNC_EVERY``-th one runs regardless, as do repairs and requested ones.
        """
        backoff = _REPAIR_BACKOFF_MIN
        repairing = False
        skipped = 0
        monitor = self._open_monitor()
        try:
            while True:
                with trio.move_on_after(backoff if repairing else interval):
                    await self._wake.wait()
                requested = self._wake.is_set()
                self._wake = trio.Event()
                self.stats.resyncs_total += 1
                # Always drain the monitor, so a full reconcile starts from a clean slate.
                unchanged = self._unchanged(monitor)
                if unchanged and not (repairing or requested) and skipped + 1 < _FULL_RESYNC_EVERY:
                    skipped += 1
                    continue
                skipped = 0
                generation = self._generation
                try:
                    nops = await self.reconcile("repair" if repairing else "resync")
                    repairing = self._last_failed
                except NetlinkError as exc:
                    log.warning("backend.resync_failed", error=str(exc), retry_in=backoff)
                    repairing = True
                    nops = 0
                if nops:
                    self.stats.resync_repairs_total += 1
                clean = self._have_snapshot and not nops and not repairing
                self._clean_generation = generation if clean else None
                backoff = (
                    min(backoff * 2, _REPAIR_BACKOFF_MAX) if repairing else _REPAIR_BACKOFF_MIN
                )
        finally:
            if monitor is not None:
                monitor.close()

    def _open_monitor(self) -> ChangeMonitor | None:
        if self._direct_routing:
            # DirectRouting decisions follow `ip route get` of underlay routes: always re-check.
            return None
        try:
            return ChangeMonitor()
        except OSError as exc:
            log.warning("backend.change_monitor_unavailable", error=str(exc))
            return None

    def _unchanged(self, monitor: ChangeMonitor | None) -> bool:
        """True when a periodic reconcile would find nothing to do (see resync_loop)."""
        if monitor is None:
            return False
        vxlan_devs = {f.ctx.dev_index for f in self._fams.values() if f.ctx.is_vxlan}
        if monitor.changed(vxlan_devs):
            self._clean_generation = None
            return False
        return self._clean_generation == self._generation

    # --- internals -------------------------------------------------------------------------

    async def _reconcile_locked(self, reason: str) -> int:
        if not self._have_snapshot:
            # Without the full peer list a reconcile would delete every peer programmed by our
            # previous run; events alone are applied incrementally meanwhile.
            log.debug("backend.reconcile_skipped", reason=reason, why="no snapshot yet")
            return 0
        leases = list(self._leases.values())
        total = 0
        failed = False
        for fam in self._fams.values():
            plan, failures = await trio.to_thread.run_sync(self._reconcile_sync, fam, leases)
            self._log_plan(fam, plan, failures, reason)
            total += len(plan.ops)
            failed |= bool(failures)
        self._last_failed = failed
        if failed:
            self._wake.set()
        return total

    def _family_code(self, fam: _Family) -> int:
        return nlc.AF_INET if fam.ctx.family == 4 else nlc.AF_INET6

    def _public_ip(self, lease: Lease, family: int) -> IPAddress | None:
        return lease.attrs.public_ip if family == 4 else lease.attrs.public_ipv6

    def _direct_ctx(self, fam: _Family, leases: Iterable[Lease], refresh: bool) -> PlanContext:
        """The context with DirectRouting decisions for every public IP in ``leases``."""
        if not (self._direct_routing and fam.ctx.is_vxlan):
            return fam.ctx
        if refresh:
            fam.direct = {}
        for le in leases:
            ip = self._public_ip(le, fam.ctx.family)
            if ip is not None and ip not in fam.direct and not ip.is_unspecified:
                fam.direct[ip] = self._direct_oif(ip, fam.ctx)
        routes = {ip: oif for ip, oif in fam.direct.items() if oif is not None}
        return replace(fam.ctx, direct_routes=routes)

    def _direct_oif(self, ip: IPAddress, ctx: PlanContext) -> int | None:
        # flanneld: DirectRouting when `ip route get <PublicIP>` gives one route, no gateway.
        try:
            found = route_get(self._sock, ip)
        except NetlinkError as exc:
            log.debug("backend.route_get_failed", ip=str(ip), error=str(exc))
            return None
        if found is None or found.gw is not None or found.local or found.ifindex == 0:
            return None
        if found.ifindex == ctx.dev_index:
            return None
        return found.ifindex

    def _reconcile_sync(self, fam: _Family, leases: list[Lease]) -> tuple[Plan, list[OpFailure]]:
        ctx = self._direct_ctx(fam, leases, refresh=True)
        family = self._family_code(fam)
        routes = dump_routes(self._sock, None, family)
        neighs = dump_neighbours(self._sock, ctx.dev_index, family) if ctx.is_vxlan else []
        fdb = dump_fdb(self._sock, ctx.dev_index) if ctx.is_vxlan else []
        # The plan rebuilds the state from the leases and the dumps; dropping the old one first
        # keeps two full states (~1.4 KB a peer each) from being alive at once. Nothing can plan
        # against the empty one meanwhile (the caller holds the lock); should planning fail,
        # the repair reconcile that follows rebuilds it.
        fam.state = ProgrammedState()
        plan = plan_reconcile(leases, routes, neighs, fdb, ctx)
        fam.state = plan.state
        failures = self._apply(plan.ops)
        return plan, failures

    def _events_sync(self, fam: _Family, events: Sequence[Event]) -> tuple[Plan, list[OpFailure]]:
        added = [ev.lease for ev in events if ev.kind == EventKind.ADDED]
        ctx = self._direct_ctx(fam, added, refresh=False)
        # In place: copying the state per batch cost O(peers) (~3 ms at 10k peers).
        plan = plan_events(events, fam.state, ctx, in_place=True)
        fam.state = plan.state
        failures = self._apply(plan.ops)
        return plan, failures

    def _apply(self, ops: list[Op]) -> list[OpFailure]:
        failures: list[OpFailure] = []
        for start in range(0, len(ops), _PROGRESS_CHUNK):
            part = ops[start : start + _PROGRESS_CHUNK]
            failures.extend(self._exec.apply(part))
            if len(ops) > _PROGRESS_CHUNK:
                log.info("backend.progress", applied=start + len(part), total=len(ops))
        self.metrics.netlink_ops_total += len(ops)
        self.metrics.netlink_errors_total += len(failures)
        return failures

    def _log_plan(self, fam: _Family, plan: Plan, failures: list[OpFailure], reason: str) -> None:
        self.metrics.peers_programmed = self.peers_programmed
        for lease, rej in plan.rejected:
            self._log_rejection(lease, rej)
        for f in failures[:_MAX_FAILURE_LOGS]:
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

    def _log_rejection(self, lease: Lease, rej: Rejection) -> None:
        key = (lease.key_suffix, rej.reason)
        if rej.benign or key in self._warned:
            log.debug("backend.lease_ignored", reason=rej.reason)
            return
        self._warned.add(key)
        self.stats.leases_rejected_total += 1
        log.warning("backend.lease_rejected", reason=rej.reason)
