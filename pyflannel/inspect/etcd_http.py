"""Reaching etcd outside gRPC, as an operator would: its HTTP endpoints (``/version``, the v2
API) with the tool's TLS files and credentials, and the ``etcdctl`` command line to paste.

Used by the inspection layer (the v2 config probe, doctor's version check) and the tools."""

from __future__ import annotations

import base64
import json
import shlex
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyflannel.options import Options

__all__ = ["HttpAnswer", "endpoint_urls", "etcd_http_get", "etcdctl_command"]


def endpoint_urls(opts: Options) -> list[str]:
    """The ``--etcd-endpoints`` as normalized ``scheme://host:port`` URLs."""
    from pyflannel.subnet.etcd.endpoints import parse_endpoints

    return [e.url for e in parse_endpoints(opts.etcd_endpoints)]


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An HTTP exchange with an etcd endpoint: ``status`` 0 when there was no answer."""

    url: str
    status: int
    body: bytes
    error: str = ""

    def json(self) -> object:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def _ssl_context(opts: Options) -> ssl.SSLContext:
    # flanneld's rule: a client certificate only when both key and certificate are given.
    ctx = ssl.create_default_context(cafile=opts.etcd_cafile or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if opts.etcd_tls:
        ctx.load_cert_chain(opts.etcd_certfile, opts.etcd_keyfile)
    return ctx


def etcd_http_get(opts: Options, base_url: str, path: str, *, timeout: float = 3.0) -> HttpAnswer:
    """GET ``base_url + path`` with the tool's TLS files and (v2-style basic) credentials.

    Never raises for network or HTTP errors: they come back in :class:`HttpAnswer`.
    """
    url = base_url.rstrip("/") + path
    req = urllib.request.Request(url, method="GET")
    if opts.etcd_username:
        token = f"{opts.etcd_username}:{opts.etcd_password}".encode()
        req.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    try:
        ctx = _ssl_context(opts) if url.startswith("https://") else None
    except (OSError, ssl.SSLError) as exc:
        return HttpAnswer(url, 0, b"", f"cannot load the TLS files: {exc}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return HttpAnswer(url, int(resp.status), resp.read())
    except urllib.error.HTTPError as exc:
        return HttpAnswer(url, int(exc.code), exc.read(), str(exc.reason))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return HttpAnswer(url, 0, b"", str(reason))


def etcdctl_command(opts: Options, *args: str) -> str:
    """The ``etcdctl`` (API v3) command line, ready to paste, with this tool's endpoints,
    TLS files and user (the password is left for etcdctl to prompt for)."""
    parts = [f"--endpoints={','.join(endpoint_urls(opts))}"]
    if opts.etcd_cafile:
        parts.append(f"--cacert={opts.etcd_cafile}")
    if opts.etcd_tls:
        parts += [f"--cert={opts.etcd_certfile}", f"--key={opts.etcd_keyfile}"]
    if opts.etcd_username:
        parts.append(f"--user={opts.etcd_username}")
    return " ".join(["ETCDCTL_API=3", "etcdctl", *(shlex.quote(p) for p in [*parts, *args])])
