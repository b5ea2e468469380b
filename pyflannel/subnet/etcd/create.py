"""Conditional lease writes whose outcome is read back in the same round trip.

:class:`PutTxn` is :meth:`.registry.EtcdRegistry.put_lease`'s; :class:`CreateTxn` is the create
transaction of :meth:`.registry.EtcdRegistry.create_lease`.

It puts the key only if no key holds either of its subnets, and on failure reads in the same
round trip what stood in the way, so that a retried request can tell "I already did this"
from "someone else did". The compares:

- IPv4 half: the key ``<v4>`` and the key range ``[<v4>&, <v4>')`` -- exactly the keys whose
  IPv4 half is ours (``'`` follows ``&``; ``<v4>0`` as in ``-240`` lies outside) -- must be
  empty;
- IPv6 half (dual stack only): keys with our IPv6 half are spread over the whole ``subnets/``
  range, so no key range holds exactly them. Instead no key in ``subnets/`` may have been
  created after ``seen``, the revision of the listing the caller checked the subnets against
  (renewals keep a key's create revision, so they do not interfere). When that compare fails
  because of an *unrelated* create, the keys created since are read in the same transaction;
  if none of them holds our subnets the create is retried at once against the new revision
  (bounded), so a busy cluster costs retries, not wrongly "lost" subnets. This needs the
  caller to have seen every key at ``seen``: keys that our listing at that revision could not
  decode are checked first (by the registry), and a revision that is not one of our recent
  listings is treated as 0 (the first attempt then reads every key);
- IPv6-only keys (``0.0.0.0-0&<v6>``): the exact key. Nodes of one network write keys of one
  shape, so a concurrent creator of the same subnet writes the same key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyflannel.subnet.etcd.client import Compare, EtcdClient, Get, Put, prefix_range_end
from pyflannel.subnet.etcd.expiry import ExpiryCache
from pyflannel.subnet.etcd.leases import CreateResult, holding_our_subnets, result_from_kv

__all__ = ["CreateTxn", "PutTxn"]


@dataclass(frozen=True, slots=True)
class CreateTxn:
    """One lease to create: ``key`` holding ``value`` under etcd lease ``lease_id``.

    ``v4_key`` is the key of the IPv4 half alone (``None`` for IPv6-only leases);
    ``subnets_prefix`` is ``<prefix>/subnets/``.
    """

    key: str
    v4_key: str | None
    subnets_prefix: str
    subnet: ipaddress.IPv4Network | None
    ipv6_subnet: ipaddress.IPv6Network | None
    value: str
    lease_id: int
    expiration: float | None

    def run(
        self, client: EtcdClient, seen: int, expiry: ExpiryCache
    ) -> tuple[CreateResult | None, int]:
        """One attempt: its result (``None``: only unrelated keys were created since ``seen``,
        retry) and the revision it was evaluated at."""
        compares: list[Compare] = []
        reads: list[Get] = []

        def absent(start: bytes, end: bytes = b"") -> None:
            compares.append(Compare(start, "version", "==", 0, range_end=end))
            reads.append(Get(start, range_end=end))

        key_bytes = self.key.encode()
        if self.v4_key is None:
            absent(key_bytes)
        else:
            # The key <v4> and the range [<v4>&, <v4>'): exactly the keys whose IPv4 half is
            # ours ("'" follows "&"; "<v4>0" as in "-240" lies outside).
            v4 = self.v4_key.encode()
            absent(v4)
            paired = v4 + b"&"
            absent(paired, prefix_range_end(paired))
            if self.ipv6_subnet is not None:
                # Keys with our IPv6 half are spread over the whole subnets/ range: instead no
                # key may have been created there since the caller's listing at ``seen``.
                start = self.subnets_prefix.encode()
                end = prefix_range_end(start)
                compares.append(Compare(start, "create", "<", seen + 1, range_end=end))
                reads.append(Get(start, range_end=end, min_create_revision=seen + 1))
        resp = client.txn(
            compares,
            success=[Put(key_bytes, self.value.encode(), self.lease_id), Get(key_bytes)],
            failure=reads,
        )
        kvs = [kv for r in resp.responses for kv in r.kvs]
        own = next((kv for kv in kvs if kv.key == key_bytes), None)
        if resp.succeeded or own is not None:
            if own is None:
                return CreateResult(lease=None), resp.revision
            result = result_from_kv(own, self.lease_id, self.expiration, expiry.get(own.lease))
            return result, resp.revision
        other = holding_our_subnets(
            (kv.key.decode("utf-8", errors="replace") for kv in kvs),
            self.subnet,
            self.ipv6_subnet,
        )
        if other is not None:
            return CreateResult(lease=None, conflict=other), resp.revision
        return None, resp.revision


@dataclass(frozen=True, slots=True)
class PutTxn:
    """Put ``value`` at ``key`` under etcd lease ``lease_id`` (0: a reservation), only if the key
    is unchanged since ``if_mod_revision`` when given; then read the key back."""

    key: str
    value: str
    lease_id: int
    expiration: float | None
    if_mod_revision: int | None = None

    def run(self, client: EtcdClient, expiry: ExpiryCache) -> CreateResult:
        """The outcome: ours, or what the key holds instead."""
        k = self.key.encode()
        cmp = (
            [] if self.if_mod_revision is None else [Compare(k, "mod", "==", self.if_mod_revision)]
        )
        resp = client.txn(cmp, [Put(k, self.value.encode(), self.lease_id), Get(k)], [Get(k)])
        kvs = resp.responses[-1].kvs if resp.responses else ()
        if not kvs:
            return CreateResult(lease=None)
        kv = kvs[0]
        if resp.succeeded and self.lease_id == 0:
            # A reservation: no lease ID to recognise our write by.
            result = result_from_kv(kv, 0, None, expiry.get(kv.lease))
            if result.existing is not None:
                return CreateResult(lease=result.existing)
            return result
        # Failed but carrying our fresh lease: a retried request whose first attempt was
        # applied (failover after a lost reply). The lease ID is ours alone, so it is ours.
        return result_from_kv(kv, self.lease_id, self.expiration, expiry.get(kv.lease))
