"""Device management, addresses and the link monitor against the real kernel."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest
import trio

from pyflannel.netlink.addresses import ensure_address, list_addresses
from pyflannel.netlink.encode import mac_to_bytes
from pyflannel.netlink.links import (
    LinkInfo,
    VxlanSpec,
    create_vxlan,
    delete_link,
    ensure_vxlan,
    get_link,
    list_links,
    set_link_mtu,
    vxlan_incompatibilities,
)
from pyflannel.netlink.monitor import LinkMonitor
from pyflannel.netlink.nlsocket import KernelRefused
from pyflannel.netlink.nsenter import in_netns

from .nltopo import LOCAL_IP, Node, sh

pytestmark = pytest.mark.root


def details(node: Node, dev: str) -> dict[str, Any]:
    (link,) = node.ip_json("-d", "link", "show", "dev", dev)
    assert isinstance(link, dict)
    return link


def test_create_vxlan_with_every_attribute(node: Node) -> None:
    mac = "0e:12:34:56:78:9a"
    spec = node.vxlan_spec(vni=7, port=4789, gbp=True, mtu=1400, mac=mac)
    link = ensure_vxlan(node.sock, spec)
    shown = details(node, "flannel.1")
    data = shown["linkinfo"]["info_data"]
    assert shown["linkinfo"]["info_kind"] == "vxlan"
    assert (data["id"], data["local"], data["link"], data["port"]) == (
        7,
        str(LOCAL_IP),
        node.ext_name,
        4789,
    )
    assert data["gbp"] is True and data["learning"] is False and data["ttl"] == 0
    assert not data.get("l2miss") and not data.get("l3miss")
    assert (shown["address"], shown["mtu"]) == (mac, 1400)
    assert (link.mac, link.mtu, link.ifindex) == (mac, 1400, shown["ifindex"])
    assert link.vxlan is not None and (link.vxlan.vni, link.vxlan.port, link.vxlan.gbp) == (
        7,
        4789,
        True,
    )
    sysctl = "/proc/sys/net/ipv6/conf/flannel.1/accept_ra"
    assert sh("ip", "netns", "exec", node.ns, "cat", sysctl).strip() == "0"


def test_defaults_random_mac_kernel_port_and_mtu(node: Node) -> None:
    link = ensure_vxlan(node.sock, node.vxlan_spec(learning=True))
    data = details(node, "flannel.1")["linkinfo"]["info_data"]
    assert data["port"] == 8472 and data["learning"] is True and "gbp" not in data
    assert link.mtu == 1450  # kernel: underlay 1500 - 50
    assert link.mac is not None
    first = mac_to_bytes(link.mac)[0]
    assert first & 0x02 and not first & 0x01


def test_ensure_reuses_a_compatible_device_and_keeps_its_mac(node: Node) -> None:
    first = ensure_vxlan(node.sock, node.vxlan_spec())
    # MTU, learning and MAC are not compared (flanneld behaviour), so this is "compatible"
    again = ensure_vxlan(
        node.sock, node.vxlan_spec(learning=True, mtu=1300, mac="0e:00:00:00:00:01")
    )
    assert (again.ifindex, again.mac, again.mtu) == (first.ifindex, first.mac, first.mtu)


def test_ensure_recreates_an_incompatible_device(node: Node) -> None:
    old = ensure_vxlan(node.sock, node.vxlan_spec(vni=1))
    new = ensure_vxlan(node.sock, node.vxlan_spec(vni=2))
    assert new.ifindex != old.ifindex
    assert details(node, "flannel.1")["linkinfo"]["info_data"]["id"] == 2


def test_incompatibilities_of_a_device_made_by_ip(node: Node) -> None:
    node.ip(
        "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dev", node.ext_name,
        "local", str(LOCAL_IP), "dstport", "4789", "gbp", "l2miss",
    )  # fmt: skip
    existing = get_link(node.sock, "flannel.1")
    assert existing is not None
    diffs = vxlan_incompatibilities(node.vxlan_spec(port=8472), existing)
    assert [d.split(":")[0] for d in diffs] == ["l2miss", "port", "gbp"]
    # a non-vxlan device of the same name is replaced too
    delete_link(node.sock, existing.ifindex)
    node.ip("link", "add", "flannel.1", "type", "bridge")
    link = ensure_vxlan(node.sock, node.vxlan_spec())
    assert link.kind == "vxlan" and details(node, "flannel.1")["linkinfo"]["info_kind"] == "vxlan"


def test_create_refuses_an_existing_name(node: Node) -> None:
    create_vxlan(node.sock, node.vxlan_spec())
    with pytest.raises(KernelRefused) as info:
        create_vxlan(node.sock, node.vxlan_spec())
    assert info.value.errno == 17 and "ip link add flannel.1 type vxlan id 1" in str(info.value)


def test_up_mtu_delete_and_lookup(node: Node, vxlan: LinkInfo) -> None:
    assert get_link(node.sock, vxlan.ifindex) == get_link(node.sock, "flannel.1")
    assert "UP" in details(node, "flannel.1")["flags"]
    set_link_mtu(node.sock, vxlan.ifindex, 1370)
    link = get_link(node.sock, "flannel.1")
    assert link is not None and link.up and link.mtu == 1370
    assert {link.name for link in list_links(node.sock)} >= {"lo", node.ext_name, "flannel.1"}
    delete_link(node.sock, vxlan.ifindex)
    delete_link(node.sock, vxlan.ifindex)  # already gone: fine
    assert get_link(node.sock, "flannel.1") is None
    assert get_link(node.sock, vxlan.ifindex) is None


def test_ensure_address_keeps_one_lease_address(node: Node, vxlan: LinkInfo) -> None:
    network = IPv4Network("10.5.0.0/16")
    node.ip("addr", "add", "10.5.9.0/32", "dev", "flannel.1")  # an old lease's address
    node.ip("addr", "add", "192.168.77.1/24", "dev", "flannel.1")  # not ours: kept
    want = IPv4Interface("10.5.1.0/32")
    ensure_address(node.sock, vxlan.ifindex, want, stale_within=network)
    ensure_address(node.sock, vxlan.ifindex, want, stale_within=network)
    assert set(list_addresses(node.sock, vxlan.ifindex)) == {
        want,
        IPv4Interface("192.168.77.1/24"),
    }
    shown = node.ip_json("-4", "addr", "show", "dev", "flannel.1")
    assert {(a["local"], a["prefixlen"]) for a in shown[0]["addr_info"]} == {
        ("10.5.1.0", 32),
        ("192.168.77.1", 24),
    }
    # the /32 adds no connected route (only the unrelated /24 does)
    routes = node.ip_json("route", "show", "dev", "flannel.1")
    assert {r["dst"] for r in routes} == {"192.168.77.0/24"}


def test_monitor_sees_deletion_blocking(node: Node, vxlan: LinkInfo) -> None:
    with in_netns(node.ns):
        mon = LinkMonitor()
    with mon:
        node.ip("link", "del", "flannel.1")
        events = []
        for _ in range(20):
            events += mon.wait(timeout=2)
            if any(e.kind == "deleted" for e in events):
                break
    assert any(
        e.kind == "deleted" and e.ifindex == vxlan.ifindex and e.name == "flannel.1" for e in events
    )


async def test_monitor_sees_deletion_from_trio(node: Node, vxlan: LinkInfo) -> None:
    with in_netns(node.ns):
        mon = LinkMonitor()
    with mon:
        await trio.run_process(["ip", "-n", node.ns, "link", "del", "flannel.1"])
        with trio.fail_after(5):
            while True:
                events = await mon.next_events()
                deleted = [e for e in events if e.kind == "deleted"]
                if deleted:
                    break
    assert deleted[0].ifindex == vxlan.ifindex
    # and the device can be brought back under the same name
    again = ensure_vxlan(node.sock, node.vxlan_spec())
    assert again.name == "flannel.1" and get_link(node.sock, "flannel.1") is not None


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="interface name"):
        create_vxlan(None, VxlanSpec("x" * 16, 1, 0, IPv4Address("198.51.100.1")))  # type: ignore[arg-type]
