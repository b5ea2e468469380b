"""subnet.env: exact bytes, atomic 0644 writes, tolerant parsing, clear errors."""
# ruff: noqa: E501  (tables of cases read best one per line)

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.errors import ConfigError
from pyflannel.subnet.subnet_env import (
    SubnetEnv,
    lease_ipv6_subnet_from_env,
    lease_subnet_from_env,
    parse_subnet_env,
    parse_subnet_env_vars,
    read_subnet_env,
    read_subnet_env_vars,
    render_subnet_env,
    subnet_env_for,
    write_subnet_env,
)

V4 = subnet_env_for(
    network=IPv4Network("10.5.0.0/16"),
    lease_subnet=IPv4Network("10.5.72.0/24"),
    mtu=1450,
    ipmasq=False,
)
DUAL = subnet_env_for(
    network=IPv4Network("10.5.0.0/16"),
    lease_subnet=IPv4Network("10.5.72.0/24"),
    ipv6_network=IPv6Network("2001:cafe:42::/56"),
    ipv6_lease_subnet=IPv6Network("2001:cafe:42::/64"),
    mtu=1450,
    ipmasq=False,
)


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_subnet_is_lease_ip_plus_one() -> None:
    assert V4.subnet == IPv4Interface("10.5.72.1/24")
    assert DUAL.ipv6_subnet == IPv6Interface("2001:cafe:42::1/64")


@pytest.mark.parametrize(
    ("env", "text"),
    [
        (
            V4,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n"
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        ),
        (
            DUAL,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n"
            "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n"
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        ),
        (
            subnet_env_for(
                network=None,
                lease_subnet=None,
                ipv6_network=IPv6Network("fd00:42::/48"),
                ipv6_lease_subnet=IPv6Network("fd00:42:0:7::/64"),
                mtu=1500,
                ipmasq=True,
            ),
            "FLANNEL_IPV6_NETWORK=fd00:42::/48\nFLANNEL_IPV6_SUBNET=fd00:42:0:7::1/64\n"
            "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n",
        ),
    ],
)
def test_render_exact_text(env: SubnetEnv, text: str) -> None:
    assert render_subnet_env(env) == text


@pytest.mark.parametrize(
    "env",
    [
        SubnetEnv(network=IPv4Network("10.5.0.0/16"), mtu=1450, ipmasq=False),
        SubnetEnv(ipv6_subnet=IPv6Interface("fd00::1/64"), mtu=1450, ipmasq=False),
        SubnetEnv(mtu=None, ipmasq=False),
        SubnetEnv(mtu=1450, ipmasq=None),
    ],
)
def test_render_refuses_incomplete_env(env: SubnetEnv) -> None:
    with pytest.raises(ValueError, match="SubnetEnv needs"):
        render_subnet_env(env)


def test_write_exact_bytes_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_env(path, DUAL)
    assert path.read_bytes() == render_subnet_env(DUAL).encode()
    assert read_subnet_env(path) == DUAL
    assert lease_subnet_from_env(read_subnet_env(path)) == IPv4Network("10.5.72.0/24")
    assert lease_ipv6_subnet_from_env(read_subnet_env(path)) == IPv6Network("2001:cafe:42::/64")


@pytest.mark.usefixtures("umask_077")
def test_write_mode_0644_and_parents_0755_regardless_of_umask(tmp_path: Path) -> None:
    path = tmp_path / "run" / "flannel" / "subnet.env"
    write_subnet_env(path, V4)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "run" / "flannel").stat().st_mode) == 0o755


def test_existing_parent_mode_is_left_alone(tmp_path: Path) -> None:
    parent = tmp_path / "private"
    parent.mkdir(mode=0o700)
    write_subnet_env(parent / "subnet.env", V4)
    assert stat.S_IMODE(parent.stat().st_mode) == 0o700


def test_write_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_text("OLD=1\n")
    old_inode = path.stat().st_ino
    write_subnet_env(path, V4)
    assert path.read_text() == render_subnet_env(V4)
    assert path.stat().st_ino != old_inode  # a new file was renamed over the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subnet.env"]


def test_write_failure_is_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"could not write subnet file .*file/subnet.env"):
        write_subnet_env(blocker / "subnet.env", V4)


def test_parse_is_tolerant() -> None:
    text = (
        "# written by hand\r\n"
        "\n"
        "   \n"
        'FLANNEL_NETWORK="10.5.0.0/16"\r\n'
        "export FLANNEL_SUBNET='10.5.72.1/24'\n"
        "SOMETHING_ELSE=whatever=with=equals\n"
        "  FLANNEL_MTU = 1450  \n"
        "FLANNEL_IPMASQ=true # comment\n"
        "FLANNEL_IPMASQ=false\n"
    )
    assert parse_subnet_env(text) == V4
    assert parse_subnet_env_vars(text)["SOMETHING_ELSE"] == "whatever=with=equals"


