"""The WireGuard device: kernel module where present, ``wireguard-go`` where not.

:func:`ensure_device` returns a :class:`Device` whatever path runs:

* an existing device is *reused* — its peers keep carrying pod traffic while the daemon
  restarts (flanneld deletes and re-creates it, which cuts traffic; see docs/compatibility.md);
* else ``ip link add <name> type wireguard`` (rtnetlink); the device is then driven over
  generic netlink (:mod:`.genl`);
* if the kernel refuses the link kind (no module: ``EOPNOTSUPP``), ``wireguard-go <name>`` is
  started as its own process — its own session, so a signal to the daemon's process group
  does not reach it, and it daemonizes itself; a transient systemd unit where systemd manages
  the host — and driven over its UAPI socket (:mod:`.uapi`).

The daemon then owns the device's address, MTU, link state and the Network route
(:func:`configure_link`). All functions here block; the network runs them in worker threads.
"""

from __future__ import annotations

import errno as errno_mod
import ipaddress
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

import structlog

from pyflannel.backend.wireguard.genl import GenlWireguard
from pyflannel.backend.wireguard.uapi import (
    SOCKET_DIR,
    DeviceState,
    SetDevice,
    UapiClient,
    UapiError,
    socket_path,
)
from pyflannel.errors import InterfaceError
from pyflannel.netlink import consts as nlc
from pyflannel.netlink.addresses import ensure_address, list_addresses
from pyflannel.netlink.dump import dump_routes
from pyflannel.netlink.encode import attr, device_route_body, ifinfomsg, nested
from pyflannel.netlink.links import delete_link, get_link, set_link_mtu, set_link_up
from pyflannel.netlink.nlsocket import KernelRefused, NetlinkSocket
from pyflannel.netlink.ops import IPNetwork

__all__ = [
    "WIREGUARD_GO_ENV",
    "WIREGUARD_GO_SYSTEMD_ENV",
    "Device",
    "DeviceClient",
    "configure_link",
    "ensure_device",
    "link_repairs",
    "remove_device",
    "start_wireguard_go",
    "systemd_manages_us",
    "unit_name",
    "wireguard_go_argv",
]

log = structlog.get_logger(__name__)

WIREGUARD_GO_ENV: Final = "PYFLANNEL_WIREGUARD_GO"
WIREGUARD_GO_SYSTEMD_ENV: Final = "PYFLANNEL_WIREGUARD_GO_SYSTEMD"
_START_TIMEOUT: Final = 10.0
# The kernel's answers when it has no "wireguard" link kind.
_NO_MODULE_ERRNOS: Final = frozenset({errno_mod.EOPNOTSUPP, errno_mod.ENOTSUP, errno_mod.ENOENT})


class DeviceClient(Protocol):
    """Configuration access to one device (UAPI socket or generic netlink)."""

    device: str

    def get(self) -> DeviceState:
        """The device's configuration and per-peer counters."""
        ...

    def set(self, req: SetDevice) -> None:
        """Apply a configuration change."""
        ...


@dataclass(frozen=True, slots=True)
class Device:
    """A live WireGuard device: its name, which path drives it and how to configure it."""

    name: str
    kind: Literal["kernel", "userspace"]
    client: DeviceClient


def _wireguard_go() -> str:
    configured = os.environ.get(WIREGUARD_GO_ENV, "")
    found = configured or shutil.which("wireguard-go")
    if not found:
        raise InterfaceError(
            "this kernel has no WireGuard module and wireguard-go is not installed",
            hint="apt-get install --no-install-recommends wireguard-go wireguard-tools "
            "(or load the wireguard module)",
        )
    return found


def systemd_manages_us(env: dict[str, str] | None = None) -> bool:
    """True when wireguard-go should run as a transient systemd unit: systemd is PID 1, we are in
    its network namespace (a unit starts there: inside a lab node or a container it would create
    the device in the wrong namespace), and ``$PYFLANNEL_WIREGUARD_GO_SYSTEMD`` is not ``0``.

    A plain detached process would share pyflanneld.service's cgroup, and systemd kills the whole
    cgroup when the service stops or restarts; a unit of its own survives that.
    """
    environ = os.environ if env is None else env
    if environ.get(WIREGUARD_GO_SYSTEMD_ENV, "1") == "0":
        return False
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemd-run") is None:
        return False
    try:
        pid1, me = os.stat("/proc/1/ns/net"), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (pid1.st_dev, pid1.st_ino) == (me.st_dev, me.st_ino)


