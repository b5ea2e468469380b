"""subnet.env: the file flanneld leaves for Docker, the CNI plugin and its own next start.

Written exactly like flanneld's ``WriteSubnetFile`` (same lines, same order, mode 0644, atomic
rename) and read back by *parsing* (never by running a shell): ``KEY=VALUE`` lines split at the
first ``=``, blank lines, ``#`` comments, an ``export`` prefix and unknown keys are tolerated,
and one pair of matching quotes around a value is removed.

Standard library only: the CNI plugin and ``pyflannel mk-docker-opts`` import this module.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from pyflannel.errors import ConfigError

__all__ = [
    "DEFAULT_SUBNET_FILE",
    "SubnetEnv",
    "expected_value",
    "lease_ipv6_subnet_from_env",
    "lease_subnet_from_env",
    "parse_subnet_env",
    "parse_subnet_env_vars",
    "read_subnet_env",
    "read_subnet_env_vars",
    "render_subnet_env",
    "subnet_env_for",
    "write_subnet_env",
]

DEFAULT_SUBNET_FILE: Final = "/run/flannel/subnet.env"

_T = TypeVar("_T")

_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
# An unquoted value ends at " #" (shell and godotenv agree on this).
_INLINE_COMMENT_RE: Final = re.compile(r"\s+#.*$")


@dataclass(frozen=True, slots=True)
class SubnetEnv:
    """The values of a subnet.env file.

    ``subnet``/``ipv6_subnet`` are in the file's form: the lease subnet with its first usable
    address, e.g. ``IPv4Interface("10.5.72.1/24")`` for lease ``10.5.72.0/24``. A field is
    ``None`` when its line is absent (the IPv4 lines when IPv4 is disabled, and so on).
    """

    network: ipaddress.IPv4Network | None = None
    subnet: ipaddress.IPv4Interface | None = None
    ipv6_network: ipaddress.IPv6Network | None = None
    ipv6_subnet: ipaddress.IPv6Interface | None = None
    mtu: int | None = None
    ipmasq: bool | None = None


def subnet_env_for(
    *,
    network: ipaddress.IPv4Network | None,
    lease_subnet: ipaddress.IPv4Network | None,
    mtu: int,
    ipmasq: bool,
    ipv6_network: ipaddress.IPv6Network | None = None,
    ipv6_lease_subnet: ipaddress.IPv6Network | None = None,
) -> SubnetEnv:
    """Build the :class:`SubnetEnv` flanneld writes for a lease (subnet IP + 1)."""
    subnet = None
    if lease_subnet is not None:
        subnet = ipaddress.IPv4Interface(
            f"{lease_subnet.network_address + 1}/{lease_subnet.prefixlen}"
        )
    ipv6_subnet = None
    if ipv6_lease_subnet is not None:
        ipv6_subnet = ipaddress.IPv6Interface(
            f"{ipv6_lease_subnet.network_address + 1}/{ipv6_lease_subnet.prefixlen}"
        )
    return SubnetEnv(
        network=network,
        subnet=subnet,
        ipv6_network=ipv6_network,
        ipv6_subnet=ipv6_subnet,
        mtu=mtu,
        ipmasq=ipmasq,
    )


def render_subnet_env(env: SubnetEnv) -> str:
    """The exact text flanneld writes: v4 lines, v6 lines, then MTU and IPMASQ.

    The IPv4 pair is written when ``network`` and ``subnet`` are set (EnableIPv4), the IPv6
    pair when ``ipv6_network`` and ``ipv6_subnet`` are set (EnableIPv6).
    """
    if (env.network is None) != (env.subnet is None):
        raise ValueError("SubnetEnv needs both network and subnet, or neither")
    if (env.ipv6_network is None) != (env.ipv6_subnet is None):
        raise ValueError("SubnetEnv needs both ipv6_network and ipv6_subnet, or neither")
    if env.mtu is None or env.ipmasq is None:
        raise ValueError("SubnetEnv needs mtu and ipmasq to be rendered")
    lines = []
    if env.network is not None:
        lines.append(f"FLANNEL_NETWORK={env.network}")
        lines.append(f"FLANNEL_SUBNET={env.subnet}")
    if env.ipv6_network is not None:
        lines.append(f"FLANNEL_IPV6_NETWORK={env.ipv6_network}")
        lines.append(f"FLANNEL_IPV6_SUBNET={env.ipv6_subnet}")
    lines.append(f"FLANNEL_MTU={env.mtu}")
    lines.append(f"FLANNEL_IPMASQ={'true' if env.ipmasq else 'false'}")
    return "".join(line + "\n" for line in lines)


def _make_parents(directory: Path) -> None:
    """``mkdir -p`` where every directory we create ends up 0755 whatever the umask."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o755)
        except FileExistsError:
            continue  # created concurrently; leave its mode alone
        os.chmod(d, 0o755)


