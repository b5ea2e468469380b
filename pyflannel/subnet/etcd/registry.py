"""The etcd v3 lease registry: leases, the network config and watches under one prefix.

Keys and values use flanneld's codecs (:mod:`pyflannel.lease`), so flanneld and pyflannel nodes
can share one etcd. Connection, TLS, auth, failover and error mapping are the session's
(:mod:`.session`); what this module adds on top of flanneld's registry:

- leases are listed in pages at one revision and their TTLs are fetched concurrently and
  cached by etcd lease ID (:mod:`.expiry`), instead of one sequential ``TimeToLive`` per key;
- every write that could race is a transaction whose outcome is read back in the same round
  trip (:mod:`.create`), so a retried request can tell "I already did this" from "someone
  else did".
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Final, Unpack

import structlog

from pyflannel.closing import AsyncClosing
from pyflannel.errors import RegistryError
from pyflannel.lease import Lease, LeaseAttrs, encode_attrs, make_subnet_key
from pyflannel.subnet.etcd.client import (
    Compare,
    Delete,
    EtcdClient,
    KeyValue,
    Put,
    WatchEvents,
    prefix_range_end,
)
from pyflannel.subnet.etcd.create import CreateTxn, PutTxn
from pyflannel.subnet.etcd.endpoints import (
    DEFAULT_ENDPOINTS,
    DEFAULT_PREFIX,
    clean_prefix,
    parse_endpoints,
)
from pyflannel.subnet.etcd.errors import ConfigNotFound
from pyflannel.subnet.etcd.expiry import ExpiryCache
from pyflannel.subnet.etcd.leases import (
    CreateResult,
    WatchBatch,
    decode_lease,
    holding_our_subnets,
    result_from_kv,
)
from pyflannel.subnet.etcd.listing import Listing
from pyflannel.subnet.etcd.session import EtcdCredentials, EtcdSession
from pyflannel.subnet.etcd.watch import WatchStream, decode_watch_events, open_watch

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "EtcdRegistry"]

log = structlog.get_logger(__name__)

DEFAULT_REQUEST_TIMEOUT: Final = 10.0
# A dual-stack create retried because other keys were created meanwhile (none holding our
# subnets): each retry means another node made progress, so this bounds only the pathological
# case; the caller then lists again.
_CREATE_RETRIES: Final = 500
# Watch responses up to this many events are decoded on the trio thread when no etcd call is
# needed for them (see _convert_watch).
_INLINE_WATCH_EVENTS: Final = 16
_CONFIG_EXAMPLE: Final = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'


class EtcdRegistry(AsyncClosing):
    """Lease storage in etcd v3 under ``<prefix>/subnets/`` plus the network config.

    All I/O methods are async; construction does no I/O (the client connects and, with a
    username, authenticates on first use; TLS: see :class:`.session.EtcdSession`).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINTS,
        prefix: str = DEFAULT_PREFIX,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        **credentials: Unpack[EtcdCredentials],
    ) -> None:
        self._prefix = clean_prefix(prefix)
        self.session = EtcdSession(
            parse_endpoints(endpoints), prefix=self._prefix, timeout=request_timeout, **credentials
        )
        self._expiry = ExpiryCache()
        self._listing = Listing(self._expiry)

    # ----------------------------------------------------------------- naming
    @property
    def prefix(self) -> str:
        """The cleaned ``--etcd-prefix``."""
        return self._prefix

    @property
    def config_key(self) -> str:
        """``<prefix>/config``."""
        return f"{self._prefix}/config"

    @property
    def subnets_prefix(self) -> str:
        """``<prefix>/subnets/`` (with the slash; flanneld lists without it)."""
        return f"{self._prefix}/subnets/"

    @property
    def endpoints_text(self) -> str:
        """The endpoints, comma-separated, for messages."""
        return self.session.endpoints_text

    def lease_key(
        self, subnet: ipaddress.IPv4Network | None, ipv6_subnet: ipaddress.IPv6Network | None
    ) -> str:
        """The etcd key of a lease."""
        return make_subnet_key(self._prefix, subnet, ipv6_subnet)

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the gRPC channels and watch streams (idempotent)."""
        self.session.close()

    async def aclose(self) -> None:
        """Async spelling of :meth:`close`."""
        self.close()

    # ----------------------------------------------------------------- config
    async def get_config(self) -> str:
        """The raw network config JSON at ``<prefix>/config``.

        Raises :class:`ConfigNotFound` with flanneld's message and the command that creates it.
        """
        key = self.config_key
        resp = await self.session.call(f"get {key}", lambda c: c.range(key.encode()))
        if not resp.kvs:
            raise ConfigNotFound(
                "flannel config not found in etcd store. Did you create your config using "
                f"etcdv3 API? (looked for {key} at {self.endpoints_text})",
                hint=f"create it with: ETCDCTL_API=3 etcdctl put {key} '{_CONFIG_EXAMPLE}'",
            )
        return resp.kvs[0].value.decode("utf-8", errors="replace")

    async def put_config(self, value: str, *, expected: str | None) -> bool:
        """Write ``<prefix>/config`` only if it still holds ``expected`` (None: still absent).

        For ``pyflannel config set`` (the daemon never writes the config). False when someone
        changed the key since ``expected`` was read.
        """
        key = self.config_key.encode()
        if expected is None:
            cmp = Compare(key, "version", "==", 0)
        else:
            cmp = Compare(key, "value", "==", expected.encode())
        return await self.session.call(
            f"put {self.config_key}",
            lambda c: c.txn([cmp], [Put(key, value.encode())], []).succeeded,
        )

    # ----------------------------------------------------------------- reading leases
    async def list_leases(self, *, with_ttl: bool = True) -> tuple[list[Lease], int]:
        """All parsable leases under ``<prefix>/subnets/`` and the revision they were read at.

        Keys without an etcd lease are reservations (``etcd_lease_id == 0``, ``expiration``
        ``None``). With ``with_ttl=False`` no TimeToLive is asked and ``expiration`` stays
        ``None`` for every lease (allocation needs only subnets and attrs).
        """
        prefix = self.subnets_prefix

        return await self.session.call(
            f"list {prefix}", lambda c: self._listing.list(c, prefix, with_ttl=with_ttl)
        )

    async def get_lease(
        self, subnet: ipaddress.IPv4Network | None, ipv6_subnet: ipaddress.IPv6Network | None
    ) -> tuple[Lease | None, int]:
        """The lease under one key (``None`` if absent or unparsable) and the read revision."""
        key = self.lease_key(subnet, ipv6_subnet)

        def run(client: EtcdClient) -> tuple[Lease | None, int]:
            resp = client.range(key.encode())
            if not resp.kvs:
                return None, resp.revision
            kv = resp.kvs[0]
            expiry = self._expiry.expirations(client, [kv.lease])
            return decode_lease(kv, expiry.get(kv.lease)), resp.revision

        return await self.session.call(f"get {key}", run)

    async def lease_time_to_live(self, lease_id: int) -> float | None:
        """Seconds left on an etcd lease (``None`` if it expired or never existed)."""

        def run(client: EtcdClient) -> float | None:
            ttl = client.time_to_live(lease_id)
            return None if ttl < 0 else float(ttl)

        return await self.session.call(f"time-to-live of lease {lease_id:x}", run)

    # ----------------------------------------------------------------- etcd leases
    async def grant(self, ttl: int) -> tuple[int, float]:
        """A new etcd lease: ``(lease_id, wall-clock expiration)``."""

        def run(client: EtcdClient) -> tuple[int, float]:
            now = time.time()
            lease_id, granted = client.grant(int(ttl))
            expiration = now + granted
            self._expiry.remember(lease_id, expiration)
            return lease_id, expiration

        return await self.session.call(f"grant lease (TTL {ttl}s)", run)

    async def revoke(self, lease_id: int) -> None:
        """Revoke an etcd lease, ignoring "not found"; failures are only logged."""
        try:
            await self.session.call(f"revoke lease {lease_id:x}", lambda c: c.revoke(lease_id))
        except RegistryError as exc:
            log.warning("etcd.lease_revoke_failed", lease_id=lease_id, error=str(exc))
        self._expiry.forget(lease_id)

    # ----------------------------------------------------------------- writing leases
    async def create_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        attrs: LeaseAttrs,
        ttl: int,
        *,
        known_revision: int = 0,
    ) -> CreateResult:
        """flanneld's ``createSubnet``: Grant(ttl), then put the key only if no key holds either
        of its subnets (flanneld only requires the exact key to be absent, so in dual stack two
        nodes could share a half). How the transaction checks that, and why it needs
        ``known_revision`` (the revision of the listing the caller picked the subnets from):
        :mod:`.create`.

        The result is ``existing``/``unreadable`` when the key itself exists, ``conflict``
        when another key holds one of our subnets. The grant is revoked when the key was not
        written; after a lost reply see :meth:`_settle_lost_reply`. A cancelled call leaves
        the grant to expire too: the abandoned request may still be applied.
        """
        key = self.lease_key(subnet, ipv6_subnet)
        seen = known_revision
        hidden = self._listing.unreadable_at(known_revision)
        if hidden is None:
            seen = 0  # not a listing of ours: the first attempt checks every key
        else:
            # The caller's listing skipped these keys (values it cannot decode), so it could
            # not avoid their subnets; the revision compare alone would let us share one.
            blocking = holding_our_subnets(hidden, subnet, ipv6_subnet)
            if blocking is not None:
                return CreateResult(lease=None, conflict=blocking)
        lease_id, expiration = await self.grant(ttl)
        txn = CreateTxn(
            key=key,
            v4_key=None if subnet is None else self.lease_key(subnet, None),
            subnets_prefix=self.subnets_prefix,
            subnet=subnet,
            ipv6_subnet=ipv6_subnet,
            value=encode_attrs(attrs),
            lease_id=lease_id,
            expiration=expiration,
        )
        try:
            for _ in range(_CREATE_RETRIES):
                result, seen = await self.session.call(
                    f"create {key}", functools.partial(txn.run, seen=seen, expiry=self._expiry)
                )
                if result is not None:
                    break
            else:
                result = CreateResult(lease=None)
        except RegistryError as exc:
            return await self._settle_lost_reply(key, lease_id, expiration, exc)
        if not result.ok:
            await self.revoke(lease_id)
        return result

    async def put_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        attrs: LeaseAttrs,
        ttl: int | None,
        *,
        if_mod_revision: int | None = None,
    ) -> CreateResult:
        """flanneld's ``updateSubnet``: Grant(ttl) + Put; ``ttl=None`` puts a reservation.

        A reservation is written without an etcd lease, so it never expires (flannel #1329).
        With ``if_mod_revision`` the put only happens if the key is unchanged since that
        revision; otherwise ``existing`` (or ``unreadable``) holds what is there now
        (flanneld's put is unconditional and can overwrite another node's fresh lease). The
        fresh grant is revoked only when etcd answered that the put did not happen; after a
        lost reply see :meth:`_settle_lost_reply`.
        """
        key = self.lease_key(subnet, ipv6_subnet)
        lease_id, expiration = (0, None) if ttl is None else await self.grant(ttl)
        txn = PutTxn(key, encode_attrs(attrs), lease_id, expiration, if_mod_revision)
        try:
            result = await self.session.call(
                f"put {key}", functools.partial(txn.run, expiry=self._expiry)
            )
        except RegistryError as exc:
            if not lease_id:
                raise
            return await self._settle_lost_reply(key, lease_id, expiration, exc)
        if not result.ok and lease_id:
            await self.revoke(lease_id)
        return result

    async def _settle_lost_reply(
        self, key: str, lease_id: int, expiration: float | None, error: RegistryError
    ) -> CreateResult:
        """The outcome of a write whose reply was lost (``error``), without making it worse.

        The write may have been applied (a timeout after etcd committed it) or may still be
        applied later (it is in the raft log). Revoking the fresh lease now would delete our
        key in the first case and race with the commit in the second, so the lease is never
        revoked here: the key is read back, and if it carries the lease the write is ours;
        otherwise ``error`` is raised and the unused lease simply expires after its TTL.
        """

        def read_back(client: EtcdClient) -> KeyValue | None:
            resp = client.range(key.encode())
            return resp.kvs[0] if resp.kvs else None

        try:
            kv = await self.session.call(f"read back {key}", read_back)
        except RegistryError:
            kv = None
        result = (
            None
            if kv is None
            else result_from_kv(kv, lease_id, expiration, self._expiry.get(kv.lease))
        )
        if result is not None and result.ok:
            log.info("etcd.write_reply_lost", key=key)
            return result
        log.info(
            "etcd.write_outcome_unknown",
            key=key,
            lease_id=f"{lease_id:x}",
            error=str(error),
        )
        raise error

    async def delete_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        *,
        if_mod_revision: int | None = None,
    ) -> bool:
        """Delete a lease key; with ``if_mod_revision`` only if unchanged. True if deleted."""
        key = self.lease_key(subnet, ipv6_subnet)
        k = key.encode()
        cmp = [] if if_mod_revision is None else [Compare(k, "mod", "==", if_mod_revision)]

        def run(client: EtcdClient) -> bool:
            resp = client.txn(cmp, [Delete(k)], [])
            return resp.succeeded and bool(resp.responses) and resp.responses[0].deleted > 0

        return await self.session.call(f"delete {key}", run)

    # ----------------------------------------------------------------- watching
    def watch_leases(self, start_revision: int) -> AbstractAsyncContextManager[WatchStream]:
        """Watch every lease key from ``start_revision`` (see :class:`.watch.WatchStream`)."""
        start = self.subnets_prefix.encode()
        return open_watch(
            self.session, start, prefix_range_end(start), start_revision, self._convert_watch
        )

    def watch_lease(
        self,
        subnet: ipaddress.IPv4Network | None,
        ipv6_subnet: ipaddress.IPv6Network | None,
        start_revision: int,
    ) -> AbstractAsyncContextManager[WatchStream]:
        """Watch one lease key (exactly; flanneld's prefix watch would also match
        ``<ours>&<ipv6>`` and longer prefix lengths)."""
        key = self.lease_key(subnet, ipv6_subnet).encode()
        return open_watch(self.session, key, b"", start_revision, self._convert_watch)

    async def _convert_watch(self, resp: WatchEvents, op: str) -> WatchBatch:
        puts = [ev.kv.lease for ev in resp.events if ev.kind == "put"]
        if len(resp.events) <= _INLINE_WATCH_EVENTS:
            # Expirations all known (the usual case: a peer's lease ID is cached from the
            # listing or an earlier event): no etcd round trip is needed, so decode right here
            # instead of in a worker thread -- one thread hand-off less per peer event.
            cached = self._expiry.cached(puts)
            if cached is not None:
                return decode_watch_events(resp, cached, decode_lease)

        def run(client: EtcdClient) -> WatchBatch:
            return decode_watch_events(resp, self._expiry.expirations(client, puts), decode_lease)

        return await self.session.call(op, run)
