"""Keep trio's shared worker threads from carrying a test's network namespace into later code.

trio.to_thread reuses idle worker threads process-wide, and a thread inherits the network
namespace of the thread that spawned it. A backend test that runs ``trio.run`` inside a node
namespace leaves idle workers *in that namespace*; a later ``to_thread`` call (an etcd client
connecting, etcdctl, a subprocess) would then silently run there. The daemon never switches
namespaces, so this concerns only tests that run several nodes in one process, and it is
handled here: :func:`send_idle_workers_home` moves every idle worker back to the process's
namespace, using trio's public ``start_thread_soon`` only.
"""

from __future__ import annotations

import ctypes
import os
import threading

import trio

__all__ = ["netns_inode", "send_idle_workers_home"]

_CLONE_NEWNET = 0x40000000
# trio names its worker threads "Trio thread N" (while idle, at least).
_WORKER_PREFIX = "Trio thread"


def netns_inode() -> int:
    """The network namespace of the calling thread (its inode number)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def send_idle_workers_home() -> int:
    """Move every idle trio worker thread into this process's network namespace (that of its
    main thread); returns how many were elsewhere. Call from a thread in that namespace.

    One job per worker thread that exists is started at once, each blocking on a barrier:
    trio hands jobs to idle workers first, so every idle worker runs one of them (jobs left
    over, one per busy worker, spawn fresh threads here, in the right namespace).
    """
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        home_ino = os.fstat(home).st_ino
        workers = sum(1 for t in threading.enumerate() if t.name.startswith(_WORKER_PREFIX))
        jobs = workers
        if jobs == 0:
            return 0
        barrier = threading.Barrier(jobs + 1)
        moved: list[int] = []
        errors: list[BaseException] = []

        def job() -> None:
            try:
                if netns_inode() != home_ino:
                    _setns(home)
                    moved.append(1)
            except BaseException as exc:
                errors.append(exc)
            finally:
                barrier.wait(timeout=30)

        for _ in range(jobs):
            trio.lowlevel.start_thread_soon(job, lambda _outcome: None)
        barrier.wait(timeout=30)
    finally:
        os.close(home)
    if errors:
        raise errors[0]
    return len(moved)
