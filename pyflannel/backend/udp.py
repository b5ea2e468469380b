"""The udp backend: TUN device ``flannel0`` and userspace encapsulation, wire-compatible with
flanneld's (``pkg/backend/udp``).

* Lease attrs carry no ``BackendType`` and no ``BackendData``:
  ``{"PublicIP":"…","PublicIPv6":null}``, exactly as flanneld writes them.
* ``flannel%d`` (normally ``flannel0``) is a non-persistent TUN (``IFF_TUN|IFF_NO_PI``, plus
  ``IFF_VNET_HDR`` for GSO writes) with our
  subnet's network address /32, MTU = external MTU − 28 (IPv4 + UDP headers), up, and a
  scope-universe route for the whole Network through it. It disappears when the process exits.
* A UDP socket on ``<interface IP>:<Port>`` (default 8285). Each datagram carries one raw IPv4
  packet (:mod:`pyflannel.backend.udp_forwarder`).
* Peers only update an in-process table (subnet → ``PublicIP:Port``), swapped atomically
  while traffic flows; no kernel state per peer.

Differences from flanneld, all deliberate:

* Leases with a ``BackendType`` (vxlan, host-gw nodes) are ignored, like every other backend
  does; flanneld's udp backend routes to them and their traffic is lost. Leases are validated
  as for the other backends (:mod:`pyflannel.backend.validate`).
* IPv6 is refused with a clear error (flanneld's udp backend is IPv4-only and silently leaves
  the IPv6 subnet unrouted).
* The TUN and UDP socket are opened in :meth:`UdpBackend.prepare`, before the lease, so a
  missing ``/dev/net/tun`` or a busy port fails before a subnet is taken.
* An existing route for the Network via another device is replaced (flanneld ignores EEXIST
  and then never sees the traffic).
* A deleted TUN device is re-created and re-addressed (flanneld's proxy stops forwarding).
* Data path: ICMP errors come from the Network address (flanneld's come from the TUN's own
  address, which the kernel drops as a martian source, so they never arrive) and are also sent
  for ICMP queries (``ping`` gets "Destination Net Unreachable"),
  ICMP time exceeded instead of a silent drop, a TTL of 0 is dropped instead of wrapping to 255,
  datagrams larger than the MTU are not truncated, and inbound packets not addressed to our own
  subnet are dropped (flanneld writes any packet it receives into its TUN, which makes the node
  a relay for anyone who can reach its UDP port).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

import structlog
import trio

from pyflannel.backend.base import BackendStats, OwnStack, PlanContext, Prepared
from pyflannel.backend.device_keeper import DeviceKeeper
from pyflannel.backend.network_base import NetworkBase
from pyflannel.backend.rejections import RejectionLog
from pyflannel.backend.udp_forwarder import Forwarder, ForwarderStats, Mode
from pyflannel.backend.udp_packet import PeerAddr, PeerTable
from pyflannel.backend.validate import Peer, Rejection, validate_peer
from pyflannel.backend.wanted import WantedPeers
from pyflannel.errors import ConfigError, InterfaceError, LeaseError
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.metrics import METRICS, Metrics
from pyflannel.netlink import consts as nlc
from pyflannel.netlink.addresses import ensure_address, list_addresses
from pyflannel.netlink.changes import ChangeMonitor
from pyflannel.netlink.dump import dump_routes
from pyflannel.netlink.encode import device_route_body
from pyflannel.netlink.links import get_link, set_link_mtu, set_link_up
from pyflannel.netlink.nlsocket import KernelRefused, NetlinkSocket
from pyflannel.netlink.ops import IPNetwork
from pyflannel.peer_messages import PeerMessage, PeerSnapshot

if TYPE_CHECKING:
    from pyflannel.config import NetworkConfig
    from pyflannel.iface import ExternalInterface

__all__ = [
    "ENCAP_OVERHEAD",
    "TUN_NAME_PATTERN",
    "Tun",
    "TunState",
    "UdpBackend",
    "UdpNetwork",
    "UdpPrepared",
    "configure_tun",
    "ensure_network_route",
    "icmp_source",
    "is_tun_name",
    "open_tun",
    "open_udp_socket",
    "plan_context",
    "plan_table",
    "read_tun",
    "reconcile_tun",
    "tun_mtu",
]

log = structlog.get_logger(__name__)

ENCAP_OVERHEAD: Final = 28
"""Outer IPv4 (20) + UDP (8) headers: flanneld's ``encapOverhead`` for udp."""
TUN_NAME_PATTERN: Final = "flannel%d"

