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


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(_WORKER_PREFIX)]


def _thread_netns(thread: threading.Thread) -> int | None:
    """The network namespace of another thread (from /proc, without running anything in it);
    None if it already exited."""
    try:
        return os.stat(f"/proc/self/task/{thread.native_id}/ns/net").st_ino
    except (FileNotFoundError, ProcessLookupError):
        return None


def send_idle_workers_home() -> int:
    """Move every idle trio worker thread into this process's network namespace (that of its
    main thread); returns how many were elsewhere. Call from a thread in that namespace.

    Workers are first looked at through /proc: when none is elsewhere (nearly every test),
    nothing is done, so idle workers keep retiring after trio's idle timeout. Otherwise one job
    per worker thread that exists is started at once, each blocking on a barrier: trio hands
    jobs to idle workers first, so every idle worker runs one of them (jobs left over, one per
    busy worker, spawn fresh threads here, in the right namespace). It returns only after every
    job was delivered, i.e. every worker is idle again: returning earlier let the test's next
    ``to_thread`` call find no idle worker and spawn one more -- and as every call touched every
    worker, none ever retired; the pool grew by one now and then, and the window grew with the
    pool, up to ~11,600 threads in one full run.
    """
    home_ino = os.stat("/proc/self/ns/net").st_ino  # /proc/self: the main thread's
    workers = _workers()
    if all(_thread_netns(t) in (home_ino, None) for t in workers):
        return 0
    jobs = len(workers)
    barrier = threading.Barrier(jobs + 1)
    delivered = threading.Semaphore(0)
    moved: list[int] = []
    errors: list[BaseException] = []

    def job() -> None:
        try:
            if netns_inode() != home_ino:
                # Each job opens the namespace itself: no fd shared with the caller, which may
                # have given up (barrier timeout) by the time a slow job gets here.
                fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _setns(fd)
                finally:
                    os.close(fd)
                moved.append(1)
        except BaseException as exc:
            errors.append(exc)
        finally:
            barrier.wait(timeout=30)

    for _ in range(jobs):
        trio.lowlevel.start_thread_soon(job, lambda _outcome: delivered.release())
    barrier.wait(timeout=30)
    for _ in range(jobs):
        if not delivered.acquire(timeout=30):
            raise TimeoutError("trio worker threads did not return to idle within 30 s")
    if errors:
        raise errors[0]
    return len(moved)
