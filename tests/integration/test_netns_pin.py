"""A pinned namespace survives trio's process-wide thread cache handing us a foreign thread."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest
import trio

from pyflannel.netlink.nsenter import NetnsPin, run_in_netns

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

    async def worker_ino() -> int:
        return await trio.to_thread.run_sync(_ino)

    # A trio run inside another namespace leaves idle worker threads there, in the shared cache.
    foreign = run_in_netns(foreign_ns, trio.run, worker_ino)
    assert foreign != home

    def pinned_ino() -> tuple[int, int]:
        with pin.entered():
            inside = _ino()
        return inside, _ino()

    async def later() -> tuple[int, int]:
        return await trio.to_thread.run_sync(pinned_ino)

    inside, after = trio.run(later)
    assert inside == home  # the block ran where the pin was made
    assert after == foreign  # and the borrowed thread was given back as it was
    pin.close()
