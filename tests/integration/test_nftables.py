"""nftables mode against the real kernel, inside network namespaces created here.

Every nft/iptables/ip command goes through ``ip netns exec <ns>``; nothing touches the root
namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from pyflannel.trafficmngr import IptablesManager, NftablesManager, TrafficSpec

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        any(
            shutil.which(b) is None for b in ("ip", "nft", "iptables-restore", "ip6tables-restore")
        ),
        reason="needs iproute2, nftables and iptables",
    ),
]

N4 = ipaddress.IPv4Network("10.5.0.0/16")
P4 = ipaddress.IPv4Network("10.5.72.0/24")
N6 = ipaddress.IPv6Network("2001:db8::/48")
P6 = ipaddress.IPv6Network("2001:db8:0:5::/64")
SPEC = TrafficSpec(network=N4, subnet=P4, ip_masq=True)
DUAL = TrafficSpec(network=N4, subnet=P4, ipv6_network=N6, ipv6_subnet=P6, ip_masq=True)

# what `nft list table ip flannel-ipv4` prints for the wanted rules (nft 1.0.x)
POSTRTG_V4 = [
    "meta mark & 0x00004000 == 0x00004000 return",
    "ip saddr 10.5.72.0/24 ip daddr 10.5.0.0/16 return",
    "ip saddr 10.5.0.0/16 ip daddr 10.5.72.0/24 return",
    "ip saddr != 10.5.0.0/16 ip daddr 10.5.72.0/24 return",
    "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
    "ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random",
]
FORWARD_V4 = ["ip saddr 10.5.0.0/16 accept", "ip daddr 10.5.0.0/16 accept"]


def sh(ns: str, *argv: str, check: bool = True, stdin: str | None = None) -> str:
    """Run a command inside namespace ``ns`` (never in the root namespace); its stdout."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], check=check, capture_output=True, text=True, input=stdin
    ).stdout


def chain_rules(ns: str, family: str, table: str, chain: str) -> list[str]:
    """Rule lines of a chain as ``nft list chain`` prints them."""
    out = sh(ns, "nft", "list", "chain", family, table, chain)
    body = [line.strip() for line in out.splitlines()]
    return [
        line
        for line in body
        if line and not line.startswith(("table ", "chain ", "type ", "comment ", "}"))
    ]


def rule_handles(ns: str, family: str, table: str, chain: str) -> list[int]:
    doc: dict[str, Any] = json.loads(sh(ns, "nft", "-j", "list", "chain", family, table, chain))
    return [i["rule"]["handle"] for i in doc["nftables"] if "rule" in i]


def nft_tables(ns: str) -> set[tuple[str, str]]:
    doc = json.loads(sh(ns, "nft", "-j", "list", "tables"))
    return {(i["table"]["family"], i["table"]["name"]) for i in doc["nftables"] if "table" in i}


def ipt_lines(ns: str, binary: str, table: str) -> list[str]:
    out = sh(ns, f"{binary}-save", "-t", table)
    return [line for line in out.splitlines() if line.startswith(("-A ", ":"))]


@pytest.fixture
def node_ns() -> Iterator[str]:
    """A fresh, empty network namespace with a run-unique name; deleted afterwards."""
    name = f"pf{secrets.token_hex(3)}nft"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def topology(node_ns: str) -> Iterator[tuple[str, str, str]]:
    """node (= ``node_ns``) routing between a pod namespace (10.5.72.2/24 behind 10.5.72.1) and
    an outside namespace (203.0.113.2/24) that has no route back to the pod network."""
    tag = secrets.token_hex(2)
    pod, out = f"pf{tag}pod", f"pf{tag}out"
    for ns in (pod, out):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        a, b, c, d = (f"pf{tag}{x}" for x in "abcd")
        cmds = [
            [
                "ip",
                "-n",
                node_ns,
                "link",
                "add",
                a,
                "type",
                "veth",
                "peer",
                "name",
                b,
                "netns",
                pod,
            ],
            [
                "ip",
                "-n",
                node_ns,
                "link",
                "add",
                c,
                "type",
                "veth",
                "peer",
                "name",
                d,
                "netns",
                out,
            ],
            ["ip", "-n", node_ns, "addr", "add", "10.5.72.1/24", "dev", a],
            ["ip", "-n", node_ns, "addr", "add", "203.0.113.1/24", "dev", c],
            ["ip", "-n", pod, "addr", "add", "10.5.72.2/24", "dev", b],
            ["ip", "-n", out, "addr", "add", "203.0.113.2/24", "dev", d],
            ["ip", "-n", node_ns, "link", "set", a, "up"],
            ["ip", "-n", node_ns, "link", "set", c, "up"],
            ["ip", "-n", pod, "link", "set", b, "up"],
            ["ip", "-n", out, "link", "set", d, "up"],
            ["ip", "-n", pod, "route", "add", "default", "via", "10.5.72.1"],
            ["ip", "netns", "exec", node_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ]
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        yield node_ns, pod, out
    finally:
        for ns in (pod, out):
            subprocess.run(["ip", "netns", "del", ns], check=False)


# --- the rule set -----------------------------------------------------------------------------


async def test_setup_writes_tables(node_ns: str) -> None:
    mgr = NftablesManager(DUAL, netns=node_ns)
    await mgr.setup()
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "postrtg") == POSTRTG_V4
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "forward") == FORWARD_V4
    assert chain_rules(node_ns, "ip6", "flannel-ipv6", "postrtg")[3] == (
        "ip6 saddr != 2001:db8::/48 ip6 daddr 2001:db8:0:5::/64 return"
    )
    listing = sh(node_ns, "nft", "list", "table", "ip", "flannel-ipv4")
    assert "type nat hook postrouting priority srcnat; policy accept;" in listing
    assert "type filter hook forward priority filter; policy accept;" in listing
    assert await mgr.resync_once() == []
    # our expected JSON matched this nft's listing: no fallback to a post-apply snapshot
    assert mgr._baseline == {}
    # restart: same tables, nothing doubled
    await NftablesManager(DUAL, netns=node_ns).setup()
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "postrtg") == POSTRTG_V4


