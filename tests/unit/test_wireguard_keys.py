"""WireGuard keys: X25519 against RFC 7748's vectors, flanneld's key file (place, format, mode),
and the Backend options' defaults and refusals."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.backend.wireguard.keys import (
    DEFAULT_KEY_FILE,
    KeyError_,
    clamp,
    decode_key,
    encode_key,
    key_file_path,
    load_or_create_private_key,
    public_key,
    x25519,
)
from pyflannel.backend.wireguard.options import WireguardOptions, wireguard_options
from pyflannel.errors import ConfigError


def test_rfc7748_vectors() -> None:
    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert x25519(scalar, u).hex() == (
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    )
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert public_key(alice).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    shared = x25519(alice, public_key(bob))
    assert shared == x25519(bob, public_key(alice))
    assert shared.hex() == "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_diffie_hellman_agrees(a: bytes, b: bytes) -> None:
    assert x25519(a, public_key(b)) == x25519(b, public_key(a))


@given(st.binary(min_size=32, max_size=32))
def test_key_text_round_trip(key: bytes) -> None:
    text = encode_key(key)
    assert len(text) == 44 and decode_key(text) == key


@pytest.mark.parametrize(
    "bad", ["", "abc", "AAAA" * 12, base64.b64encode(bytes(31)).decode(), "!" * 44, 42, None]
)
def test_bad_keys_refused(bad: object) -> None:
    with pytest.raises(KeyError_):
        decode_key(bad)


def test_key_file_created_like_flanneld(tmp_path: Path) -> None:
    path = tmp_path / "run" / "flannel" / "wgkey"
    key, created = load_or_create_private_key(path)
    assert created and key == clamp(key)
    raw = path.read_bytes()
    assert raw == base64.b64encode(key) and len(raw) == 44  # no newline
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o755
    again, created = load_or_create_private_key(path)
    assert again == key and not created  # kept across restarts


def test_key_file_written_by_wg_genkey_is_read(tmp_path: Path) -> None:
    path = tmp_path / "wgkey"
    key = bytes(range(32))
    path.write_text(encode_key(key) + "\n")  # `wg genkey > file` adds a newline
    assert load_or_create_private_key(path) == (key, False)


def test_corrupt_key_file_is_an_error_not_a_new_identity(tmp_path: Path) -> None:
    path = tmp_path / "wgkey"
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="could not parse private key from file"):
        load_or_create_private_key(path)
    assert path.read_text() == "not a key"


def test_key_file_path_env() -> None:
    assert key_file_path({}) == DEFAULT_KEY_FILE == Path("/run/flannel/wgkey")
    assert key_file_path({"WIREGUARD_KEY_FILE": "/etc/k"}) == Path("/etc/k")


def test_options_defaults_and_go_decoding() -> None:
    assert wireguard_options({"Type": "wireguard"}) == WireguardOptions()
    psk = base64.b64encode(bytes(32)).decode()
    opts = wireguard_options(
        {
            "listenport": 1000,
            "ListenPortV6": 1001,
            "psk": psk,
            "Mode": "auto",
            "PersistentKeepaliveInterval": 25,
            "MTU": 1400,
            "Unknown": "ignored",
        }
    )
    assert opts == WireguardOptions(bytes(32), 1000, 1001, 25, "auto", 1400)


@pytest.mark.parametrize(
    ("backend", "match"),
    [
        ({"Mode": "both"}, "no valid Mode configured"),
        ({"PSK": "short"}, "could not parse psk"),
        ({"PersistentKeepaliveInterval": "25s"}, "must be a number"),
        ({"ListenPort": 70000}, "0..65535"),
        ({"ListenPort": True}, "must be a number"),
    ],
)
def test_options_refused(backend: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        wireguard_options(backend)
