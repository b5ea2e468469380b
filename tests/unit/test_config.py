"""Network config parsing: defaults, Go encoding/json semantics, flanneld's exact errors."""
# ruff: noqa: E501  (tables of exact upstream messages read best one case per line)

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.config import (
    NetworkConfig,
    UdpOptions,
    VxlanOptions,
    check_network_for_node,
    network_warnings,
    parse_network_config,
    udp_options,
    vxlan_options,
)
from pyflannel.errors import ConfigError


def cfg(**fields: Any) -> NetworkConfig:
    return parse_network_config(json.dumps(fields))


def error_of(raw: str | dict[str, Any]) -> ConfigError:
    text = raw if isinstance(raw, str) else json.dumps(raw)
    with pytest.raises(ConfigError) as info:
        parse_network_config(text)
    assert info.value.hint, "every config error carries a hint"
    return info.value


# --- defaults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "subnet_len", "subnet_min", "subnet_max"),
    [
        ("10.5.0.0/16", 24, "10.5.1.0", "10.5.255.0"),
        ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
        ("10.5.0.0/22", 24, "10.5.1.0", "10.5.3.0"),
        ("10.5.0.0/23", 25, "10.5.0.128", "10.5.1.128"),
        ("10.5.0.0/24", 26, "10.5.0.64", "10.5.0.192"),
        ("10.5.0.0/28", 30, "10.5.0.4", "10.5.0.12"),
        ("255.255.0.0/16", 24, "255.255.1.0", "255.255.255.0"),
    ],
)
def test_ipv4_defaults(network: str, subnet_len: int, subnet_min: str, subnet_max: str) -> None:
    c = cfg(Network=network)
    assert c.network == IPv4Network(network)
    assert c.subnet_len == subnet_len
    assert c.subnet_min == IPv4Address(subnet_min)
    assert c.subnet_max == IPv4Address(subnet_max)


def test_all_plain_defaults() -> None:
    c = cfg(Network="10.5.0.0/16")
    assert c.enable_ipv4 is True
    assert c.enable_ipv6 is False
    assert c.enable_nftables is False
    assert c.ipv6_network is None
    assert c.ipv6_subnet_len == 0
    assert c.ipv6_subnet_min is None
    assert c.ipv6_subnet_max is None
    assert c.backend_type == "vxlan"  # deliberate: flanneld's code would pick udp
    assert c.backend == {}


def test_network_host_bits_are_masked() -> None:
    assert cfg(Network="10.1.2.3/16").network == IPv4Network("10.1.0.0/16")


def test_explicit_subnet_len_and_range() -> None:
    c = cfg(Network="10.5.0.0/16", SubnetLen=26, SubnetMin="10.5.10.0", SubnetMax="10.5.20.192")
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (
        26,
        IPv4Address("10.5.10.0"),
        IPv4Address("10.5.20.192"),
    )


def test_explicit_zero_values_mean_unset() -> None:
    c = cfg(Network="10.5.0.0/16", SubnetLen=0, SubnetMin="0.0.0.0", SubnetMax="0.0.0.0")
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (
        24,
        IPv4Address("10.5.1.0"),
        IPv4Address("10.5.255.0"),
    )


@pytest.mark.parametrize(
    ("network", "subnet_len", "subnet_min", "subnet_max"),
    [
        ("2001:cafe:42::/56", 64, "2001:cafe:42:1::", "2001:cafe:42:ff::"),
        ("2001:cafe:42::/62", 64, "2001:cafe:42:1::", "2001:cafe:42:3::"),
        ("2001:cafe:42::/63", 65, "2001:cafe:42:0:8000::", "2001:cafe:42:1:8000::"),
        ("fd00::/124", 126, "fd00::4", "fd00::c"),
        ("2001:cafe:42::1/56", 64, "2001:cafe:42:1::", "2001:cafe:42:ff::"),
    ],
)
def test_ipv6_defaults(network: str, subnet_len: int, subnet_min: str, subnet_max: str) -> None:
    c = cfg(EnableIPv6=True, EnableIPv4=False, IPv6Network=network)
    assert c.ipv6_network == IPv6Network(network, strict=False)
    assert c.ipv6_subnet_len == subnet_len
    assert c.ipv6_subnet_min == IPv6Address(subnet_min)
    assert c.ipv6_subnet_max == IPv6Address(subnet_max)
    assert c.network is None
    assert c.subnet_min is None and c.subnet_len == 0  # v4 defaults only when v4 is enabled


