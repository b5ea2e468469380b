"""``--ip-blackhole-route``: a ``blackhole <own subnet>`` route, added when missing.

Meant for set-ups without the bridge CNI plugin (e.g. Canal), where nothing else routes the
unused addresses of our subnet and packets to them would otherwise follow the default route.

Differs from flanneld: its AddBlackholeV4Route/V6Route only call RouteAdd when *listing* the
routes fails (``if err != nil && len(routes) == 0``), so in practice it never adds the route.
pyflannel adds it as documented.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Awaitable, Callable

import structlog
import trio

from pyflannel.errors import NetlinkError, TrafficRuleError
from pyflannel.trafficmngr._exec import Runner
from pyflannel.trafficmngr.rules import IPNetwork

__all__ = ["BlackholeOutcome", "BlackholeRoutes", "ensure_blackhole_route", "resync_loop"]

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
    res = await r.run(
        ["ip", fam, "-j", "route", "show", "exact", cidr, "type", "blackhole"], error=NetlinkError
    )
    try:
        present = bool(json.loads(res.stdout or "[]"))
    except ValueError as exc:
        raise NetlinkError(
            f"cannot parse the output of 'ip {fam} -j route show exact {cidr}': {exc}",
            hint="is iproute2 recent enough for -j (JSON) output?",
        ) from exc
    if present:
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


class BlackholeRoutes:
    """Keeps the blackhole routes of our subnets; logs changes, and a shadowed route once."""

    def __init__(self, subnets: list[IPNetwork], *, netns: str | None = None) -> None:
        self.subnets = subnets
        self._runner = Runner(netns)
        self._last: dict[IPNetwork, BlackholeOutcome] = {}

    async def ensure(self) -> None:
        """One pass over all subnets. Errors are logged, not raised (the loop goes on)."""
        for subnet in self.subnets:
            try:
                outcome = await ensure_blackhole_route(subnet, runner=self._runner)
            except NetlinkError as exc:
                log.error("blackhole_route_failed", subnet=str(subnet), error=str(exc))
                continue
            if outcome is BlackholeOutcome.ADDED:
                log.info("blackhole_route_added", subnet=str(subnet))
            elif outcome is BlackholeOutcome.SHADOWED and self._last.get(subnet) is not outcome:
                log.info(
                    "blackhole_route_not_needed",
                    subnet=str(subnet),
                    reason="another route for this prefix exists (e.g. cni0's)",
                )
            self._last[subnet] = outcome


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
            log.error(f"{mode}_resync_failed", error=str(exc))
        else:
            METRICS.masq_resyncs_total += 1
            if repaired:
                METRICS.masq_repairs_total += 1
        if blackhole is not None:
            await blackhole.ensure()
