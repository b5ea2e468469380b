"""The masquerade and forward rule sets as plain data (pure, no I/O).

Everything here is a function of the flannel Network(s), the lease subnet(s) and the options, and
returns values that render exactly as the tools print them:

* iptables: one :class:`FlannelChain` per flannel chain (``FLANNEL-POSTRTG`` in ``nat``,
  ``FLANNEL-FWD`` in ``filter``) with its jump rule from the built-in chain. ``IptRule.line()``
  is the rule as ``iptables-save`` (1.8.x, nft and legacy variants) prints it, so wanted and
  observed rules compare as strings.
* nftables: one :class:`NftTable` per address family (``ip flannel-ipv4`` / ``ip6 flannel-ipv6``)
  with the ``forward`` and ``postrtg`` base chains. Each :class:`NftRule` renders both as the
  ``nft`` command-line text used in the transaction and as the JSON expression list that
  ``nft -j list table`` prints, for the resync comparison.

Order and text follow flanneld (``pkg/trafficmngr/iptables/iptables.go`` masqRules/forwardRules,
``pkg/trafficmngr/nftables/nftables.go``); deliberate differences are marked "differs from
flanneld" below.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "FORWARD_CHAIN",
    "FORWARD_COMMENT",
    "KUBE_PROXY_MARK",
    "MASQ_CHAIN",
    "MASQ_COMMENT",
    "NFT_FORWARD_CHAIN",
    "NFT_POSTRTG_CHAIN",
    "NFT_TABLES",
    "Family",
    "FlannelChain",
    "IPNetwork",
    "IptRule",
    "NftAddrMatch",
    "NftChain",
    "NftMarkMatch",
    "NftRule",
    "NftTable",
    "PreviousNetworks",
    "TrafficSpec",
    "forward_chain",
    "iptables_chains",
    "iptables_unwanted_chains",
    "masq_chain",
    "nft_table",
    "save_quote",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MASQ_CHAIN = "FLANNEL-POSTRTG"
FORWARD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
# kube-proxy marks packets it wants masqueraded itself with this bit; flannel must not NAT them
# a second time (double-NAT bug on some kernels).
KUBE_PROXY_MARK = "0x4000/0x4000"
_KUBE_PROXY_MARK_BIT = 0x4000

NFT_FORWARD_CHAIN = "forward"
NFT_POSTRTG_CHAIN = "postrtg"


class Family(enum.Enum):
    """An address family, with the names each tool uses for it."""

    IPV4 = 4
    IPV6 = 6

    @property
    def iptables(self) -> str:
        """The iptables binary of this family."""
        return "iptables" if self is Family.IPV4 else "ip6tables"

    @property
    def nft_family(self) -> Literal["ip", "ip6"]:
        """The nftables table family (also the payload protocol name)."""
        return "ip" if self is Family.IPV4 else "ip6"

    @property
    def nft_table(self) -> str:
        """flanneld's nftables table name for this family."""
        return "flannel-ipv4" if self is Family.IPV4 else "flannel-ipv6"

    @property
    def multicast(self) -> IPNetwork:
        """Multicast destinations, never masqueraded."""
        if self is Family.IPV4:
            return ipaddress.IPv4Network("224.0.0.0/4")
        return ipaddress.IPv6Network("ff00::/8")


NFT_TABLES: tuple[tuple[str, str], ...] = tuple((f.nft_family, f.nft_table) for f in Family)


@dataclass(frozen=True, slots=True)
class TrafficSpec:
    """What the traffic manager must install, from the network config, lease and flags.

    ``network``/``subnet`` are None when that stack is not enabled (or the lease has no subnet
    of that family); a family with no Network gets no rules at all, as in flanneld.
    """

    network: ipaddress.IPv4Network | None = None
    subnet: ipaddress.IPv4Network | None = None
    ipv6_network: ipaddress.IPv6Network | None = None
    ipv6_subnet: ipaddress.IPv6Network | None = None
    ip_masq: bool = False
    forward_rules: bool = True
    random_fully_disable: bool = False
    blackhole_route: bool = False

    def families(self) -> Iterator[Family]:
        """The families with a configured Network, IPv4 first."""
        if self.network is not None:
            yield Family.IPV4
        if self.ipv6_network is not None:
            yield Family.IPV6

    def network_of(self, family: Family) -> IPNetwork | None:
        """The flannel Network of ``family`` (None when that stack is off)."""
        return self.network if family is Family.IPV4 else self.ipv6_network

    def subnet_of(self, family: Family) -> IPNetwork | None:
        """Our lease subnet of ``family`` (None when not leased)."""
        return self.subnet if family is Family.IPV4 else self.ipv6_subnet

    def masq_wanted(self, family: Family) -> bool:
        """True when masquerade rules are to be installed for ``family``."""
        return (
            self.ip_masq
            and self.network_of(family) is not None
            and self.subnet_of(family) is not None
        )

    def forward_wanted(self, family: Family) -> bool:
        """True when forward-accept rules are to be installed for ``family``."""
        return self.forward_rules and self.network_of(family) is not None