_TUNSETIFF: Final = 0x400454CA
_IFF_TUN: Final = 0x0001
_IFF_NO_PI: Final = 0x1000
_IFF_VNET_HDR: Final = 0x4000
_SOCKET_BUFFER: Final = 4 << 20  # absorbs bursts of a TCP window while the forwarder catches up
_HEALTH_INTERVAL: Final = 0.5


def open_tun(pattern: str = TUN_NAME_PATTERN) -> tuple[int, str]:
    """Create a TUN device (``IFF_TUN|IFF_NO_PI|IFF_VNET_HDR``, not persistent) in the calling
    thread's network namespace; return its non-blocking file descriptor and the kernel-chosen
    name.

    The device lives as long as the descriptor is open. ``IFF_VNET_HDR`` puts a 10-byte virtio
    header in front of each packet read or written; it lets the forwarder write coalesced TCP
    segments as one GSO packet. No offloads are enabled, so reads are plain packets.
    """
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise InterfaceError(
            f"failed to open TUN device: cannot open /dev/net/tun: {exc.strerror}",
            hint="load the tun module (modprobe tun) and run pyflanneld as root",
        ) from exc
    try:
        ifr = struct.pack("16sH22x", pattern.encode(), _IFF_TUN | _IFF_NO_PI | _IFF_VNET_HDR)
        res = fcntl.ioctl(fd, _TUNSETIFF, ifr)
        os.set_blocking(fd, False)
    except OSError as exc:
        os.close(fd)
        raise InterfaceError(
            f"failed to open TUN device {pattern}: TUNSETIFF: {exc.strerror}",
            hint="pyflanneld needs CAP_NET_ADMIN",
        ) from exc
    name = res[:16].split(b"\0", 1)[0].decode()
    return fd, name


def _set_buffers(sock: socket.socket) -> None:
    for force, plain in (
        (nlc.SO_SNDBUFFORCE, socket.SO_SNDBUF),
        (nlc.SO_RCVBUFFORCE, socket.SO_RCVBUF),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, _SOCKET_BUFFER)
        except OSError:  # not root: the kernel caps the plain option at net.core.*mem_max
            sock.setsockopt(socket.SOL_SOCKET, plain, _SOCKET_BUFFER)


def open_udp_socket(addr: ipaddress.IPv4Address, port: int) -> socket.socket:
    """The blocking UDP socket the forwarder sends and receives on, bound to ``addr:port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        _set_buffers(sock)
        sock.bind((str(addr), port))
    except OSError as exc:
        sock.close()
        raise InterfaceError(
            f"failed to start listening on UDP socket {addr}:{port}: {exc.strerror}",
            hint='another process uses the port: stop it or set "Port" in the udp Backend',
        ) from exc
    return sock


class Tun:
    """The TUN device: its descriptor and kernel-chosen name. The backend opens it, the
    network re-opens it when the device is deleted; closing twice is harmless."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    @classmethod
    def open(cls, pattern: str = TUN_NAME_PATTERN) -> Tun:
        """A new TUN (see :func:`open_tun`)."""
        return cls(*open_tun(pattern))

    def reopen(self) -> None:
        """Close the descriptor (the device disappears) and open a new TUN."""
        self.close()
        self.fd, self.name = open_tun()

    def close(self) -> None:
        """Close the descriptor; the device disappears."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True, slots=True)
class UdpPrepared:
    """What :meth:`UdpBackend.prepare` set up before the lease; :meth:`UdpBackend.configure`
    consumes it. ``tun`` and ``sock`` are handed on to the network, which closes them when it
    stops (so does :meth:`UdpBackend.close`)."""

    ext: ExternalInterface
    network: ipaddress.IPv4Network
    subnet_len: int
    port: int
    mtu: int
    """The TUN's MTU and ``FLANNEL_MTU``."""
    tun: Tun
    sock: socket.socket
    attrs: LeaseAttrs

    def close(self) -> None:
        """Close the TUN (the device disappears) and the socket."""
        self.tun.close()
        self.sock.close()


