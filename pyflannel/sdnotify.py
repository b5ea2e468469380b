"""systemd readiness notification (``Type=notify``) without libsystemd.

flanneld sends ``READY=1`` once, after subnet.env is written, so that units ordered after it
(docker, containerd, kubelet) start only when the CNI plugin can work.

Like flanneld (and libsystemd's ``sd_notify``), a socket that cannot be reached is not an
error: containers often inherit a ``NOTIFY_SOCKET`` that names a path which does not exist in
their mount namespace, or one nobody listens on. The daemon is fully set up by then, so it
warns once and goes on instead of dying on every restart.
"""

from __future__ import annotations

import os
import socket

import structlog

__all__ = ["notify"]

log = structlog.get_logger(__name__)

# Paths already warned about: one warning per socket and process, however often we notify.
_warned: set[str] = set()


def notify(message: str = "READY=1", environ: dict[str, str] | None = None) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET``; True when it was sent.

    A no-op (False) when the variable is unset; False with one warning per socket when the
    socket cannot be reached (missing path, nobody listening, not a socket, ...).
    """
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    # A leading '@' names an abstract socket.
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(message.encode())
    except OSError as exc:
        if path not in _warned:
            _warned.add(path)
            log.warning(
                "sdnotify.failed",
                socket=path,
                message=message,
                error=exc.strerror or str(exc),
                hint="systemd was not told; unset NOTIFY_SOCKET unless a unit with "
                "Type=notify runs pyflanneld",
            )
        return False
    return True
