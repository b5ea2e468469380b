"""The wireguard backend and its live network: devices, our lease attrs, peers, supervision.

Start-up (flanneld's order): the key file and the devices first, then the lease attrs
(``{"PublicKey":…,"Port":…}``), then after the lease the device addresses, MTU and the Network
routes. Peers go through the shared pipeline: typed messages edit the one
:class:`~pyflannel.backend.wanted.WantedPeers`; the planner (:mod:`.peers`) turns the
programmable leases into peers per device; each device's peer list is *read back* and only the
difference is written, so peers left by an earlier run (stale leases, rotated keys) are removed
at start and at every resync.

Differences from flanneld, all deliberate (docs/compatibility.md):

* an existing device is reused and never deleted at shutdown, so a daemon restart does not cut
  pod traffic (flanneld deletes it on shutdown and re-creates it at start);
* without the kernel module ``wireguard-go`` runs the device; the daemon supervises it and, if
  the process or the device goes away, re-creates it (backoff 0.5 s → 30 s) and re-applies every
  peer, with one ``wireguard.device_recreated`` line;
* hostile leases (bad or duplicate keys, our own key) are refused with one warning each.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final, Unpack

import structlog
import trio

from pyflannel.backend.base import BackendBase, OwnStack, own_subnet
from pyflannel.backend.network_base import NetworkBase
from pyflannel.backend.wanted import Failing, WantedPeers
from pyflannel.backend.wireguard.device import (
    Device,
    configure_link,
    device_alive,
    ensure_device,
    link_repairs,
    remove_device,
)
from pyflannel.backend.wireguard.inspect import metric_families, peer_stats
from pyflannel.backend.wireguard.keys import (
    encode_key,
    key_file_path,
    load_or_create_private_key,
    public_key,
)
from pyflannel.backend.wireguard.options import (
    DEVICE_NAME,
    DEVICE_NAME_V6,
    ENCAP_OVERHEAD,
    WireguardOptions,
    wireguard_options,
)
from pyflannel.backend.wireguard.peers import (
    DeviceSpec,
    PeerPlan,
    WgContext,
    count_peers,
    device_specs,
    diff_device,
    lease_payload,
    plan_peers,
)
from pyflannel.backend.wireguard.uapi import SOCKET_DIR, DeviceState, PeerSet, SetDevice, UapiError
from pyflannel.errors import ConfigError, FlannelError, InterfaceError, NetlinkError
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.metrics import Metrics
from pyflannel.netlink.nlsocket import NetlinkSocket
from pyflannel.netlink.ops import IPNetwork
from pyflannel.peer_messages import PeerMessage, PeerSnapshot
from pyflannel.retry import Backoff, FailureLog

if TYPE_CHECKING:
    from pyflannel.backend.base import BackendOptions, Family, PlanContext, Prepared
    from pyflannel.config import NetworkConfig
    from pyflannel.iface import ExternalInterface

__all__ = ["WireguardBackend", "WireguardNetwork"]

log = structlog.get_logger(__name__)

_HEALTH_INTERVAL: Final = 0.5
_RECREATE_MIN: Final = 0.5
_RECREATE_MAX: Final = 30.0
_REPAIR_MIN: Final = 1.0
_REPAIR_MAX: Final = 30.0
_STATS_INTERVAL: Final = 5.0
_PERMANENT_ERRNOS: Final = frozenset(
    {errno.EINVAL, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.ENOKEY, errno.ERANGE}
)


def _remove_unused(specs: Sequence[DeviceSpec], directory: Path) -> None:
    """Delete our device names the Mode and families no longer use (after a config change from
    separate to a single tunnel, or IPv6 turned off): their Network routes would compete."""
    wanted = {s.name for s in specs}
    with NetlinkSocket() as nl:
        for name in (DEVICE_NAME, DEVICE_NAME_V6):
            if name not in wanted and remove_device(nl, name, directory):
                log.warning("wireguard.device_removed", device=name, reason="unused in this Mode")


def _blocking_ensure(specs: Sequence[DeviceSpec], private: bytes, directory: Path) -> list[Device]:
    devices = []
    with NetlinkSocket() as nl:
        for spec in specs:
            dev = ensure_device(nl, spec.name, directory)
            # Key and port only: the peers a running device holds keep carrying traffic until
            # the first reconcile (flanneld's ReplacePeers=true here cuts them).
            dev.client.set(SetDevice(private_key=private, listen_port=spec.port))
            devices.append(dev)
    return devices


@dataclass(frozen=True, slots=True)
class WireguardPrepared:
    """What :meth:`WireguardBackend.prepare` set up (key, devices); ``configure`` consumes it."""

    attrs: LeaseAttrs
    public_key: bytes
    devices: tuple[str, ...]


class WireguardBackend(BackendBase):
    """flanneld's ``wireguard`` backend: devices and key before the lease, routes after."""

    backend_type = "wireguard"

    def __init__(self, *, socket_dir: Path = SOCKET_DIR, **options: Unpack[BackendOptions]) -> None:
        super().__init__(**options)
        self.socket_dir = socket_dir
        self._ext: ExternalInterface | None = None
        self._config: NetworkConfig | None = None
        self.options = WireguardOptions()
        self.private_key = b""
        self.public_key = b""
        self.specs: tuple[DeviceSpec, ...] = ()
        self.devices: list[Device] = []

    @property
    def mtu(self) -> int:
        """flanneld's MTU: (Backend MTU, else the external MTU) − 80, for devices and subnet.env."""
        assert self._ext is not None
        return (self.options.mtu or self._ext.mtu) - ENCAP_OVERHEAD

    async def prepare(
        self, config: NetworkConfig, ext_iface: ExternalInterface, state_dir: Path
    ) -> WireguardPrepared:
        """Options, key file, devices (kernel or wireguard-go); the result holds the lease
        attrs."""
        del state_dir  # the key lives where flanneld keeps it (/run/flannel/wgkey)
        self.options = opts = wireguard_options(config.backend)
        self._ext, self._config = ext_iface, config
        if (self.mtu < 1280 and config.enable_ipv6) or self.mtu < 576:
            raise ConfigError(
                f"wireguard MTU {self.mtu} is too small",
                hint="use an interface (or Backend MTU) of at least 1360 (IPv6) / 656 (IPv4)",
            )
        path = key_file_path()
        self.private_key, created = load_or_create_private_key(path)
        self.public_key = public_key(self.private_key)
        log.info(
            "wireguard.key_loaded",
            path=str(path),
            created=created,
            public_key=encode_key(self.public_key),
        )
        self.specs = device_specs(
            opts.mode, config.enable_ipv4, config.enable_ipv6, opts.listen_port, opts.listen_port_v6
        )
        await trio.to_thread.run_sync(_remove_unused, self.specs, self.socket_dir)
        self.devices = await trio.to_thread.run_sync(
            _blocking_ensure, self.specs, self.private_key, self.socket_dir
        )
        for dev, spec in zip(self.devices, self.specs, strict=True):
            log.info("wireguard.device_ready", device=dev.name, kind=dev.kind, port=spec.port)
        attrs = LeaseAttrs(backend_type=self.backend_type)
        if config.enable_ipv4:
            if ext_iface.public_ip is None:
                raise InterfaceError(
                    f"interface {ext_iface.name} has no IPv4 address for wireguard",
                    hint="pick another --iface or set --public-ip",
                )
            attrs = replace(
                attrs,
                public_ip=ext_iface.public_ip,
                backend_data=lease_payload(self.public_key, opts.listen_port),
            )
        if config.enable_ipv6:
            if ext_iface.public_ipv6 is None:
                raise InterfaceError(
                    f"interface {ext_iface.name} has no IPv6 address for wireguard",
                    hint="pick another --iface or set --public-ipv6",
                )
            # separate: the v6 device listens on ListenPortV6 (flanneld's bytes). One tunnel:
            # the single device listens on ListenPort, so that is the port we advertise
            # (flanneld HEAD advertises ListenPortV6 there, which nobody listens on).
            v6_port = opts.listen_port_v6 if opts.mode == "separate" else opts.listen_port
            attrs = replace(
                attrs,
                public_ipv6=ext_iface.public_ipv6,
                backend_v6_data=lease_payload(self.public_key, v6_port),
            )
        return WireguardPrepared(attrs, self.public_key, tuple(d.name for d in self.devices))

    def _context(self, lease: Lease) -> WgContext:
        ext, config = self._ext, self._config
        assert ext is not None and config is not None
        contexts: dict[Family, PlanContext] = {}
        v4: Family = 4
        v6: Family = 6
        for family, enabled, network, public in (
            (v4, config.enable_ipv4, config.network, ext.public_ip),
            (v6, config.enable_ipv6, config.ipv6_network, ext.public_ipv6),
        ):
            if not enabled:
                continue
            # The config parser refuses an enabled family without its Network, and prepare()
            # one without a public address.
            assert network is not None and public is not None
            underlay = ext.ipv4_network if family == 4 else ext.ipv6_network
            stack = OwnStack(family, network, own_subnet(lease, family), public, underlay)
            contexts[family] = stack.context(self.backend_type, dev_index=0, ext_index=ext.index)
        opts = self.options
        return WgContext(
            mode=opts.mode,
            devices=self.specs,
            contexts=contexts,
            own_key=self.public_key,
            listen_port=opts.listen_port,
            listen_port_v6=opts.listen_port_v6,
            psk=opts.psk,
            keepalive=opts.keepalive,
            ext_ipv4=ext.ipv4_addr,
            ext_ipv6=ext.ipv6_addr,
        )

    def link_plan(self, lease: Lease, spec: DeviceSpec) -> tuple[list[IPNetwork], list[IPNetwork]]:
        """(our subnets, Network routes) the device ``spec`` carries."""
        config = self._config
        assert config is not None
        subnets: list[IPNetwork] = []
        networks: list[IPNetwork] = []
        for fam in spec.families:
            own = lease.subnet_of(fam)
            net = config.network if fam == 4 else config.ipv6_network
            if own is not None and net is not None:
                subnets.append(own)
                networks.append(net)
        return subnets, networks

    def configure_links(self, lease: Lease) -> None:
        """Addresses, MTU, link up and Network routes on every device (blocking)."""
        with NetlinkSocket() as nl:
            for spec in self.specs:
                subnets, networks = self.link_plan(lease, spec)
                configure_link(nl, spec.name, self.mtu, subnets, networks)

    async def configure(self, prepared: Prepared, lease: Lease) -> WireguardNetwork:
        """Address the devices with our lease and route the Network(s) through them."""
        if not isinstance(prepared, WireguardPrepared) or prepared.public_key != self.public_key:
            raise TypeError(
                f"WireguardBackend.configure() takes this backend's WireguardPrepared, not "
                f"{prepared!r}"
            )
        ctx = self._context(lease)
        await trio.to_thread.run_sync(self.configure_links, lease)
        return WireguardNetwork(self, lease, ctx, self.metrics, self.mtu)