def test_dual_stack() -> None:
    c = cfg(Network="10.42.0.0/16", EnableIPv6=True, IPv6Network="2001:cafe:42::/56")
    assert c.enable_ipv4 and c.enable_ipv6
    assert c.subnet_len == 24 and c.ipv6_subnet_len == 64


# --- Go encoding/json semantics ------------------------------------------------------------


def test_keys_are_case_insensitive_and_unknown_keys_ignored() -> None:
    c = parse_network_config(
        '{"network": "10.5.0.0/16", "SUBNETLEN": 26, "enableipv6": false, '
        '"Whatever": [1, 2], "backend": {"TYPE": "Host-GW"}, "BackendType": "udp"}'
    )
    assert c.network == IPv4Network("10.5.0.0/16")
    assert c.subnet_len == 26
    assert c.backend_type == "host-gw"  # BackendType is json:"-" in flanneld: ignored
    assert c.backend == {"TYPE": "Host-GW"}


def test_last_duplicate_key_wins() -> None:
    c = parse_network_config('{"Network": "10.1.0.0/16", "network": "10.2.0.0/16"}')
    assert c.network == IPv4Network("10.2.0.0/16")


def test_null_leaves_plain_fields_at_default() -> None:
    c = parse_network_config(
        '{"Network": "10.5.0.0/16", "EnableIPv4": null, "SubnetLen": null, "IPv6SubnetMin": null}'
    )
    assert c.enable_ipv4 is True and c.subnet_len == 24


def test_bytes_input_and_backend_kept_raw() -> None:
    raw = b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7, "X": {"y": 1.5}}}'
    c = parse_network_config(raw)
    assert c.backend == {"Type": "vxlan", "VNI": 7, "X": {"y": 1.5}}


@pytest.mark.parametrize(
    ("backend", "expected"),
    [({"Type": "vxlan"}, "vxlan"), ({"Type": "VXLAN"}, "vxlan"), ({"type": "udp"}, "udp")],
)
def test_backend_type_lowercased(backend: dict[str, Any], expected: str) -> None:
    assert cfg(Network="10.5.0.0/16", Backend=backend).backend_type == expected


def test_disabled_ipv4_needs_no_network() -> None:
    c = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fd00::/48")
    assert c.enable_ipv4 is False and c.network is None


# --- exact flanneld errors -----------------------------------------------------------------

NET = "10.5.0.0/16"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "please define a correct Network parameter in the flannel config"),
        ({"Network": "0.0.0.0/0"}, "please define a correct Network parameter in the flannel config"),
        ({"Network": NET, "SubnetLen": 31}, "SubnetLen must be less than /31"),
        ({"Network": NET, "SubnetLen": 17}, "network must be able to accommodate at least four subnets"),
        ({"Network": NET, "SubnetLen": 1}, "network must be able to accommodate at least four subnets"),
        ({"Network": "10.5.0.0/29"}, "network is too small. Minimum useful network prefix is /28"),
        ({"Network": "10.5.0.0/32"}, "network is too small. Minimum useful network prefix is /28"),
        ({"Network": NET, "SubnetMin": "10.6.0.0"}, "SubnetMin is not in the range of the Network"),
        ({"Network": NET, "SubnetMax": "10.4.255.0"}, "SubnetMax is not in the range of the Network"),
        ({"Network": NET, "SubnetMin": "10.5.1.1"}, "SubnetMin is not on a SubnetLen boundary: 10.5.1.1"),
        ({"Network": NET, "SubnetMax": "10.5.9.128"}, "SubnetMax is not on a SubnetLen boundary: 10.5.9.128"),
        ({"EnableIPv4": False, "EnableIPv6": False, "Network": NET}, "none defined stack"),
        ({"EnableIPv4": False}, "none defined stack"),
    ],
)  # fmt: skip
def test_ipv4_errors(config: dict[str, Any], message: str) -> None:
    assert error_of(config).message == message


