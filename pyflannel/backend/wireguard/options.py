"""The wireguard ``Backend`` options, decoded as flanneld's ``json.Unmarshal`` onto defaults.

Keys match case-insensitively (an exact match wins), unknown keys are ignored, ``null`` keeps
the default. ``PersistentKeepaliveInterval`` is a Go ``time.Duration`` multiplied by one second,
so a JSON integer N means N seconds and a string such as ``"25s"`` is refused. ``MTU`` is HEAD's
option (0 or missing: the external interface MTU). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pyflannel.backend.wireguard.keys import KeyError_, decode_key
from pyflannel.errors import ConfigError

__all__ = [
    "DEVICE_NAME",
    "DEVICE_NAME_V6",
    "ENCAP_OVERHEAD",
    "MODES",
    "Mode",
    "WireguardOptions",
    "wireguard_options",
]

Mode = Literal["separate", "auto", "ipv4", "ipv6"]
MODES: Final[tuple[Mode, ...]] = ("separate", "auto", "ipv4", "ipv6")
DEVICE_NAME: Final = "flannel-wg"
DEVICE_NAME_V6: Final = "flannel-wg-v6"
ENCAP_OVERHEAD: Final = 80
"""IP header (20 or 40) + UDP 8 + type 4 + index 4 + nonce 8 + tag 16: flanneld's constant."""

_FIELDS: Final = {
    "PSK": "string",
    "ListenPort": "int",
    "ListenPortV6": "int",
    "MTU": "int",
    "PersistentKeepaliveInterval": "int",
    "Mode": "string",
}


@dataclass(frozen=True, slots=True)
class WireguardOptions:
    """flanneld's defaults: ports 51820/51821, no PSK, keepalive off, Mode separate."""

    psk: bytes | None = None
    listen_port: int = 51820
    listen_port_v6: int = 51821
    keepalive: int = 0
    mode: Mode = "separate"
    mtu: int = 0


def _hint(key: str, wanted: str) -> str:
    return f'set "Backend.{key}" to {wanted}'


def wireguard_options(backend: Mapping[str, Any]) -> WireguardOptions:
    """Decode the ``Backend`` object; ConfigError (one line, what to do) for a bad value."""
    folded = {k.lower(): k for k in _FIELDS}
    got: dict[str, Any] = {}
    exact: set[str] = set()
    for key, value in backend.items():
        name = key if key in _FIELDS else folded.get(key.lower())
        if name is None or value is None:
            continue
        if name in exact and key != name:
            continue  # Go prefers the exact match
        if key == name:
            exact.add(name)
        kind = _FIELDS[name]
        if kind == "string" and not isinstance(value, str):
            raise ConfigError(
                f"error decoding backend config: {name} must be a string, got {value!r}",
                hint=_hint(key, "a string"),
            )
        if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            hint = "a whole number of seconds" if "Keepalive" in name else "a whole number"
            raise ConfigError(
                f"error decoding backend config: {name} must be a number, got {value!r}",
                hint=_hint(key, hint),
            )
        got[name] = value
    psk: bytes | None = None
    if got.get("PSK"):
        try:
            psk = decode_key(got["PSK"])
        except KeyError_ as exc:
            raise ConfigError(
                f"could not parse psk: {exc}", hint=_hint("PSK", "the output of `wg genpsk`")
            ) from None
    mode = got.get("Mode", "separate")
    if mode not in MODES:
        raise ConfigError(
            f"no valid Mode configured: {mode!r}",
            hint=_hint("Mode", "one of " + ", ".join(MODES)),
        )
    opts = WireguardOptions(
        psk=psk,
        listen_port=got.get("ListenPort", 51820),
        listen_port_v6=got.get("ListenPortV6", 51821),
        keepalive=got.get("PersistentKeepaliveInterval", 0),
        mode=mode,
        mtu=got.get("MTU", 0),
    )
    for name, value, lo in (
        ("ListenPort", opts.listen_port, 0),
        ("ListenPortV6", opts.listen_port_v6, 0),
        ("MTU", opts.mtu, 0),
    ):
        if not lo <= value <= 65535:
            raise ConfigError(
                f"invalid wireguard {name} {value} in Backend: must be 0..65535",
                hint=_hint(name, "a number in 0..65535"),
            )
    if not 0 <= opts.keepalive <= 65535:
        raise ConfigError(
            f"invalid wireguard PersistentKeepaliveInterval {opts.keepalive}: must be 0..65535 s",
            hint=_hint("PersistentKeepaliveInterval", "e.g. 25 (seconds), or 0 to disable"),
        )
    return opts
