"""iptables-save / iptables-restore of one family, and removing flannel's iptables chains.

Shared by both modes: iptables mode applies its rules through :class:`IptablesTool`; nftables mode
removes the iptables chains a previous iptables-mode run left (:func:`remove_iptables_chains`).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from pyflannel.errors import TrafficRuleError
from pyflannel.trafficmngr.plan import (
    SavedTable,
    iptables_removal_payload,
    parse_iptables_save,
)
from pyflannel.trafficmngr.rules import FORWARD_CHAIN, MASQ_CHAIN, Family
from pyflannel.trafficmngr.runner import Runner, parse_version

__all__ = ["IptablesCaps", "IptablesTool", "remove_iptables_chains"]

log = structlog.get_logger(__name__)

# --wait for iptables-restore and --random-fully for MASQUERADE both arrived in iptables 1.6.2
_MIN_VERSION = (1, 6, 2)


@dataclass(frozen=True, slots=True)
class IptablesCaps:
    """What the installed iptables of one family can do."""

    version: tuple[int, int, int] | None
    nf_tables: bool = False
    """The tool is the nf_tables variant (``iptables v1.8.9 (nf_tables)``), not legacy."""

    @property
    def random_fully(self) -> bool:
        """MASQUERADE --random-fully is supported (iptables >= 1.6.2)."""
        return self.version is not None and self.version >= _MIN_VERSION

    @property
    def wait(self) -> bool:
        """iptables-restore accepts --wait (iptables >= 1.6.2)."""
        return self.version is not None and self.version >= _MIN_VERSION


class IptablesTool:
    """iptables-save / iptables-restore of one family, run through a :class:`Runner`."""

    def __init__(self, family: Family, runner: Runner) -> None:
        self.family = family
        self.runner = runner
        self.binary = family.iptables
        self._caps: IptablesCaps | None = None

    def available(self) -> bool:
        """True when the iptables, -save and -restore binaries are all installed."""
        return all(self.runner.have(b) for b in self._binaries())

    def _binaries(self) -> tuple[str, str, str]:
        return (self.binary, f"{self.binary}-save", f"{self.binary}-restore")

    async def caps(self) -> IptablesCaps:
        """Detect (once) the version from ``iptables --version``."""
        if self._caps is None:
            for b in self._binaries():
                self.runner.require(b)
            res = await self.runner.run([self.binary, "--version"])
            version = parse_version(res.stdout + res.stderr)
            if version is None:
                log.warning(
                    "iptables.version_unknown",
                    binary=self.binary,
                    output=res.stdout.strip(),
                    effect="not using --random-fully nor --wait",
                )
            self._caps = IptablesCaps(version, "nf_tables" in res.stdout + res.stderr)
        return self._caps

    async def save(self, table: str) -> SavedTable | None:
        """The current state of ``table`` (None when iptables-save shows no such table)."""
        self.runner.require(f"{self.binary}-save")
        res = await self.runner.run([f"{self.binary}-save", "-t", table])
        return parse_iptables_save(res.stdout).get(table)

    async def restore(self, payload: str) -> None:
        """Apply ``payload`` as one ``iptables-restore --noflush`` transaction."""
        caps = await self.caps()
        argv = [f"{self.binary}-restore", "--noflush"]
        if caps.wait:
            argv.append("--wait")
        log.debug("iptables.restore", binary=argv[0], payload=payload)
        await self.runner.run(argv, stdin=payload)


async def remove_iptables_chains(
    runner: Runner, families: tuple[Family, ...] = (Family.IPV4, Family.IPV6)
) -> None:
    """Remove FLANNEL-POSTRTG (``nat``) and FLANNEL-FWD (``filter``) with every jump to them,
    for the given families. Used when switching to nftables mode, and for a family that is no
    longer configured. Never raises; logs what it did.

    Differs from flanneld, which looks for both chains in ``nat`` only (so FLANNEL-FWD, which
    lives in ``filter``, survives) and does not remove the jump rules (so ``-X`` fails).
    """
    for family in families:
        tool = IptablesTool(family, runner)
        if not tool.available():
            log.info("iptables.cleanup_skipped", binary=tool.binary, reason="not installed")
            continue
        for table, chain in (("nat", MASQ_CHAIN), ("filter", FORWARD_CHAIN)):
            try:
                saved = await tool.save(table)
                payload = iptables_removal_payload(table, saved, [chain])
                if payload is None:
                    continue
                await tool.restore(payload)
                log.info("iptables.chain_removed", binary=tool.binary, table=table, chain=chain)
            except TrafficRuleError as exc:
                log.warning(
                    "iptables.cleanup_failed", binary=tool.binary, table=table, error=str(exc)
                )