V6 = {"EnableIPv4": False, "EnableIPv6": True}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "please define a correct IPv6Network parameter in the flannel config"),
        ({"IPv6Network": "::/0"}, "please define a correct IPv6Network parameter in the flannel config"),
        ({"IPv6Network": "fd00::/48", "IPv6SubnetLen": 127}, "SubnetLen must be less than /127"),
        ({"IPv6Network": "fd00::/48", "IPv6SubnetLen": 49}, "network must be able to accommodate at least four subnets"),
        ({"IPv6Network": "fd00::/125"}, "IPv6Network is too small. Minimum useful network prefix is /124"),
        ({"IPv6Network": "fd00::/48", "IPv6SubnetMin": "fd01::"}, "IPv6SubnetMin is not in the range of the IPv6Network"),
        ({"IPv6Network": "fd00::/48", "IPv6SubnetMax": "fd01::"}, "IPv6SubnetMax is not in the range of the IPv6Network"),
        ({"IPv6Network": "fd00::/48", "IPv6SubnetMin": "fd00:0:0:1::1"}, "IPv6SubnetMin is not on a SubnetLen boundary: fd00:0:0:1::1"),
        ({"IPv6Network": "fd00::/48", "IPv6SubnetMax": "fd00:0:0:2:8000::"}, "IPv6SubnetMax is not on a SubnetLen boundary: fd00:0:0:2:8000::"),
    ],
)  # fmt: skip
def test_ipv6_errors(config: dict[str, Any], message: str) -> None:
    assert error_of({**V6, **config}).message == message


def test_ipv4_checked_before_ipv6() -> None:
    err = error_of({"EnableIPv6": True})
    assert err.message == "please define a correct Network parameter in the flannel config"


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ({}, "unknown backend type: "),
        (None, "unknown backend type: "),
        ({"Type": ""}, "unknown backend type: "),
        ({"Type": "Bogus"}, "unknown backend type: bogus"),
        ({"Type": "aws-vpc"}, "unknown backend type: aws-vpc"),
        ({"Type": "ipsec"}, "backend type ipsec is not supported by pyflannel"),
        ({"Type": "IPIP"}, "backend type ipip is not supported by pyflannel"),
        ({"Type": "ipsec"}, "backend type ipsec is not supported by pyflannel"),
        ({"Type": "alloc"}, "backend type alloc is not supported by pyflannel"),
        ({"Type": "extension"}, "backend type extension is not supported by pyflannel"),
        ({"Type": "tencent-vpc"}, "backend type tencent-vpc is not supported by pyflannel"),
        (
            "vxlan",
            "error decoding Backend property of config: json: cannot unmarshal string into "
            "Go value of type struct { Type string }",
        ),
        (
            {"Type": 5},
            "error decoding Backend property of config: json: cannot unmarshal number into "
            "Go struct field .Type of type string",
        ),
        # regression: a fraction is kept as its literal text internally, which once passed
        # for a string and reported "unknown backend type: 1.5"
        (
            {"Type": 1.5},
            "error decoding Backend property of config: json: cannot unmarshal number into "
            "Go struct field .Type of type string",
        ),
    ],
)
def test_backend_errors(backend: Any, message: str) -> None:
    err = error_of({"Network": NET, "Backend": backend})
    assert err.message == message
    assert "vxlan" in (err.hint or "")


def test_backend_decode_error_comes_before_network_check() -> None:
    # parseBackendType runs inside ParseConfig, before CheckNetworkConfig.
    assert error_of({"Backend": []}).message.startswith("error decoding Backend property")