async def test_fully_random_disable(node_ns: str) -> None:
    spec = TrafficSpec(network=N4, subnet=P4, ip_masq=True, random_fully_disable=True)
    await NftablesManager(spec, netns=node_ns).setup()
    want = [r.replace(" fully-random", "") for r in POSTRTG_V4]
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "postrtg") == want


async def test_masquerade_datapath(topology: tuple[str, str, str]) -> None:
    node, pod, _out = topology
    ping = ["ping", "-c", "1", "-W", "1", "203.0.113.2"]
    assert subprocess.run(["ip", "netns", "exec", pod, *ping], capture_output=True).returncode
    await NftablesManager(SPEC, netns=node).setup()
    assert not subprocess.run(["ip", "netns", "exec", pod, *ping], capture_output=True).returncode


# --- resync (flanneld has none in nftables mode) ---------------------------------------------


async def test_resync_repairs_deleted_added_and_reordered_rules(node_ns: str) -> None:
    mgr = NftablesManager(SPEC, netns=node_ns)
    await mgr.setup()
    handles = rule_handles(node_ns, "ip", "flannel-ipv4", "postrtg")

    sh(node_ns, "nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", str(handles[2]))
    assert await mgr.resync_once() == [
        "rules of chain postrtg of table ip flannel-ipv4 differ (5 listed, 6 wanted)"
    ]
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "postrtg") == POSTRTG_V4

    sh(
        node_ns,
        "nft",
        "insert",
        "rule",
        "ip",
        "flannel-ipv4",
        "forward",
        "ip",
        "saddr",
        "0.0.0.0/0",
        "drop",
    )
    assert len(await mgr.resync_once()) == 1
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "forward") == FORWARD_V4

    first = rule_handles(node_ns, "ip", "flannel-ipv4", "postrtg")[0]
    sh(node_ns, "nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", str(first))
    sh(
        node_ns,
        "nft",
        "add",
        "rule",
        "ip",
        "flannel-ipv4",
        "postrtg",
        "meta",
        "mark",
        "&",
        "0x4000",
        "==",
        "0x4000",
        "return",
    )
    assert await mgr.resync_once() == [
        "rules of chain postrtg of table ip flannel-ipv4 are out of order"
    ]
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "postrtg") == POSTRTG_V4
    assert await mgr.resync_once() == []


async def test_resync_recreates_deleted_chain_and_table(node_ns: str) -> None:
    mgr = NftablesManager(DUAL, netns=node_ns)
    await mgr.setup()
    sh(node_ns, "nft", "delete", "chain", "ip", "flannel-ipv4", "forward")
    sh(node_ns, "nft", "delete", "table", "ip6", "flannel-ipv6")
    sh(node_ns, "nft", "add", "chain", "ip", "flannel-ipv4", "junk")
    repaired = await mgr.resync_once()
    assert sorted(repaired) == [
        "chain forward of table ip flannel-ipv4 is missing",
        "table ip6 flannel-ipv6 is missing",
        "unexpected chain junk in table ip flannel-ipv4",
    ]
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "forward") == FORWARD_V4
    assert ("ip6", "flannel-ipv6") in nft_tables(node_ns)
    assert "junk" not in sh(node_ns, "nft", "list", "table", "ip", "flannel-ipv4")
    assert await mgr.resync_once() == []


async def test_resync_forever_repairs(node_ns: str) -> None:
    mgr = NftablesManager(SPEC, netns=node_ns)
    await mgr.setup()
    sh(node_ns, "nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg")
    async with trio.open_nursery() as nursery:
        await nursery.start(mgr.resync_forever, 0.1)
        with trio.fail_after(5):
            while mgr.repairs_total < 1:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "postrtg") == POSTRTG_V4


