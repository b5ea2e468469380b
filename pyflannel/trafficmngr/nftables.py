"""nftables mode (``"EnableNFTables": true``): tables ``ip flannel-ipv4`` / ``ip6 flannel-ipv6``.

Each table is written in one ``nft -f -`` transaction (add table; add chain; flush chain; add
rules), built by :mod:`.plan`. Unlike flanneld, which never looks again, a resync compares
``nft -j list table`` with the wanted rules and rewrites the table on any difference.

Rules are never removed on shutdown (flanneld v0.27+). At start-up, the other mode's iptables
chains are removed (:meth:`NftablesManager.cleanup_other_mode`).
"""

from __future__ import annotations

import dataclasses
import json

import structlog
import trio

from pyflannel.errors import TrafficRuleError
from pyflannel.trafficmngr._exec import Runner
from pyflannel.trafficmngr.blackhole import BlackholeRoutes, resync_loop
from pyflannel.trafficmngr.plan import (
    NftListing,
    diff_nft,
    nft_chains_to_recreate,
    nft_delete_tables_script,
    nft_script,
    parse_nft_json,
)
from pyflannel.trafficmngr.rules import (
    NFT_TABLES,
    Family,
    NftTable,
    PreviousNetworks,
    TrafficSpec,
    nft_table,
)

__all__ = ["NftablesManager", "list_nft_table", "remove_nft_tables"]

log = structlog.get_logger(__name__)


async def list_nft_table(runner: Runner, family: str, name: str) -> NftListing | None:
    """``nft -j list table <family> <name>``, parsed; None when the table does not exist."""
    cmd = ["nft", "-j", "list", "table", family, name]
    res = await runner.run(cmd, check=False)
    if not res.ok:
        # nft's own ENOENT ("Error: No such file or directory ...") means no such table; the
        # same words from `ip netns exec` (no such namespace) are a real failure
        if res.stderr.startswith("Error:") and "No such file or directory" in res.stderr:
            return None
        raise runner.failure(cmd, res)
    try:
        return parse_nft_json(res.stdout)
    except (ValueError, KeyError, TypeError) as exc:
        raise TrafficRuleError(
            f"cannot parse the output of 'nft -j list table {family} {name}': {exc}",
            hint="is nft built with JSON support (libjansson)?",
        ) from exc


async def _existing_tables(runner: Runner) -> set[tuple[str, str]]:
    res = await runner.run(["nft", "-j", "list", "tables"])
    try:
        doc = json.loads(res.stdout or "{}")
        return {
            (item["table"]["family"], item["table"]["name"])
            for item in doc.get("nftables", [])
            if "table" in item
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise TrafficRuleError(
            f"cannot parse the output of 'nft -j list tables': {exc}",
            hint="is nft built with JSON support (libjansson)?",
        ) from exc


async def remove_nft_tables(
    runner: Runner, tables: tuple[tuple[str, str], ...] = NFT_TABLES
) -> None:
    """Delete flannel's nftables tables (used when switching to iptables mode). Never raises."""
    if not runner.have("nft"):
        log.info("nftables_cleanup_skipped", reason="nft is not installed")
        return
    try:
        present = await _existing_tables(runner)
        doomed = [t for t in tables if t in present]
        script = nft_delete_tables_script(doomed)
        if script is None:
            return
        await runner.run(["nft", "-f", "-"], stdin=script)
        log.info("nftables_tables_removed", tables=[f"{f} {n}" for f, n in doomed])
    except TrafficRuleError as exc:
        log.warning("nftables_cleanup_failed", error=str(exc))


class NftablesManager:
    """Installs and keeps flannel's nftables tables (see module docstring).

    ``netns``: run every command through ``ip netns exec <netns>`` (tests); None for the daemon.
    ``prev`` is accepted for symmetry with iptables mode and unused: the chains are flushed and
    refilled, so rules of a previous subnet cannot survive.
    """

    mode = "nftables"

    def __init__(
        self,
        spec: TrafficSpec,
        *,
        prev: PreviousNetworks | None = None,
        netns: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.spec = spec
        self.prev = prev
        self.netns = netns
        self.repairs_total = 0
        self._runner = Runner(netns, timeout=timeout)
        self._lock = trio.Lock()
        self._fully_random: bool | None = None
        # If this nft prints a rule differently from what plan.py expects, the listing taken
        # right after our own transaction becomes the reference for that family.
        self._baseline: dict[Family, NftListing] = {}
        self._blackhole = BlackholeRoutes.for_spec(spec, prev, netns=netns)

    async def cleanup_other_mode(self) -> None:
        """Remove iptables chains FLANNEL-POSTRTG (nat) and FLANNEL-FWD (filter), IPv4 and
        IPv6, with their jump rules. Never raises."""
        from pyflannel.trafficmngr.iptables import remove_iptables_chains  # avoid import cycle

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
                        "nftables_rules_applied",
                        table=f"{family.nft_family} {family.nft_table}",
                        differences=problems,
                    )
            await remove_nft_tables(
                self._runner,
                tuple((f.nft_family, f.nft_table) for f in Family if f not in configured),
            )
        if self._blackhole is not None:
            # now, not one resync period later; also drops the previous lease's blackhole
            await self._blackhole.ensure()

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
                        "nftables_rules_repaired",
                        table=f"{family.nft_family} {family.nft_table}",
                        differences=problems,
                    )
                    repaired += problems
                    self.repairs_total += len(problems)
        return repaired

    async def resync_forever(
        self, period: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Every ``period`` seconds (first after one period): resync, and keep the blackhole
        route when ``--ip-blackhole-route``. Errors are logged and the loop goes on."""
        task_status.started()
        await resync_loop(self.resync_once, self._blackhole, period, "nftables")

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
                    "nftables_listing_not_understood",
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
                    "nftables_fully_random_unsupported",
                    error=res.stderr.strip(),
                    effect="masquerade without fully-random",
                )
        return self._fully_random
