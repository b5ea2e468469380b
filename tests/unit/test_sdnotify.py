"""READY=1 reaches a NOTIFY_SOCKET the way systemd expects it."""

from __future__ import annotations

import socket
from pathlib import Path

from pyflannel.sdnotify import notify


def test_notify_without_socket_is_a_noop() -> None:
    assert notify("READY=1", {}) is False


def test_notify_sends_datagram(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        assert notify("READY=1", {"NOTIFY_SOCKET": path}) is True
        assert srv.recv(64) == b"READY=1"
