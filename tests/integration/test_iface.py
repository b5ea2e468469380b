"""External interface selection, against a real network namespace (and pure snapshots)."""

from __future__ import annotations

import ctypes
import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, TypeVar

import pytest

from pyflannel.errors import ConfigError, InterfaceError
from pyflannel.iface import (
    Addr,
    ExternalInterface,
    HostNetwork,
    Link,
    read_host_network,
    select_interface,
    select_interface_from,
)

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has joined network namespace ``name`` (setns is per thread)."""
    box: dict[str, Any] = {}

    def target() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                box["error"] = OSError(ctypes.get_errno(), "setns failed")
                return
        finally:
            os.close(fd)
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


@dataclass(frozen=True)
class Host:
    ns: str
    a: str  # 198.51.100.10/24 (+ .11), 2001:db8:a::10/64, default routes
    b: str  # 203.0.113.10/24


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


@pytest.fixture
def host() -> Iterator[Host]:
    tag = secrets.token_hex(2)
    ns, a, b = f"pf{tag}if", f"pf{tag}ia", f"pf{tag}ib"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        _ip(ns, "link", "set", "lo", "up")
        _ip(ns, "link", "add", a, "type", "veth", "peer", "name", b)
        _ip(ns, "addr", "add", "198.51.100.10/24", "dev", a)
        _ip(ns, "addr", "add", "198.51.100.11/24", "dev", a)
        _ip(ns, "addr", "add", "2001:db8:a::10/64", "dev", a, "nodad")
        _ip(ns, "addr", "add", "203.0.113.10/24", "dev", b)
        _ip(ns, "link", "set", a, "up")
        _ip(ns, "link", "set", b, "up")
        _ip(ns, "route", "add", "default", "via", "198.51.100.1", "dev", a)
        _ip(ns, "-6", "route", "add", "default", "via", "2001:db8:a::1", "dev", a)
        yield Host(ns, a, b)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def select_in(host: Host, **kwargs: Any) -> ExternalInterface:
    return in_netns(host.ns, lambda: select_interface(**kwargs))


V4A = IPv4Address("198.51.100.10")
V4B = IPv4Address("203.0.113.10")


@pytest.mark.root
def test_default_route_interface(host: Host) -> None:
    ext = select_in(host)
    assert (ext.name, ext.ipv4_addr, ext.public_ip, ext.ipv6_addr, ext.public_ipv6) == (
        host.a,
        V4A,
        V4A,
        None,
        None,
    )
    assert ext.mtu == 1500
    assert ext.index == in_netns(host.ns, lambda: read_host_network().by_name(host.a)).index  # type: ignore[union-attr]


@pytest.mark.root
def test_dual_stack_default_route(host: Host) -> None:
    ext = select_in(host, enable_ipv6=True)
    assert ext.name == host.a
    assert ext.ipv4_addr == V4A
    assert ext.ipv6_addr == IPv6Address("2001:db8:a::10")  # global before link-local fe80::
    assert ext.public_ipv6 == IPv6Address("2001:db8:a::10")
    # The underlay networks (issue 14: their network/broadcast addresses are no PublicIP).
    assert str(ext.ipv4_network) == "198.51.100.0/24"
    assert str(ext.ipv6_network) == "2001:db8:a::/64"


@pytest.mark.root
def test_ipv6_only_stack(host: Host) -> None:
    ext = select_in(host, enable_ipv4=False, enable_ipv6=True)
    assert (ext.name, ext.ipv4_addr, ext.public_ip) == (host.a, None, None)
    assert ext.ipv6_addr == IPv6Address("2001:db8:a::10")


@pytest.mark.root
@pytest.mark.parametrize(
    ("iface", "expected_name", "expected_addr"),
    [
        (["{b}"], "b", V4B),
        (["203.0.113.10"], "b", V4B),
        (["198.51.100.11"], "a", IPv4Address("198.51.100.11")),  # the given IP, not the first
        (["nosuch0", "192.0.2.99", "{b}", "{a}"], "b", V4B),  # first match wins, in order
        (["lo", "{a}"], "a", V4A),  # lo has no usable (non-loopback) IPv4 address
    ],
)
def test_iface_by_name_or_ip(
    host: Host, iface: list[str], expected_name: str, expected_addr: IPv4Address
) -> None:
    names = [i.format(a=host.a, b=host.b) for i in iface]
    ext = select_in(host, iface=names)
    assert ext.name == getattr(host, expected_name)
    assert ext.ipv4_addr == expected_addr == ext.public_ip


@pytest.mark.root
def test_iface_wins_over_regex(host: Host) -> None:
    assert select_in(host, iface=[host.b], iface_regex=["^198"]).name == host.b


@pytest.mark.root
@pytest.mark.parametrize(
    ("regex", "expected_name", "expected_addr"),
    [
        (r"^203\.0\.113\.", "b", V4B),  # matched against IPs first
        (r"100\.11$", "a", IPv4Address("198.51.100.11")),
        ("ib$", "b", V4B),  # then against names
        ("nomatch", None, None),
    ],
)
def test_iface_regex(
    host: Host, regex: str, expected_name: str | None, expected_addr: IPv4Address | None
) -> None:
    if expected_name is None:
        with pytest.raises(InterfaceError) as info:
            select_in(host, iface_regex=["[", regex])
        msg = info.value.message
        assert msg.startswith(
            "Failed to find interface to use that matches the interfaces and/or regexes provided"
        )
        assert "--iface-regex [: could not compile the IP address regex '['" in msg
        assert f"could not match pattern {regex} to any of the available network interfaces" in msg
        assert f"{host.a}:[198.51.100.10 198.51.100.11]" in msg
        assert "--iface" in (info.value.hint or "")
        return
    ext = select_in(host, iface_regex=["^nomatch$", regex])
    assert ext.name == getattr(host, expected_name)
    assert ext.ipv4_addr == expected_addr


@pytest.mark.root
def test_iface_can_reach(host: Host) -> None:
    ext = select_in(host, iface_can_reach="203.0.113.77")
    assert (ext.name, ext.ipv4_addr) == (host.b, V4B)
    # Off-link destinations go out of the default route interface.
    assert select_in(host, iface_can_reach="198.18.0.1").name == host.a


@pytest.mark.root
def test_iface_can_reach_after_failed_iface(host: Host) -> None:
    assert select_in(host, iface=["nosuch0"], iface_can_reach="203.0.113.5").name == host.b


@pytest.mark.root
def test_public_ip_selects_its_interface(host: Host) -> None:
    ext = select_in(host, public_ip="203.0.113.10")
    assert (ext.name, ext.ipv4_addr, ext.public_ip) == (host.b, V4B, V4B)


@pytest.mark.root
def test_public_ip_not_local_fails(host: Host) -> None:
    with pytest.raises(InterfaceError) as info:
        select_in(host, public_ip="203.0.113.200")
    assert info.value.message.startswith("Failed to find any valid interface to use: ")
    assert "203.0.113.200" in info.value.message
    assert "--iface" in (info.value.hint or "")


@pytest.mark.root
def test_public_ip_behind_nat_with_iface(host: Host) -> None:
    ext = select_in(host, iface=[host.a], public_ip="203.0.113.200")
    assert ext.ipv4_addr == V4A
    assert ext.public_ip == IPv4Address("203.0.113.200")


@pytest.mark.root
def test_no_default_route(host: Host) -> None:
    _ip(host.ns, "route", "del", "default")
    with pytest.raises(InterfaceError) as info:
        select_in(host)
    assert info.value.message == (
        "Failed to find any valid interface to use: failed to get default interface: unable "
        "to find default route (tried the default route)"
    )
    assert "--iface" in (info.value.hint or "")
    # --iface still works without a default route.
    assert select_in(host, iface=[host.b]).name == host.b


@pytest.mark.root
def test_deprecated_address_skipped(host: Host) -> None:
    _ip(host.ns, "addr", "flush", "dev", host.b)
    _ip(host.ns, "addr", "add", "203.0.113.20/24", "dev", host.b, "preferred_lft", "0")
    _ip(host.ns, "addr", "add", "203.0.113.21/24", "dev", host.b)
    assert select_in(host, iface=[host.b]).ipv4_addr == IPv4Address("203.0.113.21")


@pytest.mark.root
def test_reads_mtu(host: Host) -> None:
    _ip(host.ns, "link", "set", host.b, "mtu", "9000")
    assert select_in(host, iface=[host.b]).mtu == 9000


# --- pure selection over snapshots ---------------------------------------------------------


def snap(*links: Link, v4: tuple[int, ...] = (2,), v6: tuple[int, ...] = ()) -> HostNetwork:
    return HostNetwork(
        links=(Link(1, "lo", 65536, (Addr(ip_address("127.0.0.1")),)), *links),
        default_v4=v4,
        default_v6=v6,
    )


def addr(text: str, flags: int = 0x80) -> Addr:
    return Addr(ip_address(text), flags)


def test_mtu_zero_is_an_error() -> None:
    host = snap(Link(2, "eth0", 0, (addr("198.51.100.5"),)))
    with pytest.raises(InterfaceError) as info:
        select_interface_from(host)
    assert info.value.message.startswith("failed to determine MTU for 198.51.100.5 interface")


def test_address_preference_order() -> None:
    link = Link(
        2,
        "eth0",
        1500,
        (
            addr("169.254.0.9"),  # link-local: last resort
            addr("198.51.100.7", flags=0),  # dynamic
            addr("198.51.100.8", flags=0x80 | 0x20),  # deprecated: never
            addr("198.51.100.9"),  # permanent global: preferred
        ),
    )
    assert select_interface_from(snap(link)).ipv4_addr == IPv4Address("198.51.100.9")
    only_ll = Link(2, "eth0", 1500, (addr("169.254.0.9"),))
    assert select_interface_from(snap(only_ll)).ipv4_addr == IPv4Address("169.254.0.9")


def test_ipv6_temporary_after_non_temporary() -> None:
    link = Link(
        2,
        "eth0",
        1500,
        (addr("198.51.100.5"), addr("2001:db8::1", 0x01), addr("2001:db8::2", 0)),
    )
    ext = select_interface_from(snap(link, v6=(2,)), enable_ipv6=True)
    assert ext.ipv6_addr == IPv6Address("2001:db8::2")


def test_dual_stack_default_routes_must_agree() -> None:
    host = snap(
        Link(2, "eth0", 1500, (addr("198.51.100.5"),)),
        Link(3, "eth1", 1500, (addr("2001:db8::5"),)),
        v6=(3,),
    )
    with pytest.raises(InterfaceError, match="v6 default route interface eth1 must be the same"):
        select_interface_from(host, enable_ipv6=True)


def test_multipath_default_route() -> None:
    host = snap(Link(2, "eth0", 1500, (addr("198.51.100.5"),)), v4=(0,))
    with pytest.raises(InterfaceError, match="found default route but could not determine"):
        select_interface_from(host)


def test_regex_name_fallback_uses_that_interfaces_addresses() -> None:
    # flanneld would pair eth0's IPv4 match with eth1 here; we use eth1's own addresses.
    host = snap(
        Link(2, "eth0", 1500, (addr("198.51.100.5"),)),
        Link(3, "eth1", 1500, (addr("203.0.113.5"), addr("2001:db8::5"))),
    )
    ext = select_interface_from(host, iface_regex=["^198|eth1"], enable_ipv6=True)
    assert (ext.name, ext.ipv4_addr, ext.ipv6_addr) == (
        "eth1",
        IPv4Address("203.0.113.5"),
        IPv6Address("2001:db8::5"),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"public_ip": "not-an-ip"}, "invalid public IP address: not-an-ip"),
        ({"public_ip": "2001:db8::1"}, "invalid public IP address: 2001:db8::1"),
        ({"public_ipv6": "198.51.100.1"}, "invalid public IPv6 address: 198.51.100.1"),
        ({"enable_ipv4": False}, "none defined stack"),
    ],
)
def test_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        select_interface_from(snap(Link(2, "eth0", 1500, (addr("198.51.100.5"),))), **kwargs)
    assert info.value.message == message
    assert info.value.hint


def test_can_reach_without_route_lookup() -> None:
    with pytest.raises(InterfaceError, match="no route lookup available"):
        select_interface_from(snap(), iface_can_reach="198.51.100.1")
