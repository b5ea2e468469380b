"""nftables mode (``"EnableNFTables": true``): tables ``ip flannel-ipv4`` / ``ip6 flannel-ipv6``.

Each table is written in one ``nft -f -`` transaction (add table; add chain; flush chain; add
rules), built by :mod:`.plan`. Unlike flanneld, which never looks again, a resync compares
``nft -j list table`` with the wanted rules and rewrites the table on any difference.

At start-up, the iptables chains of the other mode are removed
(:meth:`NftablesManager.cleanup_other_mode`).
"""

from __future__ import annotations

import dataclasses
from typing import Unpack

import structlog

from pyflannel.trafficmngr.iptables_tool import remove_iptables_chains
from pyflannel.trafficmngr.keeper import KeeperOptions, RuleKeeper
from pyflannel.trafficmngr.nft_tool import list_nft_table, remove_nft_tables
from pyflannel.trafficmngr.plan import (
    NftListing,
    diff_nft,
    nft_chains_to_recreate,
    nft_script,
)
from pyflannel.trafficmngr.rules import (
    Family,
    NftTable,
    TrafficSpec,
    nft_table,
)

__all__ = ["NftablesManager", "list_nft_table", "remove_nft_tables"]

log = structlog.get_logger(__name__)


class NftablesManager(RuleKeeper):
    """Installs and keeps flannel's nftables tables (see module docstring). ``prev`` is only
    used for the blackhole route: the chains are flushed and refilled, so rules of a previous
    subnet cannot survive."""

    mode = "nftables"

    def __init__(self, spec: TrafficSpec, **options: Unpack[KeeperOptions]) -> None:
        super().__init__(spec, **options)
        self._fully_random: bool | None = None
        # If this nft prints a rule differently from what plan.py expects, the listing taken
        # right after our own transaction becomes the reference for that family.
        self._baseline: dict[Family, NftListing] = {}

    async def cleanup_other_mode(self) -> None:
        """Remove iptables chains FLANNEL-POSTRTG (nat) and FLANNEL-FWD (filter), IPv4 and
        IPv6, with their jump rules. Never raises."""
        await remove_iptables_chains(self._runner)

    async def wanted(self, family: Family) -> NftTable:
        """The table wanted for ``family``."""
        return nft_table(self.spec, family, fully_random=await self._masq_fully_random())

    async def differences(self) -> list[str]:
        """What differs from the wanted tables; read-only (the diff ``pyflannel status``
        shows). Raises TrafficRuleError when nft is missing or listing fails."""
        self._runner.require("nft")
        problems: list[str] = []
        for family in self.spec.families():
            table = await self.wanted(family)
            listing = await list_nft_table(self._runner, table.family, table.name)
            problems += diff_nft(table, listing)
        return problems

    async def setup(self) -> None:
        """Write the table of every configured family; delete flannel's table of a family
        that is not configured (flanneld creates both and leaves stale rules in the unused
        one). Raises :class:`~pyflannel.errors.TrafficRuleError` when a transaction fails."""
        self._runner.require("nft")
        async with self._lock:
            configured = set(self.spec.families())
            for family in Family:
                if family in configured:
                    problems = await self._apply(family, force=True)
                    log.info(
                        "nftables.rules_applied",
                        table=f"{family.nft_family} {family.nft_table}",
                        differences=problems,
                    )
            await remove_nft_tables(
                self._runner,
                tuple((f.nft_family, f.nft_table) for f in Family if f not in configured),
            )
        await self._ensure_blackhole()

    async def resync_once(self) -> list[str]:
        """Compare each table with the wanted one; rewrite it where they differ.

        Returns the differences that were repaired. Raises
        :class:`~pyflannel.errors.TrafficRuleError` when listing or applying fails.
        """
        self._runner.require("nft")
        repaired: list[str] = []
        async with self._lock:
            for family in self.spec.families():
                problems = await self._apply(family, force=False)
                if problems:
                    log.warning(
                        "nftables.rules_repaired",
                        table=f"{family.nft_family} {family.nft_table}",
                        differences=problems,
                    )
                    repaired += problems
                    self.repairs_total += len(problems)
        return repaired

    def _differences(
        self, family: Family, table: NftTable, listing: NftListing | None
    ) -> list[str]:
        baseline = self._baseline.get(family)
        if baseline is None or listing is None:
            return diff_nft(table, listing)
        if listing == baseline:
            return []
        return [f"table {table.family} {table.name} differs from the rules flannel wrote"]

    async def _apply(self, family: Family, *, force: bool) -> list[str]:
        table = await self.wanted(family)
        listing = await list_nft_table(self._runner, table.family, table.name)
        problems = self._differences(family, table, listing)
        if not problems and not force:
            return []
        existing = listing.chains if listing is not None else {}
        script = nft_script(table, existing, nft_chains_to_recreate(table, listing))
        await self._runner.run(["nft", "-f", "-"], stdin=script)
        after = await list_nft_table(self._runner, table.family, table.name)
        if diff_nft(table, after):
            if family not in self._baseline:
                log.warning(
                    "nftables.listing_not_understood",
                    table=f"{table.family} {table.name}",
                    differences=diff_nft(table, after),
                    effect="resync compares with the listing taken after applying",
                )
            if after is not None:
                self._baseline[family] = after
        else:
            self._baseline.pop(family, None)
        return problems

    async def _masq_fully_random(self) -> bool:
        # flanneld asks the kernel with `nft --check` of a test rule; same here, once. The
        # probe uses a table name of its own: checked against our real table, a leftover chain
        # there (wrong type, a jump into it) fails the check for reasons unrelated to
        # fully-random, and masquerading would lose it for the whole run.
        if not self.spec.ip_masq or self.spec.random_fully_disable:
            return False
        if self._fully_random is None:
            family = next(iter(self.spec.families()), Family.IPV4)
            wanted = nft_table(self.spec, family, fully_random=True)
            probe = dataclasses.replace(wanted, name=f"{wanted.name}-probe")
            res = await self._runner.run(
                ["nft", "--check", "-f", "-"], stdin=nft_script(probe), check=False
            )
            self._fully_random = res.ok
            if not res.ok:
                log.warning(
                    "nftables.fully_random_unsupported",
                    error=res.stderr.strip(),
                    effect="masquerade without fully-random",
                )
        return self._fully_random
