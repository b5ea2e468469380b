"""A fault-injecting :class:`~pyflannel.subnet.protocols.Registry` wrapper for lease tests.

Each write (create, put, delete) takes the next entry of ``faults``: ``"ok"``, ``"before"``
(fails without reaching etcd) or ``"after"`` (takes effect in etcd, then reports a timeout, as
a lost reply does). It counts writes and records deletes of keys that did not carry ``me``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from pyflannel.errors import EtcdUnavailable
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.subnet.etcd.leases import CreateResult
from pyflannel.subnet.etcd.registry import EtcdRegistry
from pyflannel.subnet.etcd.watch import WatchStream

__all__ = ["FaultyRegistry"]

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


class FaultyRegistry:
    """A Registry whose writes fail on demand, before or after they take effect."""

    def __init__(self, inner: EtcdRegistry, me: LeaseAttrs) -> None:
        self.inner = inner
        self.me = me
        self.faults: list[str] = []
        self.writes = 0
        self.foreign_deletes: list[str] = []

    @property
    def prefix(self) -> str:
        return self.inner.prefix

    async def _write(self, do: Callable[[], Awaitable[Any]]) -> Any:
        self.writes += 1
        fault = self.faults.pop(0) if self.faults else "ok"
        if fault == "before":
            raise EtcdUnavailable("etcd write failed: injected before sending")
        result = await do()
        if fault == "after":
            raise EtcdUnavailable("etcd write failed: injected after it took effect")
        return result

    async def get_config(self) -> str:
        return await self.inner.get_config()

    async def list_leases(self, *, with_ttl: bool = True) -> tuple[list[Lease], int]:
        return await self.inner.list_leases(with_ttl=with_ttl)

    async def get_lease(
        self, subnet: V4 | None, ipv6_subnet: V6 | None
    ) -> tuple[Lease | None, int]:
        return await self.inner.get_lease(subnet, ipv6_subnet)

    async def create_lease(
        self,
        subnet: V4 | None,
        ipv6_subnet: V6 | None,
        attrs: LeaseAttrs,
        ttl: int,
        *,
        known_revision: int = 0,
    ) -> CreateResult:
        result: CreateResult = await self._write(
            lambda: self.inner.create_lease(
                subnet, ipv6_subnet, attrs, ttl, known_revision=known_revision
            )
        )
        return result

    async def put_lease(
        self,
        subnet: V4 | None,
        ipv6_subnet: V6 | None,
        attrs: LeaseAttrs,
        ttl: int | None,
        *,
        if_mod_revision: int | None = None,
    ) -> CreateResult:
        result: CreateResult = await self._write(
            lambda: self.inner.put_lease(
                subnet, ipv6_subnet, attrs, ttl, if_mod_revision=if_mod_revision
            )
        )
        return result

    async def delete_lease(
        self, subnet: V4 | None, ipv6_subnet: V6 | None, *, if_mod_revision: int | None = None
    ) -> bool:
        current, _ = await self.inner.get_lease(subnet, ipv6_subnet)
        if current is None or current.attrs.public_ip != self.me.public_ip:
            self.foreign_deletes.append(self.inner.lease_key(subnet, ipv6_subnet))
        deleted: bool = await self._write(
            lambda: self.inner.delete_lease(subnet, ipv6_subnet, if_mod_revision=if_mod_revision)
        )
        return deleted

    def watch_leases(self, start_revision: int) -> AbstractAsyncContextManager[WatchStream]:
        return self.inner.watch_leases(start_revision)

    def watch_lease(
        self, subnet: V4 | None, ipv6_subnet: V6 | None, start_revision: int
    ) -> AbstractAsyncContextManager[WatchStream]:
        return self.inner.watch_lease(subnet, ipv6_subnet, start_revision)

    def close(self) -> None:
        self.inner.close()