def unit_name(device: str) -> str:
    """The transient unit that runs wireguard-go for ``device``."""
    return f"pyflannel-wireguard-go-{device}.service"


def wireguard_go_argv(device: str, binary: str, *, systemd: bool) -> list[str]:
    """How wireguard-go is started: ``wireguard-go DEV`` (it daemonizes itself), or in the
    foreground inside a transient unit when systemd manages the host."""
    if not systemd:
        return [binary, device]
    return [
        "systemd-run",
        f"--unit={unit_name(device)}",
        f"--description=wireguard-go for pyflannel's {device}",
        "--collect",
        "--quiet",
        "--setenv=LOG_LEVEL=error",
        "-p",
        "Type=simple",
        binary,
        "-f",
        device,
    ]


def _responds(client: DeviceClient) -> bool:
    try:
        client.get()
    except UapiError:
        return False
    return True


def start_wireguard_go(name: str, directory: Path = SOCKET_DIR) -> UapiClient:
    """Start ``wireguard-go name`` detached from us and wait until its UAPI socket answers.

    A socket file left by a killed wireguard-go (SIGKILL leaves it) is removed first: the new
    process would otherwise refuse to start ("address already in use").
    """
    client = UapiClient(name, directory)
    path = socket_path(name, directory)
    if path.exists() and not _responds(client):
        path.unlink(missing_ok=True)
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "WG_PROCESS_FOREGROUND"}
    env.setdefault("LOG_LEVEL", "error")
    # wireguard-go forks its daemon and exits once the device exists; start_new_session keeps
    # the daemon out of our process group and session (it must outlive us). Under systemd it
    # runs in a transient unit instead (see systemd_manages_us).
    systemd = systemd_manages_us()
    if systemd:
        # a unit left from an earlier run whose process hangs: replace it
        subprocess.run(
            ["systemctl", "stop", unit_name(name)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_START_TIMEOUT,
            check=False,
        )
    # stderr goes to a file, not a pipe: the forked daemon inherits it and would hold a pipe
    # open until it exits.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.run(
            wireguard_go_argv(name, _wireguard_go(), systemd=systemd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            start_new_session=True,
            timeout=_START_TIMEOUT,
            check=False,
        )
        err.seek(0)
        message = err.read(4096).decode(errors="replace").strip()
    if proc.returncode != 0:
        raise InterfaceError(
            f"wireguard-go {name} failed (exit {proc.returncode}): {message[-300:]}",
            hint="check /dev/net/tun exists (modprobe tun) and that no other device is named "
            f"{name}",
        )
    deadline = time.monotonic() + _START_TIMEOUT
    while not _responds(client):
        if time.monotonic() > deadline:
            raise InterfaceError(
                f"wireguard-go {name} started but its UAPI socket {path} does not answer",
                hint=f"is {directory} writable and private to this host?",
            )
        time.sleep(0.02)
    return client


def _create_kernel_link(nl: NetlinkSocket, name: str) -> None:
    body = (
        ifinfomsg()
        + attr(nlc.IFLA_IFNAME, name.encode() + b"\0")
        + nested(nlc.IFLA_LINKINFO, attr(nlc.IFLA_INFO_KIND, b"wireguard"))
    )
    nl.request(
        nlc.RTM_NEWLINK,
        nlc.NLM_F_CREATE | nlc.NLM_F_EXCL,
        body,
        what=f"ip link add {name} type wireguard",
    )


def ensure_device(nl: NetlinkSocket, name: str, directory: Path = SOCKET_DIR) -> Device:
    """The device ``name``: reused if it runs, else created (kernel first, then wireguard-go)."""
    uapi = UapiClient(name, directory)
    if socket_path(name, directory).exists() and _responds(uapi):
        return Device(name, "userspace", uapi)
    link = get_link(nl, name)
    if link is not None:
        if link.kind == "wireguard":
            return Device(name, "kernel", GenlWireguard(name))
        # A device of another kind (or a TUN whose wireguard-go is gone) holds the name.
        log.warning("wireguard.device_replaced", device=name, kind=link.kind)
        delete_link(nl, link.ifindex)
    try:
        _create_kernel_link(nl, name)
    except KernelRefused as exc:
        if exc.errno not in _NO_MODULE_ERRNOS:
            raise
        client = start_wireguard_go(name, directory)
        log.info("wireguard.userspace_started", device=name, reason="no kernel WireGuard module")
        return Device(name, "userspace", client)
    return Device(name, "kernel", GenlWireguard(name))


def remove_device(nl: NetlinkSocket, name: str, directory: Path = SOCKET_DIR) -> bool:
    """Delete the device ``name`` if it exists (wireguard-go exits when its TUN goes) and its
    socket file; True if there was a device."""
    link = get_link(nl, name)
    if link is not None:
        delete_link(nl, link.ifindex)
    path = socket_path(name, directory)
    deadline = time.monotonic() + 2.0
    while path.exists() and _responds(UapiClient(name, directory)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if path.exists() and not _responds(UapiClient(name, directory)):
        path.unlink(missing_ok=True)
    return link is not None


def device_alive(nl: NetlinkSocket, dev: Device) -> bool:
    """True while the device exists (and, for wireguard-go, its process answers)."""
    if get_link(nl, dev.name) is None:
        return False
    if dev.kind == "kernel" or not isinstance(dev.client, UapiClient):
        return True
    return dev.client.listening()


def link_repairs(
    nl: NetlinkSocket,
    name: str,
    mtu: int,
    subnets: Sequence[IPNetwork],
    networks: Sequence[IPNetwork],
) -> list[str]:
    """Make the device's MTU, link state, addresses and Network routes what flanneld sets up;
    return what had to change (empty on a healthy device). InterfaceError if it is gone.

    Addresses: each subnet's network address as /32 or /128; stale IPv4 ones inside the
    Network and every other global IPv6 one are removed (flanneld's ensure functions). Routes:
    one ``<Network> dev <name> scope link`` per family (RouteReplace, as flanneld HEAD).
    """
    link = get_link(nl, name)
    if link is None:
        raise InterfaceError(f"WireGuard device {name} disappeared", hint="it is re-created")
    changed: list[str] = []
    if link.mtu != mtu:
        set_link_mtu(nl, link.ifindex, mtu)
        changed.append(f"mtu {link.mtu} -> {mtu}")
    for subnet in subnets:
        want: ipaddress.IPv4Interface | ipaddress.IPv6Interface
        if subnet.version == 4:
            want = ipaddress.IPv4Interface((subnet.network_address, 32))
            have = list_addresses(nl, link.ifindex)
            stale: IPNetwork | None = next((n for n in networks if n.version == 4), None)
        else:
            want = ipaddress.IPv6Interface((subnet.network_address, 128))
            have = list_addresses(nl, link.ifindex, nlc.AF_INET6)
            stale = ipaddress.IPv6Network("::/0")
        if want not in have or any(
            a != want and stale is not None and a.ip in stale and not a.ip.is_link_local
            for a in have
        ):
            ensure_address(nl, link.ifindex, want, stale_within=stale)
            changed.append(f"address {want}")
    if not link.up:
        set_link_up(nl, link.ifindex)
        changed.append("link set up")
    routes = dump_routes(nl, link.ifindex) + dump_routes(nl, link.ifindex, nlc.AF_INET6)
    for network in networks:
        if not any(r.dst == network and r.gw is None for r in routes):
            nl.request(
                nlc.RTM_NEWROUTE,
                nlc.NLM_F_CREATE | nlc.NLM_F_REPLACE,
                device_route_body(network, link.ifindex, scope=nlc.RT_SCOPE_LINK),
                what=f"ip route replace {network} dev {name} scope link",
            )
            changed.append(f"route {network}")
    return changed


def configure_link(
    nl: NetlinkSocket,
    name: str,
    mtu: int,
    subnets: Sequence[IPNetwork],
    networks: Sequence[IPNetwork],
) -> int:
    """Set the device up with our addresses and the Network routes; return its ifindex."""
    link_repairs(nl, name, mtu, subnets, networks)
    link = get_link(nl, name)
    if link is None:
        raise InterfaceError(f"WireGuard device {name} disappeared", hint="it is re-created")
    return link.ifindex