def test_unknown_backend_reported_after_network_check() -> None:
    assert error_of({"Backend": {"Type": "nope"}}).message.startswith("please define")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"Network": "10.5.0.0/16",}', "invalid network config: not valid JSON"),
        ("", "invalid network config: not valid JSON"),
        ('{"Network": NaN}', "invalid network config: not valid JSON"),
        ("[1, 2]", "invalid network config: json: cannot unmarshal array into Go value of type subnet.Config"),
        ('"text"', "invalid network config: json: cannot unmarshal string into Go value of type subnet.Config"),
        ('{"SubnetLen": "24"}', "invalid network config: json: cannot unmarshal string into Go struct field Config.SubnetLen of type uint"),
        ('{"SubnetLen": -1}', "invalid network config: json: cannot unmarshal number -1 into Go struct field Config.SubnetLen of type uint"),
        ('{"SubnetLen": 24.0}', "invalid network config: json: cannot unmarshal number 24.0 into Go struct field Config.SubnetLen of type uint"),
        ('{"SubnetLen": 18446744073709551616}', "invalid network config: json: cannot unmarshal number 18446744073709551616 into Go struct field Config.SubnetLen of type uint"),
        ('{"EnableIPv4": "yes"}', "invalid network config: json: cannot unmarshal string into Go struct field Config.EnableIPv4 of type bool"),
        ('{"Network": "10.5.0.0"}', "invalid network config: invalid CIDR address: 10.5.0.0"),
        ('{"Network": "10.5.0.0/255.255.0.0"}', "invalid network config: invalid CIDR address: 10.5.0.0/255.255.0.0"),
        ('{"Network": null}', "invalid network config: invalid CIDR address: null"),
        ('{"Network": 5}', "invalid network config: invalid CIDR address: 5"),
        ('{"Network": "fd00::/48"}', "invalid network config: invalid IPv4 CIDR format"),
        ('{"IPv6Network": "10.0.0.0/8"}', "invalid network config: invalid IPv6 CIDR format: 10.0.0.0/8"),
        ('{"SubnetMin": "nope"}', "invalid network config: invalid IP address format"),
        ('{"SubnetMin": "fd00::1"}', "invalid network config: invalid IPv4 address format"),
        ('{"IPv6SubnetMax": "x"}', "invalid network config: invalid IP address format"),
    ],
)  # fmt: skip
def test_json_errors(raw: str, message: str) -> None:
    assert error_of(raw).message.startswith(message)


def test_first_type_error_reported_after_decoding_rest() -> None:
    # Go keeps decoding after a type mismatch, but an UnmarshalJSON error aborts at once.
    err = error_of('{"SubnetLen": "a", "EnableIPv6": "b"}')
    assert "Config.SubnetLen" in err.message
    err = error_of('{"SubnetLen": "a", "Network": "bad"}')
    assert err.message == "invalid network config: invalid CIDR address: bad"


def test_field_hint_names_the_field() -> None:
    assert '"SubnetLen"' in (error_of('{"SubnetLen": "24"}').hint or "")


def test_ipv4_mapped_subnet_min_is_accepted_like_go() -> None:
    c = cfg(Network=NET, SubnetMin="::ffff:10.5.4.0")
    assert c.subnet_min == IPv4Address("10.5.4.0")


# --- backend options -----------------------------------------------------------------------


def test_vxlan_defaults() -> None:
    assert vxlan_options(cfg(Network=NET)) == VxlanOptions(1, 0, False, False, False, 0)


