"""pyflannel.inspect: the udp TUN verdicts and the MTU rules taken from the backends."""

from __future__ import annotations

from ipaddress import IPv4Network

from pyflannel.backend import udp, vxlan
from pyflannel.inspect.checks import check_mtu
from pyflannel.inspect.datapath import evaluate_tun

OWN = IPv4Network("10.5.3.0/24")
NET = IPv4Network("10.5.0.0/16")


def _tun(**kw: object) -> udp.TunState:
    fields: dict[str, object] = {"up": True, "mtu": 1472, "has_address": True, "has_route": True}
    fields.update(kw)
    return udp.TunState(**fields)  # type: ignore[arg-type]


def test_healthy_tun_is_one_ok() -> None:
    (ok,) = evaluate_tun("flannel0", _tun(), OWN, NET, 1472)
    assert ok.level == "OK" and ok.subject == "flannel0"
    assert "10.5.3.0/32" in ok.message and str(NET) in ok.message


def test_each_tun_problem_has_its_fix() -> None:
    got = evaluate_tun(
        "flannel0", _tun(up=False, has_address=False, has_route=False, mtu=1500), OWN, NET, 1472
    )
    assert [(f.level, f.fix) for f in got] == [
        ("FAIL", "ip link set dev flannel0 up"),
        ("FAIL", "ip addr add 10.5.3.0/32 dev flannel0"),
        ("FAIL", "ip route replace 10.5.0.0/16 dev flannel0"),
        ("WARN", "ip link set dev flannel0 mtu 1472"),
    ]


def test_missing_tun_fails() -> None:
    (gone,) = evaluate_tun("flannel0", None, OWN, NET, None)
    assert gone.level == "FAIL" and "does not exist" in gone.message


def test_mtu_rules_come_from_the_backends() -> None:
    assert vxlan.device_name(4, 1) == "flannel.1" and vxlan.device_name(6, 7) == "flannel-v6.7"
    assert vxlan.flannel_mtu(1500, ipv6=False) == 1450
    assert vxlan.flannel_mtu(1500, ipv6=True) == 1430
    assert vxlan.device_mtu(1500, 4) == 1450 and vxlan.device_mtu(1500, 6) == 1430
    assert udp.tun_mtu(1500) == 1472


def test_dual_stack_vxlan_mtu_chain_is_ok() -> None:
    """flannel.1 keeps MTU - 50 while FLANNEL_MTU is MTU - 70 (the IPv6 device's): no FAIL for
    the IPv4 device, no WARN for FLANNEL_MTU."""
    (ok,) = check_mtu(
        backend="vxlan",
        ext_name="eth0",
        ext_mtu=1500,
        overhead=vxlan.encap_overhead(4),
        dev_mtu=vxlan.device_mtu(1500, 4),
        env_mtu=vxlan.flannel_mtu(1500, ipv6=True),
        pod_mtu=vxlan.flannel_mtu(1500, ipv6=True),
    )
    assert ok.level == "OK", ok


def test_udp_mtu_chain_is_ok() -> None:
    (ok,) = check_mtu(
        backend="udp", ext_name="eth0", ext_mtu=1500, env_mtu=1472, pod_mtu=udp.tun_mtu(1500)
    )
    assert ok.level == "OK", ok


def test_device_name_rules() -> None:
    assert vxlan.is_device_name("flannel.1") and vxlan.is_device_name("flannel-v6.42")
    assert not vxlan.is_device_name("flannel0") and not vxlan.is_device_name("flannel.x")
    assert udp.is_tun_name("flannel0") and udp.is_tun_name("flannel12")
    assert not udp.is_tun_name("flannel.1") and not udp.is_tun_name("flannel")
