"""The kube peer watch never spins: a server that ends every watch at once, or answers every
watch with 410 right after a listing (a misbehaving or lying API server), costs one attempt per
backoff step and a bounded number of log lines, under trio's MockClock."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from pyflannel.config import parse_network_config
from pyflannel.errors import KubeWatchExpired
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.subnet.kube.annotations import annotation_keys
from pyflannel.subnet.kube.client import NodeList
from pyflannel.subnet.kube.manager import KubeSubnetManager
from pyflannel.subnet.kube.watch import NodeEvent, NodeFeed

CONFIG = parse_network_config(b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}')
MINUTE = 60.0
RUNAWAY = 10_000  # a spinning loop never lets MockClock advance: stop it here instead of hanging


class Runaway(Exception):
    pass


class FakeClient:
    """Lists no peers; every watch ends at once (``mode="empty"``) or is expired (``"gone"``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.lists = 0
        self.watches = 0

    async def list_nodes(self) -> NodeList:
        self.lists += 1
        return NodeList([], "7")

    @asynccontextmanager
    async def watch_nodes(self, resource_version: str) -> AsyncIterator[AsyncIterator[Any]]:
        self.watches += 1
        if self.watches > RUNAWAY:
            raise Runaway
        if self.mode == "gone":
            raise KubeWatchExpired("too old resource version", status=410, reason="Expired")

        async def nothing() -> AsyncIterator[NodeEvent | str]:
            return
            yield  # an async generator that ends at once

        yield nothing()


@pytest.mark.parametrize("mode", ["empty", "gone"])
def test_a_watch_that_ends_at_once_is_retried_with_backoff(mode: str) -> None:
    client = FakeClient(mode)
    mgr = KubeSubnetManager(None, client=client)  # type: ignore[arg-type]
    mgr.feed = NodeFeed("me", annotation_keys(), CONFIG)
    mgr._config = CONFIG
    own = Lease(subnet=ipaddress.IPv4Network("10.5.1.0/24"), attrs=LeaseAttrs())

    async def run() -> None:
        send, recv = trio.open_memory_channel[object](1000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mgr.watch_leases, own, send)
            await trio.sleep(MINUTE)
            nursery.cancel_scope.cancel()
        recv.close()

    with structlog.testing.capture_logs() as logs:
        trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    # Backoff 0.1 s doubling to 5 s: about 17 attempts in a simulated minute, not thousands.
    assert client.watches <= 25, f"{client.watches} watches in a minute: a busy loop"
    shown = [e for e in logs if e["log_level"] != "debug"]  # what -v 0 prints
    assert len(shown) <= 5, f"{len(shown)} log lines in a minute: {shown[:5]}"