# --- options, families, mode switch -----------------------------------------------------------


async def test_options_off_and_unconfigured_family(node_ns: str) -> None:
    await NftablesManager(DUAL, netns=node_ns).setup()
    # IPv6 dropped from the config, --ip-masq turned off: stale tables/chains must not linger
    mgr = NftablesManager(TrafficSpec(network=N4, subnet=P4), netns=node_ns)
    await mgr.setup()
    assert ("ip6", "flannel-ipv6") not in nft_tables(node_ns)
    listing = sh(node_ns, "nft", "list", "table", "ip", "flannel-ipv4")
    assert "postrtg" not in listing
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "forward") == FORWARD_V4
    assert await mgr.resync_once() == []


async def test_cleanup_other_mode_removes_iptables_chains_in_nat_and_filter(node_ns: str) -> None:
    await IptablesManager(DUAL, netns=node_ns).setup()
    sh(
        node_ns,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "172.17.0.0/16",
        "-j",
        "MASQUERADE",
    )
    for binary in ("iptables", "ip6tables"):
        assert any("FLANNEL-POSTRTG" in line for line in ipt_lines(node_ns, binary, "nat"))
        assert any("FLANNEL-FWD" in line for line in ipt_lines(node_ns, binary, "filter"))
    mgr = NftablesManager(DUAL, netns=node_ns)
    await mgr.cleanup_other_mode()
    for binary in ("iptables", "ip6tables"):
        # flanneld only looks in nat, so its FLANNEL-FWD survives; ours goes, jumps included
        assert not any("FLANNEL" in line for line in ipt_lines(node_ns, binary, "nat"))
        assert not any("FLANNEL" in line for line in ipt_lines(node_ns, binary, "filter"))
    assert "-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE" in ipt_lines(node_ns, "iptables", "nat")
    await mgr.cleanup_other_mode()  # nothing left: still fine
    await mgr.setup()
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "postrtg") == POSTRTG_V4


async def test_resync_recreates_a_chain_with_changed_hook_priority(node_ns: str) -> None:
    mgr = NftablesManager(SPEC, netns=node_ns)
    await mgr.setup()
    # someone re-creates our forward chain at another priority with a drop policy
    sh(
        node_ns,
        "nft",
        "-f",
        "-",
        stdin="flush chain ip flannel-ipv4 forward\n"
        "delete chain ip flannel-ipv4 forward\n"
        "add chain ip flannel-ipv4 forward { type filter hook forward priority 10 ; "
        "policy drop ; }\n",
    )
    problems = await mgr.resync_once()
    assert any("prio=10 policy=drop" in p for p in problems)
    listing = sh(node_ns, "nft", "list", "chain", "ip", "flannel-ipv4", "forward")
    assert "type filter hook forward priority filter; policy accept;" in listing
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "forward") == FORWARD_V4
    assert await mgr.resync_once() == []


async def test_errors_name_the_command_and_a_hint() -> None:
    from pyflannel.errors import TrafficRuleError

    mgr = NftablesManager(SPEC, netns=f"pf{secrets.token_hex(3)}none")
    with pytest.raises(TrafficRuleError) as err:
        await mgr.setup()
    msg = str(err.value)
    assert "'nft -j list table ip flannel-ipv4'" in msg and "failed with exit code" in msg
    assert "nftables package" in msg  # the hint


async def test_leftover_table_with_a_foreign_chain_jumping_to_ours_is_replaced(
    node_ns: str,
) -> None:
    """Issue 19: a leftover ``flannel-ipv4`` table whose regular ``forward`` chain is the
    target of a foreign chain's jump. The script must flush every chain before deleting any
    (deleting ``forward`` while ``leftover`` still jumps to it is EBUSY), and the fully-random
    probe must not test against that table and conclude fully-random is unsupported."""
    sh(
        node_ns,
        "nft",
        "-f",
        "-",
        stdin="add table ip flannel-ipv4\n"
        "add chain ip flannel-ipv4 forward\n"
        "add rule ip flannel-ipv4 forward counter accept\n"
        "add chain ip flannel-ipv4 leftover { type filter hook forward priority 5 ; }\n"
        "add rule ip flannel-ipv4 leftover jump forward\n",
    )
    mgr = NftablesManager(SPEC, netns=node_ns)
    await mgr.setup()
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "postrtg") == POSTRTG_V4
    assert chain_rules(node_ns, "ip", "flannel-ipv4", "forward") == FORWARD_V4
    listing = sh(node_ns, "nft", "list", "table", "ip", "flannel-ipv4")
    assert "leftover" not in listing
    assert "type filter hook forward priority filter; policy accept;" in listing
    assert await mgr.resync_once() == []