def test_vxlan_options_case_insensitive() -> None:
    c = cfg(
        Network=NET,
        Backend={
            "Type": "vxlan",
            "vni": 4096,
            "PORT": 4789,
            "gbp": True,
            "directrouting": True,
            "Learning": True,
            "mtu": 1400,
        },
    )
    assert vxlan_options(c) == VxlanOptions(
        vni=4096, port=4789, gbp=True, direct_routing=True, learning=True, mtu=1400
    )


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ({"VNI": "1"}, "error decoding VXLAN backend config: json: cannot unmarshal string into Go struct field VXLANConfig.vni of type int"),
        ({"VNI": 1.5}, "error decoding VXLAN backend config: json: cannot unmarshal number 1.5 into Go struct field VXLANConfig.vni of type int"),
        ({"GBP": 1}, "error decoding VXLAN backend config: json: cannot unmarshal number into Go struct field VXLANConfig.gbp of type bool"),
        ({"DirectRouting": "true"}, "error decoding VXLAN backend config: json: cannot unmarshal string into Go struct field VXLANConfig.directRouting of type bool"),
        ({"VNI": 16777216}, "invalid VXLAN VNI 16777216 in Backend: must be 0..16777215"),
        ({"Port": 70000}, "invalid VXLAN Port 70000 in Backend: must be 0..65535"),
        ({"MTU": -1}, "invalid VXLAN MTU -1 in Backend: must be 0..65535"),
    ],
)  # fmt: skip
def test_vxlan_option_errors(backend: dict[str, Any], message: str) -> None:
    c = cfg(Network=NET, Backend={"Type": "vxlan", **backend})
    with pytest.raises(ConfigError) as info:
        vxlan_options(c)
    assert info.value.message == message
    assert info.value.hint


def test_vxlan_null_option_keeps_default() -> None:
    assert vxlan_options(cfg(Network=NET, Backend={"Type": "vxlan", "VNI": None})).vni == 1


def test_udp_options() -> None:
    assert udp_options(cfg(Network=NET, Backend={"Type": "udp"})) == UdpOptions(8285)
    assert udp_options(cfg(Network=NET, Backend={"Type": "udp", "port": 9000})).port == 9000
    with pytest.raises(ConfigError, match="UDP backend config"):
        udp_options(cfg(Network=NET, Backend={"Type": "udp", "Port": "x"}))
    with pytest.raises(ConfigError, match="invalid UDP Port 0"):
        udp_options(cfg(Network=NET, Backend={"Type": "udp", "Port": 0}))


def test_model_is_frozen() -> None:
    c = cfg(Network=NET)
    with pytest.raises(Exception, match="frozen"):
        c.subnet_len = 25


# --- properties ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

field_names = st.sampled_from(
    [
        "Network",
        "network",
        "SubnetLen",
        "SubnetMin",
        "SubnetMax",
        "EnableIPv4",
        "EnableIPv6",
        "EnableNFTables",
        "IPv6Network",
        "IPv6SubnetLen",
        "IPv6SubnetMin",
        "IPv6SubnetMax",
        "Backend",
        "backend",
    ]
)
field_values = (
    json_values
    | st.sampled_from(["10.5.0.0/16", "10.5.1.0", "fd00::/48", "fd00::", "0.0.0.0/0", "::/0"])
    | st.integers(min_value=0, max_value=130)
    | st.fixed_dictionaries(
        {"Type": st.sampled_from(["vxlan", "udp", "host-gw", "ipip", ""])},
        optional={"VNI": json_values},
    )
)


def _only_config_errors(raw: str | bytes) -> None:
    try:
        result = parse_network_config(raw)
    except ConfigError as err:
        assert err.hint
    else:
        assert isinstance(result, NetworkConfig)
        assert result.enable_ipv4 or result.enable_ipv6
        if result.backend_type == "vxlan":
            try:
                assert isinstance(vxlan_options(result), VxlanOptions)
            except ConfigError as err:
                assert err.hint


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_arbitrary_json_only_raises_config_error(value: Any) -> None:
    _only_config_errors(json.dumps(value))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(field_names, field_values, max_size=8))
def test_config_like_json_only_raises_config_error(doc: dict[str, Any]) -> None:
    _only_config_errors(json.dumps(doc))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60) | st.text(max_size=60))
def test_arbitrary_bytes_only_raise_config_error(raw: str | bytes) -> None:
    _only_config_errors(raw)