class UdpBackend:
    """Opens the TUN and the UDP socket before the lease; configures them after it."""

    backend_type = "udp"
    lease_backend_type: Final = ""  # what peers' leases carry (flanneld writes none)

    def __init__(
        self,
        *,
        mode: Mode | None = None,
        offload: bool | None = None,
        metrics: Metrics | None = None,
        stats: BackendStats | None = None,
    ) -> None:
        """``mode``: the forwarder's threading (see :mod:`pyflannel.backend.udp_forwarder`),
        default ``$PYFLANNEL_UDP_THREADS`` or "single". ``offload``: batch with UDP GSO/GRO and
        coalesce TCP into GSO writes to the TUN, default on unless ``$PYFLANNEL_UDP_OFFLOAD``
        is ``0`` (benchmarking and debugging knobs; the wire format is the same either way).
        """
        if mode is None:
            env_mode = os.environ.get("PYFLANNEL_UDP_THREADS", "single")
            if env_mode not in ("single", "split"):
                raise ConfigError(
                    f"PYFLANNEL_UDP_THREADS={env_mode!r} is not a forwarder mode",
                    hint="use single or split",
                )
            mode = "split" if env_mode == "split" else "single"
        if offload is None:
            offload = os.environ.get("PYFLANNEL_UDP_OFFLOAD", "1") != "0"
        self.mode: Mode = mode
        self.offload = offload
        self._metrics = metrics if metrics is not None else METRICS
        self.stats = stats if stats is not None else BackendStats()
        self._prepared: UdpPrepared | None = None

    @property
    def prepared(self) -> UdpPrepared | None:
        """What :meth:`prepare` set up (None before it)."""
        return self._prepared

    @property
    def tun_name(self) -> str:
        """The TUN device's name (``flannel0`` unless that name was taken)."""
        return self._prepared.tun.name if self._prepared is not None else ""

    async def prepare(
        self, config: NetworkConfig, ext_iface: ExternalInterface, state_dir: Path
    ) -> UdpPrepared:
        """Check the config, open the TUN and the UDP socket; the result holds them and the
        ``{PublicIP}`` attrs."""
        from pyflannel.config import udp_options

        del state_dir  # udp keeps no state
        if config.enable_ipv6 or not config.enable_ipv4 or config.network is None:
            raise ConfigError(
                "the udp backend supports IPv4 only, but the config enables IPv6",
                hint='set "EnableIPv6": false, or use the vxlan backend for IPv6',
            )
        opts = udp_options(config)
        if ext_iface.ipv4_addr is None or ext_iface.public_ip is None:
            raise InterfaceError(
                f"interface {ext_iface.name} has no IPv4 address for the udp backend",
                hint="pick another --iface",
            )
        mtu = tun_mtu(ext_iface.mtu)
        if mtu < 68:
            raise ConfigError(
                f"udp MTU {mtu} (interface {ext_iface.name} MTU {ext_iface.mtu} - "
                f"{ENCAP_OVERHEAD}) is too small",
                hint="use an interface with an MTU of at least 96",
            )
        self.close()
        sock = open_udp_socket(ext_iface.ipv4_addr, opts.port)
        try:
            tun = Tun.open()
        except BaseException:
            sock.close()
            raise
        attrs = LeaseAttrs(public_ip=ext_iface.public_ip)
        self._prepared = UdpPrepared(
            ext_iface, config.network, config.subnet_len, opts.port, mtu, tun, sock, attrs
        )
        log.info(
            "udp.prepared",
            device=tun.name,
            listen=f"{ext_iface.ipv4_addr}:{opts.port}",
            public_ip=str(ext_iface.public_ip),
            mtu=mtu,
        )
        return self._prepared

    def close(self) -> None:
        """Close the TUN (the device disappears) and the socket."""
        if self._prepared is not None:
            self._prepared.close()

    async def configure(self, prepared: Prepared, lease: Lease) -> UdpNetwork:
        """Address the TUN with our lease, bring it up, route the Network into it."""
        if not isinstance(prepared, UdpPrepared):
            raise TypeError(f"UdpBackend.configure() takes a UdpPrepared, not {prepared!r}")
        if prepared.tun.fd < 0:
            raise InterfaceError(
                f"the TUN device {prepared.tun.name} was closed before configure()",
                hint="prepare the backend again",
            )
        if lease.subnet is None:
            raise LeaseError(
                f"lease {lease.key_suffix} has no IPv4 subnet for the udp backend",
                hint="delete the lease in etcd so that an IPv4 one is allocated",
            )
        ext = prepared.ext
        assert ext.public_ip is not None
        with NetlinkSocket() as nl:
            ifindex = configure_tun(
                nl, prepared.tun.name, lease.subnet, prepared.network, prepared.mtu
            )
        own = OwnStack(4, prepared.network, lease.subnet, ext.public_ip)
        ctx = plan_context(own, dev_index=ifindex, ext_index=ext.index)
        return UdpNetwork(
            prepared,
            lease,
            ctx,
            ifindex,
            mode=self.mode,
            offload=self.offload,
            metrics=self._metrics,
            stats=self.stats,
        )

    @property
    def mtu(self) -> int:
        """External MTU − 28, for the TUN and ``FLANNEL_MTU``."""
        assert self._prepared is not None
        return self._prepared.mtu


