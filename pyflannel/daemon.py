"""The node agent: flanneld's start-up order in one trio nursery.

Order (flanneld's; docs/compatibility.md, "Start-up order"): previous subnet.env → signals →
health listener → network config (retried every second) → external interface → backend device →
lease → device address → traffic rules (other mode cleaned, masq, forward, resync loop) →
subnet.env → peers (snapshot, then watch) → ``READY=1`` → lease renewal. SIGTERM/SIGINT cancel
the nursery and leave the lease, device, routes and rules in place, so a restart is seamless.
The daemon holds no business logic: every decision lives in the modules it calls.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import structlog
import trio

from pyflannel.errors import ConfigError, FlannelError, RegistryError
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.metrics import METRICS
from pyflannel.peer_messages import PeerMessage

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pyflannel.backend.base import Network
    from pyflannel.backend.wanted import Failing
    from pyflannel.config import NetworkConfig
    from pyflannel.iface import ExternalInterface
    from pyflannel.options import Options
    from pyflannel.subnet.kube.manager import KubeSubnetManager
    from pyflannel.subnet.manager import EtcdSubnetManager
    from pyflannel.subnet.subnet_env import SubnetEnv
    from pyflannel.trafficmngr import PreviousNetworks

    SubnetManagerImpl = EtcdSubnetManager | KubeSubnetManager

__all__ = ["Daemon", "first_flannel_error", "run_daemon"]

log = structlog.get_logger("pyflannel.daemon")

CONFIG_RETRY_SECONDS = 1.0


class Daemon:
    """One flanneld-equivalent process; :meth:`run` returns when a signal asks it to stop."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.state_dir = Path(opts.subnet_file).parent
        self.stopping = False

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (returns) or a fatal error (raises FlannelError)."""
        opts = self.opts
        previous = self._read_previous_subnet_env()
        manager = self._make_manager()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                if opts.healthz_port > 0:
                    await nursery.start(self._serve_health)
                await self._start(nursery, manager, previous)
                # The renewal loop only returns by raising (LeaseLost) or being cancelled.
                await manager.run_renewal(self.lease, on_change=self._lease_changed)
        finally:
            manager.close()
        if self.stopping:
            log.info("daemon.exiting")

    def _make_manager(self) -> SubnetManagerImpl:
        """The etcd manager, or the kube one with --kube-subnet-mgr (imported only then, so
        etcd mode never loads the Kubernetes client)."""
        opts = self.opts
        if opts.kube_subnet_mgr:
            from pyflannel.subnet.kube.manager import manager_from_options

            return manager_from_options(opts, os.environ)
        from pyflannel.subnet.manager import EtcdSubnetManager

        return EtcdSubnetManager(
            opts.etcd_endpoints,
            opts.etcd_prefix,
            **opts.etcd_credentials(),
            ttl=opts.subnet_lease_ttl,
            renew_margin=self._renew_margin_minutes(),
            renew_retry=float(opts.subnet_lease_renew_retry),
        )

    # -- start-up steps ------------------------------------------------------------------------

    async def _start(
        self,
        nursery: trio.Nursery,
        manager: SubnetManagerImpl,
        previous: SubnetEnv | None,
    ) -> None:
        from pyflannel.backend.registry import make_backend
        from pyflannel.config import check_network_for_node
        from pyflannel.iface import select_interface

        opts = self.opts
        config = await self._get_config(manager)
        if not config.enable_nftables:
            # flanneld's br_netfilter check (§2) happens before the interface is chosen.
            self._check_br_netfilter(config)
        ext = select_interface(
            **opts.interface_flags(),
            enable_ipv4=config.enable_ipv4,
            enable_ipv6=config.enable_ipv6,
        )
        log.info(
            "daemon.interface_selected",
            iface=ext.name,
            address=str(ext.ipv4_addr or ext.ipv6_addr),
            public_ip=str(ext.public_ip or ext.public_ipv6),
            mtu=ext.mtu,
        )
        check_network_for_node(
            config, (ext.ipv4_addr, ext.ipv6_addr, ext.public_ip, ext.public_ipv6)
        )
        backend = make_backend(
            config.backend_type, **await self._backend_options(manager, config, ext)
        )
        prepared = await backend.prepare(config, ext, self.state_dir)
        from pyflannel.subnet.allocation import previous_subnets

        self.lease = await manager.acquire_lease(config, prepared.attrs, previous_subnets(previous))
        self._lease_changed(self.lease)
        # A kube lease carries no etcd lease, so "reservation" (no etcd lease) means nothing.
        kind = {} if opts.kube_subnet_mgr else {"reservation": self.lease.is_reservation}
        log.info(
            "daemon.lease_acquired",
            subnet=str(self.lease.subnet),
            ipv6_subnet=str(self.lease.ipv6_subnet) if self.lease.ipv6_subnet else None,
            **kind,
        )
        network = await backend.configure(prepared, self.lease)
        METRICS.backend = network.stats
        await self._setup_traffic(nursery, config, previous)
        env = self._write_subnet_env(config, network)
        if opts.kube_subnet_mgr:
            # kube mode: NetworkUnavailable=False once the data path is up (CompleteLease).
            from pyflannel.subnet.kube.manager import KubeSubnetManager

            assert isinstance(manager, KubeSubnetManager)
            nursery.start_soon(manager.complete_lease, self.lease)
        METRICS.ready = True
        network.peers.on_failing_change = self._publish_failing
        send, recv = trio.open_memory_channel[PeerMessage](64)
        nursery.start_soon(manager.watch_leases, self.lease, send)
        nursery.start_soon(self._apply_peers, network, recv)
        nursery.start_soon(network.run)
        nursery.start_soon(self._exit_on_config_change, manager, config)
        nursery.start_soon(self._keep_subnet_env, env)
        from pyflannel.sdnotify import notify

        if notify("READY=1"):
            log.info("daemon.ready_notified")

    async def _backend_options(
        self, manager: SubnetManagerImpl, config: NetworkConfig, ext: ExternalInterface
    ) -> dict[str, str | None]:
        """vxlan: the VtepMACs of our previous lease as MAC hints (used only when neither the
        MAC file nor the device has one: a reboot emptied /run and removed the device)."""
        from pyflannel.subnet.manager import EtcdSubnetManager

        if config.backend_type != "vxlan" or not isinstance(manager, EtcdSubnetManager):
            return {}  # (kube mode: the MAC hint from the Node's annotations is not done yet)
        from pyflannel.backend.mac_store import mac_path
        from pyflannel.config import vxlan_options

        vni = vxlan_options(config).vni
        families = [f for f, on in ((4, config.enable_ipv4), (6, config.enable_ipv6)) if on]
        if all(mac_path(self.state_dir, vni, f).is_file() for f in families):
            return {}  # a restart: the MAC files decide, no etcd round trip needed
        me = LeaseAttrs(public_ipv6=ext.public_ipv6)
        if ext.public_ip is not None:
            me = LeaseAttrs(public_ip=ext.public_ip, public_ipv6=ext.public_ipv6)
        previous = await manager.previous_lease(config, me)
        if previous is None or previous.attrs.backend_type != "vxlan":
            return {}
        v4, v6 = previous.attrs.backend_data, previous.attrs.backend_v6_data
        v4 = v4.get("VtepMAC") if isinstance(v4, dict) else None
        v6 = v6.get("VtepMAC") if isinstance(v6, dict) else None
        return {
            "mac_hint": v4 if isinstance(v4, str) else None,
            "mac_hint_v6": v6 if isinstance(v6, str) else None,
        }

    async def _get_config(self, manager: SubnetManagerImpl) -> NetworkConfig:
        from pyflannel.config import parse_network_config

        attempts = 0
        while True:
            try:
                raw = await manager.get_network_config()
                return parse_network_config(raw)
            except (RegistryError, ConfigError) as exc:
                # flanneld retries forever: the config (or etcd) may appear after we start.
                attempts += 1
                level = log.error if attempts == 1 or attempts % 30 == 0 else log.debug
                level("could not get the network config; retrying every second", error=str(exc))
            await trio.sleep(CONFIG_RETRY_SECONDS)

    def _check_br_netfilter(self, config: NetworkConfig) -> None:
        from pyflannel.trafficmngr import TrafficSpec, check_br_netfilter

        check_br_netfilter(
            TrafficSpec(
                network=config.network if config.enable_ipv4 else None,
                subnet=None,
                ipv6_network=config.ipv6_network if config.enable_ipv6 else None,
                ipv6_subnet=None,
                ip_masq=self.opts.ip_masq,
            )
        )

    async def _setup_traffic(
        self, nursery: trio.Nursery, config: NetworkConfig, previous: SubnetEnv | None
    ) -> None:
        from pyflannel.trafficmngr import new_traffic_manager, spec_from

        opts = self.opts
        spec = spec_from(
            config,
            self.lease,
            ip_masq=opts.ip_masq,
            forward_rules=opts.iptables_forward_rules,
            random_fully_disable=opts.ip_masq_fully_random_disable,
            blackhole_route=opts.ip_blackhole_route,
        )
        tm = new_traffic_manager(
            spec, nftables=config.enable_nftables, prev=_previous_networks(previous)
        )
        await tm.cleanup_other_mode()
        await tm.setup()
        nursery.start_soon(tm.resync_forever, float(opts.iptables_resync))

    def _write_subnet_env(self, config: NetworkConfig, network: Network) -> SubnetEnv:
        from pyflannel.subnet.subnet_env import subnet_env_for, write_subnet_env

        env = subnet_env_for(
            network=config.network if config.enable_ipv4 else None,
            lease_subnet=self.lease.subnet if config.enable_ipv4 else None,
            ipv6_network=config.ipv6_network if config.enable_ipv6 else None,
            ipv6_lease_subnet=self.lease.ipv6_subnet if config.enable_ipv6 else None,
            mtu=network.mtu,
            ipmasq=self.opts.ip_masq,
        )
        try:
            write_subnet_env(self.opts.subnet_file, env)
        except OSError as exc:
            # flanneld only warns here, then reports ready with no file: pods then fail with
            # "subnet.env: no such file". Failing loudly lets systemd restart us instead.
            raise ConfigError(
                f"could not write {self.opts.subnet_file}: {exc.strerror}",
                hint="make its directory writable by pyflanneld or pass --subnet-file",
            ) from exc
        log.info("daemon.subnet_file_written", path=self.opts.subnet_file)
        return env

    # -- long-running tasks ----------------------------------------------------------------------

    async def _apply_peers(
        self, network: Network, recv: trio.MemoryReceiveChannel[PeerMessage]
    ) -> NoReturn:
        # The network owns the wanted peer set and keeps the gauges; kernel failures are
        # repaired or quarantined there, so nothing here can shrink what is defended.
        async for msg in recv:
            await network.apply(msg)
        raise RegistryError("the peer watch stopped unexpectedly", hint="restart pyflanneld")

    async def _exit_on_config_change(
        self, manager: SubnetManagerImpl, config: NetworkConfig
    ) -> NoReturn:
        # flanneld ignores a changed config until restarted, leaving nodes on different
        # Networks partitioned without a word; we exit so that systemd restarts us with it
        # (docs/compatibility.md).
        new = await manager.wait_config_change(config, interval=_config_check_seconds())
        raise ConfigError(
            f"the network config in etcd changed while running (Network {config.network} -> "
            f"{new.network}, backend {config.backend_type} -> {new.backend_type}); exiting to "
            "restart with it",
            hint="systemd's Restart=on-failure starts pyflanneld again; elsewhere restart it",
        )

    async def _keep_subnet_env(self, env: SubnetEnv) -> None:
        from pyflannel.subnet.subnet_env_keeper import keep_subnet_env

        await keep_subnet_env(self.opts.subnet_file, env)

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("daemon.signal_received", signal=signal.Signals(signum).name)
                self.stopping = True
                scope.cancel()
                return

    async def _serve_health(self, task_status: trio.TaskStatus[int]) -> None:
        from pyflannel.health import serve_health

        await serve_health(self.opts.healthz_ip, self.opts.healthz_port, task_status=task_status)

    # -- helpers ---------------------------------------------------------------------------------

    def _publish_failing(self, failing: Mapping[str, Failing]) -> None:
        """Write the quarantined peers beside subnet.env, for ``pyflannel status``."""
        from pyflannel.backend.failing_file import write_failing

        try:
            write_failing(self.state_dir, failing)
        except OSError as exc:
            log.warning("daemon.failing_file_unwritable", error=str(exc))

    def _lease_changed(self, lease: Lease) -> None:
        self.lease = lease
        METRICS.lease_expiration = lease.expiration

    def _renew_margin_minutes(self) -> float:
        """The renew margin, shrunk for short test TTLs so renewal does not spin.

        flanneld's margin (minutes, 1..1439) assumes a 24 h lease; with ``--subnet-lease-ttl``
        of a few seconds we renew at half the TTL instead.
        """
        margin_s = self.opts.subnet_lease_renew_margin * 60.0
        ttl = float(self.opts.subnet_lease_ttl)
        if margin_s >= ttl:
            margin_s = ttl / 2
        return margin_s / 60.0

    def _read_previous_subnet_env(self) -> SubnetEnv | None:
        from pyflannel.subnet.subnet_env import read_subnet_env

        try:
            return read_subnet_env(self.opts.subnet_file, missing_ok=True)
        except ConfigError as exc:
            log.warning("daemon.previous_subnet_file_ignored", error=str(exc))
            return None


def _config_check_seconds() -> float:
    """How often the running config is compared with etcd's; ``$PYFLANNEL_CONFIG_CHECK_SECONDS``
    overrides the default (tests)."""
    from pyflannel.subnet.manager import CONFIG_CHECK_SECONDS

    try:
        return max(0.1, float(os.environ.get("PYFLANNEL_CONFIG_CHECK_SECONDS", "")))
    except ValueError:
        return CONFIG_CHECK_SECONDS


def _previous_networks(env: SubnetEnv | None) -> PreviousNetworks | None:
    from pyflannel.trafficmngr import PreviousNetworks

    if env is None:
        return None
    return PreviousNetworks(
        network=env.network,
        subnet=None if env.subnet is None else env.subnet.network,
        ipv6_network=env.ipv6_network,
        ipv6_subnet=None if env.ipv6_subnet is None else env.ipv6_subnet.network,
    )


async def run_daemon(opts: Options) -> None:
    """Run the agent until a signal; raises FlannelError on a fatal problem."""
    try:
        await Daemon(opts).run()
    except BaseExceptionGroup as group:
        # trio nurseries wrap failures in exception groups; the CLI wants the one actionable
        # FlannelError (LeaseLost, InterfaceError, ...) to print and pick the exit code from.
        error = first_flannel_error(group)
        if error is None:
            raise
        raise error from group


def first_flannel_error(exc: BaseException) -> FlannelError | None:
    """The first FlannelError inside ``exc`` (itself, or nested in exception groups)."""
    if isinstance(exc, FlannelError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_flannel_error(inner)
            if found is not None:
                return found
    return None
