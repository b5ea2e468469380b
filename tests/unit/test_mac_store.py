"""VTEP MAC persistence: precedence, atomic file, bad files ignored."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pyflannel.backend.mac_store import choose_vtep_mac, is_usable_mac, load_mac, mac_path, save_mac
from pyflannel.errors import ConfigError


def test_paths() -> None:
    assert mac_path(Path("/run/flannel"), 1) == Path("/run/flannel/vxlan-1.mac")
    assert mac_path(Path("/run/flannel"), 7, 6) == Path("/run/flannel/vxlan-v6-7.mac")


def test_random_then_file_then_stable(tmp_path: Path) -> None:
    path = mac_path(tmp_path / "state", 1)
    mac, source = choose_vtep_mac(path)
    assert source == "random" and is_usable_mac(mac)
    assert int(mac[:2], 16) & 0x03 == 0x02  # locally administered unicast
    assert path.read_text() == mac + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert choose_vtep_mac(path) == (mac, "file")


def test_precedence_file_hint_device(tmp_path: Path) -> None:
    path = tmp_path / "vxlan-1.mac"
    dev, hint = "0a:00:00:00:00:0d", "0a:00:00:00:00:0e"
    assert choose_vtep_mac(path, device_mac=dev) == (dev, "device")
    path.unlink()
    assert choose_vtep_mac(path, device_mac=dev, hint=hint.upper()) == (hint, "lease")
    assert choose_vtep_mac(path, device_mac=dev, hint="0a:00:00:00:00:ff") == (hint, "file")
    assert load_mac(path) == hint


@pytest.mark.parametrize("content", ["", "garbage", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01"])
def test_bad_file_is_ignored_and_replaced(tmp_path: Path, content: str) -> None:
    path = tmp_path / "vxlan-1.mac"
    path.write_text(content)
    mac, source = choose_vtep_mac(path, hint="bad", device_mac="00:00:00:00:00:00")
    assert source == "random" and load_mac(path) == mac


def test_unwritable_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot store the VTEP MAC"):
        save_mac(blocker / "vxlan-1.mac", "0a:00:00:00:00:01")
