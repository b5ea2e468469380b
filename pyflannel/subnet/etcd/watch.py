"""etcd watches as trio async iterators of :class:`~.leases.WatchBatch`.

pyetcd runs watch callbacks on its own watcher thread; they are bridged into a trio memory
channel in etcd's order and decoded into lease events.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
import trio

from pyflannel.errors import EtcdUnavailable
from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs, LeaseDecodeError, parse_subnet_key
from pyflannel.subnet.etcd.client import EtcdClient, KeyValue, WatchEvents, WatchHandle, WatchItem
from pyflannel.subnet.etcd.leases import WatchBatch
from pyflannel.subnet.etcd.session import EtcdSession

__all__ = ["WatchStream", "decode_watch_events", "open_watch"]

log = structlog.get_logger(__name__)

# Decodes one response into a batch (may call etcd for expirations).
Converter = Callable[[WatchEvents, str], Awaitable[WatchBatch]]


def decode_watch_events(
    resp: WatchEvents,
    expiry: dict[int, float],
    decode: Callable[[KeyValue, float | None], Lease | None],
) -> WatchBatch:
    """A watch response as lease events; ``expiry``: expirations by etcd lease ID."""
    events: list[Event] = []
    for ev in resp.events:
        if ev.kind == "delete":
            try:
                subnet, ipv6_subnet = parse_subnet_key(ev.kv.key.decode("utf-8"))
            except (LeaseDecodeError, UnicodeDecodeError):
                log.warning("etcd.non_lease_delete_ignored", key=repr(ev.kv.key))
                continue
            lease = Lease(
                subnet=subnet,
                attrs=LeaseAttrs(),
                ipv6_subnet=ipv6_subnet,
                mod_revision=ev.kv.mod_revision,
            )
            events.append(Event(EventKind.REMOVED, lease))
            continue
        decoded = decode(ev.kv, expiry.get(ev.kv.lease))
        if decoded is not None:
            events.append(Event(EventKind.ADDED, decoded))
    revisions = [ev.kv.mod_revision for ev in resp.events]
    return WatchBatch(
        revision=resp.revision,
        events=tuple(events),
        resume_revision=(max(revisions) if revisions else resp.revision) + 1,
    )


class WatchStream:
    """Async iterator of :class:`~.leases.WatchBatch`; raises when the underlying stream dies.

    - :class:`~.errors.WatchCompacted` when the start revision is no longer available;
    - :class:`~pyflannel.errors.EtcdUnavailable` (or another ``RegistryError``) when the stream
      broke, e.g. because etcd restarted. ``pyetcd`` delivers exactly one error and the watch
      is then dead: the caller resumes with a new watch from the last revision + 1.
    """

    def __init__(
        self,
        session: EtcdSession,
        recv: trio.MemoryReceiveChannel[WatchItem],
        op: str,
        convert: Converter,
    ) -> None:
        self._session = session
        self._recv = recv
        self._op = op
        self._convert = convert

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchBatch:
        try:
            item = await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        if isinstance(item, WatchEvents):
            return await self._convert(item, self._op)
        if item is None:
            raise EtcdUnavailable(
                f"etcd {self._op}: the watch stream to {self._session.endpoints_text} was closed",
                hint="it is re-created from the last revision seen",
            )
        raise self._session.map_error(self._op, item)


@asynccontextmanager
async def open_watch(
    session: EtcdSession,
    key: bytes,
    range_end: bytes,
    start_revision: int,
    convert: Converter,
) -> AsyncIterator[WatchStream]:
    """Watch ``key`` (or ``[key, range_end)``) from ``start_revision`` until the block ends."""
    op = f"watch {key.decode(errors='replace')} from revision {start_revision}"
    send, recv = trio.open_memory_channel[WatchItem](math.inf)
    token = trio.lowlevel.current_trio_token()

    def deliver(item: WatchItem) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            send.send_nowait(item)

    def on_item(item: WatchItem) -> None:
        # Runs on pyetcd's watcher thread, in etcd's order; run_sync_soon keeps that order
        # (FIFO) and, unlike from_thread.run_sync, does not wait for the trio thread: a thread
        # stopping the daemon may be waiting for pyetcd's locks, which this thread holds.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(deliver, item)

    def create(client: EtcdClient) -> WatchHandle:
        # A cheap authenticated read first: it renews an expired auth token (and with it
        # the watch stream), because pyetcd silently drops a watch that etcd refuses.
        client.range(key, count_only=True)
        return client.add_watch(key, range_end, on_item, start_revision=start_revision)

    handle = await session.call(op, create)
    try:
        async with recv:
            yield WatchStream(session, recv, op, convert)
    finally:
        send.close()
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await trio.to_thread.run_sync(_cancel_quietly, session, handle, abandon_on_cancel=True)


def _cancel_quietly(session: EtcdSession, handle: WatchHandle) -> None:
    client = session.client
    if client is None:
        return
    try:
        client.cancel_watch(handle)
    except Exception as exc:  # the stream may already be gone (EtcdFailure included)
        log.debug("etcd.watch_cancel_failed", watch_id=handle.watch_id, error=str(exc))
