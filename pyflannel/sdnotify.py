"""systemd readiness notification (``Type=notify``) without libsystemd.

flanneld sends ``READY=1`` once, after subnet.env is written, so that units ordered after it
(docker, containerd, kubelet) start only when the CNI plugin can work.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify"]


def notify(message: str = "READY=1", environ: dict[str, str] | None = None) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET``; a no-op (False) when it is unset."""
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    # A leading '@' names an abstract socket.
    addr = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(addr)
        sock.sendall(message.encode())
    return True