def configure_tun(
    nl: NetlinkSocket,
    name: str,
    subnet: ipaddress.IPv4Network,
    network: ipaddress.IPv4Network,
    mtu: int,
) -> int:
    """Our subnet's network address /32, ``mtu``, up, and the Network route; the ifindex."""
    link = get_link(nl, name)
    if link is None:
        raise InterfaceError(f"failed to lookup interface {name}", hint="is the TUN still open?")
    # A /32 creates no connected or broadcast route; the address is the source for traffic from
    # this host into the overlay, and the source of our ICMP errors.
    iface = ipaddress.IPv4Interface((subnet.network_address, 32))
    ensure_address(nl, link.ifindex, iface, stale_within=network)
    if link.mtu != mtu:
        set_link_mtu(nl, link.ifindex, mtu)
    set_link_up(nl, link.ifindex)
    ensure_network_route(nl, link.ifindex, network)
    return link.ifindex


def ensure_network_route(nl: NetlinkSocket, ifindex: int, network: ipaddress.IPv4Network) -> None:
    """``ip route add <Network> dev <tun> scope global`` (flanneld's route, scope universe).

    EEXIST is fine when the existing route already uses the TUN; a route via anything else is
    replaced, with a warning (it would swallow the overlay's traffic).
    """
    body = device_route_body(network, ifindex, scope=nlc.RT_SCOPE_UNIVERSE)
    what = f"add route {network} dev ifindex {ifindex}"
    try:
        nl.request(nlc.RTM_NEWROUTE, nlc.NLM_F_CREATE | nlc.NLM_F_EXCL, body, what=what)
        return
    except KernelRefused as exc:
        if exc.errno != errno.EEXIST:
            raise
    for route in dump_routes(nl):
        if route.dst == network and route.ifindex == ifindex and route.gw is None:
            return
    log.warning(
        "udp.network_route_replaced",
        network=str(network),
        reason="another route for the Network existed; the overlay needs it through the TUN",
    )
    nl.request(nlc.RTM_NEWROUTE, nlc.NLM_F_CREATE | nlc.NLM_F_REPLACE, body, what=what)


def is_tun_name(name: str) -> bool:
    """True for a name the kernel gives a TUN opened with :data:`TUN_NAME_PATTERN`."""
    prefix = TUN_NAME_PATTERN.removesuffix("%d")
    return name.startswith(prefix) and name[len(prefix) :].isdigit()


def tun_mtu(ext_mtu: int) -> int:
    """The TUN's MTU and ``FLANNEL_MTU``: the external MTU minus 28."""
    return ext_mtu - ENCAP_OVERHEAD


def plan_context(own: OwnStack, *, dev_index: int, ext_index: int) -> PlanContext:
    """What lease validation needs (udp peers carry no BackendType, IPv4 only)."""
    return own.context(UdpBackend.lease_backend_type, dev_index=dev_index, ext_index=ext_index)


@dataclass(frozen=True, slots=True)
class TunState:
    """The TUN as the kernel has it, against what :func:`configure_tun` sets up."""

    up: bool
    mtu: int
    has_address: bool
    """Our subnet's network address /32 is on the device."""
    has_route: bool
    """The Network's route goes through the device (no gateway)."""


def read_tun(
    nl: NetlinkSocket,
    ifindex: int,
    subnet: ipaddress.IPv4Network,
    network: ipaddress.IPv4Network,
) -> TunState | None:
    """The TUN's state (read-only); None when the device is gone."""
    link = get_link(nl, ifindex)
    if link is None:
        return None
    want = ipaddress.IPv4Interface((subnet.network_address, 32))
    routes = dump_routes(nl, ifindex)
    return TunState(
        up=link.up,
        mtu=link.mtu,
        has_address=want in list_addresses(nl, ifindex),
        has_route=any(r.dst == network and r.gw is None for r in routes),
    )


