"""The WireGuard cross-platform UAPI: the text protocol ``wg`` speaks to ``wireguard-go`` over
``/var/run/wireguard/<dev>.sock`` (https://www.wireguard.com/xplatform/).

A request is ``get=1\\n\\n`` or ``set=1\\n`` + ``key=value`` lines + ``\\n``; the answer of a get
is ``key=value`` lines, and every answer ends with ``errno=N\\n\\n``. Keys are lower-case hex.
A ``public_key=`` line starts a peer section; the lines after it belong to that peer.

:func:`parse_device` / :func:`serialise_set` are pure (property-tested);
:class:`UapiClient` is the stdlib unix-socket client.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pyflannel.errors import FlannelError
from pyflannel.netlink.ops import IPNetwork

__all__ = [
    "SOCKET_DIR",
    "DeviceState",
    "PeerSet",
    "PeerState",
    "SetDevice",
    "UapiClient",
    "UapiError",
    "parse_device",
    "parse_endpoint",
    "request_socket",
    "serialise_set",
    "socket_path",
]

SOCKET_DIR: Final = Path("/var/run/wireguard")
_MAX_ANSWER: Final = 16 << 20


class UapiError(FlannelError):
    """The device's UAPI socket is missing, refused, or answered with an error."""

    def __init__(self, message: str, *, errno: int = 0, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno


def socket_path(device: str, directory: Path = SOCKET_DIR) -> Path:
    """Where wireguard-go listens for ``device``."""
    return directory / f"{device}.sock"


Endpoint = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


@dataclass(frozen=True, slots=True)
class PeerState:
    """One peer as the device reports it."""

    public_key: bytes
    preshared_key: bytes = bytes(32)
    endpoint: Endpoint | None = None
    keepalive: int = 0
    allowed_ips: tuple[IPNetwork, ...] = ()
    last_handshake: float = 0.0  # seconds since the epoch; 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True, slots=True)
class DeviceState:
    """The answer of a ``get``: the device and its peers (in the device's order)."""

    private_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: tuple[PeerState, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerSet:
    """One peer section of a ``set``: create/update ``public_key``, or ``remove`` it.

    ``allowed_ips`` replaces the peer's list (``replace_allowed_ips=true``), as flanneld does.
    ``preshared_key`` None leaves the key unset (all-zero: none).
    """

    public_key: bytes
    remove: bool = False
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    keepalive: int = 0
    allowed_ips: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class SetDevice:
    """A ``set`` request. ``replace_peers`` removes every peer not listed (a full sync)."""

    private_key: bytes | None = None
    listen_port: int | None = None
    replace_peers: bool = False
    peers: tuple[PeerSet, ...] = field(default=())


def format_endpoint(ep: Endpoint) -> str:
    """``1.2.3.4:51820`` or ``[2001:db8::1]:51820``."""
    ip, port = ep
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def parse_endpoint(text: str) -> Endpoint:
    """The inverse of :func:`format_endpoint`; ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"endpoint {text!r} has no port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1].split("%", 1)[0]
    p = int(port)
    if not 0 <= p <= 65535:
        raise ValueError(f"endpoint port {p} out of range")
    return ipaddress.ip_address(host), p


def serialise_set(req: SetDevice) -> bytes:
    """The ``set=1`` request for ``req``, terminated by the empty line."""
    lines = ["set=1"]
    if req.private_key is not None:
        lines.append(f"private_key={req.private_key.hex()}")
    if req.listen_port is not None:
        lines.append(f"listen_port={req.listen_port}")
    if req.replace_peers:
        lines.append("replace_peers=true")
    for p in req.peers:
        lines.append(f"public_key={p.public_key.hex()}")
        if p.remove:
            lines.append("remove=true")
            continue
        lines.append(f"preshared_key={(p.preshared_key or bytes(32)).hex()}")
        if p.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(p.endpoint)}")
        lines.append(f"persistent_keepalive_interval={p.keepalive}")
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={net}" for net in p.allowed_ips)
    return ("\n".join(lines) + "\n\n").encode("ascii")


def _hex_key(value: str, what: str) -> bytes:
    raw = bytes.fromhex(value)
    if len(raw) != 32:
        raise ValueError(f"{what} has {len(raw)} bytes")
    return raw


def _private_key(value: str) -> bytes:
    return _hex_key(value, "private_key")


def _preshared_key(value: str) -> bytes:
    return _hex_key(value, "preshared_key")


# UAPI key → (field of DeviceState / PeerState, parser) for the keys that set one field; the
# accumulating ones (allowed_ip, last_handshake_time_*) are parsed in place.
_DEVICE_KEYS: Final[dict[str, tuple[str, Callable[[str], object]]]] = {
    "private_key": ("private_key", _private_key),
    "listen_port": ("listen_port", int),
    "fwmark": ("fwmark", int),
}
_PEER_KEYS: Final[dict[str, tuple[str, Callable[[str], object]]]] = {
    "preshared_key": ("preshared_key", _preshared_key),
    "endpoint": ("endpoint", parse_endpoint),
    "persistent_keepalive_interval": ("keepalive", int),
    "rx_bytes": ("rx_bytes", int),
    "tx_bytes": ("tx_bytes", int),
}


def parse_errno(text: str) -> int:
    """The ``errno=N`` of an answer (0: success); ValueError if there is none."""
    for line in text.split("\n"):
        if line.startswith("errno="):
            return int(line[6:])
    raise ValueError("answer has no errno line")


def parse_device(text: str) -> DeviceState:
    """Parse the answer of ``get=1`` (its ``errno`` must be 0); ValueError if malformed."""
    dev: dict[str, object] = {}
    peers: list[PeerState] = []
    cur: dict[str, object] | None = None
    errno_seen: int | None = None

    def flush() -> None:
        if cur is not None:
            peers.append(PeerState(**cur))  # type: ignore[arg-type]

    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"malformed line {line!r}")
        if key == "errno":
            errno_seen = int(value)
            continue
        if key == "public_key":
            flush()
            cur = {"public_key": _hex_key(value, "public_key")}
            continue
        if cur is None:
            if key in _DEVICE_KEYS:
                name, parse = _DEVICE_KEYS[key]
                dev[name] = parse(value)
            continue  # unknown device keys are ignored, as wg does
        if key in _PEER_KEYS:
            name, parse = _PEER_KEYS[key]
            cur[name] = parse(value)
        elif key == "allowed_ip":
            nets = cur.setdefault("allowed_ips", ())
            assert isinstance(nets, tuple)
            cur["allowed_ips"] = (*nets, ipaddress.ip_network(value, strict=False))
        elif key == "last_handshake_time_sec":
            cur["last_handshake"] = float(cur.get("last_handshake", 0.0)) + int(value)  # type: ignore[arg-type]
        elif key == "last_handshake_time_nsec":
            cur["last_handshake"] = float(cur.get("last_handshake", 0.0)) + int(value) / 1e9  # type: ignore[arg-type]
    flush()
    if errno_seen is None:
        raise ValueError("answer has no errno line")
    if errno_seen:
        raise ValueError(f"device answered errno={errno_seen}")
    return DeviceState(peers=tuple(peers), **dev)  # type: ignore[arg-type]


def _has_errno(buf: bytearray) -> bool:
    tail = bytes(buf[-64:])
    return tail.startswith(b"errno=") or b"\nerrno=" in tail


@contextmanager
def request_socket(sock: socket.socket, what: str) -> Iterator[socket.socket]:
    """Use ``sock`` for one request and close it; an OSError on the way becomes a UapiError
    "``what`` failed: ..." carrying its errno (the UAPI and the generic netlink client alike)."""
    try:
        yield sock
    except OSError as exc:
        raise UapiError(f"{what} failed: {exc}", errno=exc.errno or 0) from exc
    finally:
        sock.close()


class UapiClient:
    """Talks to one device's UAPI socket; one connection per request (as ``wg`` does)."""

    def __init__(self, device: str, directory: Path = SOCKET_DIR, timeout: float = 5.0) -> None:
        self.device = device
        self.path = socket_path(device, directory)
        self.timeout = timeout

    def _exchange(self, request: bytes) -> str:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        with request_socket(sock, f"UAPI request to {self.device}"):
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                raise UapiError(
                    f"cannot connect to the UAPI socket {self.path} of {self.device}: "
                    f"{exc.strerror or exc}",
                    errno=exc.errno or 0,
                    hint="is wireguard-go running for this device?",
                ) from exc
            sock.sendall(request)
            buf = bytearray()
            # wireguard-go keeps the connection open for further requests: an answer ends with
            # its "errno=N" line followed by the empty line.
            while not (buf.endswith(b"\n\n") and _has_errno(buf)):
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
                if len(buf) > _MAX_ANSWER:
                    raise UapiError(f"UAPI answer of {self.device} is larger than 16 MiB")
            return buf.decode("ascii", "replace")

    def listening(self) -> bool:
        """True if something accepts connections on the socket (a cheap liveness probe: no
        request, so wireguard-go serialises nothing)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            return False
        finally:
            sock.close()
        return True

    def get(self) -> DeviceState:
        """The device's configuration and per-peer counters."""
        answer = self._exchange(b"get=1\n\n")
        try:
            return parse_device(answer)
        except ValueError as exc:
            raise UapiError(f"bad UAPI answer from {self.device}: {exc}") from exc

    def set(self, req: SetDevice) -> None:
        """Apply ``req``; UapiError if the device refuses it."""
        answer = self._exchange(serialise_set(req))
        try:
            err = parse_errno(answer)
        except ValueError as exc:
            raise UapiError(f"bad UAPI answer from {self.device}: {exc}") from exc
        if err:
            # wireguard-go answers with a negated errno (errno=-22 for EINVAL)
            raise UapiError(
                f"{self.device} refused a configuration change (errno {err})",
                errno=abs(err),
                hint="see the wireguard-go log; a bad endpoint or key is the usual cause",
            )


def peers_by_key(peers: Sequence[PeerState]) -> dict[bytes, PeerState]:
    """Index a device's peers by public key."""
    return {p.public_key: p for p in peers}
