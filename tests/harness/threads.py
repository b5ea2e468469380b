"""Keep trio's shared worker threads from carrying a test's network namespace into later tests.

trio.to_thread reuses idle worker threads process-wide, and a thread inherits the namespace of
the thread that spawned it. A backend test that runs ``trio.run`` inside a node namespace leaves
idle workers *in that namespace*; a later test's ``to_thread`` call (starting etcd, running
etcdctl) would then silently run there. The daemon never switches namespaces, so this only
concerns tests. Workers here idle out after IDLE_SECONDS instead of trio's 10 s, and
:func:`forget_foreign_worker_threads` waits that long after a namespaced run.
"""

from __future__ import annotations

import time

import trio._core._thread_cache as _thread_cache

__all__ = ["IDLE_SECONDS", "forget_foreign_worker_threads", "short_idle_workers"]

IDLE_SECONDS = 0.05


def short_idle_workers() -> None:
    """Make idle trio worker threads exit after IDLE_SECONDS (read by trio at every wait)."""
    _thread_cache.IDLE_TIMEOUT = IDLE_SECONDS  # type: ignore[assignment]


def forget_foreign_worker_threads() -> None:
    """Wait until workers spawned inside another namespace have idled out."""
    short_idle_workers()
    time.sleep(IDLE_SECONDS * 4)
