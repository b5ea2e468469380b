"""Listing every lease at one revision, in pages, with the caches that make re-listing cheap."""

from __future__ import annotations

import dataclasses
from typing import Final

import structlog

from pyflannel.errors import RegistryError
from pyflannel.lease import Lease
from pyflannel.subnet.etcd.client import EtcdClient, KeyValue, prefix_range_end
from pyflannel.subnet.etcd.errors import EtcdFailure
from pyflannel.subnet.etcd.expiry import ExpiryCache
from pyflannel.subnet.etcd.leases import decode_lease

__all__ = ["Listing"]

log = structlog.get_logger(__name__)

_PAGE_SIZE: Final = 2000
_KEEP_UNREADABLE: Final = 4


class Listing:
    """Lists leases (``list``) and remembers what recent listings could not decode."""

    def __init__(self, expiry: ExpiryCache) -> None:
        self._expiry = expiry
        # The last listing's leases by key (each knows its mod_revision): a key-value that has
        # not changed since is not parsed again. At start-up the peer snapshot re-lists what the
        # lease allocation just listed; with 10k peers that saved ~0.5 s and 10k duplicate
        # objects. (Keyed by the key alone: a (key, revision) tuple per lease cost ~0.9 MB.)
        self._listed: dict[bytes, Lease] = {}
        # Listing revision -> the keys it could not decode (last few listings). A caller that
        # planned from a listing never saw these, yet their keys hold subnets: the create
        # transaction checks them (see .create).
        self._unreadable: dict[int, tuple[str, ...]] = {}

    def unreadable_at(self, revision: int) -> tuple[str, ...] | None:
        """The keys our listing at ``revision`` skipped; ``None`` if no recent listing of ours
        was at that revision."""
        return self._unreadable.get(revision)

    def list(self, client: EtcdClient, prefix: str, *, with_ttl: bool) -> tuple[list[Lease], int]:
        """Every decodable lease under ``prefix`` and the revision of the listing (see
        :meth:`.registry.EtcdRegistry.list_leases`)."""
        kvs, revision = _range_all(client, prefix)
        expiry: dict[int, float] = {}
        if with_ttl:
            expiry = self._expiry.expirations(client, (kv.lease for kv in kvs))
            self._expiry.keep_only(kv.lease for kv in kvs)
        leases = []
        previous = self._listed
        listed: dict[bytes, Lease] = {}
        unreadable: list[str] = []
        for kv in kvs:
            expiration = expiry.get(kv.lease)
            known = previous.get(kv.key)
            lease: Lease | None
            if (
                known is not None
                and known.mod_revision == kv.mod_revision
                and known.etcd_lease_id == kv.lease
            ):
                lease = known
                if known.expiration != expiration:
                    lease = dataclasses.replace(known, expiration=expiration)
            else:
                lease = decode_lease(kv, expiration)
                if lease is None:
                    unreadable.append(kv.key.decode("utf-8", errors="replace"))
            if lease is not None:
                leases.append(lease)
                listed[kv.key] = lease
        self._listed = listed
        self._unreadable[revision] = tuple(unreadable)
        while len(self._unreadable) > _KEEP_UNREADABLE:
            del self._unreadable[next(iter(self._unreadable))]
        return leases, revision


def _range_all(client: EtcdClient, prefix: str) -> tuple[list[KeyValue], int]:
    """All key-values under ``prefix`` at one revision, fetched in pages."""
    start = prefix.encode()
    end = prefix_range_end(start)
    for _ in range(3):
        resp = client.range(start, end, limit=_PAGE_SIZE)
        revision = resp.revision
        kvs = list(resp.kvs)
        try:
            while resp.more and kvs:
                resp = client.range(kvs[-1].key + b"\0", end, limit=_PAGE_SIZE, revision=revision)
                kvs.extend(resp.kvs)
        except EtcdFailure as exc:
            if not exc.compacted:
                raise
            log.info("etcd.list_compacted")
            continue
        return kvs, revision
    raise RegistryError(
        f"etcd list {prefix} failed: etcd compacted the listing revision three times in a row",
        hint="etcd auto-compaction is extremely aggressive; retry later",
    )