class WireguardNetwork(NetworkBase):
    """The configured WireGuard data path: keeps every device's peers equal to the plan."""

    def __init__(
        self, backend: WireguardBackend, lease: Lease, ctx: WgContext, metrics: Metrics, mtu: int
    ) -> None:
        """``mtu``: ``FLANNEL_MTU``, the prepared backend's :attr:`WireguardBackend.mtu`."""
        super().__init__(lease, mtu=mtu, stats=backend.stats, peers=WantedPeers())
        self._be = backend
        self._metrics = metrics
        self.ctx = ctx
        self._lock = trio.Lock()
        self._dirty = True
        self._warned: set[tuple[str, str]] = set()
        self._apply_log = FailureLog(log, "wireguard.peers_apply_failed")
        self.plan = PeerPlan(peers={})
        self.states: dict[str, DeviceState] = {}
        self.states_at = 0.0
        metrics.extra_families = metric_families(lambda: peer_stats(self.states, self.peers.leases))

    @property
    def devices(self) -> list[Device]:
        """The live devices."""
        return self._be.devices

    async def apply(self, msg: PeerMessage) -> None:
        """A snapshot replaces the wanted set, changes edit it; the devices follow. A device
        failure is repaired by :meth:`run` after a backoff, never raised."""
        async with self._lock:
            if isinstance(msg, PeerSnapshot):
                self.peers.replace(msg.leases)
            elif msg.events:
                self.peers.update(msg.events)
            else:
                return
            self._dirty = True
            self._metrics.leases_known = len(self.peers) + 1
            try:
                await self._sync_locked("snapshot" if isinstance(msg, PeerSnapshot) else "events")
            except (FlannelError, OSError) as exc:
                # run() repairs after a backoff; one line for the first and every 30th failure
                self._apply_log.failed(error=str(exc), action="repaired by the next resync")
            else:
                self._apply_log.resolved()

    def _log_rejections(self, plan: PeerPlan) -> None:
        for lease, rej in plan.rejected:
            key = (lease.key_suffix, rej.reason)
            if rej.benign or key in self._warned:
                continue
            self._warned.add(key)
            self.stats.leases_rejected_total += 1
            log.warning("backend.lease_rejected", reason=rej.reason)

    def _apply_device(self, dev: Device, want: dict[bytes, PeerSet]) -> tuple[int, list[bytes]]:
        """Read the device, write the difference; (peers written, keys the device refused)."""
        have = dev.client.get()
        req = diff_device(want, have)
        if not req.peers:
            return 0, []
        try:
            dev.client.set(req)
            return len(req.peers), []
        except UapiError as exc:
            if not _permanent(exc):
                raise
        # Find the peer the device refuses; the others go in.
        refused: list[bytes] = []
        for one in req.peers:
            try:
                dev.client.set(SetDevice(peers=(one,)))
            except UapiError as exc:
                if not _permanent(exc):
                    raise
                refused.append(one.public_key)
        return len(req.peers) - len(refused), refused

    async def _sync_locked(self, reason: str) -> None:
        plan = plan_peers(self.peers.programmable(), self.ctx)
        self._log_rejections(plan)
        written = 0
        for dev in self.devices:
            want = dict(plan.peers.get(dev.name, {}))
            n, refused = await trio.to_thread.run_sync(self._apply_device, dev, want)
            written += n
            for key in refused:
                lease = plan.owners[key]
                self.peers.quarantine(
                    Failing(
                        lease,
                        "EINVAL",
                        f"lease {lease.key_suffix}: {dev.name} refused its peer; fix the lease",
                    )
                )
                self._metrics.count_peer_failure("EINVAL")
        self.plan = plan
        self._dirty = False
        self._metrics.peers_programmed = count_peers(plan)
        if written:
            log.info(
                "backend.peers_programmed",
                reason=reason,
                peers=count_peers(plan),
                written=written,
                leases=len(self.peers),
            )

    async def run(self) -> None:
        """Until cancelled: watch the devices (re-create a lost one, re-apply every peer), keep
        their addresses and routes, reconcile peers every ``resync_interval`` s or after a
        failure (with backoff), and read the per-peer counters for status and metrics."""
        be = self._be
        repair = Backoff.of(_REPAIR_MIN, _REPAIR_MAX)
        repair_log = FailureLog(log, "backend.repair_failed")
        next_resync = trio.current_time() + be.resync_interval
        next_stats = 0.0
        while True:
            await trio.sleep(_HEALTH_INTERVAL)
            lost = await trio.to_thread.run_sync(self._lost_devices)
            for name in lost:
                await self._recreate(name)
            now = trio.current_time()
            if now >= next_stats:  # per-peer counters for /metrics
                await trio.to_thread.run_sync(self._read_states)
                next_stats = now + _STATS_INTERVAL
            if not (self._dirty or lost or now >= next_resync):
                continue
            try:
                repaired = await trio.to_thread.run_sync(self._repair_links)
                if repaired:
                    be.stats.resync_repairs_total += 1
                    log.warning("wireguard.device_repaired", repaired=repaired)
                async with self._lock:
                    await self._sync_locked("resync")
            except (FlannelError, OSError) as exc:
                self._dirty = True
                delay = repair.next()
                repair_log.failed(error=str(exc), retry_in=round(delay, 2))
                next_resync = trio.current_time() + delay
                continue
            repair.reset()
            repair_log.resolved()
            be.stats.resyncs_total += 1
            next_resync = trio.current_time() + be.resync_interval

    def _read_states(self) -> None:
        states: dict[str, DeviceState] = {}
        for dev in self.devices:
            try:
                states[dev.name] = dev.client.get()
            except UapiError:
                continue
        self.states = states
        self.states_at = time.time()

    def _lost_devices(self) -> list[str]:
        with NetlinkSocket() as nl:
            return [d.name for d in self.devices if not device_alive(nl, d)]

    def _repair_links(self) -> list[str]:
        out: list[str] = []
        with NetlinkSocket() as nl:
            for spec in self._be.specs:
                subnets, networks = self._be.link_plan(self.lease, spec)
                out += [
                    f"{spec.name}: {r}"
                    for r in link_repairs(nl, spec.name, self.mtu, subnets, networks)
                ]
        return out

    async def _recreate(self, name: str) -> None:
        be = self._be
        spec = next(s for s in be.specs if s.name == name)
        backoff = Backoff.of(_RECREATE_MIN, _RECREATE_MAX)
        failures = FailureLog(log, "wireguard.recreate_failed")
        started = time.monotonic()
        while True:
            try:
                devs = await trio.to_thread.run_sync(
                    _blocking_ensure, [spec], be.private_key, be.socket_dir
                )
                await trio.to_thread.run_sync(be.configure_links, self.lease)
                break
            except (FlannelError, NetlinkError, OSError) as exc:
                delay = backoff.next()
                failures.failed(device=name, error=str(exc), retry_in=round(delay, 2))
                await trio.sleep(delay)
        failures.resolved(device=name)
        be.devices = [devs[0] if d.name == name else d for d in be.devices]
        self.peers.release_all()  # a new device: refused peers get another chance
        async with self._lock:
            self._dirty = True
            try:
                await self._sync_locked("device recreated")
            except (FlannelError, OSError) as exc:
                log.warning("wireguard.peers_apply_failed", error=str(exc), action="retrying")
        be.stats.device_recreations_total += 1
        log.warning(
            "wireguard.device_recreated",
            device=name,
            kind=devs[0].kind,
            peers=len(self.plan.peers.get(name, {})),
            seconds=round(time.monotonic() - started, 2),
            reason="the device or its wireguard-go process was gone",
        )


def _permanent(exc: UapiError) -> bool:
    """A refusal that retrying the same request cannot cure (a value the device rejects)."""
    return exc.errno in _PERMANENT_ERRNOS
