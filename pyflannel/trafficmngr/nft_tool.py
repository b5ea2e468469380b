"""``nft`` listings and removing flannel's nftables tables.

Shared by both modes: nftables mode lists its tables here; iptables mode removes the tables a
previous nftables-mode run left (:func:`remove_nft_tables`).
"""

from __future__ import annotations

import json

import structlog

from pyflannel.errors import TrafficRuleError
from pyflannel.trafficmngr.plan import NftListing, nft_delete_tables_script, parse_nft_json
from pyflannel.trafficmngr.rules import NFT_TABLES
from pyflannel.trafficmngr.runner import Runner

__all__ = ["list_nft_table", "remove_nft_tables"]

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
        log.info("nftables.cleanup_skipped", reason="nft is not installed")
        return
    try:
        present = await _existing_tables(runner)
        doomed = [t for t in tables if t in present]
        script = nft_delete_tables_script(doomed)
        if script is None:
            return
        await runner.run(["nft", "-f", "-"], stdin=script)
        log.info("nftables.tables_removed", tables=[f"{f} {n}" for f, n in doomed])
    except TrafficRuleError as exc:
        log.warning("nftables.cleanup_failed", error=str(exc))
