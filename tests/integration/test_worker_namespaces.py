"""The hazard tests/harness/threads.py handles, and that the harness handles it.

trio's worker threads are shared process-wide and inherit the network namespace of the thread
that spawned them, so a ``trio.run`` inside a node namespace leaves idle workers there.
"""

from __future__ import annotations

import functools
import secrets
import subprocess
import threading
from collections.abc import Iterator

import pytest
import trio

from pyflannel.netlink.nsenter import run_in_netns
from tests.harness.threads import netns_inode, send_idle_workers_home

pytestmark = pytest.mark.root

WORKERS = 4


@pytest.fixture
def foreign_ns() -> Iterator[str]:
    name = f"pfwk{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def _worker_namespaces(n: int) -> set[int]:
    """The namespaces of ``n`` worker threads busy at the same time (so ``n`` distinct ones)."""
    barrier = threading.Barrier(n)
    seen: list[int] = []

    def job() -> None:
        seen.append(netns_inode())
        barrier.wait(timeout=10)

    # Its own limiter: the default one (40 at a time) would starve the barrier when earlier
    # tests of the session left many workers behind.
    limiter = trio.CapacityLimiter(n)
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(functools.partial(trio.to_thread.run_sync, job, limiter=limiter))
    return set(seen)


def _occupy_many_workers() -> set[int]:
    # More workers than can be idle: some are spawned here, inside the namespace.
    busy = sum(1 for t in threading.enumerate() if t.name.startswith("Trio thread")) + WORKERS
    return trio.run(_worker_namespaces, busy)


def test_workers_spawned_in_a_namespace_stay_there(foreign_ns: str) -> None:
    home = netns_inode()
    inside = run_in_netns(foreign_ns, _occupy_many_workers)
    assert inside - {home}, "workers spawned inside the namespace live there"
    # ...and without the harness, a later to_thread call could land in one of them.
    assert send_idle_workers_home() >= 1


def test_harness_sends_idle_workers_home(foreign_ns: str) -> None:
    home = netns_inode()
    run_in_netns(foreign_ns, _occupy_many_workers)
    send_idle_workers_home()
    idle = sum(1 for t in threading.enumerate() if t.name.startswith("Trio thread"))
    assert trio.run(_worker_namespaces, idle + 1) == {home}
    assert send_idle_workers_home() == 0


def _trio_workers() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("Trio thread"))


def test_workers_at_home_are_left_alone_so_the_pool_does_not_grow() -> None:
    """The harness runs before every test. It used to hand every idle worker a job each time
    and return before they were idle again: the test's next to_thread call then spawned one
    more worker now and then, and as every worker was touched every test none ever retired
    (~11,600 threads by the end of one full run)."""
    trio.run(_worker_namespaces, 8)  # eight idle workers, all at home
    before = _trio_workers()
    for _ in range(300):
        assert send_idle_workers_home() == 0
        trio.run(_worker_namespaces, 8)  # needs all eight at once, right away
    assert _trio_workers() <= before
