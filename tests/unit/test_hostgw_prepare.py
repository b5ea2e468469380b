"""host-gw's start-up refusals: no address of a family, or a public IP behind NAT (no kernel)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
import trio

from pyflannel.backend.hostgw import HostGwBackend
from pyflannel.config import parse_network_config
from pyflannel.errors import ConfigError, InterfaceError
from pyflannel.iface import ExternalInterface

DUAL = parse_network_config(
    '{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:5::/56",'
    ' "Backend": {"Type": "host-gw"}}'
)
V4, V6 = IPv4Address("198.51.100.1"), IPv6Address("2001:db8::1")


def _prepare(ext: ExternalInterface) -> object:
    return trio.run(HostGwBackend().prepare, DUAL, ext, Path("/nonexistent"))


def test_public_ips_of_the_interface_are_advertised() -> None:
    prepared = _prepare(ExternalInterface("eth0", 2, V4, V6, V4, V6, 1500))
    assert prepared.attrs.public_ip == V4  # type: ignore[attr-defined]
    assert prepared.attrs.public_ipv6 == V6  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("ext", "message", "hint"),
    [
        (
            ExternalInterface("eth0", 2, IPv4Address("10.0.0.5"), V6, V4, V6, 1500),
            "your PublicIP differs from interface IP",
            "public IP 198.51.100.1 vs eth0 address 10.0.0.5: use the vxlan backend, or drop "
            "--public-ip",
        ),
        (
            ExternalInterface("eth0", 2, V4, IPv6Address("2001:db8::9"), V4, V6, 1500),
            "your PublicIPv6 differs from interface IP",
            "public IPv6 2001:db8::1 vs eth0 address 2001:db8::9: use the vxlan backend, or drop "
            "--public-ipv6",
        ),
    ],
)
def test_nat_is_refused_per_family(ext: ExternalInterface, message: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        _prepare(ext)
    assert err.value.message.startswith(message)
    assert err.value.hint == hint


@pytest.mark.parametrize(
    ("ext", "word"),
    [
        (ExternalInterface("eth0", 2, None, V6, None, V6, 1500), "IPv4"),
        (ExternalInterface("eth0", 2, V4, None, V4, None, 1500), "IPv6"),
    ],
)
def test_a_missing_address_is_refused(ext: ExternalInterface, word: str) -> None:
    with pytest.raises(InterfaceError, match=f"interface eth0 has no {word} address for host-gw"):
        _prepare(ext)
