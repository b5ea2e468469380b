"""flannel's masquerade/forward rules, judged by the traffic manager's own diff."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyflannel.errors import FlannelError
from pyflannel.inspect.findings import Finding
from pyflannel.lease import Lease

if TYPE_CHECKING:
    from pyflannel.config import NetworkConfig
    from pyflannel.options import Options

__all__ = ["evaluate_rules", "rule_findings"]


def evaluate_rules(
    mode: str, problems: Sequence[str] | None, error: str | None = None
) -> list[Finding]:
    """The traffic manager's diff (its own problem strings) as findings."""
    if error is not None:
        return [Finding("WARN", "rules", mode, f"could not check the {mode} rules: {error}")]
    if not problems:
        return [Finding("OK", "rules", mode, f"flannel's {mode} masquerade/forward rules in place")]
    return [
        Finding(
            "FAIL",
            "rules",
            mode,
            p,
            "pyflanneld repairs its rules on the next resync (--iptables-resync, default 5 s); "
            "if this persists, restart it",
        )
        for p in problems
    ]


async def _differences(cfg: NetworkConfig, own: Lease, opts: Options, ip_masq: bool) -> list[str]:
    from pyflannel.trafficmngr import new_traffic_manager, spec_from

    spec = spec_from(
        cfg,
        own,
        ip_masq=ip_masq,
        forward_rules=opts.iptables_forward_rules,
        random_fully_disable=opts.ip_masq_fully_random_disable,
    )
    return await new_traffic_manager(spec, nftables=cfg.enable_nftables).differences()


async def rule_findings(
    cfg: NetworkConfig, own: Lease, opts: Options, ip_masq: bool | None
) -> list[Finding]:
    """Findings for the masquerade/forward rules. ``ip_masq`` None means unknown (no
    subnet.env, no flag): both ways are compared and the closer one is reported, with a WARN
    saying so."""
    mode = "nftables" if cfg.enable_nftables else "iptables"
    try:
        if ip_masq is not None:
            return evaluate_rules(mode, await _differences(cfg, own, opts, ip_masq))
        on = await _differences(cfg, own, opts, True)
        off = await _differences(cfg, own, opts, False)
    except FlannelError as exc:
        return evaluate_rules(mode, None, str(exc))
    guess, problems = (True, on) if len(on) <= len(off) else (False, off)
    flag = "true" if guess else "false"
    return [
        Finding(
            "WARN",
            "rules",
            mode,
            f"pyflanneld's --ip-masq is unknown (no FLANNEL_IPMASQ in subnet.env); the rules "
            f"were checked as for --ip-masq={flag}, which they match best",
            f"pass --ip-masq={flag} (or the other value) to check against it",
        ),
        *evaluate_rules(mode, problems),
    ]
