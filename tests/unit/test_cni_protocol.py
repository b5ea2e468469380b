"""The CNI wire protocol bits of the plugin: JSON, error objects, versions, CNI_* variables."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni_plugin.protocol import (
    SUPPORTED_VERSIONS,
    CniError,
    check_config_version,
    dumps,
    error_document,
    loads,
    quote,
    read_cmd_args,
    valid_container_id,
    validate_ifname,
    version_at_least,
    version_document,
)

FULL_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "cid-1",
    "CNI_NETNS": "/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/usr/lib/cni",
}

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_leaves,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
    max_leaves=20,
)
GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


# ------------------------------------------------------------------------------------ JSON


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_dumps_loads_round_trip_and_sorted(value: Any) -> None:
    text = dumps(value)
    assert loads(text) == value
    assert loads(text.encode()) == value
    assert json.loads(text) == value
    python = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in GO_ESCAPES.items():
        python = python.replace(raw, escaped)
    assert text == python


def test_dumps_is_go_style() -> None:
    assert dumps({"b": 1, "a": {"d": [True, None], "c": "é<&>\u2028"}}) == (
        '{"a":{"c":"é\\u003c\\u0026\\u003e\\u2028","d":[true,null]},"b":1}'
    )
    assert quote('a"b\\c\n\x01') == '"a\\"b\\\\c\\n\\u0001"'
    assert quote("\udcff") == '"\ufffd"'  # a surrogate-escaped byte becomes U+FFFD


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unexpected end of JSON input"),
        ("   \n", "unexpected end of JSON input"),
        ('{"a": 1', "Expecting ',' delimiter: line 1 column 8 (char 7)"),
        ("[1] x", "Extra data: line 1 column 5 (char 4)"),
        ("NaN", "invalid character 'N' looking for beginning of value"),
        ('{"a": -Infinity}', "invalid character '-' looking for beginning of value"),
        ('"\x01"', "Invalid control character at: line 1 column 2 (char 1)"),
        ("\ufeff{}", "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)"),
    ],
)
def test_loads_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        loads(text)
    assert str(excinfo.value) == message


def test_loads_deep_nesting_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        loads("[" * 100_000)


def test_loads_invalid_utf8_becomes_replacement_char() -> None:
    assert loads(b'{"name": "a\xffb"}') == {"name": "a\ufffdb"}


def test_error_document_exact_text() -> None:
    # cni-spec §3.6, the Go skel's exact output.
    assert error_document(7, "missing network name") == (
        '{\n    "code": 7,\n    "msg": "missing network name"\n}'
    )
    assert error_document(1, "incompatible CNI versions", 'config is "1.1.0"') == (
        '{\n    "code": 1,\n    "msg": "incompatible CNI versions",\n'
        '    "details": "config is \\"1.1.0\\""\n}'
    )


# -------------------------------------------------------------------------------- versions


def test_version_document_is_flannels() -> None:
    assert version_document() == (
        '{"cniVersion":"1.1.0","supportedVersions":'
        '["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n'
    )


@pytest.mark.parametrize("version", [*SUPPORTED_VERSIONS, "", None])
def test_supported_versions_pass(version: str | None) -> None:
    assert check_config_version(version) == (version or "")


def test_plugin_release_number_gets_a_helpful_message() -> None:
    with pytest.raises(CniError) as excinfo:
        check_config_version("0.8.5")
    err = excinfo.value
    assert err.code == 1
    assert err.msg.startswith("incompatible CNI versions: ")
    assert "looks like a CNI plugins release number" in err.msg
    assert "0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in err.msg
    assert err.details == (
        'config is "0.8.5", plugin supports'
        ' ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]'
    )


@pytest.mark.parametrize("version", ["9.9.9", "2.0.0", "1.0", "abc", "1.0.0 "])
def test_bogus_versions(version: str) -> None:
    with pytest.raises(CniError) as excinfo:
        check_config_version(version)
    assert excinfo.value.code == 1
    assert f'cniVersion "{version}" is not a CNI spec version' in excinfo.value.msg
    assert "use one of 0.1.0, 0.2.0" in excinfo.value.msg


@pytest.mark.parametrize("version", [1, 1.0, ["1.0.0"], {"v": 1}, True])
def test_non_string_versions(version: object) -> None:
    with pytest.raises(CniError) as excinfo:
        check_config_version(version)
    assert excinfo.value.code == 1
    assert '"cniVersion" must be a string' in excinfo.value.msg


@pytest.mark.parametrize(
    ("version", "minimum", "expected"),
    [
        ("0.4.0", "0.4.0", True),
        ("1.0.0", "0.4.0", True),
        ("0.3.1", "0.4.0", False),
        ("", "0.4.0", False),
        ("1.1.0", "1.1.0", True),
        ("1.0.0", "1.1.0", False),
    ],
)
def test_version_at_least(version: str, minimum: str, expected: bool) -> None:
    assert version_at_least(version, minimum) is expected


# -------------------------------------------------------------------------- CNI_* variables


def test_full_env_is_read() -> None:
    args = read_cmd_args({**FULL_ENV, "CNI_ARGS": "K=V"})
    assert args is not None
    assert (args.command, args.container_id, args.netns, args.ifname, args.path, args.args) == (
        "ADD",
        "cid-1",
        "/run/netns/x",
        "eth0",
        "/usr/lib/cni",
        "K=V",
    )


def test_no_command_means_about() -> None:
    assert read_cmd_args({}) is None
    assert read_cmd_args({"CNI_COMMAND": ""}) is None


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        ("ADD", "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
        ("CHECK", "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
        ("DEL", "CNI_CONTAINERID,CNI_IFNAME,CNI_PATH"),
        ("GC", "CNI_PATH"),
        ("STATUS", "CNI_PATH"),
    ],
)
def test_missing_variables_listed_in_skel_order(command: str, missing: str) -> None:
    with pytest.raises(CniError) as excinfo:
        read_cmd_args({"CNI_COMMAND": command})
    assert (excinfo.value.code, excinfo.value.msg) == (
        4,
        f"required env variables [{missing}] missing",
    )


def test_version_needs_nothing_and_unknown_command_is_rejected() -> None:
    args = read_cmd_args({"CNI_COMMAND": "VERSION"})
    assert args is not None and args.command == "VERSION"
    with pytest.raises(CniError) as excinfo:
        read_cmd_args({**FULL_ENV, "CNI_COMMAND": "FOO"})
    assert (excinfo.value.code, excinfo.value.msg) == (4, "unknown CNI_COMMAND: FOO")


@pytest.mark.parametrize(
    ("cid", "valid"),
    [
        ("abc", True),
        ("A1_b.c-d", True),
        ("0", True),
        ("-bad/id", False),
        ("_x", False),
        (".x", False),
        ("a b", False),
        ("a/b", False),
        ("é", False),
        ("a\n", False),
        ("", False),
    ],
)
def test_container_id_pattern(cid: str, valid: bool) -> None:
    assert valid_container_id(cid) is valid


def test_bad_container_id_message() -> None:
    with pytest.raises(CniError) as excinfo:
        read_cmd_args({**FULL_ENV, "CNI_CONTAINERID": "-bad/id"})
    err = excinfo.value
    assert (err.code, err.msg, err.details) == (4, "invalid characters in containerID", "-bad/id")


def test_container_id_is_checked_before_missing_variables() -> None:
    # As in the skel: validation happens while walking the variables, in order.
    with pytest.raises(CniError) as excinfo:
        read_cmd_args({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "/x"})
    assert excinfo.value.msg == "invalid characters in containerID"


TOO_LONG = ("interface name is too long", "interface name should be less than 16 characters")
BAD_CHARS = ("interface name contains / or : or whitespace characters", "")


@pytest.mark.parametrize(
    ("ifname", "msg", "details"),
    [
        ("x" * 16, *TOO_LONG),
        ("é" * 8, *TOO_LONG),
        (".", "interface name is . or ..", ""),
        ("..", "interface name is . or ..", ""),
        ("eth/0", *BAD_CHARS),
        ("eth:0", *BAD_CHARS),
        ("eth 0", *BAD_CHARS),
        ("eth\u00a00", *BAD_CHARS),
    ],
)
def test_bad_ifnames(ifname: str, msg: str, details: str) -> None:
    with pytest.raises(CniError) as excinfo:
        validate_ifname(ifname)
    assert (excinfo.value.code, excinfo.value.msg, excinfo.value.details) == (4, msg, details)
    with pytest.raises(CniError):
        read_cmd_args({**FULL_ENV, "CNI_IFNAME": ifname})


@pytest.mark.parametrize("ifname", ["eth0", "x" * 15, "net1", "é", "a\x1cb"])
def test_good_ifnames(ifname: str) -> None:
    validate_ifname(ifname)


def test_empty_ifname() -> None:
    with pytest.raises(CniError) as excinfo:
        validate_ifname("")
    assert excinfo.value.msg == "interface name is empty"
