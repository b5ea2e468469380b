"""The vxlan backend: device ``flannel.<VNI>`` (``flannel-v6.<VNI>``), one VTEP MAC, peers as
neighbour + FDB + onlink route (or a direct route with DirectRouting).

Differences from flanneld, all deliberate:

* The VTEP MAC is persisted in ``<state_dir>/vxlan-<VNI>.mac`` and reused when the device is
  re-created, at start-up or at runtime (see :mod:`pyflannel.backend.mac_store`).
* The first snapshot is *reconciled*: stale neighbour/FDB/route entries of peers that left while
  we were down are removed (flannel #2554), correct ones are left untouched.
* When the device is deleted at runtime it is re-created with the same MAC and address and every
  peer is programmed again (flanneld ≥ 0.27.4 re-creates it but leaves it without peers).
* An existing device whose MTU differs from the computed one gets the computed MTU (flanneld
  keeps the old MTU while advertising the new one in subnet.env).
* Peers are reconciled every ``resync_interval`` seconds and shortly after a failed operation,
  instead of flanneld's per-operation retries.

The MTU is flanneld's: ``MTU`` from the backend config (default: the external interface's MTU)
minus 50 bytes of encapsulation, for both the device and ``FLANNEL_MTU``. With IPv6 enabled the
``flannel-v6.N`` device gets minus 70 (an IPv6 outer header is 20 bytes larger; the kernel refuses
more) and ``FLANNEL_MTU`` is that smaller value, where flanneld advertises minus 50 to pods whose
IPv6 packets then do not fit.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Unpack

import structlog
import trio

from pyflannel.backend.base import BackendBase, OwnStack, own_subnet
from pyflannel.backend.device_keeper import DeviceKeeper
from pyflannel.backend.kernel import NetlinkKernel
from pyflannel.backend.mac_store import choose_vtep_mac, mac_path
from pyflannel.backend.peers import PeerProgrammer
from pyflannel.backend.programmed import ProgrammedNetwork
from pyflannel.errors import ConfigError, InterfaceError, NetlinkError
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.netlink.addresses import ensure_address, list_addresses
from pyflannel.netlink.links import (
    LinkInfo,
    VxlanSpec,
    create_vxlan,
    delete_link,
    ensure_vxlan,
    get_link,
    set_link_mtu,
    set_link_up,
    vxlan_incompatibilities,
)
from pyflannel.netlink.monitor import LinkMonitor
from pyflannel.netlink.nlsocket import NetlinkSocket
from pyflannel.netlink.ops import IPAddress, IPNetwork
from pyflannel.netlink.worker import NetlinkWorker

if TYPE_CHECKING:
    from pyflannel.backend.base import BackendOptions, Family, PlanContext, Prepared
    from pyflannel.config import NetworkConfig
    from pyflannel.iface import ExternalInterface

__all__ = [
    "ENCAP_OVERHEAD",
    "ENCAP_OVERHEAD_V6",
    "KERNEL_DEFAULT_PORT",
    "VxlanBackend",
    "VxlanDevice",
    "VxlanNetwork",
    "VxlanPrepared",
    "device_mtu",
    "device_name",
    "encap_overhead",
    "flannel_mtu",
    "is_device_name",
    "plan_context",
]

log = structlog.get_logger(__name__)

ENCAP_OVERHEAD = 50
"""Outer Ethernet + IPv4 + UDP + VXLAN headers (flanneld's ``encapOverhead``)."""
ENCAP_OVERHEAD_V6 = 70
"""The same over an IPv6 underlay (the kernel caps ``flannel-v6.N`` at lower MTU − 70)."""
KERNEL_DEFAULT_PORT = 8472
"""The UDP port of a device created with ``Port`` 0 (the kernel's default, flanneld's too)."""

_IFNAMSIZ = 15
_ALL_V6 = ipaddress.IPv6Network("::/0")


_DEVICE_PREFIXES: dict[Family, str] = {4: "flannel.", 6: "flannel-v6."}


def device_name(family: Family, vni: int) -> str:
    """The device of one family: ``flannel.<VNI>`` or ``flannel-v6.<VNI>`` (flanneld's names)."""
    return f"{_DEVICE_PREFIXES[family]}{vni}"


def is_device_name(name: str) -> bool:
    """True for a name :func:`device_name` gives, whatever the VNI."""
    return any(
        name.startswith(prefix) and name[len(prefix) :].isdigit()
        for prefix in _DEVICE_PREFIXES.values()
    )


def encap_overhead(family: Family) -> int:
    """Bytes of encapsulation over an IPv4 (50) or IPv6 (70) underlay."""
    return ENCAP_OVERHEAD if family == 4 else ENCAP_OVERHEAD_V6


def device_mtu(underlay_mtu: int, family: Family) -> int:
    """The MTU of one family's device: the underlay MTU minus that family's overhead."""
    return underlay_mtu - encap_overhead(family)


def flannel_mtu(underlay_mtu: int, *, ipv6: bool) -> int:
    """``FLANNEL_MTU``: the underlay MTU minus 50, minus 70 when IPv6 is enabled (the smaller
    device's MTU, so that pods' packets fit either device)."""
    return device_mtu(underlay_mtu, 6 if ipv6 else 4)


def plan_context(
    own: OwnStack, *, dev_index: int, ext_index: int, own_mac: str | None
) -> PlanContext:
    """What the planner needs to program vxlan peers on the device ``dev_index``."""
    return own.context(
        VxlanBackend.backend_type, dev_index=dev_index, ext_index=ext_index, own_mac=own_mac
    )


@dataclass(frozen=True, slots=True)
class VxlanDevice:
    """One vxlan device (one per address family) and what it must look like; a re-created
    device is a new value (new ifindex, maybe a new external interface index)."""

    family: Family
    spec: VxlanSpec
    """``spec.mac`` is the VTEP MAC, fixed for the life of the daemon."""
    network: IPNetwork
    public_ip: IPAddress
    ifindex: int = 0

    @property
    def mac(self) -> str:
        """The VTEP MAC."""
        assert self.spec.mac is not None
        return self.spec.mac


@dataclass(frozen=True, slots=True)
class VxlanPrepared:
    """What :meth:`VxlanBackend.prepare` set up before the lease; :meth:`VxlanBackend.configure`
    consumes it."""

    ext: ExternalInterface
    devices: tuple[VxlanDevice, ...]
    mtu: int
    """``FLANNEL_MTU``."""
    direct_routing: bool
    attrs: LeaseAttrs


class VxlanBackend(BackendBase):
    """Creates the vxlan device(s) before the lease and configures them after it."""

    backend_type = "vxlan"
    default_resync_interval = 60.0

    def __init__(
        self,
        *,
        mac_hint: str | None = None,
        mac_hint_v6: str | None = None,
        **options: Unpack[BackendOptions],
    ) -> None:
        """``mac_hint``/``mac_hint_v6``: the VtepMAC of our previous lease, if known (used only
        when neither the device nor the state file has one, e.g. after a reboot)."""
        super().__init__(**options)
        self._hints: dict[Family, str | None] = {4: mac_hint, 6: mac_hint_v6}
        self._sock: NetlinkSocket | None = None
        self._prepared: VxlanPrepared | None = None

    @property
    def prepared(self) -> VxlanPrepared | None:
        """What :meth:`prepare` set up (None before it)."""
        return self._prepared

    @property
    def devices(self) -> dict[Family, LinkInfo | None]:
        """The devices as the kernel reports them now (for diagnostics and tests)."""
        sock = self._socket()
        devices = self._prepared.devices if self._prepared is not None else ()
        return {d.family: get_link(sock, d.spec.name) for d in devices}

    def _socket(self) -> NetlinkSocket:
        if self._sock is None:
            # Opened in the calling thread's network namespace and bound to it for good.
            self._sock = NetlinkSocket()
        return self._sock

    async def prepare(
        self, config: NetworkConfig, ext_iface: ExternalInterface, state_dir: Path
    ) -> VxlanPrepared:
        """Create or reuse the device(s); the result holds them and the lease attrs.

        ``state_dir`` holds the VTEP MAC file (the directory of ``--subnet-file``).
        """
        from pyflannel.config import vxlan_options

        opts = vxlan_options(config)
        underlay_mtu = opts.mtu or ext_iface.mtu
        # flanneld uses MTU - 50 for both devices; the kernel caps an IPv6-underlay device at
        # MTU - 70, so that one gets - 70 and FLANNEL_MTU is the smaller of the two.
        mtu = flannel_mtu(underlay_mtu, ipv6=config.enable_ipv6)
        if mtu < 68:
            overhead = underlay_mtu - mtu
            raise ConfigError(
                f"vxlan MTU {mtu} (underlay MTU {underlay_mtu} - {overhead}) is too small",
                hint=f'set "MTU" in the Backend to at least {68 + overhead}',
            )
        v4: Family = 4
        v6: Family = 6
        wanted: list[tuple[Family, IPNetwork | None, IPAddress | None]] = []
        if config.enable_ipv4:
            wanted.append((v4, config.network, ext_iface.public_ip))
        if config.enable_ipv6:
            wanted.append((v6, config.ipv6_network, ext_iface.public_ipv6))
        devices: list[VxlanDevice] = []
        for family, network, public in wanted:
            assert network is not None  # parse_network_config guarantees it for enabled stacks
            name = device_name(family, opts.vni)
            if public is None:
                raise InterfaceError(
                    f"interface {ext_iface.name} has no public IPv{family} address for vxlan",
                    hint="pass --public-ip/--public-ipv6 or pick another --iface",
                )
            if len(name) > _IFNAMSIZ:
                raise ConfigError(
                    f"vxlan device name {name} is longer than {_IFNAMSIZ} characters "
                    f"(VNI {opts.vni})",
                    hint='use a smaller "VNI" in the Backend config',
                )
            spec = VxlanSpec(
                name=name,
                vni=opts.vni,
                vtep_ifindex=ext_iface.index,
                local=public,
                port=opts.port,
                gbp=opts.gbp,
                learning=opts.learning,
                mtu=device_mtu(underlay_mtu, family),
            )
            dev = VxlanDevice(family, spec, network, public)
            devices.append(self._ensure_device(dev, mac_path(state_dir, opts.vni, family)))

        attrs = LeaseAttrs(backend_type=self.backend_type)
        for dev in devices:
            data = {"VNI": opts.vni, "VtepMAC": dev.mac}
            if dev.family == 4:
                assert isinstance(dev.public_ip, ipaddress.IPv4Address)
                attrs = replace(attrs, public_ip=dev.public_ip, backend_data=data)
            else:
                assert isinstance(dev.public_ip, ipaddress.IPv6Address)
                attrs = replace(attrs, public_ipv6=dev.public_ip, backend_v6_data=data)
        self._prepared = VxlanPrepared(ext_iface, tuple(devices), mtu, opts.direct_routing, attrs)
        return self._prepared

    def _ensure_device(self, dev: VxlanDevice, mac_file: Path) -> VxlanDevice:
        sock = self._socket()
        existing = get_link(sock, dev.spec.name)
        device_mac = None
        if existing is not None and not vxlan_incompatibilities(dev.spec, existing):
            device_mac = existing.mac
        mac, source = choose_vtep_mac(mac_file, device_mac=device_mac, hint=self._hints[dev.family])
        spec = replace(dev.spec, mac=mac)
        link = _ensure_link(sock, spec)
        log.info(
            "vxlan.device_ready",
            device=spec.name,
            ifindex=link.ifindex,
            vtep_mac=mac,
            mac_source=source,
            mtu=spec.mtu,
            reused=existing is not None and existing.ifindex == link.ifindex,
        )
        return replace(dev, spec=spec, ifindex=link.ifindex)

    async def configure(self, prepared: Prepared, lease: Lease) -> VxlanNetwork:
        """Address the device(s) with our lease, bring them up, and return the network."""
        if not isinstance(prepared, VxlanPrepared):
            raise TypeError(f"VxlanBackend.configure() takes a VxlanPrepared, not {prepared!r}")
        contexts: list[PlanContext] = []
        for dev in prepared.devices:
            own = own_subnet(lease, dev.family)
            _configure_device(self._socket(), dev, own)
            contexts.append(_context(prepared.ext, dev, own))
        # Peers are programmed on a socket and thread of their own; device repair keeps using
        # this backend's socket, so neither waits for the other.
        programmer = PeerProgrammer(
            NetlinkWorker(NetlinkKernel()),
            contexts,
            direct_routing=prepared.direct_routing,
            metrics=self.metrics,
            stats=self.stats,
        )
        return VxlanNetwork(
            prepared,
            lease,
            programmer,
            sock=self._socket(),
            resync_interval=self.resync_interval,
        )


def _context(ext: ExternalInterface, dev: VxlanDevice, own: IPNetwork) -> PlanContext:
    underlay = ext.ipv4_network if dev.family == 4 else ext.ipv6_network
    stack = OwnStack(dev.family, dev.network, own, dev.public_ip, underlay)
    return plan_context(
        stack, dev_index=dev.ifindex, ext_index=dev.spec.vtep_ifindex, own_mac=dev.mac
    )


class VxlanNetwork(ProgrammedNetwork):
    """The configured vxlan data path for our lease: the peers (its programmer) and the
    devices (kept by a :class:`~pyflannel.backend.device_keeper.DeviceKeeper`)."""

    def __init__(
        self,
        prepared: VxlanPrepared,
        lease: Lease,
        programmer: PeerProgrammer,
        *,
        sock: NetlinkSocket,
        resync_interval: float,
    ) -> None:
        # FLANNEL_MTU: the underlay MTU minus 50 (minus 70 when IPv6 is enabled)
        super().__init__(lease, prepared.mtu, programmer, resync_interval)
        self._prepared = prepared
        self._sock = sock
        self._devices = {d.family: d for d in prepared.devices}
        self._keeper = DeviceKeeper("vxlan", self.stats)

    async def run(self) -> None:
        """Re-create deleted devices (re-programming every peer) and resync, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.resync)
            nursery.start_soon(self._keep_devices)

    async def _keep_devices(self) -> None:
        with LinkMonitor() as monitor:
            # opened first: a device deleted before the first check is caught by it

            async def wait(interval: float) -> None:
                with trio.move_on_after(interval):
                    while True:
                        events = await monitor.next_events()
                        names = {d.spec.name for d in self._devices.values()}
                        indexes = {d.ifindex for d in self._devices.values()}
                        if any(
                            e.kind == "overflow" or e.name in names or e.ifindex in indexes
                            for e in events
                        ):
                            return

            names = ", ".join(d.spec.name for d in self._devices.values())
            await self._keeper.run(self.check_devices, wait, lambda: names)

    async def check_devices(self) -> list[str]:
        """Repair each device: re-create it if gone or replaced, bring it up if down, put its
        address back; what was repaired."""
        repaired: list[str] = []
        for dev in list(self._devices.values()):
            link = get_link(self._sock, dev.spec.name)
            if link is not None and link.ifindex == dev.ifindex and link.mac == dev.mac:
                if not link.up:
                    log.warning("vxlan.device_was_down", device=dev.spec.name, action="set up")
                    set_link_up(self._sock, link.ifindex)
                    repaired.append(f"{dev.spec.name}: set up")
                if self._check_address(dev):
                    repaired.append(f"{dev.spec.name}: address")
                continue
            log.warning(
                "vxlan.device_missing",
                device=dev.spec.name,
                action="recreating it with the same MAC and re-programming every peer",
            )
            await self._recreate(dev)
            repaired.append(f"{dev.spec.name}: re-created")
        return repaired

    def _check_address(self, dev: VxlanDevice) -> bool:
        """Put back our /32 (/128) if someone removed it (host-to-pod traffic would leave with
        another source); True when it was put back."""
        own = self.programmer.context(dev.family).own_subnet
        af = socket.AF_INET if dev.family == 4 else socket.AF_INET6
        try:
            present = {a.ip for a in list_addresses(self._sock, dev.ifindex, af)}
            if own.network_address in present:
                return False
            log.warning(
                "vxlan.address_restored", device=dev.spec.name, address=str(own.network_address)
            )
            _configure_device(self._sock, dev, own)
            return True
        except NetlinkError as exc:
            log.warning("vxlan.address_check_failed", device=dev.spec.name, error=str(exc))
            return False

    async def _recreate(self, dev: VxlanDevice) -> None:
        ext = self._prepared.ext
        own = self.programmer.context(dev.family).own_subnet

        def attempt() -> VxlanDevice:
            ext_link = get_link(self._sock, ext.name)
            if ext_link is None:
                raise InterfaceError(f"external interface {ext.name} is gone")
            spec = replace(dev.spec, vtep_ifindex=ext_link.ifindex)
            link = _ensure_link(self._sock, spec)
            new = replace(dev, spec=spec, ifindex=link.ifindex)
            _configure_device(self._sock, new, own)
            return new

        new = await self._keeper.recreate(lambda: dev.spec.name, attempt)
        self._devices[dev.family] = new
        self.programmer.set_context(_context(ext, new, own))
        ops = await self.programmer.reprogram("device re-created")
        log.warning(
            "vxlan.device_recreated",
            device=new.spec.name,
            ifindex=new.ifindex,
            vtep_mac=new.mac,
            peers=self.programmer.peers_programmed,
            ops=ops,
        )


def _ensure_link(sock: NetlinkSocket, spec: VxlanSpec) -> LinkInfo:
    """``ensure_vxlan`` that also insists on our MAC and MTU."""
    link = ensure_vxlan(sock, spec)
    if spec.mac is not None and link.mac != spec.mac:
        # Someone re-created the device with another MAC, or udev rewrote it: peers know ours.
        log.warning(
            "vxlan.device_mac_mismatch",
            device=spec.name,
            found=link.mac,
            wanted=spec.mac,
            action="recreating device",
        )
        delete_link(sock, link.ifindex)
        link = create_vxlan(sock, spec)
        if link.mac != spec.mac:
            raise NetlinkError(
                f"{spec.name}: MAC {link.mac} differs from the VTEP MAC {spec.mac} right after "
                "creation",
                hint="check udev/systemd-networkd MACAddressPolicy for vxlan devices",
            )
    if spec.mtu and link.mtu != spec.mtu:
        log.info("vxlan.device_mtu_set", device=spec.name, old=link.mtu, new=spec.mtu)
        set_link_mtu(sock, link.ifindex, spec.mtu)
    return link


def _configure_device(sock: NetlinkSocket, dev: VxlanDevice, own: IPNetwork) -> None:
    """Own subnet network address as /32 (/128), stale addresses inside Network removed, up."""
    iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    if dev.family == 4:
        iface = ipaddress.IPv4Interface((own.network_address, 32))
        ensure_address(sock, dev.ifindex, iface, stale_within=dev.network)
    else:
        iface = ipaddress.IPv6Interface((own.network_address, 128))
        ensure_address(sock, dev.ifindex, iface, stale_within=_ALL_V6)
    set_link_up(sock, dev.ifindex)