@dataclass(frozen=True, slots=True)
class PreviousNetworks:
    """FLANNEL_NETWORK / FLANNEL_SUBNET (and IPv6 twins) from the subnet.env of the last run."""

    network: ipaddress.IPv4Network | None = None
    subnet: ipaddress.IPv4Network | None = None
    ipv6_network: ipaddress.IPv6Network | None = None
    ipv6_subnet: ipaddress.IPv6Network | None = None

    def differs(self, spec: TrafficSpec, family: Family) -> bool:
        """flanneld's test for "recycle the old rules": network or subnet changed."""
        if family is Family.IPV4:
            return (self.network, self.subnet) != (spec.network, spec.subnet)
        return (self.ipv6_network, self.ipv6_subnet) != (spec.ipv6_network, spec.ipv6_subnet)


# --- iptables ---------------------------------------------------------------------------------

# xtables_save_string() in iptables: values made only of these characters are printed bare,
# anything else is double-quoted with " \ ' backslash-escaped.
_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def save_quote(value: str) -> str:
    """Quote a match argument the way ``iptables-save`` does (for ``--comment``)."""
    if value and all(c in _NO_QUOTE for c in value):
        return value
    escaped = "".join("\\" + c if c in "\"\\'" else c for c in value)
    return f'"{escaped}"'


@dataclass(frozen=True, slots=True)
class IptRule:
    """One iptables rule: its chain and its rule spec as argv tokens (unquoted)."""

    chain: str
    spec: tuple[str, ...]
    # the line exactly as iptables-save printed it, for rules read from the kernel: deleting
    # a foreign rule must reproduce its quoting, which line() only knows for --comment
    raw: str | None = field(default=None, compare=False, repr=False)

    def line(self, action: str = "-A") -> str:
        """The rule as ``iptables-save`` prints it (and ``iptables-restore`` reads it)."""
        if self.raw is not None and self.raw.startswith("-A "):
            return f"{action} {self.raw[3:]}"
        parts = [action, self.chain]
        prev = ""
        for tok in self.spec:
            parts.append(save_quote(tok) if prev == "--comment" else tok)
            prev = tok
        return " ".join(parts)

    @property
    def target(self) -> str | None:
        """The ``-j``/``-g`` target, if any."""
        for i, tok in enumerate(self.spec[:-1]):
            if tok in ("-j", "--jump", "-g", "--goto"):
                return self.spec[i + 1]
        return None

    @property
    def comment(self) -> str | None:
        """The ``--comment`` value, if any."""
        for i, tok in enumerate(self.spec[:-1]):
            if tok == "--comment":
                return self.spec[i + 1]
        return None


@dataclass(frozen=True, slots=True)
class FlannelChain:
    """A flannel-owned chain, the built-in chain that jumps to it, and its rules in order."""

    table: str
    name: str
    parent: str
    comment: str
    rules: tuple[IptRule, ...]

    @property
    def jump(self) -> IptRule:
        """The single rule in ``parent`` that sends traffic into this chain."""
        return IptRule(self.parent, ("-m", "comment", "--comment", self.comment, "-j", self.name))

    def flanneld_order(self) -> tuple[IptRule, ...]:
        """The rules in the order flanneld lists and applies them: jump first."""
        return (self.jump, *self.rules)


def _rule(chain: str, comment: str, *spec: str) -> IptRule:
    # iptables-save prints addresses, then other matches, then the comment, then the target:
    # keep that order so rendered rules equal saved ones.
    head, target = list(spec), []
    if "-j" in head:
        j = head.index("-j")
        head, target = head[:j], head[j:]
    return IptRule(chain, (*head, "-m", "comment", "--comment", comment, *target))


