"""The UAPI text protocol: serialising ``set`` requests and parsing ``get`` answers, exact cases
and round trips over arbitrary devices (hypothesis)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.backend.wireguard.uapi import (
    DeviceState,
    PeerSet,
    PeerState,
    SetDevice,
    format_endpoint,
    parse_device,
    parse_endpoint,
    parse_errno,
    serialise_set,
)

K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def format_get(dev: DeviceState) -> str:
    """What wireguard-go answers to ``get=1`` (the order of its ipcGetOperation)."""
    lines = []
    if dev.private_key is not None:
        lines.append(f"private_key={dev.private_key.hex()}")
    lines.append(f"listen_port={dev.listen_port}")
    if dev.fwmark:
        lines.append(f"fwmark={dev.fwmark}")
    for p in dev.peers:
        lines.append(f"public_key={p.public_key.hex()}")
        lines.append(f"preshared_key={p.preshared_key.hex()}")
        lines.append("protocol_version=1")
        if p.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(p.endpoint)}")
        sec = int(p.last_handshake)
        lines.append(f"last_handshake_time_sec={sec}")
        lines.append(f"last_handshake_time_nsec={round((p.last_handshake - sec) * 1e9)}")
        lines.append(f"tx_bytes={p.tx_bytes}")
        lines.append(f"rx_bytes={p.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={p.keepalive}")
        lines.extend(f"allowed_ip={n}" for n in p.allowed_ips)
    return "\n".join(lines) + "\nerrno=0\n\n"


def test_set_request_exact() -> None:
    req = SetDevice(
        private_key=K1,
        listen_port=51820,
        peers=(
            PeerSet(
                K2,
                endpoint=(ipaddress.ip_address("2001:db8::2"), 51821),
                keepalive=25,
                allowed_ips=(ipaddress.ip_network("10.5.2.0/24"),),
            ),
            PeerSet(K1, remove=True),
        ),
    )
    assert serialise_set(req).decode() == (
        f"set=1\nprivate_key={K1.hex()}\nlisten_port=51820\n"
        f"public_key={K2.hex()}\npreshared_key={'00' * 32}\nendpoint=[2001:db8::2]:51821\n"
        "persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.5.2.0/24\n"
        f"public_key={K1.hex()}\nremove=true\n\n"
    )


def test_parse_real_answer() -> None:
    text = (
        f"private_key={K1.hex()}\nlisten_port=51820\npublic_key={K2.hex()}\n"
        f"preshared_key={'00' * 32}\nprotocol_version=1\nendpoint=198.51.100.2:51820\n"
        "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\n"
        "tx_bytes=1200\nrx_bytes=3400\npersistent_keepalive_interval=0\n"
        "allowed_ip=10.5.2.0/24\nallowed_ip=fd00::/64\nerrno=0\n\n"
    )
    dev = parse_device(text)
    assert dev.private_key == K1 and dev.listen_port == 51820
    (peer,) = dev.peers
    assert peer.endpoint == (ipaddress.ip_address("198.51.100.2"), 51820)
    assert peer.last_handshake == 1700000000.5
    assert (peer.tx_bytes, peer.rx_bytes) == (1200, 3400)
    assert peer.allowed_ips == (
        ipaddress.ip_network("10.5.2.0/24"),
        ipaddress.ip_network("fd00::/64"),
    )


@pytest.mark.parametrize(
    "text",
    ["listen_port=1\n\n", "errno=0\nbroken\n\n", "public_key=00\nerrno=0\n\n", "errno=22\n\n"],
)
def test_parse_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_device(text)


def test_errno() -> None:
    assert parse_errno("errno=0\n\n") == 0
    assert parse_errno("errno=-22\n\n") == -22


keys = st.binary(min_size=32, max_size=32)
v4 = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6 = st.builds(
    lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
endpoints = st.one_of(
    st.none(),
    st.tuples(st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)), st.integers(0, 65535)),
    st.tuples(st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)), st.integers(0, 65535)),
)
peers = st.builds(
    PeerState,
    public_key=keys,
    preshared_key=keys,
    endpoint=endpoints,
    keepalive=st.integers(0, 65535),
    allowed_ips=st.lists(st.one_of(v4, v6), max_size=4).map(tuple),
    last_handshake=st.integers(0, 2**40).map(float),
    rx_bytes=st.integers(0, 2**64 - 1),
    tx_bytes=st.integers(0, 2**64 - 1),
)
devices = st.builds(
    DeviceState,
    private_key=st.one_of(st.none(), keys),
    listen_port=st.integers(0, 65535),
    fwmark=st.integers(0, 2**32 - 1),
    peers=st.lists(peers, max_size=5).map(tuple),
)


@given(devices)
def test_get_round_trip(dev: DeviceState) -> None:
    assert parse_device(format_get(dev)) == dev


@given(
    st.tuples(
        st.one_of(
            st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
            st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)),
        ),
        st.integers(0, 65535),
    )
)
def test_endpoint_round_trip(ep: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]) -> None:
    assert parse_endpoint(format_endpoint(ep)) == ep


@given(
    st.lists(
        st.builds(
            PeerSet,
            public_key=keys,
            remove=st.booleans(),
            endpoint=endpoints,
            keepalive=st.integers(0, 65535),
            allowed_ips=st.lists(v4, max_size=3).map(tuple),
        ),
        max_size=5,
    ),
    st.booleans(),
)
def test_set_is_well_formed(ops: list[PeerSet], replace: bool) -> None:
    text = serialise_set(SetDevice(replace_peers=replace, peers=tuple(ops))).decode()
    assert text.startswith("set=1\n") and text.endswith("\n\n") and "\n\n" not in text[:-2]
    lines = text[:-2].split("\n")
    assert all("=" in ln for ln in lines)
    assert [ln[11:] for ln in lines if ln.startswith("public_key=")] == [
        p.public_key.hex() for p in ops
    ]
    assert ("replace_peers=true" in lines) == replace
    assert lines.count("remove=true") == sum(p.remove for p in ops)
