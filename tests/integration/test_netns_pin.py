"""A pinned namespace survives trio's process-wide thread cache handing us a foreign thread."""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
from collections.abc import Iterator

import pytest
import trio

from pyflannel.netlink.nsenter import NetnsPin, in_netns, run_in_netns
from tests.harness.threads import IDLE_SECONDS

pytestmark = pytest.mark.root


def _ino() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.fixture
def foreign_ns() -> Iterator[str]:
    name = f"pfpin{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_pin_runs_blocks_in_the_creating_namespace(foreign_ns: str) -> None:
    home = _ino()
    pin = NetnsPin()
    seen: dict[str, int] = {}

    def borrowed_thread() -> None:
        # A worker thread that some other trio.run left inside another namespace.
        with in_netns(foreign_ns):
            seen["foreign"] = _ino()
            with pin.entered():
                seen["inside"] = _ino()
            seen["after"] = _ino()

    t = threading.Thread(target=borrowed_thread)
    t.start()
    t.join()
    assert seen["foreign"] != home
    assert seen["inside"] == home  # the block ran where the pin was made
    assert seen["after"] == seen["foreign"]  # and the thread was given back as it was
    pin.close()


def test_trio_worker_threads_inherit_the_namespace_of_their_spawner(foreign_ns: str) -> None:
    """Why the pin exists: a worker spawned from a thread in another namespace stays there."""

    async def worker_ino() -> int:
        # Idle workers of earlier tests have exited by now (tests/harness/threads.py), so the
        # worker doing this call is spawned here, inside the namespace.
        await trio.sleep(IDLE_SECONDS * 4)
        return await trio.to_thread.run_sync(_ino)

    assert run_in_netns(foreign_ns, trio.run, worker_ino) != _ino()
