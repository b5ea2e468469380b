"""Compare wanted rule sets with what the kernel has, and build the repair transaction (pure).

iptables: :func:`parse_iptables_save` reads ``iptables-save`` output; :func:`diff_iptables`
lists every difference between it and a :class:`WantedTable` (its flannel chains: missing
chain, missing/extra/reordered rules, missing or duplicated jump rule, stray flannel rules in the
built-in chain, chains whose option is off); :func:`iptables_restore_payload` builds one
``iptables-restore --noflush`` transaction for a table that brings it to the wanted state.

nftables: :func:`parse_nft_json` reads ``nft -j list table``; :func:`diff_nft` compares it with
an :class:`~.rules.NftTable`; :func:`nft_script` is the ``nft -f -`` transaction.

Unlike flanneld (which checks each rule with ``iptables -C``), order and duplicates count here:
flannel issue #1337.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shlex
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyflannel.trafficmngr.rules import FlannelChain, IptRule, NftChain, NftTable

__all__ = [
    "NftChainState",
    "NftListing",
    "SavedTable",
    "WantedTable",
    "diff_iptables",
    "diff_nft",
    "iptables_removal_lines",
    "iptables_removal_payload",
    "iptables_restore_payload",
    "nft_chains_to_recreate",
    "nft_delete_tables_script",
    "nft_script",
    "normalize_nft_expr",
    "parse_iptables_save",
    "parse_nft_json",
]


# --- iptables ---------------------------------------------------------------------------------


@dataclass(slots=True)
class SavedTable:
    """One ``*table`` block of ``iptables-save``: declared chains and their rules in order."""

    name: str
    chains: dict[str, list[IptRule]] = field(default_factory=dict)

    def rules(self, chain: str) -> list[IptRule]:
        """Rules of ``chain`` in kernel order (empty when the chain does not exist)."""
        return self.chains.get(chain, [])

    def has_chain(self, chain: str) -> bool:
        """True when ``chain`` is declared in the table."""
        return chain in self.chains


def _normalize_tokens(tokens: Sequence[str]) -> tuple[str, ...]:
    # iptables prints addresses in inet_ntop form; re-render them with ipaddress so a rule we
    # render and one iptables prints compare equal even for odd spellings.
    out = list(tokens)
    for i in range(len(out) - 1):
        if out[i] in ("-s", "-d", "--source", "--destination"):
            with contextlib.suppress(ValueError):
                out[i + 1] = str(ipaddress.ip_network(out[i + 1], strict=False))
    return tuple(out)


def parse_iptables_save(text: str) -> dict[str, SavedTable]:
    """Parse ``iptables-save`` output into tables; unknown lines are ignored."""
    tables: dict[str, SavedTable] = {}
    cur: SavedTable | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], SavedTable(line[1:]))
        elif cur is None:
            continue
        elif line.startswith(":"):
            cur.chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            try:
                tokens = shlex.split(line)
            except ValueError:
                # not one of ours (ours always tokenize); keep it, roughly, to see it is there
                tokens = line.split()
            chain = tokens[1]
            rule = IptRule(chain, _normalize_tokens(tokens[2:]), raw=line)
            cur.chains.setdefault(chain, []).append(rule)
        elif line == "COMMIT":
            cur = None
    return tables


@dataclass(frozen=True, slots=True)
class WantedTable:
    """What flannel wants in one iptables table ``name`` (``nat``, ``filter``): its ``chains``
    (each with its jump rule), the flannel chains that must not exist (``unwanted``: their
    option is off) and ``stale`` rules to remove as flannel's own leftovers (e.g. the rule set
    of the previous subnet)."""

    name: str
    chains: Sequence[FlannelChain] = ()
    unwanted: Sequence[str] = ()
    stale: Sequence[IptRule] = ()


def _references(table: SavedTable, chain: str) -> list[IptRule]:
    """Every rule in any chain of ``table`` that jumps or goes to ``chain``."""
    return [r for rules in table.chains.values() for r in rules if r.target == chain]


def _stray(table: SavedTable, fc: FlannelChain, extra_stale: Iterable[IptRule]) -> list[IptRule]:
    """Rules in the built-in parent chain that belong to flannel but are not the one jump.

    That is: further jumps into the flannel chain (whatever their spec), rules carrying the
    flannel comment (pre-v0.20 flanneld put its rules straight into POSTROUTING/FORWARD), and
    the rules of the previous network/subnet if the caller passes them.
    """
    stale = set(extra_stale)
    out = []
    for r in table.rules(fc.parent):
        if r == fc.jump:
            continue
        if r.target == fc.name or r.comment == fc.comment or r in stale:
            out.append(r)
    return out


def _describe_chain_diff(name: str, want: Sequence[IptRule], have: Sequence[IptRule]) -> list[str]:
    if list(want) == list(have):
        return []
    wc, hc = Counter(want), Counter(have)
    if wc == hc:
        return [f"rules of {name} are out of order"]
    out = [f"rule missing from {name}: {r.line()}" for r in (wc - hc).elements()]
    out += [f"unexpected rule in {name}: {r.line()}" for r in (hc - wc).elements()]
    return out


def diff_iptables(want: WantedTable, saved: SavedTable | None) -> list[str]:
    """Every difference between the kernel's table (``saved``, None when it has none) and
    ``want``. Empty list = in sync.
    """
    saved = saved or SavedTable(want.name)
    problems: list[str] = []
    for fc in want.chains:
        if not saved.has_chain(fc.name):
            problems.append(f"chain {want.name}/{fc.name} is missing")
        else:
            problems += _describe_chain_diff(fc.name, fc.rules, saved.rules(fc.name))
        jumps = sum(1 for r in saved.rules(fc.parent) if r == fc.jump)
        if jumps == 0:
            problems.append(f"jump rule missing: {fc.jump.line()}")
        elif jumps > 1:
            problems.append(f"jump rule duplicated ({jumps} copies): {fc.jump.line()}")
        problems += [
            f"stray flannel rule in {fc.parent}: {r.line()}" for r in _stray(saved, fc, want.stale)
        ]
    for name in want.unwanted:
        if saved.has_chain(name):
            problems.append(f"chain {want.name}/{name} exists but its option is off")
    return problems


def iptables_removal_lines(saved: SavedTable, chain: str) -> list[str]:
    """Restore lines that delete every reference to ``chain``, then flush and delete it."""
    if not saved.has_chain(chain):
        return []
    lines = [r.line("-D") for r in _references(saved, chain)]
    lines += [f"-F {chain}", f"-X {chain}"]
    return lines


def iptables_restore_payload(want: WantedTable, saved: SavedTable | None) -> str:
    """One ``iptables-restore --noflush`` transaction that makes the table as ``want``-ed.

    For each wanted chain: ``:CHAIN - [0:0]`` creates it or flushes it; every existing copy of
    the jump rule and every stray flannel rule in the parent chain is deleted (``-D``, one line
    per copy, so duplicates go too); then the jump rule and the chain's rules are appended in
    order. Unwanted flannel chains are unlinked, flushed and deleted. ``saved`` must be the
    state read just before: a ``-D`` of a rule that has gone fails the whole transaction, which
    then changes nothing.
    """
    saved = saved or SavedTable(want.name)
    lines = [f"*{want.name}"]
    lines += [f":{fc.name} - [0:0]" for fc in want.chains]
    for fc in want.chains:
        lines += [r.line("-D") for r in saved.rules(fc.parent) if r == fc.jump]
        lines += [r.line("-D") for r in _stray(saved, fc, want.stale)]
        lines.append(fc.jump.line())
        lines += [r.line() for r in fc.rules]
    for name in want.unwanted:
        lines += iptables_removal_lines(saved, name)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def iptables_removal_payload(
    table_name: str, saved: SavedTable | None, chains: Sequence[str]
) -> str | None:
    """A transaction removing ``chains`` (and every jump to them); None if none exists."""
    if saved is None:
        return None
    body = [line for name in chains for line in iptables_removal_lines(saved, name)]
    if not body:
        return None
    return "\n".join([f"*{table_name}", *body, "COMMIT"]) + "\n"


# --- nftables ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NftChainState:
    """A chain as listed: base-chain properties and the normalized expressions of its rules."""

    type: str | None
    hook: str | None
    prio: Any
    policy: str | None
    rules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NftListing:
    """``nft -j list table`` reduced to what flannel compares."""

    chains: dict[str, NftChainState]


def normalize_nft_expr(expr: Sequence[Any]) -> str:
    """Canonical JSON of a rule's expressions: counters and comment matches dropped, flag
    strings turned into lists, keys sorted."""
    out = []
    for e in expr:
        if not isinstance(e, dict):
            out.append(e)
            continue
        if "counter" in e:
            continue
        if "xt" in e and e["xt"].get("name") == "comment":
            continue
        if "masquerade" in e and isinstance(e["masquerade"], dict):
            m = dict(e["masquerade"])
            if isinstance(m.get("flags"), str):
                m["flags"] = [m["flags"]]
            if isinstance(m.get("flags"), list):
                m["flags"] = sorted(m["flags"])
            e = {"masquerade": m or None}
        out.append(e)
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def parse_nft_json(text: str) -> NftListing:
    """Parse ``nft -j list table <family> <name>`` output.

    Raises ValueError (json.JSONDecodeError) when the output is not JSON.
    """
    doc = json.loads(text)
    chains: dict[str, dict[str, Any]] = {}
    rules: dict[str, list[str]] = {}
    for item in doc.get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            chains[c["name"]] = c
            rules.setdefault(c["name"], [])
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault(r["chain"], []).append(normalize_nft_expr(r.get("expr", [])))
    return NftListing(
        {
            name: NftChainState(
                c.get("type"),
                c.get("hook"),
                c.get("prio"),
                c.get("policy"),
                tuple(rules.get(name, ())),
            )
            for name, c in chains.items()
        }
    )


def _want_state(chain: NftChain) -> NftChainState:
    return NftChainState(
        chain.type,
        chain.hook,
        chain.prio,
        "accept",
        tuple(normalize_nft_expr(r.json()) for r in chain.rules),
    )


def diff_nft(table: NftTable, listing: NftListing | None) -> list[str]:
    """Every difference between the listed table and the wanted one. Empty list = in sync.

    Chains of the table that flannel does not want are reported too (the table is flannel's).
    """
    where = f"{table.family} {table.name}"
    if listing is None:
        return [f"table {where} is missing"]
    problems = []
    for chain in table.chains:
        have = listing.chains.get(chain.name)
        if have is None:
            problems.append(f"chain {chain.name} of table {where} is missing")
            continue
        want = _want_state(chain)
        if (have.type, have.hook, have.prio, have.policy) != (
            want.type,
            want.hook,
            want.prio,
            want.policy,
        ):
            problems.append(
                f"chain {chain.name} of table {where} is type={have.type} hook={have.hook} "
                f"prio={have.prio} policy={have.policy}, want type={want.type} "
                f"hook={want.hook} prio={want.prio} policy={want.policy}"
            )
        if have.rules != want.rules:
            if Counter(have.rules) == Counter(want.rules):
                problems.append(f"rules of chain {chain.name} of table {where} are out of order")
            else:
                problems.append(
                    f"rules of chain {chain.name} of table {where} differ "
                    f"({len(have.rules)} listed, {len(want.rules)} wanted)"
                )
    for name in sorted(set(listing.chains) - table.chain_names()):
        problems.append(f"unexpected chain {name} in table {where}")
    return problems


def _nft_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def nft_chains_to_recreate(table: NftTable, listing: NftListing | None) -> list[str]:
    """Wanted chains that exist with another type, hook or priority: the kernel refuses to
    change those in place, so they must be deleted and added again."""
    if listing is None:
        return []
    out = []
    for c in table.chains:
        have = listing.chains.get(c.name)
        if have is not None and (have.type, have.hook, have.prio) != (c.type, c.hook, c.prio):
            out.append(c.name)
    return out


def nft_script(
    table: NftTable, existing_chains: Iterable[str] = (), recreate: Iterable[str] = ()
) -> str:
    """The ``nft -f -`` transaction: add table; flush chains; delete chains; add chains/rules.

    ``existing_chains`` are the chains the table has now: those flannel does not want are
    deleted in the same transaction (flannel owns the table). Chains named in ``recreate``
    (see :func:`nft_chains_to_recreate`) are deleted before being added.

    Every existing chain is flushed before any is deleted: the kernel refuses to delete a
    chain while a rule (in any chain, ours or a leftover one) still jumps to it.
    """
    fam, name = table.family, table.name
    lines = [f"add table {fam} {name} {{ comment {_nft_quote(table.comment)} ; }}"]
    existing = sorted(set(existing_chains))
    doomed = sorted((set(existing) - table.chain_names()) | (set(recreate) & set(existing)))
    lines += [f"flush chain {fam} {name} {chain}" for chain in existing]
    lines += [f"delete chain {fam} {name} {chain}" for chain in doomed]
    for c in table.chains:
        lines.append(
            f"add chain {fam} {name} {c.name} {{ type {c.type} hook {c.hook} priority "
            f"{c.priority} ; policy accept ; comment {_nft_quote(c.comment)} ; }}"
        )
        lines.append(f"flush chain {fam} {name} {c.name}")
        lines += [f"add rule {fam} {name} {c.name} {r.text()}" for r in c.rules]
    return "\n".join(lines) + "\n"


def nft_delete_tables_script(tables: Iterable[tuple[str, str]]) -> str | None:
    """A transaction deleting the given (family, name) tables; None for none."""
    lines = [f"delete table {fam} {name}" for fam, name in tables]
    return "\n".join(lines) + "\n" if lines else None
