"""iptables mode: FLANNEL-POSTRTG / FLANNEL-FWD applied with ``iptables-restore --noflush``.

One transaction per table and family (``nat`` for masquerade, ``filter`` for forward), built by
:mod:`.plan` from the state ``iptables-save`` shows just before. The resync compares chains and
jump rules including order and duplicates, and re-applies the whole table set atomically on any
difference (flanneld only checks existence with ``-C``: flannel issue #1337).

At start-up, the other mode's nftables tables are deleted
(:meth:`IptablesManager.cleanup_other_mode`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

import structlog

from pyflannel.errors import TrafficRuleError
from pyflannel.trafficmngr.iptables_tool import IptablesCaps, IptablesTool, remove_iptables_chains
from pyflannel.trafficmngr.keeper import KeeperOptions, RuleKeeper
from pyflannel.trafficmngr.nft_tool import remove_nft_tables
from pyflannel.trafficmngr.plan import WantedTable, diff_iptables, iptables_restore_payload
from pyflannel.trafficmngr.rules import (
    Family,
    IPNetwork,
    PreviousNetworks,
    TrafficSpec,
    iptables_chains,
    iptables_unwanted_chains,
)

__all__ = [
    "IptablesCaps",
    "IptablesManager",
    "IptablesTool",
    "check_br_netfilter",
    "remove_iptables_chains",
]

log = structlog.get_logger(__name__)

_TABLES = ("nat", "filter")


class IptablesManager(RuleKeeper):
    """Installs and keeps flannel's iptables rules (see module docstring)."""

    mode = "iptables"

    def __init__(self, spec: TrafficSpec, **options: Unpack[KeeperOptions]) -> None:
        super().__init__(spec, **options)
        self._tools = {f: IptablesTool(f, self._runner) for f in Family}
        # nf_tables generation seen by the last resync that found every rule in place
        self._verified_generation: int | None = None

    async def cleanup_other_mode(self) -> None:
        """Delete nftables tables ``ip flannel-ipv4`` / ``ip6 flannel-ipv6``. Never raises."""
        await remove_nft_tables(self._runner)

    async def wanted(self, family: Family) -> list[WantedTable]:
        """Per table: the flannel chains wanted, and the flannel chains that must not exist."""
        caps = await self._tools[family].caps()
        random_fully = caps.random_fully and not self.spec.random_fully_disable
        chains = iptables_chains(self.spec, family, random_fully=random_fully)
        unwanted = iptables_unwanted_chains(self.spec, family)
        return [
            WantedTable(
                table,
                tuple(c for c in chains if c.table == table),
                tuple(name for t, name in unwanted if t == table),
            )
            for table in _TABLES
        ]

    async def differences(self) -> list[str]:
        """What differs from the wanted rules, as ``<binary> <problem>`` lines; read-only (the
        diff ``pyflannel status`` shows). Raises TrafficRuleError when reading fails."""
        problems: list[str] = []
        for family in self.spec.families():
            tool = self._tools[family]
            for want in await self.wanted(family):
                if not want.chains and not want.unwanted:
                    continue
                saved = await tool.save(want.name)
                diff = diff_iptables(want, saved)
                problems += [f"{tool.binary} {p}" for p in diff]
        return problems

    async def setup(self) -> None:
        """Apply the whole rule set for every configured family, whatever is there now.

        Raises :class:`~pyflannel.errors.TrafficRuleError` when a transaction fails.
        """
        async with self._lock:
            for family in self.spec.families():
                if self.prev is not None and self.prev.differs(self.spec, family):
                    log.info(
                        "iptables.recycling_old_rules",
                        family=family.name,
                        network=str(self.spec.network_of(family)),
                        subnet=str(self.spec.subnet_of(family)),
                        prev_network=str(_prev_network(self.prev, family)),
                        prev_subnet=str(_prev_subnet(self.prev, family)),
                    )
                for want in await self.wanted(family):
                    if not want.chains and not want.unwanted:
                        continue
                    problems = await self._apply(family, want, force=True)
                    log.info(
                        "iptables.rules_applied",
                        family=family.name,
                        table=want.name,
                        chains=[c.name for c in want.chains],
                        differences=problems,
                    )
            # A family dropped from the config keeps no flannel chains (flanneld leaves them).
            others = tuple(f for f in Family if f not in set(self.spec.families()))
            if others:
                await remove_iptables_chains(self._runner, others)
        await self._ensure_blackhole()

    async def resync_once(self) -> list[str]:
        """Compare every table with the wanted rules; re-apply where they differ.

        Returns the differences that were repaired (empty when all was in place). Raises
        :class:`~pyflannel.errors.TrafficRuleError` when reading or applying fails.
        """
        repaired: list[str] = []
        async with self._lock:
            generation = await self._ruleset_generation()
            if generation is not None and generation == self._verified_generation:
                # No nf_tables transaction since the last complete check: nothing can differ,
                # and two iptables-save runs are saved (most of the idle daemon's CPU).
                return repaired
            for family in self.spec.families():
                for want in await self.wanted(family):
                    # chains of options that are off were removed by setup(); no need to keep
                    # reading a table flannel has nothing in
                    if not want.chains:
                        continue
                    problems = await self._apply(family, want, force=False)
                    if problems:
                        log.warning(
                            "iptables.rules_repaired",
                            family=family.name,
                            table=want.name,
                            differences=problems,
                        )
                        repaired += [f"{family.iptables}/{want.name}: {p}" for p in problems]
                        self.repairs_total += len(problems)
            # Read before the check: a change during it moves the counter and forces the next.
            self._verified_generation = None if repaired else generation
        return repaired

    async def _ruleset_generation(self) -> int | None:
        """The nf_tables generation when every tool in use is nf_tables-based, else None."""
        for family in self.spec.families():
            if not (await self._tools[family].caps()).nf_tables:
                return None
        from pyflannel.trafficmngr.nftgen import ruleset_generation

        return ruleset_generation(self.netns)

    async def _apply(self, family: Family, want: WantedTable, *, force: bool) -> list[str]:
        tool = self._tools[family]
        # One retry: another program may change the table between our save and our restore,
        # and a -D of a rule that has gone fails the (atomic, so harmless) transaction.
        for attempt in (1, 2):
            saved = await tool.save(want.name)
            problems = diff_iptables(want, saved)
            if not problems and not force:
                return []
            if not problems and not want.chains:
                return []
            try:
                await tool.restore(iptables_restore_payload(want, saved))
            except TrafficRuleError:
                if attempt == 2:
                    raise
                log.info("iptables.restore_retry", family=family.name, table=want.name)
                continue
            return problems
        raise AssertionError("unreachable")


def _prev_network(prev: PreviousNetworks, family: Family) -> IPNetwork | None:
    return prev.network if family is Family.IPV4 else prev.ipv6_network


def _prev_subnet(prev: PreviousNetworks, family: Family) -> IPNetwork | None:
    return prev.subnet if family is Family.IPV4 else prev.ipv6_subnet


def check_br_netfilter(spec: TrafficSpec, *, proc: Path = Path("/proc")) -> None:
    """flanneld's start-up check in iptables mode (since v0.26): bridged pod traffic must pass
    through iptables, so ``bridge-nf-call-iptables`` (IPv4) / ``-ip6tables`` (IPv6) must exist.

    Raises :class:`~pyflannel.errors.TrafficRuleError` naming the missing file. Not used in
    nftables mode (flanneld skips it there too).
    """
    for family in spec.families():
        name = "bridge-nf-call-iptables" if family is Family.IPV4 else "bridge-nf-call-ip6tables"
        path = proc / "sys" / "net" / "bridge" / name
        if not path.exists():
            raise TrafficRuleError(
                f"Failed to check br_netfilter: {path} does not exist",
                hint="load the br_netfilter kernel module: modprobe br_netfilter",
            )
