"""The suite's own network namespace: as root, the pytest process leaves the host's network
namespace before the first test, for a private one with only a loopback.

Every node, pod, etcd and API server a test starts lives in a namespace the suite creates; the
lab helpers give each its own, and everything else (the plain ``etcd`` fixture on 127.0.0.1,
an etcdctl, a forgotten ``netns=``) lands here instead of on the host's network, so no test can
listen on or send from the host's interfaces, whichever entry point ran it (``scripts/test``
or a bare ``pytest``). Named namespaces (``ip netns add``) are unaffected: each starts empty.

``unshare(CLONE_NEWNET)`` moves only the calling thread, so it must run while pytest has a
single thread (in ``pytest_configure``); threads started later inherit the namespace.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import warnings

__all__ = ["enter_private_netns", "in_private_netns"]

_CLONE_NEWNET = 0x40000000
_private = False


def enter_private_netns() -> bool:
    """Leave the host's network namespace for a fresh one with loopback up; False (and no
    change) when not root or not allowed to. Raises RuntimeError if pytest already has other
    threads."""
    global _private
    if os.geteuid() != 0 or _private:
        return _private
    if threading.active_count() != 1:
        raise RuntimeError(
            "cannot isolate the test session's network: pytest already runs "
            f"{threading.active_count()} threads (a plugin started them before pytest_configure)"
        )
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        # Root without CAP_SYS_ADMIN (a default container): the session stays where it is and
        # every test that needs its own etcd on loopback skips, saying so.
        err = ctypes.get_errno()
        warnings.warn(
            f"tests run in the host's network namespace: unshare(CLONE_NEWNET) failed "
            f"({os.strerror(err)}); the etcd tests skip",
            stacklevel=1,
        )
        return False
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    _private = True
    return True


def in_private_netns() -> bool:
    """Whether this session runs in its own network namespace (see module doc)."""
    return _private
