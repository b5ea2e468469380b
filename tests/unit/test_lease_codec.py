"""Wire compatibility of lease keys and values with flanneld (pyflannel.lease + the registry's
skip-with-warning decoding)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from structlog.testing import capture_logs

from pyflannel.lease import (
    Lease,
    LeaseAttrs,
    LeaseDecodeError,
    decode_attrs,
    encode_attrs,
    make_subnet_key,
    parse_subnet_key,
)
from pyflannel.subnet.etcd.client import KeyValue
from pyflannel.subnet.etcd.leases import MAX_LEASE_VALUE_BYTES, decode_lease

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network

# Documentation/reservations.md, verbatim.
DOC_VALUE = (
    '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
)


def test_value_from_flannel_docs_is_read() -> None:
    attrs = decode_attrs(DOC_VALUE)
    assert attrs.public_ip == ipaddress.IPv4Address("192.168.64.3")
    assert attrs.public_ipv6 is None
    assert attrs.backend_type == "vxlan"
    assert attrs.backend_data == {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}
    assert attrs.backend_v6_data is None


def test_our_bytes_equal_flanneld_bytes() -> None:
    # Same attrs as the docs example: encoding must reproduce Go's json.Marshal byte for byte.
    attrs = LeaseAttrs(
        public_ip=ipaddress.IPv4Address("192.168.64.3"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"},
    )
    assert encode_attrs(attrs).encode() == DOC_VALUE.encode()
    assert encode_attrs(decode_attrs(DOC_VALUE)) == DOC_VALUE


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (
            LeaseAttrs(public_ip=ipaddress.IPv4Address("10.0.0.1"), backend_type="host-gw"),
            '{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"host-gw"}',
        ),
        # udp and alloc write no BackendType at all.
        (
            LeaseAttrs(public_ip=ipaddress.IPv4Address("10.0.0.2")),
            '{"PublicIP":"10.0.0.2","PublicIPv6":null}',
        ),
        # Unset PublicIP is Go's zero IP4, "0.0.0.0".
        (LeaseAttrs(), '{"PublicIP":"0.0.0.0","PublicIPv6":null}'),
        (
            LeaseAttrs(
                public_ip=ipaddress.IPv4Address("198.51.100.4"),
                public_ipv6=ipaddress.IPv6Address("2001:DB8:0:0::4"),
                backend_type="vxlan",
                backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"},
                backend_v6_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"},
            ),
            '{"PublicIP":"198.51.100.4","PublicIPv6":"2001:db8::4","BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},'
            '"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}',
        ),
        # extension backend: BackendData is a JSON string; Go escapes <, > and & in it.
        (
            LeaseAttrs(
                public_ip=ipaddress.IPv4Address("10.0.0.3"),
                backend_type="extension",
                backend_data="a<b>&c",
            ),
            '{"PublicIP":"10.0.0.3","PublicIPv6":null,"BackendType":"extension",'
            '"BackendData":"a\\u003cb\\u003e\\u0026c"}',
        ),
    ],
)
def test_encoding_matches_go_json_marshal(attrs: LeaseAttrs, expected: str) -> None:
    assert encode_attrs(attrs) == expected
    assert decode_attrs(expected) == attrs


def test_reader_is_lenient_like_go() -> None:
    # Whitespace, key case and unknown keys do not matter to Go's json.Unmarshal.
    raw = '{ "publicip": "10.1.1.1", "BACKENDTYPE": "vxlan", "Extra": [1, 2], "PublicIPv6": null }'
    attrs = decode_attrs(raw)
    assert attrs.public_ip == ipaddress.IPv4Address("10.1.1.1")
    assert attrs.backend_type == "vxlan"
    assert decode_attrs(b"{}") == LeaseAttrs()


@pytest.mark.parametrize(
    "raw",
    ["not json", "[1,2]", '{"PublicIP": 5}', '{"PublicIP": "300.1.1.1"}', "\xff"],
)
def test_bad_values_are_rejected_naming_the_key(raw: str) -> None:
    with pytest.raises(LeaseDecodeError, match="the-key"):
        decode_attrs(raw, key="the-key")


# --------------------------------------------------------------------------- keys


def test_keys_single_and_dual_stack() -> None:
    assert make_subnet_key("/coreos.com/network", V4("10.5.52.0/24")) == (
        "/coreos.com/network/subnets/10.5.52.0-24"
    )
    dual = make_subnet_key("/coreos.com/network/", V4("10.42.1.0/24"), V6("2001:cafe:42:1::/64"))
    assert dual == "/coreos.com/network/subnets/10.42.1.0-24&2001:cafe:42:1::-64"
    assert parse_subnet_key(dual) == (V4("10.42.1.0/24"), V6("2001:cafe:42:1::/64"))
    v6_only = make_subnet_key("/p", None, V6("2001:cafe:42:1::/64"))
    assert v6_only == "/p/subnets/0.0.0.0-0&2001:cafe:42:1::-64"
    assert parse_subnet_key(v6_only) == (None, V6("2001:cafe:42:1::/64"))


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # Not anchored at the start: anything may precede the address.
        ("/coreos.com/network/subnets/10.5.1.0-24", V4("10.5.1.0/24")),
        ("/coreos.com/network/subnets/junk10.5.1.0-24", V4("10.5.1.0/24")),
        ("/x/subnets/a/b/10.5.1.0-24", V4("10.5.1.0/24")),
        ("10.5.1.0-24", V4("10.5.1.0/24")),
    ],
)
def test_key_regex_quirks_accepted(key: str, expected: V4) -> None:
    assert parse_subnet_key(key)[0] == expected


@pytest.mark.parametrize(
    "key",
    [
        "/p/subnets/10.5.1.0-24x",  # anchored at the end
        "/p/subnets/10.5.1.0_24",
        "/p/subnets/10.5.72x0-24",  # the regex's unescaped dot matches; the address does not parse
        "/p/subnets/300.5.1.0-24",
        "/p/subnets/10.5.1.0-33",
        "/p/subnets/10.5.1.0-24&2001:CAFE::-64",  # upper-case hex is not in the regex
        "/p/subnets/config",
        "",
        # Issue 14: flanneld masks host bits, so this was a second key for 10.5.100.0/24.
        "/p/subnets/10.5.100.5-24",
        "/p/subnets/10.5.1.0-24&2001:cafe::1-64",
    ],
)
def test_key_regex_rejects(key: str) -> None:
    with pytest.raises(LeaseDecodeError):
        parse_subnet_key(key)


# --------------------------------------------------------------------------- registry decoding


def _decode(
    key: bytes, value: bytes, lease_id: int, mod_revision: int, exp: float | None
) -> Lease | None:
    return decode_lease(KeyValue(key, value, lease_id, mod_revision, 0), exp)


def test_registry_decodes_docs_value() -> None:
    key = b"/coreos.com/network/subnets/10.5.52.0-24"
    lease = _decode(key, DOC_VALUE.encode(), 0x1234, 9, 1000.0)
    assert lease is not None
    assert lease.subnet == V4("10.5.52.0/24")
    assert lease.attrs.backend_data == {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}
    assert (lease.etcd_lease_id, lease.mod_revision, lease.expiration) == (0x1234, 9, 1000.0)
    assert not lease.is_reservation
    reservation = _decode(key, DOC_VALUE.encode(), 0, 9, None)
    assert reservation is not None and reservation.is_reservation


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        (b"/coreos.com/network/subnets/10.5.1.0-24", b"{oops", "10.5.1.0-24"),
        (b"/coreos.com/network/subnets/weird", DOC_VALUE.encode(), "weird"),
        (b"/coreos.com/network/subnets/\xff\xfe", DOC_VALUE.encode(), "xff"),
        (
            b"/coreos.com/network/subnets/10.5.2.0-24",
            json.dumps({"PublicIP": "10.0.0.1", "BackendData": "x" * (1 << 20)}).encode(),
            "10.5.2.0-24",
        ),
    ],
)
def test_registry_skips_bad_leases_with_a_warning(key: bytes, value: bytes, needle: str) -> None:
    with capture_logs() as logs:
        assert _decode(key, value, 1, 1, None) is None
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert needle in str(warnings[0]["key"])


def test_value_size_limit_is_generous() -> None:
    # Real values are ~150 bytes; wireguard/extension values stay far below the limit.
    assert MAX_LEASE_VALUE_BYTES >= 16 * 1024


def test_host_bits_message_names_the_key() -> None:
    with pytest.raises(LeaseDecodeError) as excinfo:
        parse_subnet_key("/p/subnets/10.5.100.5-24")
    assert "'/p/subnets/10.5.100.5-24' has host bits set" in str(excinfo.value)


def test_decoded_leases_share_their_repeated_strings() -> None:
    # Memory at 10k peers: the backend type and backend data keys are one string each, not one
    # copy per lease (their values stay per lease).
    raw = (
        '{"PublicIP":"198.51.100.%d","BackendType":"vxlan",'
        '"BackendData":{"VtepMAC":"0a:00:00:00:00:0%d"}}'
    )
    a, b = decode_attrs(raw % (1, 1)), decode_attrs(raw % (2, 2))
    assert a.backend_type is b.backend_type
    assert isinstance(a.backend_data, dict) and isinstance(b.backend_data, dict)
    (key_a,), (key_b,) = a.backend_data.keys(), b.backend_data.keys()
    assert key_a is key_b
    assert a.backend_data != b.backend_data
