"""etcd key-values as leases: decoding, and what a conditional write's read-back means."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import structlog

from pyflannel.lease import Event, Lease, LeaseDecodeError, decode_attrs, parse_subnet_key
from pyflannel.subnet.etcd.client import KeyValue

__all__ = [
    "MAX_LEASE_VALUE_BYTES",
    "CreateResult",
    "Unreadable",
    "WatchBatch",
    "decode_lease",
    "holding_our_subnets",
    "parse_kv",
    "result_from_kv",
]

log = structlog.get_logger(__name__)

# Real lease values are ~150 bytes; anything this big is garbage and is skipped with a warning
# rather than decoded (flanneld would try to decode it).
MAX_LEASE_VALUE_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A lease key that exists but whose value (or key) cannot be decoded.

    It is not "absent": the key still blocks a create and still carries ``etcd_lease_id``
    (0 when written without a lease). ``error`` says why it could not be decoded.
    """

    key: str
    etcd_lease_id: int
    mod_revision: int
    error: str


@dataclass(frozen=True, slots=True)
class CreateResult:
    """Outcome of a conditional write: ``lease`` when ours; otherwise what stood in the way.

    - ``existing``: the key itself holds this (decodable) lease;
    - ``unreadable``: the key itself exists but its value cannot be decoded;
    - ``conflict``: (create only) another key holds one of our subnets, e.g. the same IPv4
      subnet paired with another IPv6 subnet; the text is that key;
    - none of them: the key was gone again when the failed write was read back, or unrelated
      creates kept invalidating a dual-stack create (the caller lists again and retries).
    """

    lease: Lease | None
    existing: Lease | None = None
    unreadable: Unreadable | None = None
    conflict: str | None = None

    @property
    def ok(self) -> bool:
        """True when the write happened."""
        return self.lease is not None


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One etcd watch response: the changes in order and the response's header revision.

    ``ADDED`` events carry the decoded lease (with expiration), ``REMOVED`` events only the
    subnets (etcd's DELETE has no value). ``resume_revision`` is where a new watch continues
    after this batch: one past its last event (unparsable ones included), else past the header.
    """

    revision: int
    events: tuple[Event, ...]
    resume_revision: int


def parse_kv(kv: KeyValue, expiration: float | None) -> Lease | Unreadable:
    """A lease from one key-value, or what makes it :class:`Unreadable` (not logged)."""
    try:
        key_text = kv.key.decode("utf-8")
    except UnicodeDecodeError:
        return Unreadable(repr(kv.key), kv.lease, kv.mod_revision, "non-UTF-8 key")
    if len(kv.value) > MAX_LEASE_VALUE_BYTES:
        return Unreadable(
            key_text,
            kv.lease,
            kv.mod_revision,
            f"oversized value ({len(kv.value)} bytes, limit {MAX_LEASE_VALUE_BYTES})",
        )
    try:
        subnet, ipv6_subnet = parse_subnet_key(key_text)
        attrs = decode_attrs(kv.value, key=key_text)
    except LeaseDecodeError as exc:
        return Unreadable(key_text, kv.lease, kv.mod_revision, exc.message)
    return Lease(
        subnet=subnet,
        attrs=attrs,
        ipv6_subnet=ipv6_subnet,
        expiration=expiration,
        etcd_lease_id=kv.lease,
        mod_revision=kv.mod_revision,
        create_revision=kv.create_revision,
    )


def decode_lease(kv: KeyValue, expiration: float | None) -> Lease | None:
    """A lease from one key-value, or ``None`` (logged) when flanneld would skip it too."""
    parsed = parse_kv(kv, expiration)
    if isinstance(parsed, Lease):
        return parsed
    log.warning("etcd.bad_lease_ignored", key=parsed.key, error=parsed.error)
    return None


def result_from_kv(
    kv: KeyValue | None, lease_id: int, expiration: float | None, known: float | None
) -> CreateResult:
    """A write's outcome from the key read back: ours when it carries ``lease_id``.

    ``kv`` is ``None`` when the key is absent; ``known`` is the cached expiration of the
    key's etcd lease, ``expiration`` that of our own grant.
    """
    if kv is None:
        return CreateResult(lease=None)
    current = parse_kv(kv, known)
    if isinstance(current, Unreadable):
        return CreateResult(lease=None, unreadable=current)
    if lease_id and kv.lease == lease_id:
        # Our own grant's expiration (no TimeToLive round trip needed).
        return CreateResult(lease=dataclasses.replace(current, expiration=expiration))
    return CreateResult(lease=None, existing=current)


def holding_our_subnets(
    keys: Iterable[str],
    subnet: ipaddress.IPv4Network | None,
    ipv6_subnet: ipaddress.IPv6Network | None,
) -> str | None:
    """The first lease key among ``keys`` whose IPv4 or IPv6 subnet overlaps ours."""
    for key in keys:
        try:
            v4, v6 = parse_subnet_key(key)
        except LeaseDecodeError:
            continue  # not a lease key: cannot hold a subnet
        if (subnet is not None and v4 is not None and v4.overlaps(subnet)) or (
            ipv6_subnet is not None and v6 is not None and v6.overlaps(ipv6_subnet)
        ):
            return key
    return None
