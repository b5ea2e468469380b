"""``--etcd-endpoints`` and ``--etcd-prefix``: parsing and cleaning, no I/O."""

from __future__ import annotations

import posixpath
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pyflannel.errors import ConfigError

__all__ = ["DEFAULT_ENDPOINTS", "DEFAULT_PREFIX", "EndpointSpec", "clean_prefix", "parse_endpoints"]

DEFAULT_PREFIX: Final = "/coreos.com/network"
DEFAULT_ENDPOINTS: Final = "http://127.0.0.1:4001,http://127.0.0.1:2379"
_HINT: Final = "use --etcd-endpoints=http://HOST:PORT[,https://HOST:PORT...]"


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One ``--etcd-endpoints`` entry."""

    url: str
    scheme: str  # "http" or "https"
    host: str  # as in a gRPC target: an IPv6 literal keeps its brackets
    port: int


def parse_endpoints(spec: str | Sequence[str]) -> list[EndpointSpec]:
    """Parse ``http(s)://host:port`` endpoints (a comma-separated string or a list).

    A missing scheme means ``http``, a missing port 2379. Raises :class:`ConfigError` naming
    the bad entry.
    """
    items = spec.split(",") if isinstance(spec, str) else [s for e in spec for s in e.split(",")]
    out: list[EndpointSpec] = []
    for raw in items:
        text = raw.strip()
        if not text:
            continue
        url = text if "://" in text else f"http://{text}"
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or 2379
        except ValueError as exc:
            raise ConfigError(f"invalid etcd endpoint {text!r}: {exc}", hint=_HINT) from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"invalid etcd endpoint {text!r}: only http://HOST:PORT and https://HOST:PORT "
                "are supported",
                hint=_HINT,
            )
        host = parts.hostname
        if ":" in host:
            host = f"[{host}]"
        url = f"{scheme}://{host}:{port}"
        out.append(EndpointSpec(url=url, scheme=scheme, host=host, port=port))
    if not out:
        raise ConfigError("no etcd endpoint given", hint=_HINT)
    return out


def clean_prefix(prefix: str) -> str:
    """``--etcd-prefix`` as flanneld uses it: Go's ``path.Join`` cleans the prefix."""
    cleaned = posixpath.normpath(prefix) if prefix else ""
    return "" if cleaned in ("/", ".") else cleaned
