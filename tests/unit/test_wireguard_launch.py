"""How wireguard-go is started: detached (it daemonizes) or, where systemd manages the host and
we share its network namespace, in a transient unit of its own that survives
``systemctl restart pyflanneld``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pyflannel.backend.wireguard.device import systemd_manages_us, unit_name, wireguard_go_argv


def test_detached_argv() -> None:
    assert wireguard_go_argv("flannel-wg", "/usr/bin/wireguard-go", systemd=False) == [
        "/usr/bin/wireguard-go",
        "flannel-wg",
    ]


def test_systemd_argv_runs_in_the_foreground_in_its_own_unit() -> None:
    argv = wireguard_go_argv("flannel-wg", "/usr/bin/wireguard-go", systemd=True)
    assert argv[0] == "systemd-run" and argv[-3:] == ["/usr/bin/wireguard-go", "-f", "flannel-wg"]
    assert f"--unit={unit_name('flannel-wg')}" in argv and "--collect" in argv
    assert unit_name("flannel-wg-v6") == "pyflannel-wireguard-go-flannel-wg-v6.service"


def test_systemd_can_be_turned_off() -> None:
    assert systemd_manages_us({"PYFLANNEL_WIREGUARD_GO_SYSTEMD": "0"}) is False


def test_no_unit_from_another_network_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit starts in PID 1's namespace: from a lab node it would build the device there."""
    monkeypatch.setattr(Path, "is_dir", lambda self: True)
    # device calls shutil.which and os.stat through the modules, so patch them there
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    real_stat = os.stat

    class _St:
        def __init__(self, ino: int) -> None:
            self.st_dev, self.st_ino = 4, ino

    def fake_stat(path: str, ino_self: int) -> object:
        if path == "/proc/1/ns/net":
            return _St(1)
        if path == "/proc/self/ns/net":
            return _St(ino_self)
        return real_stat(path)

    monkeypatch.setattr(os, "stat", lambda p: fake_stat(p, 1))
    assert systemd_manages_us({}) is True
    monkeypatch.setattr(os, "stat", lambda p: fake_stat(p, 2))
    assert systemd_manages_us({}) is False