def write_subnet_env(path: str | os.PathLike[str], env: SubnetEnv) -> None:
    """Atomically replace ``path`` with :func:`render_subnet_env` of ``env``.

    A temporary file in the same directory is written, made 0644 (regardless of umask),
    fsynced and renamed over ``path``; readers see either the old or the new file, never a
    partial one. Missing parent directories are created 0755.
    """
    target = Path(path)
    data = render_subnet_env(env).encode()
    try:
        _make_parents(target.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), 0o644)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # Make the rename itself durable.
        dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as err:
        raise ConfigError(
            f"could not write subnet file {target}: {err.strerror or err}",
            hint="make its directory writable by pyflanneld, or choose another --subnet-file",
        ) from None


def _parse_lines(text: str, source: str) -> dict[str, tuple[int, str]]:
    """KEY -> (line number, value). Later lines win, as in a shell and in godotenv."""
    out: dict[str, tuple[int, str]] = {}
    for lineno, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY_RE.fullmatch(key):
            raise ConfigError(
                f"{source}:{lineno}: expected KEY=VALUE, got {raw_line.strip()[:80]!r}",
                hint=f"fix or delete line {lineno} of {source}; pyflanneld rewrites the file "
                "once it holds a lease",
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        else:
            value = _INLINE_COMMENT_RE.sub("", value)
        out[key] = (lineno, value)
    return out


def parse_subnet_env_vars(text: str, source: str = "subnet.env") -> dict[str, str]:
    """Every ``KEY=VALUE`` of a subnet.env text, values unquoted but otherwise verbatim."""
    return {key: value for key, (_, value) in _parse_lines(text, source).items()}


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(
            f"could not read subnet file {os.fspath(path)}: {err.strerror or err}",
            hint="check the path given with --subnet-file (or -f)",
        ) from None
    return data.decode("utf-8", errors="replace")


def read_subnet_env_vars(path: str | os.PathLike[str]) -> dict[str, str]:
    """:func:`parse_subnet_env_vars` of the file at ``path``."""
    return parse_subnet_env_vars(_read_text(path), os.fspath(path))


def _bad_value(source: str, lineno: int, key: str, value: str, expected: str) -> ConfigError:
    return ConfigError(
        f"{source}:{lineno}: {key}={value[:80]!r} is not {expected}",
        hint=f"fix or delete line {lineno} of {source}; pyflanneld rewrites the file once it "
        "holds a lease",
    )


def _split_cidr(value: str) -> tuple[str, int] | None:
    addr, sep, prefix = value.partition("/")
    # The length cap keeps int() away from its huge-number guard (ValueError).
    if not sep or not (prefix.isascii() and prefix.isdigit()) or len(prefix) > 3 or "%" in addr:
        return None
    return addr, int(prefix)


def _cidr_parser(make: Callable[[tuple[str, int]], _T]) -> Callable[[str], _T | None]:
    """A parser of ``address/prefix`` text into ``make((address, prefix))``, None when the text
    is not one (or ``make`` refuses it): one rule for the four CIDR keys."""

    def parse(value: str) -> _T | None:
        parts = _split_cidr(value)
        try:
            return None if parts is None else make(parts)
        except ValueError:
            return None

    return parse


_v4_network: Final = _cidr_parser(lambda parts: ipaddress.IPv4Network(parts, strict=False))
_v6_network: Final = _cidr_parser(lambda parts: ipaddress.IPv6Network(parts, strict=False))
_v4_interface: Final = _cidr_parser(ipaddress.IPv4Interface)
_v6_interface: Final = _cidr_parser(ipaddress.IPv6Interface)


def _mtu(value: str) -> int | None:
    if value.isascii() and value.isdigit() and len(value) <= 5 and 0 < int(value) <= 65535:
        return int(value)
    return None


def _bool(value: str) -> bool | None:
    return {"true": True, "false": False}.get(value)


_EXPECTED: Final = {
    "FLANNEL_NETWORK": (_v4_network, "an IPv4 CIDR"),
    "FLANNEL_SUBNET": (_v4_interface, "an IPv4 address/prefix"),
    "FLANNEL_IPV6_NETWORK": (_v6_network, "an IPv6 CIDR"),
    "FLANNEL_IPV6_SUBNET": (_v6_interface, "an IPv6 address/prefix"),
    "FLANNEL_MTU": (_mtu, "an MTU between 1 and 65535"),
    "FLANNEL_IPMASQ": (_bool, "true or false"),
}


def expected_value(key: str, value: str) -> str | None:
    """``None`` if ``value`` is valid for subnet.env key ``key`` (or the key is not one of
    flannel's), else what it should be, e.g. ``"an IPv4 address/prefix"``."""
    check = _EXPECTED.get(key)
    if check is None or check[0](value) is not None:
        return None
    return check[1]


def parse_subnet_env(text: str, source: str = "subnet.env") -> SubnetEnv:
    """Parse subnet.env text into a :class:`SubnetEnv`; unknown keys are ignored.

    Raises ConfigError naming ``source`` and the line for malformed lines and for values of
    the known keys that do not parse. Empty values count as absent.
    """
    lines = _parse_lines(text, source)

    def field(key: str, parse: Callable[[str], _T | None]) -> _T | None:
        lineno, value = lines.get(key, (0, ""))
        if value == "":
            return None
        result = parse(value)
        if result is None:
            raise _bad_value(source, lineno, key, value, _EXPECTED[key][1])
        return result

    return SubnetEnv(
        network=field("FLANNEL_NETWORK", _v4_network),
        subnet=field("FLANNEL_SUBNET", _v4_interface),
        ipv6_network=field("FLANNEL_IPV6_NETWORK", _v6_network),
        ipv6_subnet=field("FLANNEL_IPV6_SUBNET", _v6_interface),
        mtu=field("FLANNEL_MTU", _mtu),
        ipmasq=field("FLANNEL_IPMASQ", _bool),
    )


def read_subnet_env(path: str | os.PathLike[str], *, missing_ok: bool = False) -> SubnetEnv:
    """Parse the subnet.env at ``path`` (never executes it).

    With ``missing_ok`` a file that does not exist gives an empty ``SubnetEnv()`` (all
    ``None``), which is what the daemon wants at first start.
    """
    if missing_ok and not os.path.lexists(path):
        return SubnetEnv()
    return parse_subnet_env(_read_text(path), os.fspath(path))


def lease_subnet_from_env(env: SubnetEnv) -> ipaddress.IPv4Network | None:
    """The lease subnet in network-address form (``10.5.72.1/24`` -> ``10.5.72.0/24``)."""
    return None if env.subnet is None else env.subnet.network


def lease_ipv6_subnet_from_env(env: SubnetEnv) -> ipaddress.IPv6Network | None:
    """IPv6 twin of :func:`lease_subnet_from_env`."""
    return None if env.ipv6_subnet is None else env.ipv6_subnet.network
