"""The flannel plugin's pure logic: CIDRs, subnet.env, and the delegate config it builds.

Expected delegate configs come from flannel-io/cni-plugin's own test (cni-spec §1.4) and from
the real plugin run on this machine (§3.8, exact bytes).
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni_plugin.netconf import (
    DEFAULT_DATA_DIR,
    DEFAULT_SUBNET_FILE,
    SubnetEnv,
    build_delegate,
    build_ipam,
    delegate_type,
    format_ipv6,
    network_of,
    parse_cidr,
    parse_flannel_conf,
    parse_ip,
    parse_subnet_env,
    read_subnet_env,
)
from cni_plugin.protocol import CniError, dumps

V4_ENV = (
    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)
V6_ENV = (
    "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n"
    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)
DUAL_ENV = (
    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
    "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n"
    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)
TWO_NETS_ENV = (
    "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)
UPSTREAM_USER_ROUTES = [
    {"dst": "10.96.0.0/12"},
    {"dst": "192.168.244.0/24", "gw": "10.1.17.20"},
]


def delegate_for(conf: dict[str, Any], env_text: str) -> dict[str, Any]:
    return build_delegate(parse_flannel_conf(conf), parse_subnet_env(env_text))


# ---------------------------------------------------------------------------------- CIDRs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.244.1.1/24", (4, "10.244.1.0/24")),
        ("10.1.17.1/24", (4, "10.1.17.0/24")),
        ("0.0.0.0/0", (4, "0.0.0.0/0")),
        ("255.255.255.255/32", (4, "255.255.255.255/32")),
        ("fc00::1/64", (6, "fc00::/64")),
        ("fd00:10:244:1::1/64", (6, "fd00:10:244:1::/64")),
        ("FD00:0010:0244:0001:0000:0000:0000:0001/56", (6, "fd00:10:244::/56")),
        ("::/0", (6, "::/0")),
        ("::ffff:10.1.2.3/128", (6, "::ffff:a01:203/128")),
        ("1:0:0:1:0:0:0:1/128", (6, "1:0:0:1::1/128")),
    ],
)
def test_network_of_clears_host_bits(text: str, expected: tuple[int, str]) -> None:
    assert network_of(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10.1.0.0",
        "10.1.0.0/",
        "10.1.0.0/33",
        "10.1.0.0/08",
        "10.1.0/16",
        "010.1.0.0/16",
        "10.1.0.256/16",
        "10.1.0.0/16/1",
        " 10.1.0.0/16",
        "10.1.0.0/16 ",
        "fc00::/129",
        "fc00:::/64",
        "fc00::1::/64",
        "1:2:3:4:5:6:7:8:9/64",
        "1:2:3:4:5:6:7:8::/64",
        "fe80::1%eth0/64",
        "٣.1.0.0/16",
        "abc",
    ],
)
def test_parse_cidr_rejects(text: str) -> None:
    assert parse_cidr(text) is None
    assert network_of(text) is None


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(), st.data())
def test_network_of_matches_ipaddress(addr: Any, data: st.DataObject) -> None:
    prefix = data.draw(st.integers(0, addr.max_prefixlen))
    expected = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    assert network_of(f"{addr}/{prefix}") == (addr.version, str(expected))
    # The exploded form parses to the same thing.
    assert network_of(f"{addr.exploded}/{prefix}") == (addr.version, str(expected))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**128 - 1))
def test_format_ipv6_matches_ipaddress(value: int) -> None:
    assert format_ipv6(value) == str(ipaddress.IPv6Address(value))
    assert parse_ip(str(ipaddress.IPv6Address(value))) == (6, value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789abcdef:./%", max_size=45))
def test_parse_ip_agrees_with_ipaddress_on_junk(text: str) -> None:
    try:
        expected: tuple[int, int] | None = (
            ipaddress.ip_address(text).version,
            int(ipaddress.ip_address(text)),
        )
    except ValueError:
        expected = None
    if "%" in text:
        expected = None  # zones are not allowed in a CIDR (Go's ParseCIDR)
    assert parse_ip(text) == expected


# ------------------------------------------------------------------------------ subnet.env


def test_subnet_env_ipv4() -> None:
    env = parse_subnet_env(V4_ENV)
    assert env.networks == ["10.1.0.0/16"]
    assert env.subnet == "10.1.17.0/24"
    assert env.ipv6_networks == []
    assert env.ipv6_subnet is None
    assert env.mtu == 1472
    assert env.ipmasq is True
    assert env.missing() == []


def test_subnet_env_ipv6_and_dual() -> None:
    env = parse_subnet_env(V6_ENV)
    assert env.ipv6_networks == ["fc00::/48"]
    assert env.ipv6_subnet == "fc00::/64"
    assert env.networks == [] and env.subnet is None
    dual = parse_subnet_env(DUAL_ENV)
    assert (dual.networks, dual.subnet) == (["10.1.0.0/16"], "10.1.17.0/24")
    assert (dual.ipv6_networks, dual.ipv6_subnet) == (["fc00::/48"], "fc00::/64")


def test_subnet_env_lists_dedupe_and_keep_order() -> None:
    env = parse_subnet_env(
        "FLANNEL_NETWORK=192.168.0.0/16,10.1.0.0/16,10.1.5.0/16,192.168.0.0/16\n"
    )
    # Host bits are cleared before comparing, as Go's ParseCIDR does.
    assert env.networks == ["192.168.0.0/16", "10.1.0.0/16"]


def test_subnet_env_ignores_unknown_and_blank_and_crlf() -> None:
    env = parse_subnet_env(
        "# comment\n\nFOO=bar\nFLANNEL_MTU=1450\r\nFLANNEL_IPMASQ=false\nnoequals\n"
    )
    assert env.mtu == 1450
    assert env.ipmasq is False


@pytest.mark.parametrize("value", ["TRUE", "True", "1", "yes", "", "true "])
def test_ipmasq_true_only_for_exact_true(value: str) -> None:
    assert parse_subnet_env(f"FLANNEL_IPMASQ={value}\n").ipmasq is False


def test_missing_message_lists_everything_in_flannels_order() -> None:
    assert parse_subnet_env("foo=bar").missing() == [
        "FLANNEL_NETWORK",
        "FLANNEL_IPV6_NETWORK",
        "FLANNEL_SUBNET",
        "FLANNEL_IPV6_SUBNET",
        "FLANNEL_MTU",
        "FLANNEL_IPMASQ",
    ]
    partial = parse_subnet_env("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_MTU=1450\n")
    assert partial.missing() == ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET", "FLANNEL_IPMASQ"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FLANNEL_SUBNET=10.1.17.1/33\n", "invalid CIDR address: 10.1.17.1/33"),
        ("FLANNEL_NETWORK=10.1.0.0/16,\n", "invalid CIDR address: "),
        ("FLANNEL_MTU=abc\n", 'strconv.ParseUint: parsing "abc": invalid syntax'),
        ("FLANNEL_MTU=-1\n", 'strconv.ParseUint: parsing "-1": invalid syntax'),
        ("FLANNEL_MTU=4294967296\n", 'strconv.ParseUint: parsing "4294967296": value out of range'),
        ("FLANNEL_MTU\n", 'line "FLANNEL_MTU" has no "=" and no value'),
    ],
)
def test_subnet_env_bad_values(text: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_subnet_env(text)
    assert str(excinfo.value) == message


def test_read_subnet_env_missing_file_is_try_again_later(tmp_path: Any) -> None:
    path = tmp_path / "subnet.env"
    with pytest.raises(CniError) as excinfo:
        read_subnet_env(str(path))
    assert excinfo.value.code == 11
    assert excinfo.value.msg == f"flanneld is not running or not ready on this node: {path} missing"


def test_read_subnet_env_incomplete_and_malformed(tmp_path: Any) -> None:
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\n")
    with pytest.raises(CniError) as excinfo:
        read_subnet_env(str(path))
    assert excinfo.value.code == 999
    assert excinfo.value.msg == (
        f"failed to load flannel 'subnet.env' file: {path} is missing FLANNEL_SUBNET,"
        " FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ. Check the flannel pod log for this node."
    )
    path.write_text("FLANNEL_SUBNET=10.244.1.1/33\n")
    with pytest.raises(CniError) as excinfo:
        read_subnet_env(str(path))
    assert excinfo.value.msg == (
        "failed to load flannel 'subnet.env' file: invalid CIDR address: 10.244.1.1/33."
        " Check the flannel pod log for this node."
    )


def test_read_subnet_env_unreadable(tmp_path: Any) -> None:
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_MTU=1\n")
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("root reads any file")
    with pytest.raises(CniError) as excinfo:
        read_subnet_env(str(path))
    assert excinfo.value.code == 999
    assert excinfo.value.msg.startswith(f"failed to load flannel 'subnet.env' file: open {path}:")


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("dir", "is a directory"),
        ("/dev/zero", "is a character device"),
        ("fifo", "is a FIFO"),
        ("huge", "is larger than 65536 bytes"),
    ],
)
def test_read_subnet_env_only_reads_a_small_regular_file(
    tmp_path: Any, kind: str, what: str
) -> None:
    """Issue 14: /dev/zero filled memory, a FIFO blocked the plugin forever."""
    path = {"dir": str(tmp_path), "/dev/zero": "/dev/zero"}.get(kind, str(tmp_path / "x.env"))
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        Path(path).write_text("FLANNEL_MTU=1450\n" * 5000)
    with pytest.raises(CniError) as excinfo:
        read_subnet_env(path)
    assert excinfo.value.code == 999
    assert excinfo.value.msg.startswith(f"failed to load flannel 'subnet.env' file: {path} {what};")
    assert '"subnetFile" must name the subnet.env' in excinfo.value.msg


def test_reads_what_pyflanneld_writes() -> None:
    # The writer side lives in pyflannel; both sides must agree on the format.
    from pyflannel.subnet.subnet_env import render_subnet_env, subnet_env_for

    text = render_subnet_env(
        subnet_env_for(
            network=ipaddress.IPv4Network("10.244.0.0/16"),
            lease_subnet=ipaddress.IPv4Network("10.244.7.0/24"),
            mtu=1450,
            ipmasq=True,
            ipv6_network=ipaddress.IPv6Network("fd00:10:244::/56"),
            ipv6_lease_subnet=ipaddress.IPv6Network("fd00:10:244:7::/64"),
        )
    )
    env = parse_subnet_env(text)
    assert env.missing() == []
    assert (env.networks, env.subnet) == (["10.244.0.0/16"], "10.244.7.0/24")
    assert (env.ipv6_networks, env.ipv6_subnet) == (["fd00:10:244::/56"], "fd00:10:244:7::/64")
    assert (env.mtu, env.ipmasq) == (1450, True)


# --------------------------------------------------------------------------- network config


def test_config_defaults() -> None:
    conf = parse_flannel_conf({"name": "cni-flannel", "type": "flannel"})
    assert conf.subnet_file == DEFAULT_SUBNET_FILE == "/run/flannel/subnet.env"
    assert conf.data_dir == DEFAULT_DATA_DIR == "/var/lib/cni/flannel"
    assert conf.delegate is None and conf.ipam is None and conf.runtime_config is None
    assert delegate_type(conf) == "bridge"
    given_paths = parse_flannel_conf({"name": "n", "subnetFile": "/x/s.env", "dataDir": "/x/d"})
    assert (given_paths.subnet_file, given_paths.data_dir) == ("/x/s.env", "/x/d")
    nulls = parse_flannel_conf({"name": "n", "subnetFile": None, "dataDir": None, "ipam": None})
    assert (nulls.subnet_file, nulls.data_dir, nulls.ipam) == (
        DEFAULT_SUBNET_FILE,
        DEFAULT_DATA_DIR,
        None,
    )


def test_upstream_expected_delegate_ipv4() -> None:
    # flannel_linux_test.go: input without cniVersion, IPMASQ true → ipMasq false.
    got = delegate_for({"name": "cni-flannel", "type": "flannel"}, V4_ENV)
    assert got == json.loads(
        '{"ipMasq":false,"ipam":{"routes":[{"dst":"10.1.0.0/16"}],'
        '"ranges":[[{"subnet":"10.1.17.0/24"}]],"type":"host-local"},'
        '"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}'
    )
    assert "cniVersion" not in got


def test_upstream_expected_delegate_ipv6_dual_and_two_networks() -> None:
    v6 = delegate_for({"name": "cni-flannel"}, V6_ENV)
    assert v6["ipam"]["ranges"] == [[{"subnet": "fc00::/64"}]]
    assert v6["ipam"]["routes"] == [{"dst": "fc00::/48"}]
    dual = delegate_for({"name": "cni-flannel"}, DUAL_ENV)
    assert dual["ipam"]["ranges"] == [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]
    assert dual["ipam"]["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}]
    two = delegate_for({"name": "cni-flannel"}, TWO_NETS_ENV)
    assert two["ipam"]["ranges"] == [[{"subnet": "10.1.17.0/24"}]]
    assert two["ipam"]["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}]


def test_scratch_file_bytes_as_the_real_plugin_wrote_them() -> None:
    # cni-spec §3.8: the seed's conflist entry, subnet 10.244.1.1/24, MTU 1450, IPMASQ true.
    conf = {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": "/s/run-flannel/subnet.env",
        "dataDir": "/s/flannel-data",
        "ipam": {"dataDir": "/s/ipam"},
        "delegate": {"hairpinMode": True, "isDefaultGateway": True},
    }
    env = (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    assert dumps(delegate_for(conf, env)) == (
        '{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{"dataDir":"/s/ipam",'
        '"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],'
        '"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,'
        '"name":"cbr0","type":"bridge"}'
    )


def test_scratch_file_bytes_dual_stack_runtime_config_user_routes() -> None:
    # cni-spec §3.8, second run: dual stack, IPMASQ false, runtimeConfig, a user ipam route.
    conf = {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "ipam": {"dataDir": "/s/ipam", "routes": [{"dst": "10.96.0.0/12"}]},
        "delegate": {"hairpinMode": True, "isDefaultGateway": True},
        "runtimeConfig": {
            "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]
        },
    }
    env = (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )
    assert dumps(delegate_for(conf, env)) == (
        '{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":true,"ipam":{"dataDir":"/s/ipam",'
        '"ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]],'
        '"routes":[{"dst":"10.96.0.0/12"},{"dst":"10.244.0.0/16"},{"dst":"fd00:10:244::/56"}],'
        '"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,'
        '"name":"cbr0","runtimeConfig":{"portMappings":[{"containerPort":80,"hostPort":18080,'
        '"protocol":"tcp"}]},"type":"bridge"}'
    )


@pytest.mark.parametrize(("env", "nets"), [(V4_ENV, ["10.1.0.0/16"]), (V6_ENV, ["fc00::/48"])])
def test_user_ipam_keeps_keys_and_routes_first(env: str, nets: list[str]) -> None:
    ipam_in = {"type": "my-ipam", "unknown-param": "unknown-value", "routes": UPSTREAM_USER_ROUTES}
    ipam = build_ipam(parse_flannel_conf({"name": "n", "ipam": ipam_in}), parse_subnet_env(env))
    assert ipam["type"] == "my-ipam"
    assert ipam["unknown-param"] == "unknown-value"
    assert ipam["routes"] == [*UPSTREAM_USER_ROUTES, *({"dst": n} for n in nets)]
    assert ipam_in["routes"] == UPSTREAM_USER_ROUTES  # the caller's object is not modified


def test_user_ipam_type_defaults_and_ranges_replaced() -> None:
    ipam_in = {"routes": UPSTREAM_USER_ROUTES, "ranges": [[{"subnet": "10.9.0.0/24"}]]}
    ipam = build_ipam(
        parse_flannel_conf({"name": "n", "ipam": ipam_in}), parse_subnet_env(DUAL_ENV)
    )
    assert ipam["type"] == "host-local"
    assert ipam["ranges"] == [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]
    assert ipam["routes"][-2:] == [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}]


def test_delegate_keys_given_by_the_user_win() -> None:
    conf = {
        "name": "n",
        "cniVersion": "0.3.1",
        "delegate": {"ipMasq": True, "mtu": 1400, "isGateway": False, "cniVersion": "9", "x": 1},
    }
    got = delegate_for(conf, V4_ENV)
    assert (got["ipMasq"], got["mtu"], got["isGateway"], got["x"]) == (True, 1400, False, 1)
    assert got["cniVersion"] == "0.3.1"  # flannel's own version overrides the delegate's


def test_non_bridge_delegate_gets_no_is_gateway() -> None:
    got = delegate_for({"name": "n", "delegate": {"type": "ptp"}}, V4_ENV)
    assert got["type"] == "ptp" and "isGateway" not in got
    assert got["ipMasq"] is False and got["mtu"] == 1472


def test_runtime_config_replaces_the_delegates() -> None:
    conf = {"name": "n", "runtimeConfig": {"a": 1}, "delegate": {"runtimeConfig": {"b": 2}}}
    assert delegate_for(conf, V4_ENV)["runtimeConfig"] == {"a": 1}
    kept = delegate_for({"name": "n", "delegate": {"runtimeConfig": {"b": 2}}}, V4_ENV)
    assert kept["runtimeConfig"] == {"b": 2}


def test_empty_cni_version_is_not_copied() -> None:
    got = delegate_for({"name": "n", "cniVersion": "", "delegate": {"cniVersion": "0.4.0"}}, V4_ENV)
    assert got["cniVersion"] == "0.4.0"


def test_build_delegate_does_not_modify_the_config() -> None:
    raw = {"name": "n", "delegate": {"hairpinMode": True}, "ipam": {"dataDir": "/d"}}
    before = json.dumps(raw, sort_keys=True)
    delegate_for(raw, V4_ENV)
    assert json.dumps(raw, sort_keys=True) == before


@pytest.mark.parametrize(
    ("delegate", "message"),
    [
        ({"type": 1}, "'delegate' dictionary, if present, must have (string) 'type' field"),
        (
            {"name": "x"},
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
        ),
        ({"ipam": {}}, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"),
    ],
)
def test_delegate_literal_errors(delegate: dict[str, Any], message: str) -> None:
    with pytest.raises(CniError) as excinfo:
        parse_flannel_conf({"name": "n", "delegate": delegate})
    assert (excinfo.value.code, excinfo.value.msg) == (7, message)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"delegate": "bridge"}, '"delegate" must be a JSON object, got string "bridge"'),
        ({"ipam": []}, '"ipam" must be a JSON object, got array []'),
        ({"subnetFile": 5}, '"subnetFile" must be a string, got number 5'),
        ({"dataDir": True}, '"dataDir" must be a string, got bool true'),
    ],
)
def test_config_type_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(CniError) as excinfo:
        parse_flannel_conf({"name": "n", **raw})
    assert (excinfo.value.code, excinfo.value.msg) == (
        7,
        f"failed to load flannel netconf: {message}",
    )


@pytest.mark.parametrize(
    ("routes", "tail"),
    [
        ("10.0.0.0/8", "expected an array of routes, got string"),
        (["10.0.0.0/8"], "expected a route object, got string"),
        ([{"dst": "10.0.0.0/33"}], "invalid CIDR address: 10.0.0.0/33"),
        ([{"gw": "10.0.0.1"}], "invalid CIDR address: None"),
        ([{"dst": "10.0.0.0/8", "gw": "10.0.0.300"}], "invalid IP address: 10.0.0.300"),
    ],
)
def test_bad_user_routes(routes: Any, tail: str) -> None:
    conf = parse_flannel_conf({"name": "n", "ipam": {"routes": routes}})
    with pytest.raises(CniError) as excinfo:
        build_ipam(conf, parse_subnet_env(V4_ENV))
    assert excinfo.value.code == 7
    assert excinfo.value.msg == (
        "failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse"
        f" ipam.routes: {tail}"
    )


def test_subnet_env_object_is_plain() -> None:
    env = SubnetEnv()
    assert env.missing()[:2] == ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