def reconcile_tun(
    nl: NetlinkSocket,
    ifindex: int,
    subnet: ipaddress.IPv4Network,
    network: ipaddress.IPv4Network,
    mtu: int,
) -> list[str]:
    """Put back what :func:`configure_tun` set up and someone undid; what was repaired.

    A link flap (``ip link set flannel0 down; up``) or another tool's route clean-up removes
    the Network route without touching the device, and nothing else would ever add it back.
    Reads first and writes only what is missing, so a pass over a healthy device changes
    nothing (and triggers no notification). A device that is gone or was replaced is left to
    the forwarder, which re-creates it (:meth:`UdpNetwork.run`); the result is then empty.
    """
    state = read_tun(nl, ifindex, subnet, network)
    if state is None:
        return []
    repaired: list[str] = []
    if not state.up:
        # first: the kernel refuses a route through a device that is down
        set_link_up(nl, ifindex)
        repaired.append("link set up")
    if state.mtu != mtu:
        set_link_mtu(nl, ifindex, mtu)
        repaired.append(f"mtu {state.mtu} -> {mtu}")
    if not state.has_address:
        want = ipaddress.IPv4Interface((subnet.network_address, 32))
        ensure_address(nl, ifindex, want, stale_within=network)
        repaired.append(f"address {want}")
    if not state.has_route:
        # read before the link was set up: a down link had lost the route anyway
        ensure_network_route(nl, ifindex, network)
        repaired.append(f"route {network}")
    return repaired


def plan_table(
    leases: Sequence[Lease], ctx: PlanContext, subnet_len: int, port: int
) -> tuple[PeerTable, list[tuple[Lease, Rejection]]]:
    """The peer table for ``leases`` and the leases refused (pure).

    Leases are validated as for every backend; udp peers carry no BackendType, so leases that
    name one (vxlan, host-gw nodes) are refused here.
    """
    valid: list[tuple[int, ipaddress.IPv4Network, PeerAddr]] = []
    rejected: list[tuple[Lease, Rejection]] = []
    for lease in leases:
        res = validate_peer(lease, ctx)
        if isinstance(res, Peer):
            assert isinstance(res.subnet, ipaddress.IPv4Network)
            valid.append((lease.mod_revision, res.subnet, (str(res.public_ip), port)))
        else:
            rejected.append((lease, res))
    # Two leases for the same IPv4 subnet (one with an IPv6 part, one without) can coexist in
    # etcd; the newest write wins, as the last PUT would in flanneld.
    valid.sort(key=lambda v: v[0])
    return PeerTable.build(((net, addr) for _, net, addr in valid), subnet_len), rejected


