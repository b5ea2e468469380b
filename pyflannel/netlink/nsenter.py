"""Run code inside a named network namespace (``ip netns add NAME``), per thread.

Python 3.11 has no ``os.setns``; libc's ``setns(2)`` through ctypes does the same. A network
namespace switch applies to the calling *thread* only, so:

- :func:`in_netns` switches the current thread and switches it back on exit (sockets opened
  inside stay bound to that namespace for their whole life, also when used from other threads);
- :func:`run_in_netns` runs a function in a fresh thread that lives in the namespace.

Also small helpers to create and delete namespaces by name, for tests and benchmarks.
The daemon itself never switches namespaces: it runs in whatever namespace it was started in.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = [
    "create_netns",
    "delete_netns",
    "in_netns",
    "netns_exists",
    "run_in_netns",
    "run_in_socket_netns",
    "socket_in_current_netns",
]

CLONE_NEWNET = 0x40000000
SIOCGSKNS = 0x894C
_NETNS_DIR = "/run/netns"
_T = TypeVar("_T")
_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def netns_exists(name: str) -> bool:
    """Whether ``/run/netns/<name>`` exists."""
    return os.path.exists(os.path.join(_NETNS_DIR, name))


@contextlib.contextmanager
def _in_fd_netns(fd: int) -> Iterator[None]:
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(orig)
    finally:
        os.close(orig)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Switch the current thread into network namespace ``name`` for the ``with`` body."""
    target = os.open(os.path.join(_NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _in_fd_netns(target):
            yield
    finally:
        os.close(target)


def _run_in_thread(
    enter: Callable[[], contextlib.AbstractContextManager[None]],
    fn: Callable[..., _T],
    *args: Any,
    **kwargs: Any,
) -> _T:
    result: list[_T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            with enter():
                result.append(fn(*args, **kwargs))
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=body, name="netns-runner", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def run_in_netns(name: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call ``fn(*args, **kwargs)`` in a new thread inside namespace ``name``; return/raise."""
    return _run_in_thread(lambda: in_netns(name), fn, *args, **kwargs)


def _socket_netns_fd(sock: socket.socket) -> int:
    # SIOCGSKNS (Linux >= 4.9): an fd for the namespace the socket was created in
    return int(fcntl.ioctl(sock.fileno(), SIOCGSKNS))


def socket_in_current_netns(sock: socket.socket) -> bool:
    """Whether ``sock`` belongs to the calling thread's network namespace."""
    fd = _socket_netns_fd(sock)
    try:
        return os.stat(fd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino
    finally:
        os.close(fd)


def run_in_socket_netns(
    sock: socket.socket, fn: Callable[..., _T], *args: Any, **kwargs: Any
) -> _T:
    """Call ``fn`` in the namespace of ``sock``: directly when the calling thread is already
    there, else in a helper thread that joins it (for /proc/sys/net writes, which follow the
    *thread's* namespace, not the socket's)."""
    if socket_in_current_netns(sock):
        return fn(*args, **kwargs)
    fd = _socket_netns_fd(sock)
    try:
        return _run_in_thread(lambda: _in_fd_netns(fd), fn, *args, **kwargs)
    finally:
        os.close(fd)


def create_netns(name: str) -> None:
    """``ip netns add name`` and bring its loopback up."""
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)


def delete_netns(name: str) -> None:
    """``ip netns del name``; ignores a namespace that does not exist."""
    if netns_exists(name):
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