def test_parse_never_executes(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "subnet.env"
    path.write_text(f"FLANNEL_MTU=$(touch {marker})\n")
    with pytest.raises(ConfigError):
        read_subnet_env(path)
    assert read_subnet_env_vars(path)["FLANNEL_MTU"] == f"$(touch {marker})"
    assert not marker.exists()


def test_partial_and_empty_values() -> None:
    assert parse_subnet_env("FLANNEL_SUBNET=10.5.72.1/24\n") == SubnetEnv(
        subnet=IPv4Interface("10.5.72.1/24")
    )
    assert parse_subnet_env("FLANNEL_SUBNET=\nFLANNEL_MTU=\n") == SubnetEnv()
    assert parse_subnet_env("") == SubnetEnv()


def test_lease_subnet_is_network_form() -> None:
    env = parse_subnet_env("FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_SUBNET=fd00:0:0:3::1/64\n")
    assert lease_subnet_from_env(env) == IPv4Network("10.5.72.0/24")
    assert lease_ipv6_subnet_from_env(env) == IPv6Network("fd00:0:0:3::/64")
    assert lease_subnet_from_env(SubnetEnv()) is None
    assert lease_ipv6_subnet_from_env(SubnetEnv()) is None


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("FLANNEL_MTU=1450\nthis is not a pair\n", 2, "expected KEY=VALUE"),
        ("=value\n", 1, "expected KEY=VALUE"),
        ("BAD KEY=1\n", 1, "expected KEY=VALUE"),
        ("\n\nFLANNEL_SUBNET=10.5.72.1\n", 3, "FLANNEL_SUBNET='10.5.72.1' is not an IPv4 address/prefix"),
        ("FLANNEL_SUBNET=10.5.72.1/33\n", 1, "is not an IPv4 address/prefix"),
        ("FLANNEL_SUBNET=fd00::1/64\n", 1, "is not an IPv4 address/prefix"),
        ("FLANNEL_NETWORK=10.5.0.0/255.255.0.0\n", 1, "is not an IPv4 CIDR"),
        ("FLANNEL_IPV6_NETWORK=10.5.0.0/16\n", 1, "is not an IPv6 CIDR"),
        ("FLANNEL_IPV6_SUBNET=fd00::1%eth0/64\n", 1, "is not an IPv6 address/prefix"),
        ("FLANNEL_MTU=abc\n", 1, "is not an MTU between 1 and 65535"),
        ("FLANNEL_MTU=0\n", 1, "is not an MTU"),
        ("FLANNEL_MTU=70000\n", 1, "is not an MTU"),
        ("FLANNEL_IPMASQ=yes\n", 1, "FLANNEL_IPMASQ='yes' is not true or false"),
        ("FLANNEL_IPMASQ=True\n", 1, "is not true or false"),
    ],
)  # fmt: skip
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = tmp_path / "subnet.env"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_subnet_env(path)
    assert info.value.message.startswith(f"{path}:{line}: ")
    assert fragment in info.value.message
    assert f"line {line} of {path}" in (info.value.hint or "")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="could not read subnet file"):
        read_subnet_env(tmp_path / "nope.env")
    assert read_subnet_env(tmp_path / "nope.env", missing_ok=True) == SubnetEnv()


def test_binary_garbage_is_handled(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_bytes(b"FLANNEL_MTU=1450\n\xff\xfe=\x00\n")
    with pytest.raises(ConfigError, match=":2: expected KEY=VALUE"):
        read_subnet_env(path)


# --- properties ----------------------------------------------------------------------------

keys = st.sampled_from(
    [
        "FLANNEL_NETWORK",
        "FLANNEL_SUBNET",
        "FLANNEL_IPV6_NETWORK",
        "FLANNEL_IPV6_SUBNET",
        "FLANNEL_MTU",
        "FLANNEL_IPMASQ",
        "OTHER",
    ]
)
values = st.text(max_size=30) | st.sampled_from(
    ["10.5.72.1/24", "10.5.0.0/16", "fd00::1/64", "1450", "true", "false", "'x'", '""', "9" * 5000]
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_config_error(text: str) -> None:
    try:
        env = parse_subnet_env(text, "t.env")
    except ConfigError as err:
        assert err.message.startswith("t.env:")
    else:
        assert isinstance(env, SubnetEnv)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys, values), max_size=8))
def test_arbitrary_assignments_only_raise_config_error(pairs: list[tuple[str, str]]) -> None:
    text = "".join(f"{k}={v}\n" for k, v in pairs)
    try:
        parse_subnet_env(text)
    except ConfigError as err:
        assert err.hint


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=8, max_value=30),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=1, max_value=65535),
    st.booleans(),
)
def test_round_trip_property(prefix: int, addr: int, mtu: int, ipmasq: bool) -> None:
    lease = IPv4Network((addr, prefix), strict=False)
    env = subnet_env_for(
        network=lease.supernet(new_prefix=prefix - 2 if prefix > 2 else 0),
        lease_subnet=lease,
        mtu=mtu,
        ipmasq=ipmasq,
    )
    parsed = parse_subnet_env(render_subnet_env(env))
    assert parsed == env
    assert lease_subnet_from_env(parsed) == lease
