"""The Kubernetes subnet manager: flanneld's ``kubeSubnetManager`` behind the same
``SubnetManager`` protocol as the etcd one, feeding the same typed peer messages.

- Lease: the own Node's ``spec.podCIDR(s)``; this node's backend data is published as
  annotations through ``nodes/<n>/status`` (only when something differs, as flanneld).
- ``complete_lease``: NetworkUnavailable=False with flanneld's reason and message.
- Peers: list + watch Nodes from the list's resourceVersion; a watch the server ends is resumed
  from the last resourceVersion seen (bookmarks included); ``410 Gone`` re-lists; any other
  failure retries with the one retry policy (:mod:`pyflannel.retry`).

Deliberate differences from flanneld (docs/compatibility.md): a missing Node, or one without a
podCIDR yet, is waited for (not ready; one log line per interval) instead of exiting 1; a Node
without any annotation is skipped instead of panicking; API errors on publishing the annotations
or the condition are retried instead of exiting (v0.20.2) or giving up after 30 s (HEAD).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NoReturn

import structlog
import trio

from pyflannel.config import NetworkConfig
from pyflannel.errors import ConfigError, KubeApiError, KubeWatchExpired, LeaseError
from pyflannel.lease import Lease, LeaseAttrs
from pyflannel.metrics import METRICS
from pyflannel.peer_messages import PeerMessage
from pyflannel.retry import Backoff, FailureLog
from pyflannel.subnet.kube.annotations import (
    DEFAULT_PREFIX,
    LEASE_SECONDS,
    AnnotationKeys,
    annotation_keys,
    condition_patch,
    own_annotation_patch,
)
from pyflannel.subnet.kube.client import KubeClient
from pyflannel.subnet.kube.connection import KubeConnection, resolve_connection
from pyflannel.subnet.kube.node import Node
from pyflannel.subnet.kube.watch import NodeEvent, NodeFeed

if TYPE_CHECKING:
    from pyflannel.options import Options
    from pyflannel.subnet.allocation import PreviousSubnets

__all__ = ["NODE_WAIT_SECONDS", "KubeSubnetManager", "manager_from_options"]

log = structlog.get_logger(__name__)

NODE_WAIT_SECONDS = 5.0  # how often a missing Node / podCIDR is looked for again (and logged)
WATCH_RETRY_MAX = 5.0
HEALTHY_WATCH_SECONDS = 1.0
WRITE_RETRY_MAX = 30.0
_DUAL_STACK_BACKENDS = frozenset({"vxlan", "host-gw", "wireguard"})


def _revision(rv: str) -> int:
    return int(rv) if rv.isdigit() else 0


class KubeSubnetManager:
    """flanneld's Kubernetes subnet manager for one node. Construction does no I/O."""

    def __init__(
        self,
        conn: KubeConnection,
        *,
        annotation_prefix: str = DEFAULT_PREFIX,
        net_config_path: str = "/etc/kube-flannel/net-conf.json",
        set_node_network_unavailable: bool = True,
        environ: Mapping[str, str] | None = None,
        node_wait: float = NODE_WAIT_SECONDS,
        client: KubeClient | None = None,
    ) -> None:
        self.keys: AnnotationKeys = annotation_keys(annotation_prefix)
        self._net_config_path = net_config_path
        self._set_condition = set_node_network_unavailable
        self._environ = dict(os.environ if environ is None else environ)
        self._node_wait = node_wait
        self.client = client or KubeClient(conn)
        self.node_name = ""
        self._config: NetworkConfig | None = None
        self.feed: NodeFeed | None = None

    def close(self) -> None:
        """Nothing to release synchronously (the pool goes with the process; see aclose)."""

    async def aclose(self) -> None:
        """Close the API connections."""
        await self.client.aclose()

    # ----------------------------------------------------------------- config
    async def get_network_config(self) -> str:
        """The raw net-conf.json (``--net-config-path``), read once as flanneld does."""
        try:
            return await trio.Path(self._net_config_path).read_text()
        except OSError as exc:
            raise ConfigError(
                f"failed to read net conf {self._net_config_path}: {exc.strerror}",
                hint="mount the kube-flannel ConfigMap there (net-conf.json) or pass "
                "--net-config-path",
            ) from exc

    async def wait_config_change(self, current: NetworkConfig, *, interval: float = 0) -> NoReturn:
        """flanneld reads net-conf.json once; a change needs a restart (a DaemonSet rollout)."""
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- node name
    async def resolve_node_name(self) -> str:
        """``NODE_NAME``, else the node of ``POD_NAMESPACE/POD_NAME`` (flanneld's order)."""
        if self.node_name:
            return self.node_name
        env = self._environ
        name = env.get("NODE_NAME", "")
        if not name:
            pod, ns = env.get("POD_NAME", ""), env.get("POD_NAMESPACE", "")
            if not pod or not ns:
                raise ConfigError(
                    "env variables POD_NAME and POD_NAMESPACE must be set",
                    hint="set NODE_NAME, or POD_NAME and POD_NAMESPACE from the downward API "
                    "(deploy/kube-pyflannel.yml does)",
                )
            name = await self.client.get_pod_node_name(ns, pod)
            if not name:
                raise ConfigError(
                    f"node name not present in pod spec '{ns}/{pod}'",
                    hint="the pod is not scheduled yet; set NODE_NAME instead",
                )
        self.node_name = name
        return name

    # ----------------------------------------------------------------- lease
    async def _wait_for_node(self, name: str) -> Node:
        """The own Node once it exists and has a podCIDR; one log line per wait interval."""
        attempts = 0
        while True:
            try:
                node = await self.client.get_node(name)
                if node.pod_cidr or node.pod_cidrs:
                    if attempts:
                        log.info("kube.node_ready", node=name, waited_attempts=attempts)
                    return node
                why = (
                    f"node {name!r} has no podCIDR yet: waiting for the controller manager to "
                    "assign one (--allocate-node-cidrs)"
                )
            except KubeApiError as exc:
                if exc.status == 404:
                    why = f"node {name!r} does not exist yet: waiting for it to register"
                else:
                    why = f"cannot read node {name!r}: {exc.message}"
            attempts += 1
            log.warning("kube.node_not_ready", node=name, reason=why, retry_in=self._node_wait)
            await trio.sleep(self._node_wait)

    async def _write_status(self, name: str, patch: Mapping[str, object], what: str) -> Node:
        backoff = Backoff.of(1.0, WRITE_RETRY_MAX)
        flog = FailureLog(log, "kube.node_patch_failed")
        while True:
            try:
                node = await self.client.patch_node_status(name, patch, what)
                flog.resolved(node=name, what=what)
                return node
            except KubeApiError as exc:
                delay = backoff.next()
                flog.failed(node=name, what=what, error=exc.message, hint=exc.hint, retry_in=delay)
                await trio.sleep(delay)

    async def acquire_lease(
        self,
        config: NetworkConfig,
        attrs: LeaseAttrs,
        previous: PreviousSubnets | None = None,
    ) -> Lease:
        """This node's lease from its podCIDR(s), after publishing the annotations.

        Waits while the Node is missing or has no podCIDR. Raises LeaseError when the podCIDR
        lies outside the configured Network (flanneld's message)."""
        del previous  # kube mode never picks a subnet (flannel-kube.md §8)
        self._config = config
        name = await self.resolve_node_name()
        node = await self._wait_for_node(name)
        entries = node.pod_cidrs or (node.pod_cidr,)
        if len(entries) > 2:
            raise LeaseError(
                f"node {name!r}: pod cidrs should be IPv4/IPv6 only or dualstack "
                f"(got {', '.join(entries)})",
                hint="give the node at most one IPv4 and one IPv6 podCIDR",
            )
        v4, v6, bad = node.cidrs()
        if bad:
            raise LeaseError(f"node {name!r}: podCIDR {bad[0]!r} is not a CIDR", hint="fix it")
        patch = own_annotation_patch(node, attrs, self.keys)
        if patch:
            await self._write_status(name, {"metadata": {"annotations": patch}}, "annotations")
            log.info("kube.annotations_published", node=name, keys=sorted(patch))
        subnet = self._check_inside(name, v4, config.network, config.enable_ipv4, "IPv4")
        subnet6 = None
        if config.enable_ipv6 and config.backend_type in _DUAL_STACK_BACKENDS:
            subnet6 = self._check_inside(name, v6, config.ipv6_network, True, "IPv6")
        self.feed = NodeFeed(name, self.keys, config)
        return Lease(
            subnet=subnet,  # type: ignore[arg-type]
            ipv6_subnet=subnet6,  # type: ignore[arg-type]
            attrs=attrs,
            expiration=time.time() + LEASE_SECONDS,
        )

    @staticmethod
    def _check_inside(
        name: str,
        cidr: ipaddress.IPv4Network | ipaddress.IPv6Network | None,
        network: ipaddress.IPv4Network | ipaddress.IPv6Network | None,
        enabled: bool,
        family: str,
    ) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        if not enabled:
            return None
        if cidr is None:
            raise LeaseError(
                f"node {name!r} has no {family} podCIDR but the net config enables {family}",
                hint=f"give the node an {family} podCIDR or disable {family} in net-conf.json",
            )
        if network is None or not (
            cidr.version == network.version and cidr.subnet_of(network)  # type: ignore[arg-type]
        ):
            raise LeaseError(
                f'subnet "{network}" specified in the flannel net config doesn\'t contain '
                f'"{cidr}" PodCIDR of the "{name}" node',
                hint="make the controller manager's --cluster-cidr and net-conf.json's Network "
                "agree",
            )
        return cidr

    async def complete_lease(self, lease: Lease) -> None:
        """NetworkUnavailable=False (flanneld's CompleteLease), retried until it is accepted."""
        del lease
        if not self._set_condition:
            return
        name = await self.resolve_node_name()
        await self._write_status(name, condition_patch(), "NetworkUnavailable condition")
        log.info("kube.node_network_available", node=name)

    async def run_renewal(
        self, lease: Lease, *, on_change: Callable[[Lease], None] | None = None
    ) -> NoReturn:
        """Nothing to renew: a podCIDR does not expire (flanneld never renews in kube mode)."""
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- peers
    async def watch_leases(
        self, own_lease: Lease, send_channel: trio.MemorySendChannel[PeerMessage]
    ) -> NoReturn:
        """Send the peers' leases forever: a PeerSnapshot per listing, PeerChanges per event."""
        if self.feed is None or self._config is None:
            raise LeaseError("watch_leases before acquire_lease", hint="this is a bug")
        feed = self.feed
        backoff = Backoff.of(0.1, WATCH_RETRY_MAX)
        flog = FailureLog(log, "kube.node_watch_failed")
        refused: dict[str, str] = {}
        rv = ""

        def report_refusals() -> None:
            for r in feed.refusals:
                if refused.get(r.node) != r.reason:
                    refused[r.node] = r.reason
                    log.warning(
                        "kube.node_refused",
                        node=r.node,
                        reason=r.reason,
                        hint="fix the node's flannel annotations or podCIDR; it is not programmed",
                    )
            feed.refusals.clear()

        async with send_channel:
            while True:
                # A watch counts as healthy once it delivered something or stayed open a while;
                # one that ends (or expires) at once, again and again, is a failure like any
                # other: without this a misbehaving API server made the loop spin.
                started = trio.current_time()
                progressed = False
                try:
                    if not rv:
                        listing = await self.client.list_nodes()
                        rv = listing.resource_version
                        snapshot = feed.snapshot(listing.nodes, _revision(rv))
                        report_refusals()
                        # (While the watch keeps failing, re-listings are not news.)
                        peers = len(snapshot.leases)
                        if flog.failures:
                            log.debug("kube.nodes_listed", peers=peers, revision=rv)
                        else:
                            log.info("kube.nodes_listed", peers=peers, revision=rv)
                        await send_channel.send(snapshot)
                    async with self.client.watch_nodes(rv) as events:
                        async for item in events:
                            progressed = True
                            if isinstance(item, str):
                                rv = item or rv
                                continue
                            rv = item.node.resource_version or rv
                            await self._forward(feed, item, rv, send_channel)
                            report_refusals()
                    # The server ended the watch (timeoutSeconds): resume from rv.
                    error = "the API server ended the watch at once"
                except KubeWatchExpired as exc:
                    METRICS.watch_restarts_total += 1
                    expired_rv, rv = rv, ""
                    if progressed or trio.current_time() - started >= HEALTHY_WATCH_SECONDS:
                        # The normal case (compaction while we watched): re-list at once.
                        log.info("kube.node_watch_expired", resource_version=expired_rv)
                        continue
                    error = f"resourceVersion {expired_rv} expired at once: {exc.message}"
                except KubeApiError as exc:
                    METRICS.watch_restarts_total += 1
                    error = exc.message
                else:
                    if progressed or trio.current_time() - started >= HEALTHY_WATCH_SECONDS:
                        flog.resolved(resource_version=rv)
                        backoff.reset()
                        continue
                delay = backoff.next()
                flog.failed(error=error, resource_version=rv or None, retry_in=delay)
                await trio.sleep(delay)

    @staticmethod
    async def _forward(
        feed: NodeFeed, event: NodeEvent, rv: str, send: trio.MemorySendChannel[PeerMessage]
    ) -> None:
        changes = feed.changes((event,), _revision(rv))
        if changes is not None:
            await send.send(changes)


def manager_from_options(opts: Options, environ: Mapping[str, str]) -> KubeSubnetManager:
    """The kube manager for the daemon's flags and environment (no I/O beyond reading the
    kubeconfig). ``$PYFLANNEL_KUBE_NODE_WAIT_SECONDS`` shortens the node wait (tests)."""
    conn = resolve_connection(opts.kube_api_url, opts.kubeconfig_file, environ)
    try:
        wait = max(0.1, float(environ.get("PYFLANNEL_KUBE_NODE_WAIT_SECONDS", "")))
    except ValueError:
        wait = NODE_WAIT_SECONDS
    return KubeSubnetManager(
        conn,
        annotation_prefix=opts.kube_annotation_prefix,
        net_config_path=opts.net_config_path,
        set_node_network_unavailable=opts.set_node_network_unavailable,
        environ=environ,
        node_wait=wait,
    )
