"""iptables mode against the real kernel, inside network namespaces created here.

Every iptables/nft/ip command goes through ``ip netns exec <ns>``; nothing touches the root
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

import pytest
import trio

from pyflannel.errors import TrafficRuleError
from pyflannel.trafficmngr import (
    BlackholeOutcome,
    IptablesManager,
    NftablesManager,
    PreviousNetworks,
    TrafficSpec,
    ensure_blackhole_route,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        any(
            shutil.which(b) is None for b in ("ip", "iptables-restore", "ip6tables-restore", "nft")
        ),
        reason="needs iproute2, iptables and nftables",
    ),
]

N4 = ipaddress.IPv4Network("10.5.0.0/16")
P4 = ipaddress.IPv4Network("10.5.72.0/24")
N6 = ipaddress.IPv6Network("2001:db8::/48")
P6 = ipaddress.IPv6Network("2001:db8:0:5::/64")

M = '-m comment --comment "flanneld masq"'
F = '-m comment --comment "flanneld forward"'
# flanneld's rule list (spec §8) as iptables-save prints it
FLANNELD_NAT_V4 = [
    f"-A POSTROUTING {M} -j FLANNEL-POSTRTG",
    f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {M} -j RETURN",
    f"-A FLANNEL-POSTRTG -s 10.5.72.0/24 -d 10.5.0.0/16 {M} -j RETURN",
    f"-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.72.0/24 {M} -j RETURN",
    f"-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.72.0/24 {M} -j RETURN",
    f"-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 {M} -j MASQUERADE --random-fully",
    f"-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 {M} -j MASQUERADE --random-fully",
]
FLANNELD_FILTER_V4 = [
    f"-A FORWARD {F} -j FLANNEL-FWD",
    f"-A FLANNEL-FWD -s 10.5.0.0/16 {F} -j ACCEPT",
    f"-A FLANNEL-FWD -d 10.5.0.0/16 {F} -j ACCEPT",
]
FLANNELD_NAT_V6 = [
    f"-A POSTROUTING {M} -j FLANNEL-POSTRTG",
    f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {M} -j RETURN",
    f"-A FLANNEL-POSTRTG -s 2001:db8:0:5::/64 -d 2001:db8::/48 {M} -j RETURN",
    f"-A FLANNEL-POSTRTG -s 2001:db8::/48 -d 2001:db8:0:5::/64 {M} -j RETURN",
    f"-A FLANNEL-POSTRTG ! -s 2001:db8::/48 -d 2001:db8:0:5::/64 {M} -j RETURN",
    f"-A FLANNEL-POSTRTG -s 2001:db8::/48 ! -d ff00::/8 {M} -j MASQUERADE --random-fully",
    f"-A FLANNEL-POSTRTG ! -s 2001:db8::/48 -d 2001:db8::/48 {M} -j MASQUERADE --random-fully",
]

SPEC = TrafficSpec(network=N4, subnet=P4, ip_masq=True)


def sh(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace ``ns`` (never in the root namespace)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], check=check, capture_output=True, text=True
    )


def rules(ns: str, table: str, binary: str = "iptables") -> list[str]:
    """The ``-A`` lines of ``table`` as iptables-save prints them."""
    out = sh(ns, f"{binary}-save", "-t", table).stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]


def chains(ns: str, table: str, binary: str = "iptables") -> set[str]:
    out = sh(ns, f"{binary}-save", "-t", table).stdout
    return {line[1:].split()[0] for line in out.splitlines() if line.startswith(":")}


def nft_tables(ns: str) -> set[tuple[str, str]]:
    doc = json.loads(sh(ns, "nft", "-j", "list", "tables").stdout)
    return {(i["table"]["family"], i["table"]["name"]) for i in doc["nftables"] if "table" in i}


@pytest.fixture
def node_ns() -> Iterator[str]:
    """A fresh, empty network namespace with a run-unique name; deleted afterwards."""
    name = f"pf{secrets.token_hex(3)}ipt"
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
        cmds = [
            [
                "ip",
                "-n",
                node_ns,
                "link",
                "add",
                f"pf{tag}a",
                "type",
                "veth",
                "peer",
                "name",
                f"pf{tag}b",
                "netns",
                pod,
            ],
            [
                "ip",
                "-n",
                node_ns,
                "link",
                "add",
                f"pf{tag}c",
                "type",
                "veth",
                "peer",
                "name",
                f"pf{tag}d",
                "netns",
                out,
            ],
            ["ip", "-n", node_ns, "addr", "add", "10.5.72.1/24", "dev", f"pf{tag}a"],
            ["ip", "-n", node_ns, "addr", "add", "203.0.113.1/24", "dev", f"pf{tag}c"],
            ["ip", "-n", pod, "addr", "add", "10.5.72.2/24", "dev", f"pf{tag}b"],
            ["ip", "-n", out, "addr", "add", "203.0.113.2/24", "dev", f"pf{tag}d"],
            ["ip", "-n", node_ns, "link", "set", f"pf{tag}a", "up"],
            ["ip", "-n", node_ns, "link", "set", f"pf{tag}c", "up"],
            ["ip", "-n", pod, "link", "set", f"pf{tag}b", "up"],
            ["ip", "-n", out, "link", "set", f"pf{tag}d", "up"],
            ["ip", "-n", pod, "route", "add", "default", "via", "10.5.72.1"],
            ["ip", "netns", "exec", node_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ]
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        yield node_ns, pod, out
    finally:
        for ns in (pod, out):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def ping_ok(ns: str, dst: str) -> bool:
    return sh(ns, "ping", "-c", "1", "-W", "1", dst, check=False).returncode == 0


# --- the rule set -----------------------------------------------------------------------------


async def test_setup_installs_flanneld_rules_exactly(node_ns: str) -> None:
    mgr = IptablesManager(SPEC, netns=node_ns)
    await mgr.setup()
    assert rules(node_ns, "nat") == FLANNELD_NAT_V4
    assert rules(node_ns, "filter") == FLANNELD_FILTER_V4
    assert await mgr.resync_once() == []
    # a second setup (daemon restart) yields the same, with no duplicates
    await IptablesManager(SPEC, netns=node_ns).setup()
    assert rules(node_ns, "nat") == FLANNELD_NAT_V4
    assert rules(node_ns, "filter") == FLANNELD_FILTER_V4


async def test_random_fully_disable(node_ns: str) -> None:
    spec = TrafficSpec(network=N4, subnet=P4, ip_masq=True, random_fully_disable=True)
    await IptablesManager(spec, netns=node_ns).setup()
    want = [line.replace(" --random-fully", "") for line in FLANNELD_NAT_V4]
    assert rules(node_ns, "nat") == want


async def test_ipv6_rules_with_ip6tables(node_ns: str) -> None:
    spec = TrafficSpec(ipv6_network=N6, ipv6_subnet=P6, ip_masq=True)
    await IptablesManager(spec, netns=node_ns).setup()
    assert rules(node_ns, "nat", "ip6tables") == FLANNELD_NAT_V6
    assert rules(node_ns, "filter", "ip6tables") == [
        f"-A FORWARD {F} -j FLANNEL-FWD",
        f"-A FLANNEL-FWD -s 2001:db8::/48 {F} -j ACCEPT",
        f"-A FLANNEL-FWD -d 2001:db8::/48 {F} -j ACCEPT",
    ]
    # IPv4 is not configured: iptables (v4) is left alone
    assert rules(node_ns, "nat") == []


async def test_masquerade_datapath(topology: tuple[str, str, str]) -> None:
    node, pod, _out = topology
    # the outside host cannot answer the pod's own address...
    assert not ping_ok(pod, "203.0.113.2")
    await IptablesManager(SPEC, netns=node).setup()
    # ...but it can answer the node's, once the pod's traffic is masqueraded
    assert ping_ok(pod, "203.0.113.2")


# --- resync -----------------------------------------------------------------------------------


async def test_resync_repairs_a_deleted_rule(node_ns: str) -> None:
    mgr = IptablesManager(SPEC, netns=node_ns)
    await mgr.setup()
    sh(node_ns, "iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3")
    repaired = await mgr.resync_once()
    assert any("rule missing from FLANNEL-POSTRTG" in r for r in repaired)
    assert rules(node_ns, "nat") == FLANNELD_NAT_V4
    assert await mgr.resync_once() == []
    assert mgr.repairs_total == len(repaired)


async def test_resync_repairs_a_reordered_rule(node_ns: str) -> None:
    # flanneld's -C check cannot see this one (issue #1337)
    mgr = IptablesManager(SPEC, netns=node_ns)
    await mgr.setup()
    sh(node_ns, "iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "1")
    sh(
        node_ns,
        "iptables",
        "-t",
        "nat",
        "-A",
        "FLANNEL-POSTRTG",
        "-m",
        "mark",
        "--mark",
        "0x4000/0x4000",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "RETURN",
    )
    assert rules(node_ns, "nat") != FLANNELD_NAT_V4
    assert await mgr.resync_once() == ["iptables/nat: rules of FLANNEL-POSTRTG are out of order"]
    assert rules(node_ns, "nat") == FLANNELD_NAT_V4


async def test_resync_removes_duplicate_jump_rules(node_ns: str) -> None:
    mgr = IptablesManager(SPEC, netns=node_ns)
    await mgr.setup()
    jump = ["-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG"]
    sh(node_ns, "iptables", "-t", "nat", "-I", "POSTROUTING", "1", *jump)
    sh(node_ns, "iptables", "-t", "nat", "-A", "POSTROUTING", *jump)
    sh(
        node_ns,
        "iptables",
        "-t",
        "filter",
        "-I",
        "FORWARD",
        "1",
        "-m",
        "comment",
        "--comment",
        "flanneld forward",
        "-j",
        "FLANNEL-FWD",
    )
    repaired = await mgr.resync_once()
    assert any("jump rule duplicated (3 copies)" in r for r in repaired)
    assert any("jump rule duplicated (2 copies)" in r for r in repaired)
    assert rules(node_ns, "nat") == FLANNELD_NAT_V4
    assert rules(node_ns, "filter") == FLANNELD_FILTER_V4


async def test_resync_recreates_a_deleted_chain_and_keeps_foreign_rules(node_ns: str) -> None:
    mgr = IptablesManager(SPEC, netns=node_ns)
    await mgr.setup()
    foreign = "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
    sh(
        node_ns,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "172.17.0.0/16",
        "!",
        "-o",
        "docker0",
        "-j",
        "MASQUERADE",
    )
    sh(
        node_ns,
        "iptables",
        "-t",
        "filter",
        "-D",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "flanneld forward",
        "-j",
        "FLANNEL-FWD",
    )
    sh(node_ns, "iptables", "-t", "filter", "-F", "FLANNEL-FWD")
    sh(node_ns, "iptables", "-t", "filter", "-X", "FLANNEL-FWD")
    repaired = await mgr.resync_once()
    assert "iptables/filter: chain filter/FLANNEL-FWD is missing" in repaired
    assert rules(node_ns, "filter") == FLANNELD_FILTER_V4
    assert foreign in rules(node_ns, "nat")


async def test_resync_forever_repairs_and_keeps_blackhole(node_ns: str) -> None:
    spec = TrafficSpec(network=N4, subnet=P4, ip_masq=True, blackhole_route=True)
    mgr = IptablesManager(spec, netns=node_ns)
    await mgr.setup()
    sh(node_ns, "iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
    async with trio.open_nursery() as nursery:
        await nursery.start(mgr.resync_forever, 0.1)
        with trio.fail_after(5):
            while (
                rules(node_ns, "nat") != FLANNELD_NAT_V4
                or "blackhole" not in sh(node_ns, "ip", "route", "show", "type", "blackhole").stdout
            ):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert "blackhole 10.5.72.0/24" in sh(node_ns, "ip", "route").stdout


# --- previous subnet, legacy rules, options off --------------------------------------------


async def test_new_subnet_replaces_previous_rule_set(node_ns: str) -> None:
    old = ipaddress.IPv4Network("10.5.9.0/24")
    await IptablesManager(TrafficSpec(network=N4, subnet=old, ip_masq=True), netns=node_ns).setup()
    assert any("10.5.9.0/24" in r for r in rules(node_ns, "nat"))
    prev = PreviousNetworks(network=N4, subnet=old)
    await IptablesManager(SPEC, prev=prev, netns=node_ns).setup()
    assert rules(node_ns, "nat") == FLANNELD_NAT_V4


async def test_pre_v020_rules_in_postrouting_are_removed(node_ns: str) -> None:
    # flanneld < v0.20 put its rules straight into POSTROUTING
    legacy = f"-A POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 {M} -j RETURN"
    sh(
        node_ns,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.5.0.0/16",
        "-d",
        "10.5.0.0/16",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "RETURN",
    )
    assert rules(node_ns, "nat") == [legacy]
    await IptablesManager(SPEC, netns=node_ns).setup()
    assert rules(node_ns, "nat") == FLANNELD_NAT_V4


async def test_turning_options_off_removes_their_chains(node_ns: str) -> None:
    await IptablesManager(SPEC, netns=node_ns).setup()
    await IptablesManager(TrafficSpec(network=N4, subnet=P4), netns=node_ns).setup()
    assert rules(node_ns, "nat") == []
    assert "FLANNEL-POSTRTG" not in chains(node_ns, "nat")
    assert rules(node_ns, "filter") == FLANNELD_FILTER_V4
    off = TrafficSpec(network=N4, subnet=P4, forward_rules=False)
    mgr = IptablesManager(off, netns=node_ns)
    await mgr.setup()
    assert "FLANNEL-FWD" not in chains(node_ns, "filter")
    assert await mgr.resync_once() == []


# --- mode switch, errors, blackhole ---------------------------------------------------------


async def test_cleanup_other_mode_deletes_nft_tables(node_ns: str) -> None:
    spec = TrafficSpec(network=N4, subnet=P4, ipv6_network=N6, ipv6_subnet=P6, ip_masq=True)
    await NftablesManager(spec, netns=node_ns).setup()
    assert {("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")} <= nft_tables(node_ns)
    mgr = IptablesManager(spec, netns=node_ns)
    await mgr.cleanup_other_mode()
    assert not {("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")} & nft_tables(node_ns)
    await mgr.cleanup_other_mode()  # nothing left to delete: still fine


async def test_errors_name_the_command_and_a_hint() -> None:
    mgr = IptablesManager(SPEC, netns=f"pf{secrets.token_hex(3)}none")
    with pytest.raises(TrafficRuleError) as err:
        await mgr.setup()
    msg = str(err.value)
    assert "iptables" in msg and "failed with exit code" in msg
    assert "nf_tables" in msg  # the hint


async def test_missing_binary_is_reported(node_ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TrafficRuleError) as err:
        await IptablesManager(SPEC, netns=node_ns).setup()
    assert "'iptables' was not found on PATH" in str(err.value)


async def test_blackhole_route(node_ns: str) -> None:
    assert await ensure_blackhole_route(P4, netns=node_ns) is BlackholeOutcome.ADDED
    assert await ensure_blackhole_route(P4, netns=node_ns) is BlackholeOutcome.PRESENT
    assert "blackhole 10.5.72.0/24" in sh(node_ns, "ip", "route").stdout
    assert await ensure_blackhole_route(P6, netns=node_ns) is BlackholeOutcome.ADDED
    assert "blackhole 2001:db8:0:5::/64" in sh(node_ns, "ip", "-6", "route").stdout
    # a bridge owning the subnet (cni0) already routes it: the kernel refuses a second route
    other = ipaddress.IPv4Network("10.5.73.0/24")
    sh(node_ns, "ip", "link", "add", "pfbr0", "type", "bridge")
    sh(node_ns, "ip", "addr", "add", "10.5.73.1/24", "dev", "pfbr0")
    sh(node_ns, "ip", "link", "set", "pfbr0", "up")
    assert await ensure_blackhole_route(other, netns=node_ns) is BlackholeOutcome.SHADOWED


async def test_family_dropped_from_config_loses_its_chains(node_ns: str) -> None:
    dual = TrafficSpec(network=N4, subnet=P4, ipv6_network=N6, ipv6_subnet=P6, ip_masq=True)
    await IptablesManager(dual, netns=node_ns).setup()
    assert rules(node_ns, "nat", "ip6tables") == FLANNELD_NAT_V6
    await IptablesManager(SPEC, netns=node_ns).setup()
    assert rules(node_ns, "nat", "ip6tables") == []
    assert rules(node_ns, "filter", "ip6tables") == []
    assert not {"FLANNEL-POSTRTG", "FLANNEL-FWD"} & (
        chains(node_ns, "nat", "ip6tables") | chains(node_ns, "filter", "ip6tables")
    )
    assert rules(node_ns, "nat") == FLANNELD_NAT_V4


@pytest.mark.parametrize("manager", [IptablesManager, NftablesManager])
async def test_blackhole_at_setup_replaces_the_previous_subnets(
    node_ns: str, manager: type[IptablesManager] | type[NftablesManager]
) -> None:
    """Issue 19: restarted with a new subnet, the node drops the previous lease's blackhole
    (and a blackhole for any other subnet of the Network: it would cut a peer off) and adds its
    own at set-up, not one resync period later. Blackholes outside the Network stay."""
    prev4, prev6 = ipaddress.IPv4Network("10.5.71.0/24"), ipaddress.IPv6Network("2001:db8:0:4::/64")
    peer = ipaddress.IPv4Network("10.5.9.0/24")
    foreign = ipaddress.IPv4Network("203.0.113.128/25")
    for net in (prev4, peer, foreign):
        sh(node_ns, "ip", "route", "add", "blackhole", str(net))
    sh(node_ns, "ip", "-6", "route", "add", "blackhole", str(prev6))
    spec = TrafficSpec(
        network=N4, subnet=P4, ipv6_network=N6, ipv6_subnet=P6, ip_masq=True,
        blackhole_route=True,
    )  # fmt: skip
    prev = PreviousNetworks(network=N4, subnet=prev4, ipv6_network=N6, ipv6_subnet=prev6)
    await manager(spec, prev=prev, netns=node_ns).setup()
    v4 = sh(node_ns, "ip", "-4", "route", "show", "type", "blackhole").stdout.split("\n")
    v6 = sh(node_ns, "ip", "-6", "route", "show", "type", "blackhole").stdout.split("\n")
    assert sorted(line.split()[1] for line in v4 if line) == [str(P4), str(foreign)]
    assert [line.split()[1] for line in v6 if line] == [str(P6)]
