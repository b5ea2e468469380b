"""``--ip-blackhole-route``: a ``blackhole <own subnet>`` route, added when missing.

Meant for set-ups without the bridge CNI plugin (e.g. Canal), where nothing else routes the
unused addresses of our subnet and packets to them would otherwise follow the default route.

Differs from flanneld: its AddBlackholeV4Route/V6Route only call RouteAdd when *listing* the
routes fails (``if err != nil && len(routes) == 0``), so in practice it never adds the route.
pyflannel adds it as documented, at set-up and then on every resync, and removes the blackholes
it owns that are no longer right: the previous run's subnet (from the old subnet.env) and any
other blackhole inside the Network. A node that comes back with a new subnet would otherwise
keep ``blackhole <old subnet>`` and, once a peer leases that subnet, could not reach it.
"""

from __future__ import annotations

import enum
import ipaddress
import json
from collections.abc import Awaitable, Callable

import structlog
import trio

from pyflannel.errors import NetlinkError, TrafficRuleError
from pyflannel.retry import FailureLog
from pyflannel.trafficmngr.rules import IPNetwork, PreviousNetworks, TrafficSpec
from pyflannel.trafficmngr.runner import Runner

__all__ = [
    "BlackholeOutcome",
    "BlackholeRoutes",
    "ensure_blackhole_route",
    "list_blackhole_routes",
    "resync_loop",
]

log = structlog.get_logger(__name__)


class BlackholeOutcome(enum.Enum):
    """What :func:`ensure_blackhole_route` found or did."""

    PRESENT = "present"
    ADDED = "added"
    # another route for exactly this prefix and metric exists (usually the connected route of
    # cni0 when the bridge plugin is in use); the kernel refuses a second one with EEXIST, and
    # none is needed then.
    SHADOWED = "shadowed"


async def ensure_blackhole_route(
    subnet: IPNetwork, *, netns: str | None = None, runner: Runner | None = None
) -> BlackholeOutcome:
    """Add ``blackhole <subnet>`` to the main table unless it is there.

    Raises :class:`~pyflannel.errors.NetlinkError` naming the command when ``ip`` fails.
    """
    r = runner or Runner(netns)
    r.require("ip", error=NetlinkError)
    fam = "-4" if subnet.version == 4 else "-6"
    cidr = str(subnet)
    if subnet in await list_blackhole_routes(subnet.version, runner=r):
        return BlackholeOutcome.PRESENT
    res = await r.run(
        ["ip", fam, "route", "add", "blackhole", cidr], check=False, error=NetlinkError
    )
    if res.ok:
        return BlackholeOutcome.ADDED
    if "File exists" in res.stderr:
        return BlackholeOutcome.SHADOWED
    raise NetlinkError(
        f"'ip {fam} route add blackhole {cidr}' failed: {res.stderr.strip() or res.returncode}",
        hint="does the process have CAP_NET_ADMIN?",
    )


async def list_blackhole_routes(
    version: int, *, netns: str | None = None, runner: Runner | None = None
) -> list[IPNetwork]:
    """The destinations of the main table's blackhole routes of one IP version."""
    r = runner or Runner(netns)
    r.require("ip", error=NetlinkError)
    fam = "-4" if version == 4 else "-6"
    cmd = ["ip", fam, "-j", "route", "show", "type", "blackhole"]
    res = await r.run(cmd, error=NetlinkError)
    try:
        out: list[IPNetwork] = []
        for route in json.loads(res.stdout or "[]"):
            dst = route["dst"]
            if dst != "default":
                # `ip` prints a host route without its prefix length
                out.append(ipaddress.ip_network(dst, strict=False))
        return out
    except (ValueError, KeyError, TypeError) as exc:
        raise NetlinkError(
            f"cannot parse the output of '{' '.join(cmd)}': {exc}",
            hint="is iproute2 recent enough for -j (JSON) output?",
        ) from exc