class UdpNetwork(NetworkBase):
    """The configured udp data path: the peer table and the forwarder, and the TUN (kept by a
    :class:`~pyflannel.backend.device_keeper.DeviceKeeper`)."""

    def __init__(
        self,
        prepared: UdpPrepared,
        lease: Lease,
        ctx: PlanContext,
        ifindex: int,
        *,
        mode: Mode,
        offload: bool,
        metrics: Metrics,
        stats: BackendStats,
    ) -> None:
        assert lease.subnet is not None
        # FLANNEL_MTU: the external MTU minus 28
        super().__init__(lease, mtu=prepared.mtu, stats=stats, peers=WantedPeers())
        self._prepared = prepared
        self._subnet = lease.subnet
        self._ctx = ctx
        self.ifindex = ifindex
        self.mode: Mode = mode
        self.offload = offload
        self._metrics = metrics
        self._keeper = DeviceKeeper("udp", stats)
        self._rejections = RejectionLog(stats)
        self._table = PeerTable.build((), prepared.subnet_len)
        self.forwarder = self._new_forwarder()
        self._stats_base = ForwarderStats()

    def _new_forwarder(self) -> Forwarder:
        p = self._prepared
        return Forwarder(
            p.tun.fd,
            p.sock,
            icmp_src=icmp_source(self._ctx.network, self._subnet),
            own_net=int(self._subnet.network_address),
            own_len=self._subnet.prefixlen,
            table=self._table,
            mode=self.mode,
            mtu=p.mtu,
            gso=self.offload,
            gro=self.offload,
            coalesce=self.offload,
        )

    @property
    def tun_name(self) -> str:
        """The TUN device's current name."""
        return self._prepared.tun.name

    @property
    def table(self) -> PeerTable:
        """The peer table in use."""
        return self._table

    @property
    def traffic(self) -> ForwarderStats:
        """Data-path counters, summed over re-created forwarders."""
        cur = self.forwarder.stats.as_dict()
        base = self._stats_base.as_dict()
        return ForwarderStats(**{k: cur[k] + base[k] for k in cur})

    async def apply(self, msg: PeerMessage) -> None:
        """Rebuild the forwarder's peer table after a snapshot or changes."""
        if isinstance(msg, PeerSnapshot):
            self.peers.replace(msg.leases)
            self._rebuild("snapshot")
        elif msg.events:
            self.peers.update(msg.events)
            self._rebuild("events")
        self._metrics.leases_known = len(self.peers) + 1

    def _rebuild(self, reason: str) -> None:
        p = self._prepared
        table, rejected = plan_table(self.peers.leases, self._ctx, p.subnet_len, p.port)
        for lease, rej in rejected:
            self._rejections.note(lease, rej)
        self._table = table
        self.forwarder.set_table(table)
        self._metrics.peers_programmed = len(table)
        log.info("udp.peers_updated", reason=reason, peers=len(table), leases=len(self.peers))

    async def run(self) -> None:
        """Forward packets in the forwarder's thread(s) until cancelled; re-create the TUN if it
        is deleted, and keep its address, link state and Network route (:meth:`keep_device`).
        On exit the threads stop and the TUN and socket are closed."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.keep_device)
                await self._forward()
        finally:
            self.forwarder.stop()
            self._prepared.close()

    async def keep_device(self) -> NoReturn:
        """Check the TUN's address, link state, MTU and Network route on every link, address
        or route notification and every ``CHECK_INTERVAL`` s; repair what is missing
        (:func:`reconcile_tun`), backing off as the device keeper does."""
        p = self._prepared
        with ChangeMonitor() as monitor:

            async def check() -> list[str]:
                monitor.changed(())  # drain: this pass looks at everything anyway
                with NetlinkSocket() as nl:
                    return reconcile_tun(nl, self.ifindex, self._subnet, p.network, p.mtu)

            async def wait(interval: float) -> None:
                with trio.move_on_after(interval):
                    await trio.lowlevel.wait_readable(monitor.fileno())

            await self._keeper.run(check, wait, lambda: p.tun.name)

    async def _forward(self) -> NoReturn:
        while True:
            self.forwarder.start()
            log.info(
                "udp.forwarding",
                device=self.tun_name,
                mode=self.mode,
                gso=self.forwarder.gso,
                gro=self.forwarder.gro,
                coalesce=self.forwarder.coalesce,
            )
            while self.forwarder.alive:
                await trio.sleep(_HEALTH_INTERVAL)
            self.forwarder.stop()
            err = self.forwarder.error
            if not _tun_gone(err):
                raise InterfaceError(
                    f"the udp forwarder of {self.tun_name} failed: {err!r}",
                    hint="restart pyflanneld; report this if it repeats",
                )
            log.warning(
                "udp.device_missing",
                device=self.tun_name,
                action="recreating the TUN device and its address and route",
            )
            await self._recreate()

    async def _recreate(self) -> None:
        p = self._prepared

        def attempt() -> int:
            p.tun.reopen()
            with NetlinkSocket() as nl:
                return configure_tun(nl, p.tun.name, self._subnet, p.network, p.mtu)

        self.ifindex = await self._keeper.recreate(lambda: p.tun.name, attempt)
        for k, v in self.forwarder.stats.as_dict().items():
            setattr(self._stats_base, k, getattr(self._stats_base, k) + v)
        self.forwarder = self._new_forwarder()
        log.warning("udp.device_recreated", device=p.tun.name, ifindex=self.ifindex)


def icmp_source(network: IPNetwork, own: IPNetwork) -> int:
    """The source address of our ICMP errors: the Network's own address (e.g. 10.5.0.0).

    flanneld uses the TUN's address, but the kernel drops a packet arriving on an interface
    with one of its own addresses as source ("martian source", unless ``accept_local``), so its
    errors never reach the sender. The Network address is no host's address (the first subnet
    is never leased by default) and routes back through the TUN, so it passes the reverse-path
    checks. Only when our own subnet holds it (SubnetMin set to the Network start) do we fall
    back to the TUN address, flanneld's choice.
    """
    if own.network_address == network.network_address:
        return int(own.network_address)
    return int(network.network_address)


def _tun_gone(err: BaseException | None) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.EBADFD, errno.EBADF, errno.ENODEV)
