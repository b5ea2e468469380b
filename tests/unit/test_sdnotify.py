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


def test_bogus_socket_warns_once_and_does_not_raise(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    missing = str(tmp_path / "no-such-dir" / "notify.sock")
    nobody = str(tmp_path / "nobody.sock")
    # A bound-then-closed socket leaves its path behind with nobody listening on it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(nobody)
    with capture_logs() as logs:
        for path in (missing, missing, nobody, "@pyflannel-test-nobody-listens"):
            assert notify("READY=1", {"NOTIFY_SOCKET": path}) is False
    warned = [e["socket"] for e in logs if e["event"] == "sdnotify.failed"]
    assert warned == [missing, nobody, "@pyflannel-test-nobody-listens"]
    assert all(e["log_level"] == "warning" for e in logs)
