"""The etcd subnet manager: acquire our lease, keep it, and follow the peers' leases.

This is flanneld's ``LocalManager`` + ``CompleteLease`` + ``WatchLeases`` on top of
:class:`~pyflannel.subnet.etcd.registry.EtcdRegistry`. The decisions live in pure modules
(:mod:`~pyflannel.subnet.allocation`, :mod:`~pyflannel.subnet.watch`); this module sequences
the I/O. Deliberate differences from flanneld:

- A lost allocation race (another node created the chosen key first) re-lists and tries another
  candidate, up to ``max_race_retries`` times, instead of exiting with "subnet already exists".
- Reservations (keys without an etcd lease, flannel #1329) stay reservations: the node whose
  ``PublicIP`` they carry writes its attrs without a lease and never renews them.
- Renewals and re-uses are conditional on the key being unchanged since we last saw it, so a
  node never overwrites a lease another node has just taken.
- When our key is deleted or expires, the same subnet is re-created if it is still free and the
  daemon keeps running (flanneld exits 0). If another node holds it, :class:`LeaseLost` is
  raised so the daemon exits non-zero and systemd's ``Restart=on-failure`` starts it afresh.
- Our own key is watched exactly (not as a prefix), and watches resume from the revision after
  the last event; a compacted revision triggers a re-list whose difference is emitted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, NoReturn, Unpack

import structlog
import trio

from pyflannel.closing import AsyncClosing
from pyflannel.config import NetworkConfig
from pyflannel.errors import ConfigError, LeaseError, LeaseLost, RegistryError
from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs
from pyflannel.metrics import METRICS
from pyflannel.peer_messages import PeerMessage
from pyflannel.retry import Backoff, FailureLog
from pyflannel.subnet.allocation import (
    PreviousSubnets,
    is_lease_compatible,
    leases_of_node,
    plan_acquisition,
)
from pyflannel.subnet.etcd.endpoints import DEFAULT_ENDPOINTS, DEFAULT_PREFIX
from pyflannel.subnet.etcd.errors import WatchCompacted
from pyflannel.subnet.etcd.leases import Unreadable, WatchBatch
from pyflannel.subnet.etcd.registry import DEFAULT_REQUEST_TIMEOUT, EtcdRegistry
from pyflannel.subnet.etcd.watch import WatchStream
from pyflannel.subnet.protocols import Registry
from pyflannel.subnet.watch import PeerFeed

if TYPE_CHECKING:
    from pyflannel.subnet.etcd.session import EtcdCredentials

__all__ = [
    "CONFIG_CHECK_SECONDS",
    "DEFAULT_RACE_RETRIES",
    "DEFAULT_RENEW_MARGIN_MINUTES",
    "DEFAULT_RENEW_RETRY",
    "DEFAULT_TTL",
    "EtcdSubnetManager",
]

log = structlog.get_logger(__name__)

DEFAULT_TTL = 24 * 60 * 60  # flanneld's subnetTTL
DEFAULT_RENEW_MARGIN_MINUTES = 60  # --subnet-lease-renew-margin
DEFAULT_RENEW_RETRY = 60.0  # flanneld retries a failed renewal after one minute
DEFAULT_RACE_RETRIES = 100
# Longest pause between attempts to re-create a broken watch. flanneld caps at 5 s; that made a
# node notice lease changes up to ~5.5 s after etcd came back from an outage. While etcd is
# unreachable an attempt fails inside gRPC without any network traffic (reconnects are paced by
# the channel's own backoff, see registry._GRPC_OPTIONS), so retrying every second costs nothing;
# only a reachable etcd that keeps refusing the watch (e.g. no leader) sees ~1 request/s per watch.
WATCH_RETRY_MAX = 1.0
# How often a running daemon re-reads the network config to notice a change (and how far the
# check backs off while etcd is unreachable).
CONFIG_CHECK_SECONDS = 10.0
CONFIG_CHECK_RETRY_MAX = 60.0

_OpenWatch = Callable[[int], AbstractAsyncContextManager[WatchStream]]


def _same_node(a: LeaseAttrs, b: LeaseAttrs) -> bool:
    """Whether two lease values were written by the same node (flanneld: same PublicIP)."""
    if a.public_ip != b.public_ip:
        return False
    # IPv6-only nodes all have PublicIP 0.0.0.0; their identity is the IPv6 address.
    return int(a.public_ip) != 0 or a.public_ipv6 == b.public_ipv6


_LOG_EVERY_ATTEMPTS = 60


def _log_retry(attempt: int, event: str, **kw: object) -> None:
    """Log the ``attempt``-th consecutive failure of a retry loop (debug for most repeats)."""
    if attempt == 1 or attempt % _LOG_EVERY_ATTEMPTS == 0:
        log.warning(event, attempts=attempt, **kw)
    else:
        log.debug(event, attempts=attempt, **kw)


def _describe(lease: Lease) -> str:
    parts = [str(n) for n in (lease.subnet, lease.ipv6_subnet) if n is not None]
    return " + ".join(parts) or "?"


class EtcdSubnetManager(AsyncClosing):
    """flanneld's etcd subnet manager for one node.

    Construction does no I/O. ``renew_margin`` is in minutes (flanneld's
    ``--subnet-lease-renew-margin``); ``renew_margin_seconds`` overrides it (tests).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINTS,
        prefix: str = DEFAULT_PREFIX,
        *,
        ttl: int = DEFAULT_TTL,
        renew_margin: float = DEFAULT_RENEW_MARGIN_MINUTES,
        renew_margin_seconds: float | None = None,
        renew_retry: float = DEFAULT_RENEW_RETRY,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_race_retries: int = DEFAULT_RACE_RETRIES,
        rng: random.Random | None = None,
        registry: Registry | None = None,
        **credentials: Unpack[EtcdCredentials],
    ) -> None:
        margin = renew_margin * 60.0 if renew_margin_seconds is None else renew_margin_seconds
        if ttl < 1:
            raise ConfigError(f"invalid lease TTL {ttl}s", hint="use a TTL of at least 1 second")
        if not 0 <= margin < ttl:
            raise ConfigError(
                f"subnet lease renew margin {margin:g}s must be shorter than the lease TTL {ttl}s",
                hint="lower --subnet-lease-renew-margin (minutes) or raise the lease TTL",
            )
        if renew_retry <= 0:
            raise ConfigError(
                f"invalid renew retry interval {renew_retry:g}s", hint="use a positive interval"
            )
        self._registry: Registry = registry or EtcdRegistry(
            endpoints, prefix, request_timeout=request_timeout, **credentials
        )
        self._ttl = int(ttl)
        self._margin = float(margin)
        self._renew_retry = float(renew_retry)
        self._max_race_retries = max(1, int(max_race_retries))
        self._prefetched: tuple[list[Lease], int] | None = None
        self._rng = rng or random.SystemRandom()
        # etcd lease ID -> expiry on trio's monotonic clock (see _note_grant).
        self._expiry_mono: dict[int, float] = {}

    @property
    def registry(self) -> Registry:
        """The lease storage in use."""
        return self._registry

    @property
    def ttl(self) -> int:
        """TTL in seconds granted on every create and renew."""
        return self._ttl

    @property
    def renew_margin_seconds(self) -> float:
        """How long before expiry a lease is renewed."""
        return self._margin

    def close(self) -> None:
        """Close the etcd connections (idempotent)."""
        self._registry.close()

    # ----------------------------------------------------------------- config
    async def get_network_config(self) -> str:
        """The raw ``<prefix>/config`` text; parse it with ``pyflannel.config``.

        Raises ``ConfigNotFound`` (a ``RegistryError``) with flanneld's message and the
        etcdctl command that creates it; the daemon retries every second like flanneld.
        """
        return await self._registry.get_config()

    async def wait_config_change(
        self, current: NetworkConfig, *, interval: float = CONFIG_CHECK_SECONDS
    ) -> NetworkConfig:
        """Read ``<prefix>/config`` every ``interval`` s; return it once it parses to a config
        other than ``current`` (a reformatted document is no change).

        One read of one small key per interval (the registry offers no watch of that key). A
        failed read (etcd unreachable, key deleted) is not a change: it is retried on the common
        backoff and logged rate-limited (:mod:`pyflannel.retry`). An invalid new config is not
        one either: it is reported once and the running config stays.
        """
        from pyflannel.config import parse_network_config

        backoff = Backoff.of(interval, max(interval, CONFIG_CHECK_RETRY_MAX))
        failures = FailureLog(log, "config.check_failed")
        rejected = ""
        while True:
            try:
                raw = await self._registry.get_config()
            except RegistryError as exc:
                delay = backoff.next()
                failures.failed(error=str(exc), retry_in=round(delay, 2))
                await trio.sleep(delay)
                continue
            backoff.reset()
            failures.resolved()
            try:
                new = parse_network_config(raw)
            except ConfigError as exc:
                if raw != rejected:
                    rejected = raw
                    log.warning(
                        "config.change_ignored", error=str(exc), action="keeping the running config"
                    )
            else:
                if new != current:
                    return new
            await trio.sleep(interval)

    # ----------------------------------------------------------------- acquire
    async def previous_lease(self, config: NetworkConfig, attrs: LeaseAttrs) -> Lease | None:
        """The lease of this node's public IP in etcd, if any: the one :meth:`acquire_lease`
        would reuse. Before the backend is prepared, so that a node whose state directory was
        emptied (a reboot with /run on tmpfs) keeps its VTEP MAC. Best effort: ``None`` when
        etcd cannot be read (acquire_lease reports that)."""
        try:
            listing = await self._registry.list_leases(with_ttl=False)
        except RegistryError as exc:
            log.info("lease.previous_unknown", error=str(exc))
            return None
        # acquire_lease follows at once: its first attempt plans on this listing instead of
        # fetching the same 10k leases again (a listing that went stale meanwhile only makes the
        # create transaction lose a race, which acquire_lease already retries).
        self._prefetched = listing
        leases = listing[0]
        own = [x for x in leases_of_node(config, leases, attrs) if is_lease_compatible(config, x)]
        return own[0] if own else None

    async def acquire_lease(
        self,
        config: NetworkConfig,
        attrs: LeaseAttrs,
        previous: PreviousSubnets | None = None,
    ) -> Lease:
        """Get this node's lease (flanneld's ``AcquireLease``; see :mod:`.allocation`).

        Raises :class:`~pyflannel.errors.OutOfSubnets` when the range is full,
        :class:`~pyflannel.errors.LeaseError` when other nodes won every race, and
        :class:`~pyflannel.errors.RegistryError` when etcd fails. ``previous``: the subnets of
        the last subnet.env (:func:`~.allocation.previous_subnets`), tried first if free.
        """
        lost: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
        prefix = self._registry.prefix
        for attempt in range(1, self._max_race_retries + 1):
            if self._prefetched is not None:
                (leases, revision), self._prefetched = self._prefetched, None
            else:
                leases, revision = await self._registry.list_leases(with_ttl=False)
            plan = plan_acquisition(
                config,
                leases,
                attrs,
                previous or PreviousSubnets(),
                self._rng,
                prefix=prefix,
                exclude=lost,
            )
            for stale in plan.stale:
                log.info(
                    "lease.misfit_deleted",
                    subnet=_describe(stale),
                    public_ip=str(attrs.public_ip),
                    reservation=stale.is_reservation,
                )
                await self._registry.delete_lease(
                    stale.subnet, stale.ipv6_subnet, if_mod_revision=stale.mod_revision
                )
            if plan.action == "reuse":
                existing = plan.existing
                assert existing is not None
                ttl = None if existing.is_reservation else self._ttl
                started = trio.current_time()
                result = await self._registry.put_lease(
                    existing.subnet,
                    existing.ipv6_subnet,
                    attrs,
                    ttl,
                    if_mod_revision=existing.mod_revision,
                )
                if result.lease is not None:
                    self._note_grant(result.lease, started)
                    log.info(
                        "lease.reused",
                        subnet=_describe(result.lease),
                        public_ip=str(attrs.public_ip),
                        reservation=result.lease.is_reservation,
                    )
                    return result.lease
                log.info("lease.changed_while_reusing", attempt=attempt)
            else:
                started = trio.current_time()
                result = await self._registry.create_lease(
                    plan.subnet, plan.ipv6_subnet, attrs, self._ttl, known_revision=revision
                )
                if result.lease is not None:
                    self._note_grant(result.lease, started)
                    log.info(
                        "lease.allocated",
                        subnet=_describe(result.lease),
                        source=plan.source,
                        public_ip=str(attrs.public_ip),
                        leases_seen=len(leases),
                    )
                    return result.lease
                if result.existing or result.unreadable or result.conflict:
                    lost.update(n for n in (plan.subnet, plan.ipv6_subnet) if n is not None)
                log.info(
                    "lease.subnet_taken",
                    subnet=plan.key_suffix,
                    held_by=result.conflict,
                    attempt=attempt,
                    revision=revision,
                )
            # De-synchronise racers that keep colliding on the same candidates.
            await trio.sleep(self._rng.uniform(0.0, min(0.02 * attempt, 0.5)))
        raise LeaseError(
            f"could not acquire a subnet lease under {prefix}/subnets/ after "
            f"{self._max_race_retries} attempts: other nodes took every subnet picked",
            hint="many nodes are starting at once; restarting the daemon retries",
        )

    # ----------------------------------------------------------------- renewal
    async def renew_lease(self, lease: Lease) -> Lease:
        """flanneld's ``RenewLease``: a new grant and a put of the same attrs.

        Conditional on the key being unchanged since ``lease.mod_revision``; on a conflict the
        current holder is examined (ours → adopt and retry, gone → re-create, other node →
        :class:`LeaseLost`). Reservations are rewritten without a lease.
        """
        for _ in range(5):
            ttl = None if lease.is_reservation else self._ttl
            started = trio.current_time()
            result = await self._registry.put_lease(
                lease.subnet,
                lease.ipv6_subnet,
                lease.attrs,
                ttl,
                if_mod_revision=lease.mod_revision,
            )
            if result.lease is not None:
                self._note_grant(result.lease, started)
                return result.lease
            if result.unreadable is not None:
                return await self._resolve_unreadable(lease, result.unreadable)
            current = result.existing
            if current is None:
                return await self._reacquire(lease, "our lease key is gone")
            self._check_ours(lease, current)
            lease = dataclasses.replace(
                lease,
                etcd_lease_id=current.etcd_lease_id,
                expiration=current.expiration,
                mod_revision=current.mod_revision,
            )
        raise RegistryError(
            f"renewing lease {_describe(lease)} kept conflicting with concurrent writes",
            hint="someone else keeps rewriting this node's lease key",
        )

    def _check_ours(self, lease: Lease, current: Lease) -> None:
        if not _same_node(current.attrs, lease.attrs):
            raise LeaseLost(
                f"lease {_describe(lease)} was taken over by the node with PublicIP "
                f"{current.attrs.public_ip}"
                + (f" / {current.attrs.public_ipv6}" if current.attrs.public_ipv6 else "")
                + f" (etcd revision {current.mod_revision}); this node "
                f"({lease.attrs.public_ip}) no longer owns it",
                hint=(
                    "the daemon exits so that it is restarted and acquires a fresh lease; "
                    "if this repeats, two nodes share a stale subnet.env or a public IP"
                ),
            )

    async def _reacquire(self, lease: Lease, why: str) -> Lease:
        """Re-create our deleted/expired key with the same subnet, or raise LeaseLost.

        Retries etcd failures with backoff for as long as it takes: the subnet is ours until
        another node holds it. Every attempt that does not settle the matter (etcd error, key
        deleted again in between) waits for the next backoff delay: never a hot loop.
        """
        log.error(
            "lease.revoked",
            subnet=_describe(lease),
            reason=why,
        )
        backoff = Backoff.of(0.1, 5.0)
        failures = FailureLog(log, "lease.reacquire_failed")
        while True:
            try:
                started = trio.current_time()
                result = await self._registry.create_lease(
                    lease.subnet, lease.ipv6_subnet, lease.attrs, self._ttl
                )
                if result.lease is not None:
                    self._note_grant(result.lease, started)
                    log.warning("lease.reacquired", subnet=_describe(lease))
                    return result.lease
                if result.unreadable is not None:
                    return await self._resolve_unreadable(lease, result.unreadable)
                if result.conflict is not None:
                    raise LeaseLost(
                        f"lease {_describe(lease)} expired or was deleted and its subnet is now "
                        f"part of the lease key {result.conflict} of another node; this node "
                        f"({lease.attrs.public_ip}) no longer owns it",
                        hint="the daemon exits so that it is restarted and acquires a fresh lease",
                    )
                current = result.existing
                if current is not None:
                    self._check_ours(lease, current)
                    log.warning(
                        "lease.adopted",
                        subnet=_describe(lease),
                        reservation=current.is_reservation,
                    )
                    if current.attrs == lease.attrs:
                        return current
                    started = trio.current_time()
                    rewritten = await self._registry.put_lease(
                        lease.subnet,
                        lease.ipv6_subnet,
                        lease.attrs,
                        None if current.is_reservation else self._ttl,
                        if_mod_revision=current.mod_revision,
                    )
                    if rewritten.lease is not None:
                        self._note_grant(rewritten.lease, started)
                        return rewritten.lease
                failure = "the key changed while re-acquiring it"
            except RegistryError as exc:
                failure = str(exc)
            delay = backoff.next()
            failures.failed(subnet=_describe(lease), error=failure, retry_in=round(delay, 2))
            await trio.sleep(delay)

    async def _resolve_unreadable(self, lease: Lease, found: Unreadable) -> Lease:
        """Our key exists but its value cannot be decoded: replace it, or give the subnet up.

        Deterministic: when the unreadable value is attached to our current etcd lease, only
        this node (or someone acting with its lease) wrote it, so it is replaced with our attrs
        under a mod-revision compare (a concurrent writer wins and is examined again).
        Otherwise someone else owns the key now and :class:`LeaseLost` is raised. Each attempt
        waits for the common backoff first and the condition is logged as one line naming the
        key (repeats rate-limited), so a value that stays unreadable costs a bounded number of
        writes, never a hot loop.
        """
        backoff = Backoff.of(min(1.0, self._renew_retry), max(1.0, self._renew_retry))
        failures = FailureLog(log, "lease.unreadable_value")
        while True:
            ours = found.etcd_lease_id != 0 and found.etcd_lease_id == lease.etcd_lease_id
            if not ours:
                holder = f"etcd lease {found.etcd_lease_id:x}" if found.etcd_lease_id else "none"
                raise LeaseLost(
                    f"lease key {found.key} holds an unreadable value ({found.error}) that is "
                    f"not attached to this node's etcd lease (it carries {holder}); this node "
                    f"({lease.attrs.public_ip}) no longer owns subnet {_describe(lease)}",
                    hint=(
                        "the daemon exits so that it is restarted and acquires a fresh lease; "
                        "delete or fix the key if it was written by hand"
                    ),
                )
            delay = backoff.next()
            failures.failed(key=found.key, error=found.error, retry_in=round(delay, 2))
            await trio.sleep(delay)
            try:
                started = trio.current_time()
                result = await self._registry.put_lease(
                    lease.subnet,
                    lease.ipv6_subnet,
                    lease.attrs,
                    self._ttl,
                    if_mod_revision=found.mod_revision,
                )
            except RegistryError as exc:
                log.debug("lease.unreadable_replace_failed", error=str(exc))
                continue
            if result.lease is not None:
                self._note_grant(result.lease, started)
                failures.resolved(key=found.key)
                return result.lease
            if result.unreadable is not None:
                found = result.unreadable
                continue
            if result.existing is None:
                return await self._reacquire(lease, "our unreadable lease key is gone")
            self._check_ours(lease, result.existing)
            failures.resolved(key=found.key)
            return result.existing

    def _note_grant(self, lease: Lease, started: float) -> None:
        """Remember when ``lease`` (granted after trio time ``started``) expires, on trio's
        monotonic clock: a wall-clock step must not move the renewal."""
        if lease.is_reservation:
            return
        self._expiry_mono[lease.etcd_lease_id] = started + self._ttl
        while len(self._expiry_mono) > 16:
            del self._expiry_mono[next(iter(self._expiry_mono))]

    def _renew_deadline(self, lease: Lease) -> float:
        """When to renew ``lease``, on trio's (monotonic) clock.

        Leases granted by this manager expire ``ttl`` after the grant was requested, measured
        on the monotonic clock (see :meth:`_note_grant`). Only a lease granted elsewhere (one
        we adopted) falls back to its wall-clock ``expiration``, converted once when first
        seen and capped at our TTL, so a later wall-clock step cannot delay its renewal.
        """
        if lease.is_reservation:
            return math.inf
        now = trio.current_time()
        expires = self._expiry_mono.get(lease.etcd_lease_id)
        if expires is None:
            if lease.expiration is None:  # unknown expiry: renew now rather than risk expiring
                return now
            left = min(lease.expiration - time.time(), float(self._ttl))
            expires = now + max(0.0, left)
            self._expiry_mono[lease.etcd_lease_id] = expires
        return max(now, expires - self._margin)

    async def run_renewal(
        self, lease: Lease, *, on_change: Callable[[Lease], None] | None = None
    ) -> NoReturn:
        """Keep our lease forever (flanneld's ``CompleteLease``).

        Renews at expiration − margin (retrying every ``renew_retry`` seconds on failure) and
        watches our key: a PUT by us re-arms the timer, a DELETE or expiry re-creates the same
        subnet if it is free. ``on_change`` is called with every new version of the lease.
        Raises :class:`~pyflannel.errors.LeaseLost` when another node holds our subnet.
        Reservations are never renewed (they do not expire).
        """
        send, recv = trio.open_memory_channel[Event](math.inf)
        outcome: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_own_key, lease, send)
            try:
                await self._renewal_loop(lease, recv, on_change)
            except LeaseError as exc:
                outcome = exc
            finally:
                nursery.cancel_scope.cancel()
        # Raised outside the nursery so the daemon sees LeaseLost itself, not a group.
        assert outcome is not None
        raise outcome

    async def _renewal_loop(
        self,
        lease: Lease,
        recv: trio.MemoryReceiveChannel[Event],
        on_change: Callable[[Lease], None] | None,
    ) -> NoReturn:
        deadline = self._renew_deadline(lease)
        log.info(
            "lease.renewal_scheduled",
            subnet=_describe(lease),
            renew_in=None if math.isinf(deadline) else round(deadline - trio.current_time(), 1),
        )
        while True:
            event: Event | None = None
            rewrite = False
            with trio.move_on_at(deadline):
                event = await recv.receive()
            if event is None:
                try:
                    new = await self.renew_lease(lease)
                except RegistryError as exc:
                    log.error(
                        "lease.renew_failed",
                        subnet=_describe(lease),
                        error=str(exc),
                        retry_in=self._renew_retry,
                    )
                    deadline = trio.current_time() + self._renew_retry
                    continue
                left = None if new.expiration is None else round(new.expiration - time.time())
                log.info("lease.renewed", subnet=_describe(new), expires_in=left)
            else:
                new, rewrite = await self._on_own_event(lease, event)
            if new != lease or new.mod_revision != lease.mod_revision:
                lease = new
                if on_change is not None:
                    on_change(lease)
            # After someone changed our value (e.g. the VtepMAC) the renewal path puts our attrs
            # back at once, with its retries.
            deadline = trio.current_time() if rewrite else self._renew_deadline(lease)

    async def _on_own_event(self, lease: Lease, event: Event) -> tuple[Lease, bool]:
        """The lease after an event on our key, and whether our attrs must be written back."""
        seen = event.lease
        if event.kind is EventKind.REMOVED:
            if seen.mod_revision and seen.mod_revision <= lease.mod_revision:
                return lease, False
            return await self._reacquire(lease, "our lease key was deleted or expired"), False
        if seen.mod_revision <= lease.mod_revision:
            return lease, False  # our own write, or older
        self._check_ours(lease, seen)
        if seen.etcd_lease_id == lease.etcd_lease_id and seen.attrs == lease.attrs:
            return dataclasses.replace(lease, mod_revision=seen.mod_revision), False
        # Written by someone with our identity (an admin, or a restarted copy of us): adopt its
        # etcd lease and revision, keep our attrs.
        adopted = dataclasses.replace(
            lease,
            etcd_lease_id=seen.etcd_lease_id,
            expiration=None if seen.is_reservation else seen.expiration,
            mod_revision=seen.mod_revision,
        )
        if seen.is_reservation and not lease.is_reservation:
            log.info("lease.became_reservation")
        if seen.attrs != lease.attrs:
            log.warning(
                "lease.attrs_restored",
                subnet=_describe(lease),
            )
            return adopted, True
        return adopted, False

    async def _follow_own_key(self, lease: Lease, send: trio.MemorySendChannel[Event]) -> None:
        async def resync() -> int:
            current, revision = await self._registry.get_lease(lease.subnet, lease.ipv6_subnet)
            if current is None:
                gone = Lease(subnet=lease.subnet, attrs=LeaseAttrs(), ipv6_subnet=lease.ipv6_subnet)
                send.send_nowait(Event(EventKind.REMOVED, gone))
            else:
                send.send_nowait(Event(EventKind.ADDED, current))
            return revision

        async def on_batch(batch: WatchBatch) -> None:
            for event in batch.events:
                send.send_nowait(event)

        def open_watch(since: int) -> AbstractAsyncContextManager[WatchStream]:
            return self._registry.watch_lease(lease.subnet, lease.ipv6_subnet, since)

        await self._follow(open_watch, on_batch, resync, what=f"lease {_describe(lease)}")

    # ----------------------------------------------------------------- peers
    async def watch_leases(
        self, own_lease: Lease, send_channel: trio.MemorySendChannel[PeerMessage]
    ) -> NoReturn:
        """Send the peers' leases to ``send_channel`` forever, as typed messages.

        First a :class:`PeerSnapshot` of every peer (possibly empty), then
        :class:`PeerChanges` in etcd's order; after a compaction or a long outage a fresh
        :class:`PeerSnapshot`. Our own lease never appears. ``send_channel`` is closed when
        this returns.
        """
        feed = PeerFeed(own_lease)

        async def resync() -> int:
            leases, revision = await self._registry.list_leases()
            snapshot = feed.snapshot(leases, revision)
            log.info("lease.peers_listed", peers=len(snapshot.leases), revision=revision)
            await send_channel.send(snapshot)
            return revision

        async def on_batch(batch: WatchBatch) -> None:
            changes = feed.changes(batch.events, batch.resume_revision - 1)
            if changes is not None:
                await send_channel.send(changes)

        async with send_channel:
            await self._follow(self._registry.watch_leases, on_batch, resync, what="peer leases")

    # ----------------------------------------------------------------- watch loop
    async def _follow(
        self,
        open_watch: _OpenWatch,
        on_batch: Callable[[WatchBatch], Awaitable[None]],
        resync: Callable[[], Awaitable[int]],
        *,
        what: str,
    ) -> NoReturn:
        """List, then watch from the list revision + 1, forever.

        A broken stream (etcd restarted, endpoint lost) is re-created from the revision after
        the last delivered batch, after a backoff of 100 ms doubling to ``WATCH_RETRY_MAX``. A
        compacted revision triggers ``resync`` (a fresh listing) and a watch from there.
        """
        backoff = Backoff.of(0.1, WATCH_RETRY_MAX)
        since: int | None = None
        # Consecutive failed attempts: the first is a warning, repeats only every
        # _LOG_EVERY_ATTEMPTS (at one attempt a second, an hour-long outage must not log 7200
        # lines per watch), and the recovery is logged once.
        failures = 0
        while True:
            if since is None:
                try:
                    since = await resync() + 1
                    backoff.reset()
                except RegistryError as exc:
                    failures += 1
                    delay = backoff.next()
                    _log_retry(
                        failures,
                        "watch.list_failed",
                        watch=what,
                        error=str(exc),
                        retry_in=delay,
                    )
                    await trio.sleep(delay)
                    continue
            try:
                async with open_watch(since) as stream:
                    if failures:
                        log.info("watch.resumed", watch=what, since=since, attempts=failures)
                        failures = 0
                    async for batch in stream:
                        await on_batch(batch)
                        since = max(since, batch.resume_revision)
                        backoff.reset()
                raise RegistryError(f"watch of {what} ended")
            except WatchCompacted as exc:
                METRICS.watch_restarts_total += 1
                log.warning(
                    "watch.compacted",
                    watch=what,
                    since=since,
                    compact_revision=exc.compact_revision,
                )
                since = None
                continue
            except RegistryError as exc:
                METRICS.watch_restarts_total += 1
                failures += 1
                delay = backoff.next()
                _log_retry(
                    failures,
                    "watch.broken",
                    watch=what,
                    since=since,
                    error=str(exc),
                    retry_in=delay,
                )
                await trio.sleep(delay)