def masq_chain(network: IPNetwork, subnet: IPNetwork, *, random_fully: bool) -> FlannelChain:
    """``nat``/FLANNEL-POSTRTG with flanneld's masquerade rules (N = network, P = subnet)."""
    n, p = str(network), str(subnet)
    fam = Family.IPV4 if network.version == 4 else Family.IPV6
    masq = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")
    c = MASQ_COMMENT
    rules = (
        _rule(MASQ_CHAIN, c, "-m", "mark", "--mark", KUBE_PROXY_MARK, "-j", "RETURN"),
        # no NAT inside the overlay, either direction
        _rule(MASQ_CHAIN, c, "-s", p, "-d", n, "-j", "RETURN"),
        _rule(MASQ_CHAIN, c, "-s", n, "-d", p, "-j", "RETURN"),
        # outside clients reaching our pods keep their source address
        _rule(MASQ_CHAIN, c, "!", "-s", n, "-d", p, "-j", "RETURN"),
        # pods talking to the world, except multicast
        _rule(MASQ_CHAIN, c, "-s", n, "!", "-d", str(fam.multicast), *masq),
        # the host talking to remote pods
        _rule(MASQ_CHAIN, c, "!", "-s", n, "-d", n, *masq),
    )
    return FlannelChain("nat", MASQ_CHAIN, "POSTROUTING", c, rules)


def forward_chain(network: IPNetwork) -> FlannelChain:
    """``filter``/FLANNEL-FWD accepting forwarded traffic from and to the flannel network."""
    n, c = str(network), FORWARD_COMMENT
    rules = (
        _rule(FORWARD_CHAIN, c, "-s", n, "-j", "ACCEPT"),
        _rule(FORWARD_CHAIN, c, "-d", n, "-j", "ACCEPT"),
    )
    return FlannelChain("filter", FORWARD_CHAIN, "FORWARD", c, rules)


def iptables_chains(spec: TrafficSpec, family: Family, *, random_fully: bool) -> list[FlannelChain]:
    """The flannel chains wanted for ``family``: masquerade (if on) then forward (if on).

    ``random_fully`` says whether ``--random-fully`` is both supported by the installed
    iptables (>= 1.6.2) and not disabled by ``--ip-masq-fully-random-disable``.
    """
    network, subnet = spec.network_of(family), spec.subnet_of(family)
    chains = []
    if spec.masq_wanted(family):
        assert network is not None and subnet is not None
        chains.append(masq_chain(network, subnet, random_fully=random_fully))
    if spec.forward_wanted(family):
        assert network is not None
        chains.append(forward_chain(network))
    return chains


def iptables_unwanted_chains(spec: TrafficSpec, family: Family) -> list[tuple[str, str]]:
    """(table, chain) of flannel chains to remove because their option is now off.

    Differs from flanneld, which leaves the rules of an earlier run in place when --ip-masq
    or --iptables-forward-rules is turned off (and so keeps masquerading).
    """
    out = []
    if not spec.masq_wanted(family):
        out.append(("nat", MASQ_CHAIN))
    if not spec.forward_wanted(family):
        out.append(("filter", FORWARD_CHAIN))
    return out


# --- nftables ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NftAddrMatch:
    """``ip saddr [!=] 10.5.0.0/16``."""

    field: Literal["saddr", "daddr"]
    net: IPNetwork
    negate: bool = False

    @property
    def proto(self) -> Literal["ip", "ip6"]:
        """Payload protocol of the match."""
        return "ip" if self.net.version == 4 else "ip6"

    def text(self) -> str:
        """nft syntax."""
        op = " != " if self.negate else " "
        return f"{self.proto} {self.field}{op}{self.net}"

    def json(self) -> dict[str, Any]:
        """The expression as ``nft -j`` prints it."""
        return {
            "match": {
                "op": "!=" if self.negate else "==",
                "left": {"payload": {"protocol": self.proto, "field": self.field}},
                "right": {
                    "prefix": {"addr": str(self.net.network_address), "len": self.net.prefixlen}
                },
            }
        }


@dataclass(frozen=True, slots=True)
class NftMarkMatch:
    """``meta mark & BIT == BIT``: the kube-proxy masquerade bit is set.

    Differs from flanneld, whose ``meta mark 0x4000`` only matches a mark of exactly 0x4000,
    unlike its own iptables rule ``--mark 0x4000/0x4000``.
    """

    bit: int = _KUBE_PROXY_MARK_BIT

    def text(self) -> str:
        """nft syntax."""
        return f"meta mark & {self.bit:#x} == {self.bit:#x}"

    def json(self) -> dict[str, Any]:
        """The expression as ``nft -j`` prints it."""
        return {
            "match": {
                "op": "==",
                "left": {"&": [{"meta": {"key": "mark"}}, self.bit]},
                "right": self.bit,
            }
        }


