"""WireGuard keys: Curve25519 (RFC 7748) key pairs and flanneld's private-key file.

flanneld keeps the private key in ``/run/flannel/wgkey`` (or ``$WIREGUARD_KEY_FILE``): standard
base64 of the 32 bytes, 44 characters, no trailing newline, mode 0400, parent directories 0755.
The key is generated only when the file is missing, so it survives daemon restarts. We read and
write exactly that file; our mode is 0600 (owner read/write, so that an operator's ``cp`` over
it works; flanneld's 0400 reads the same).

X25519 is implemented here with the stdlib (a Montgomery ladder over Python integers): deriving
one public key costs well under a millisecond-scale budget at start-up and needs no new
dependency. Pure except :func:`load_or_create_private_key`.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Final

from pyflannel.errors import ConfigError

__all__ = [
    "DEFAULT_KEY_FILE",
    "KEY_FILE_ENV",
    "KEY_LEN",
    "KeyError_",
    "clamp",
    "decode_key",
    "encode_key",
    "generate_private_key",
    "key_file_path",
    "load_or_create_private_key",
    "public_key",
    "x25519",
]

KEY_LEN: Final = 32
DEFAULT_KEY_FILE: Final = Path("/run/flannel/wgkey")
KEY_FILE_ENV: Final = "WIREGUARD_KEY_FILE"

_P: Final = 2**255 - 19
_A24: Final = 121665
_BASE_POINT: Final = (9).to_bytes(32, "little")


class KeyError_(ValueError):
    """A string that is not a WireGuard key (44-char base64 of 32 bytes)."""


def encode_key(key: bytes) -> str:
    """The standard base64 form (44 characters) ``wg`` and flanneld use."""
    if len(key) != KEY_LEN:
        raise KeyError_(f"a WireGuard key has {KEY_LEN} bytes, got {len(key)}")
    return base64.b64encode(key).decode("ascii")


def decode_key(text: object) -> bytes:
    """Parse a base64 WireGuard key as wgtypes.ParseKey does; KeyError_ says why not."""
    if not isinstance(text, str):
        raise KeyError_(f"a WireGuard key must be a base64 string, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise KeyError_(f"{_short(text)} is not valid base64") from None
    if len(raw) != KEY_LEN:
        raise KeyError_(f"{_short(text)} decodes to {len(raw)} bytes, a key has {KEY_LEN}")
    return raw


def _short(text: str) -> str:
    return repr(text) if len(text) <= 50 else repr(text[:47] + "...")


def clamp(scalar: bytes) -> bytes:
    """RFC 7748 clamping, as ``wg genkey`` applies to a new private key."""
    b = bytearray(scalar)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def x25519(scalar: bytes, u: bytes) -> bytes:
    """The X25519 function of RFC 7748 §5 (constant time is not needed: this key is ours and
    is only used once at start-up)."""
    k = int.from_bytes(clamp(scalar), "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in reversed(range(255)):
        kt = (k >> t) & 1
        swap ^= kt
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = kt
        a = (x2 + z2) % _P
        aa = a * a % _P
        b = (x2 - z2) % _P
        bb = b * b % _P
        e = (aa - bb) % _P
        c = (x3 + z3) % _P
        d = (x3 - z3) % _P
        da = d * a % _P
        cb = c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def public_key(private: bytes) -> bytes:
    """The public key of ``private`` (what ``wg pubkey`` prints, decoded)."""
    return x25519(private, _BASE_POINT)


def generate_private_key() -> bytes:
    """A new clamped private key (``wg genkey``; wgtypes.GeneratePrivateKey)."""
    return clamp(os.urandom(KEY_LEN))


def key_file_path(env: dict[str, str] | None = None) -> Path:
    """``$WIREGUARD_KEY_FILE`` if set, else ``/run/flannel/wgkey`` (flanneld's choice)."""
    environ = os.environ if env is None else env
    value = environ.get(KEY_FILE_ENV, "")
    return Path(value) if value else DEFAULT_KEY_FILE


def load_or_create_private_key(path: Path) -> tuple[bytes, bool]:
    """Read our private key from ``path``, or create it there if the file is missing.

    Returns ``(key, created)``. A file that exists but holds no key is an error (flanneld's
    "could not parse private key from file"): regenerating would silently change our identity
    on every peer, so the operator decides.
    """
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        key = generate_private_key()
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, encode_key(key).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return key, True
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"could not read the WireGuard private key file {path}: {exc}",
            hint=f"fix its permissions, or delete it to generate a new key (set {KEY_FILE_ENV} "
            "to use another file)",
        ) from exc
    try:
        return decode_key(text.strip()), False
    except KeyError_ as exc:
        raise ConfigError(
            f"could not parse private key from file {path}: {exc}",
            hint="put a key from `wg genkey` there, or delete the file to generate a new one",
        ) from None
