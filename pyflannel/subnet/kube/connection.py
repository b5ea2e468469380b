"""Where the API server is and who we are to it: flanneld's ``BuildConfigFromFlags`` rules.

- ``--kube-api-url`` and/or ``--kubeconfig-file`` given: use them (the URL overrides the
  kubeconfig's server);
- neither: the in-cluster config (service-account token and CA under
  ``/var/run/secrets/kubernetes.io/serviceaccount``, ``KUBERNETES_SERVICE_HOST``/``PORT``).

A kubeconfig may authenticate with a bearer token (``token`` or ``tokenFile``) or a client
certificate (``client-certificate``/``-key`` files or their ``-data``), and trust a CA
(``certificate-authority`` file or ``-data``) or skip verification
(``insecure-skip-tls-verify``). Exec plugins and auth providers are not supported: one clear
error says so. Pure apart from reading the named files.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyflannel.errors import ConfigError

__all__ = ["SERVICE_ACCOUNT_DIR", "KubeConnection", "load_kubeconfig", "resolve_connection"]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True, slots=True)
class KubeConnection:
    """How to reach and authenticate to one API server.

    ``token_file`` is re-read on every request (projected service-account tokens rotate).
    Certificates are PEM bytes (``*_data``) or file paths; the data wins when both are set.
    """

    server: str
    token: str = ""
    token_file: str = ""
    ca_data: bytes = b""
    ca_file: str = ""
    client_cert_data: bytes = b""
    client_cert_file: str = ""
    client_key_data: bytes = b""
    client_key_file: str = ""
    insecure: bool = False
    source: str = ""  # for messages: "kubeconfig /etc/k", "in-cluster", "--kube-api-url"


def _fail(message: str, hint: str) -> ConfigError:
    return ConfigError(f"fail to create kubernetes config: {message}", hint=hint)


def _b64(value: Any, what: str, path: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _fail(
            f"{what} in kubeconfig {path} is not valid base64: {exc}",
            hint=f"fix {what} (base64 of the PEM text) in {path}",
        ) from exc


def _rel(base: Path, value: Any) -> str:
    """kubeconfig paths are relative to the kubeconfig's directory."""
    p = Path(str(value))
    return str(p if p.is_absolute() else base / p)


def _named(items: Any, name: str, kind: str, path: str) -> dict[str, Any]:
    for item in items or ():
        if isinstance(item, dict) and item.get("name") == name:
            inner = item.get(kind)
            return inner if isinstance(inner, dict) else {}
    raise _fail(
        f"kubeconfig {path} has no {kind} named {name!r}",
        hint=f"add it under {kind}s: or fix the current context",
    )


def load_kubeconfig(path: str) -> KubeConnection:
    """The current context's server and credentials from a kubeconfig file."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise _fail(
            f"cannot read kubeconfig {path}: {exc.strerror}",
            hint="pass an existing file with --kubeconfig-file, or none to use the in-cluster "
            "config",
        ) from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail(
            f"kubeconfig {path} is not valid YAML: {str(exc).splitlines()[0]}",
            hint="check the file (kubectl config view --kubeconfig=... shows the problem)",
        ) from exc
    if not isinstance(doc, dict):
        raise _fail(f"kubeconfig {path} is not a mapping", hint="check the file")
    ctx_name = doc.get("current-context") or ""
    if not ctx_name:
        raise _fail(
            f"kubeconfig {path} has no current-context",
            hint="set one: kubectl config use-context NAME",
        )
    ctx = _named(doc.get("contexts"), ctx_name, "context", path)
    cluster = _named(doc.get("clusters"), str(ctx.get("cluster", "")), "cluster", path)
    user: dict[str, Any] = {}
    if ctx.get("user"):
        user = _named(doc.get("users"), str(ctx["user"]), "user", path)
    if "exec" in user or "auth-provider" in user:
        raise _fail(
            f"kubeconfig {path}: user {ctx.get('user')!r} uses an exec plugin or auth provider",
            hint="give pyflannel a token, tokenFile or client certificate instead",
        )
    base = Path(path).parent
    server = str(cluster.get("server") or "")

    def data_or_file(data_key: str, file_key: str, src: dict[str, Any]) -> tuple[bytes, str]:
        if src.get(data_key):
            return _b64(src[data_key], data_key, path), ""
        if src.get(file_key):
            return b"", _rel(base, src[file_key])
        return b"", ""

    ca_data, ca_file = data_or_file("certificate-authority-data", "certificate-authority", cluster)
    cert_data, cert_file = data_or_file("client-certificate-data", "client-certificate", user)
    key_data, key_file = data_or_file("client-key-data", "client-key", user)
    token_file = _rel(base, user["tokenFile"]) if user.get("tokenFile") else ""
    return KubeConnection(
        server=server,
        token=str(user.get("token") or ""),
        token_file=token_file,
        ca_data=ca_data,
        ca_file=ca_file,
        client_cert_data=cert_data,
        client_cert_file=cert_file,
        client_key_data=key_data,
        client_key_file=key_file,
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        source=f"kubeconfig {path}",
    )


def in_cluster(environ: Mapping[str, str], sa_dir: str = SERVICE_ACCOUNT_DIR) -> KubeConnection:
    """The pod's own service account (client-go's ``InClusterConfig``)."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise _fail(
            "no --kube-api-url or --kubeconfig-file given and not running in a pod "
            "(KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are unset)",
            hint="pass --kubeconfig-file=PATH (or --kube-api-url=URL), or run pyflanneld in a pod",
        )
    token_file = os.path.join(sa_dir, "token")
    if not os.path.exists(token_file):
        raise _fail(
            f"in-cluster config: {token_file} does not exist",
            hint="mount the pod's service-account token (automountServiceAccountToken: true)",
        )
    ca_file = os.path.join(sa_dir, "ca.crt")
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return KubeConnection(
        server=f"https://{hostport}",
        token_file=token_file,
        ca_file=ca_file if os.path.exists(ca_file) else "",
        source="in-cluster",
    )


def resolve_connection(
    api_url: str,
    kubeconfig_file: str,
    environ: Mapping[str, str],
    *,
    sa_dir: str = SERVICE_ACCOUNT_DIR,
) -> KubeConnection:
    """flanneld's choice between ``--kube-api-url``, ``--kubeconfig-file`` and in-cluster."""
    if kubeconfig_file:
        conn = load_kubeconfig(kubeconfig_file)
        if api_url:
            from dataclasses import replace

            conn = replace(conn, server=api_url, source=f"{conn.source} + --kube-api-url")
    elif api_url:
        conn = KubeConnection(server=api_url, source="--kube-api-url")
    else:
        conn = in_cluster(environ, sa_dir)
    if not conn.server.startswith(("https://", "http://")):
        raise _fail(
            f"API server URL {conn.server!r} (from {conn.source}) is not an http(s) URL",
            hint="give e.g. https://198.51.100.2:6443",
        )
    return conn