def test_deep_nesting_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_network_config("[" * 100_000 + "]" * 100_000)


# --- issue 14: risky Networks ----------------------------------------------------------------


@pytest.mark.parametrize("net", ["127.0.0.0/8", "127.5.0.0/16", "64.0.0.0/2", "0.0.0.0/1"])
def test_network_overlapping_loopback_is_refused_with_a_hint(net: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_network_config(json.dumps({"Network": net}))
    assert "loopback" in str(excinfo.value) and excinfo.value.hint


def test_ipv6_network_containing_loopback_is_refused() -> None:
    doc = {"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "::/112"}
    with pytest.raises(ConfigError, match="loopback"):
        parse_network_config(json.dumps(doc))


@pytest.mark.parametrize(
    ("doc", "count"),
    [
        ({"Network": "169.254.0.0/16"}, 1),
        ({"Network": "169.254.128.0/20"}, 1),
        ({"Network": "10.5.0.0/16"}, 0),
        ({"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fe80::/56"}, 1),
    ],
)
def test_link_local_network_is_a_warning(doc: dict[str, Any], count: int) -> None:
    warnings = network_warnings(parse_network_config(json.dumps(doc)))
    assert len(warnings) == count
    assert all("link-local" in w and "10.5.0.0/16" in w for w in warnings)


def test_network_containing_the_node_underlay_address_is_refused() -> None:
    """Issue 14 probe: Network 203.0.113.0/24 gave the node 203.0.113.224/28."""
    cfg = parse_network_config('{"Network": "203.0.113.0/24", "SubnetLen": 28}')
    with pytest.raises(ConfigError) as excinfo:
        check_network_for_node(cfg, [IPv4Address("203.0.113.7"), None])
    assert "underlay address 203.0.113.7" in str(excinfo.value) and excinfo.value.hint
    check_network_for_node(cfg, [IPv4Address("198.51.100.7"), IPv6Address("2001:db8::7")])


@pytest.mark.parametrize(
    ("fields", "message", "hint_words"),
    [
        (
            {"Network": "10.5.0.0/16", "SubnetLen": 31},
            "SubnetLen must be less than /31",
            "between 18 and 30",
        ),
        (
            {"EnableIPv6": True, "IPv6Network": "fd00::/48", "IPv6SubnetLen": 127},
            "SubnetLen must be less than /127",
            "IPv6SubnetLen between 50 and 126",
        ),
        (
            {"Network": "10.5.0.0/16", "SubnetLen": 17},
            "network must be able to accommodate at least four subnets",
            "SubnetLen to at least 18 for Network 10.5.0.0/16",
        ),
        (
            {"EnableIPv6": True, "IPv6Network": "fd00::/48", "IPv6SubnetLen": 49},
            "network must be able to accommodate at least four subnets",
            "IPv6SubnetLen to at least 50 for IPv6Network fd00::/48",
        ),
        (
            {"Network": "10.5.0.0/29"},
            "network is too small. Minimum useful network prefix is /28",
            "use a Network with a prefix of /28",
        ),
        (
            {"EnableIPv6": True, "IPv6Network": "fd00::/125"},
            "IPv6Network is too small. Minimum useful network prefix is /124",
            "use an IPv6Network with a prefix of /124",
        ),
        (
            {"Network": "127.0.0.0/16"},
            "Network 127.0.0.0/16 overlaps the loopback range 127.0.0.0/8",
            "private range",
        ),
        (
            {"EnableIPv6": True, "IPv6Network": "::/127"},
            "IPv6Network ::/127 contains the loopback address ::1",
            "unique-local",
        ),
    ],
)
def test_both_stacks_are_checked_by_one_rule_set_with_their_own_names(
    fields: dict[str, Any], message: str, hint_words: str
) -> None:
    if fields.get("EnableIPv6"):
        fields = {"EnableIPv4": False, **fields}
    err = error_of(fields)
    assert err.message == message
    assert hint_words in (err.hint or "")