NftMatch = NftAddrMatch | NftMarkMatch


@dataclass(frozen=True, slots=True)
class NftRule:
    """Matches followed by a verdict (``accept``/``return``) or ``masquerade``."""

    matches: tuple[NftMatch, ...]
    verdict: Literal["accept", "return", "masquerade"]
    fully_random: bool = False

    def text(self) -> str:
        """nft syntax, as used after ``add rule <family> <table> <chain>``."""
        parts = [m.text() for m in self.matches]
        parts.append(
            "masquerade fully-random"
            if self.verdict == "masquerade" and self.fully_random
            else self.verdict
        )
        return " ".join(parts)

    def json(self) -> list[dict[str, Any]]:
        """The rule's ``expr`` list as ``nft -j`` prints it (counters and comments aside)."""
        exprs: list[dict[str, Any]] = [m.json() for m in self.matches]
        if self.verdict == "masquerade":
            exprs.append({"masquerade": {"flags": ["fully-random"]} if self.fully_random else None})
        else:
            exprs.append({self.verdict: None})
        return exprs


@dataclass(frozen=True, slots=True)
class NftChain:
    """A base chain of a flannel nftables table."""

    name: str
    type: Literal["filter", "nat"]
    hook: Literal["forward", "postrouting"]
    priority: Literal["filter", "srcnat"]
    comment: str
    rules: tuple[NftRule, ...]

    @property
    def prio(self) -> int:
        """Numeric priority, as ``nft -j`` prints it."""
        return {"filter": 0, "srcnat": 100}[self.priority]


@dataclass(frozen=True, slots=True)
class NftTable:
    """``<family> flannel-ipvN`` and the chains flannel wants in it."""

    family: Literal["ip", "ip6"]
    name: str
    chains: tuple[NftChain, ...]

    @property
    def comment(self) -> str:
        """flanneld's (knftables') table comment."""
        return f"rules for {self.name}"

    def chain_names(self) -> frozenset[str]:
        """Names of the wanted chains."""
        return frozenset(c.name for c in self.chains)


def _nft_masq_rules(
    network: IPNetwork, subnet: IPNetwork, *, fully_random: bool
) -> tuple[NftRule, ...]:
    fam = Family.IPV4 if network.version == 4 else Family.IPV6

    def ret(*m: NftMatch) -> NftRule:
        return NftRule(m, "return")

    def masq(*m: NftMatch) -> NftRule:
        return NftRule(m, "masquerade", fully_random)

    return (
        ret(NftMarkMatch()),
        ret(NftAddrMatch("saddr", subnet), NftAddrMatch("daddr", network)),
        ret(NftAddrMatch("saddr", network), NftAddrMatch("daddr", subnet)),
        # Differs from flanneld, which has "saddr != P daddr N" here: that returns for every
        # source outside our pods, so the last rule (host -> remote pods) could never match.
        # This is iptables rule 5, "! -s N -d P", which flanneld's iptables mode uses.
        ret(NftAddrMatch("saddr", network, negate=True), NftAddrMatch("daddr", subnet)),
        masq(NftAddrMatch("saddr", network), NftAddrMatch("daddr", fam.multicast, negate=True)),
        masq(NftAddrMatch("saddr", network, negate=True), NftAddrMatch("daddr", network)),
    )


def nft_table(spec: TrafficSpec, family: Family, *, fully_random: bool) -> NftTable:
    """The nftables table wanted for ``family`` (chains only for the options that are on).

    ``fully_random`` says whether ``masquerade fully-random`` is supported by the kernel and not
    disabled by ``--ip-masq-fully-random-disable``.
    """
    network, subnet = spec.network_of(family), spec.subnet_of(family)
    chains = []
    if spec.forward_wanted(family):
        assert network is not None
        chains.append(
            NftChain(
                NFT_FORWARD_CHAIN,
                "filter",
                "forward",
                "filter",
                "chain to accept flannel traffic",
                (
                    NftRule((NftAddrMatch("saddr", network),), "accept"),
                    NftRule((NftAddrMatch("daddr", network),), "accept"),
                ),
            )
        )
    if spec.masq_wanted(family):
        assert network is not None and subnet is not None
        chains.append(
            NftChain(
                NFT_POSTRTG_CHAIN,
                "nat",
                "postrouting",
                "srcnat",
                "chain to manage traffic masquerading by flannel",
                _nft_masq_rules(network, subnet, fully_random=fully_random),
            )
        )
    return NftTable(family.nft_family, family.nft_table, tuple(chains))