class BlackholeRoutes:
    """Keeps the blackhole routes of our subnets and removes the stale ones we own; logs
    changes, a shadowed route once, and failures rate-limited (:class:`FailureLog`).

    ``networks``: the flannel Networks; a blackhole inside one that is not our subnet blocks a
    peer, so it goes. ``stale``: the previous run's subnets, removed wherever they are.
    """

    def __init__(
        self,
        subnets: list[IPNetwork],
        *,
        networks: list[IPNetwork] | None = None,
        stale: list[IPNetwork] | None = None,
        netns: str | None = None,
    ) -> None:
        self.subnets = subnets
        self.networks = networks or []
        self.stale = [s for s in stale or [] if s not in subnets]
        self._runner = Runner(netns)
        self._last: dict[IPNetwork, BlackholeOutcome] = {}
        self._failures = FailureLog(log, "blackhole.route_failed")

    @classmethod
    def for_spec(
        cls, spec: TrafficSpec, prev: PreviousNetworks | None, *, netns: str | None = None
    ) -> BlackholeRoutes | None:
        """The keeper for ``--ip-blackhole-route`` (None when the flag is off)."""
        if not spec.blackhole_route:
            return None
        subnets = [s for s in (spec.subnet, spec.ipv6_subnet) if s is not None]
        networks = [n for n in (spec.network, spec.ipv6_network) if n is not None]
        stale = [] if prev is None else [s for s in (prev.subnet, prev.ipv6_subnet) if s]
        return cls(subnets, networks=networks, stale=stale, netns=netns)

    def _owned_and_wrong(self, route: IPNetwork) -> bool:
        if route in self.subnets:
            return False
        if route in self.stale:
            return True
        return any(
            route.version == net.version and route.subnet_of(net)  # type: ignore[arg-type]
            for net in self.networks
        )

    async def _remove_stale(self) -> None:
        for version in sorted({s.version for s in [*self.subnets, *self.stale]}):
            for route in await list_blackhole_routes(version, runner=self._runner):
                if not self._owned_and_wrong(route):
                    continue
                fam = "-4" if version == 4 else "-6"
                await self._runner.run(
                    ["ip", fam, "route", "del", "blackhole", str(route)], error=NetlinkError
                )
                log.warning(
                    "blackhole.route_removed",
                    subnet=str(route),
                    reason="not our subnet (a previous lease's, or a peer's)",
                )

    async def ensure(self) -> None:
        """One pass: remove stale blackholes we own, add ours where missing. Errors are
        logged (rate-limited), not raised: the loop goes on."""
        try:
            await self._remove_stale()
        except NetlinkError as exc:
            self._failures.failed(error=str(exc))
            return
        for subnet in self.subnets:
            try:
                outcome = await ensure_blackhole_route(subnet, runner=self._runner)
            except NetlinkError as exc:
                self._failures.failed(subnet=str(subnet), error=str(exc))
                return
            if outcome is BlackholeOutcome.ADDED:
                log.info("blackhole.route_added", subnet=str(subnet))
            elif outcome is BlackholeOutcome.SHADOWED and self._last.get(subnet) is not outcome:
                log.info(
                    "blackhole.route_not_needed",
                    subnet=str(subnet),
                    reason="another route for this prefix exists (e.g. cni0's)",
                )
            self._last[subnet] = outcome
        self._failures.resolved()


async def resync_loop(
    resync_once: Callable[[], Awaitable[list[str]]],
    blackhole: BlackholeRoutes | None,
    period: float,
    mode: str,
) -> None:
    """The shared body of ``resync_forever``: every ``period`` s resync, count it in
    :data:`~pyflannel.metrics.METRICS`, and keep the blackhole route. Errors are logged."""
    from pyflannel.metrics import METRICS

    while True:
        await trio.sleep(period)
        try:
            repaired = await resync_once()
        except TrafficRuleError as exc:
            log.error(f"{mode}.resync_failed", error=str(exc))
        else:
            METRICS.masq_resyncs_total += 1
            if repaired:
                METRICS.masq_repairs_total += 1
        if blackhole is not None:
            await blackhole.ensure()
