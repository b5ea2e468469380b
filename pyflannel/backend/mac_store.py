"""A VTEP MAC that survives daemon restarts and device re-creation (flannel #1795, #1788).

flanneld keeps its VTEP MAC only as long as the ``flannel.<VNI>`` device lives; if the device is
deleted (or re-created because its attributes changed) it gets a new random MAC and every peer
keeps sending to the old one until our lease is renewed. We persist the MAC in
``<state_dir>/vxlan-<VNI>.mac`` (``vxlan-v6-<VNI>.mac`` for IPv6), ``state_dir`` being the
directory of ``--subnet-file`` (``/run/flannel``), and pick, in this order:

1. the MAC in the state file: the one we advertised last, so what peers know (a device that
   carries another MAC was re-created behind our back and is re-created again with this one);
2. ``hint``: the ``VtepMAC`` of our previous lease, if the caller knows it (survives a reboot,
   when ``/run`` is empty but etcd still has our lease);
3. the MAC of an existing, compatible device (e.g. left by flanneld: upgrade in place);
4. a new random locally administered unicast MAC.

The choice is written back to the file whenever it differs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import structlog

from pyflannel.backend.validate import normalize_mac
from pyflannel.errors import ConfigError
from pyflannel.netlink.links import random_mac

__all__ = ["choose_vtep_mac", "is_usable_mac", "load_mac", "mac_path", "random_mac", "save_mac"]

log = structlog.get_logger(__name__)


def mac_path(state_dir: Path, vni: int, family: int = 4) -> Path:
    """``<state_dir>/vxlan-<VNI>.mac`` (IPv4) or ``<state_dir>/vxlan-v6-<VNI>.mac``."""
    return state_dir / (f"vxlan-{vni}.mac" if family == 4 else f"vxlan-v6-{vni}.mac")


def is_usable_mac(mac: str | None) -> bool:
    """A well-formed unicast, non-zero MAC."""
    norm = normalize_mac(mac)
    return norm is not None and not int(norm[:2], 16) & 0x01 and norm != "00:00:00:00:00:00"


def load_mac(path: Path) -> str | None:
    """The MAC stored in ``path``; None (with a warning) if absent-but-unreadable or invalid."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("vxlan.mac_file_unreadable", path=str(path), error=str(exc))
        return None
    if not is_usable_mac(text):
        log.warning("vxlan.mac_file_invalid", path=str(path), content=text[:40])
        return None
    return normalize_mac(text)


def save_mac(path: Path, mac: str) -> None:
    """Write ``mac`` atomically (temp file + rename, mode 0644).

    Raises :class:`ConfigError` naming the path when the directory is not writable.
    """
    norm = normalize_mac(mac)
    if norm is None:
        raise ValueError(f"not a MAC address: {mac!r}")
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(norm + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise ConfigError(
            f"cannot store the VTEP MAC in {path}: {exc}",
            hint="make the directory of --subnet-file writable for pyflanneld",
        ) from exc


def choose_vtep_mac(
    path: Path, *, device_mac: str | None = None, hint: str | None = None
) -> tuple[str, str]:
    """Pick the VTEP MAC (see the module docstring) and persist it; ``(mac, source)``.

    ``source`` is one of ``"file"``, ``"lease"``, ``"device"``, ``"random"`` (for the log).
    """
    stored = load_mac(path)
    mac: str
    if stored is not None:
        mac, source = stored, "file"
    elif hint is not None and is_usable_mac(hint):
        mac, source = normalize_mac(hint) or hint, "lease"
    elif device_mac is not None and is_usable_mac(device_mac):
        mac, source = normalize_mac(device_mac) or device_mac, "device"
    else:
        mac, source = random_mac(), "random"
    if mac != stored:
        save_mac(path, mac)
    return mac, source
