"""etcd with TLS (certs made by trustme) and etcd auth: a root user and a ``flannel`` user whose
role may read and write only under the flannel prefix.

Also produced: a second, unrelated CA with its own client cert, for negative tests (a client
that trusts the wrong CA, or presents a cert the server does not trust).

The client cert's CN is ``pyflannel-test-client`` on purpose: with ``--client-cert-auth`` etcd
takes the CN as the user name when no password is given, and a CN naming no user keeps
"certificate but no password" a failing case instead of a silent login.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.harness.etcd import ClientTLS, EtcdServer, ServerTLS, start_etcd

__all__ = ["EtcdTLS", "TLSFiles", "make_tls_files", "start_etcd_tls"]

CLIENT_CN = "pyflannel-test-client"


@dataclass(frozen=True)
class TLSFiles:
    """PEM files on disk: the real CA, server and client pairs, and a wrong CA + client pair."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca_file: Path
    wrong_client_cert: Path
    wrong_client_key: Path

    def client(self) -> ClientTLS:
        """Right CA, right client cert."""
        return ClientTLS(self.ca_file, self.client_cert, self.client_key)

    def wrong_ca_client(self) -> ClientTLS:
        """Trusts the wrong CA (server cert fails verification), right client cert."""
        return ClientTLS(self.wrong_ca_file, self.client_cert, self.client_key)

    def wrong_cert_client(self) -> ClientTLS:
        """Right CA, but a client cert issued by the wrong CA (server rejects the handshake)."""
        return ClientTLS(self.ca_file, self.wrong_client_cert, self.wrong_client_key)

    def server(self, client_cert_auth: bool = True) -> ServerTLS:
        return ServerTLS(self.server_cert, self.server_key, self.ca_file, client_cert_auth)


def make_tls_files(
    directory: Path,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    client_cn: str = CLIENT_CN,
) -> TLSFiles:
    """Write CA, server cert for ``hosts``, client cert and a wrong-CA set into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, wrong = trustme.CA(), trustme.CA()
    server = ca.issue_cert(*hosts, common_name="pyflannel-test-etcd")
    client = ca.issue_cert(client_cn, common_name=client_cn)
    bad_client = wrong.issue_cert(client_cn, common_name=client_cn)
    files = TLSFiles(*(directory / n for n in (
        "ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem",
        "wrong-ca.pem", "wrong-client.pem", "wrong-client-key.pem",
    )))  # fmt: skip
    ca.cert_pem.write_to_path(str(files.ca_file))
    wrong.cert_pem.write_to_path(str(files.wrong_ca_file))
    for leaf, cert, key in (
        (server, files.server_cert, files.server_key),
        (client, files.client_cert, files.client_key),
        (bad_client, files.wrong_client_cert, files.wrong_client_key),
    ):
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
    return files


@dataclass
class EtcdTLS:
    """A running TLS (+auth) etcd and everything a client needs to reach it."""

    server: EtcdServer
    files: TLSFiles
    prefix: str
    auth_enabled: bool
    root_user: str
    root_password: str
    user: str
    password: str
    role: str

    @property
    def endpoint(self) -> str:
        return self.server.client_url

    @property
    def ca_file(self) -> Path:
        return self.files.ca_file

    @property
    def cert_file(self) -> Path:
        return self.files.client_cert

    @property
    def key_file(self) -> Path:
        return self.files.client_key

    @property
    def wrong_ca_file(self) -> Path:
        return self.files.wrong_ca_file

    @property
    def wrong_cert_file(self) -> Path:
        return self.files.wrong_client_cert

    @property
    def wrong_key_file(self) -> Path:
        return self.files.wrong_client_key

    def etcdctl_as_user(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """etcdctl with the right certs as the limited ``flannel`` user."""
        return self.server.etcdctl(*args, check=check, auth=(self.user, self.password))


def _enable_auth(srv: EtcdServer, prefix: str, user: str, role: str) -> tuple[str, str]:
    """Create root + ``user`` (role ``role``: readwrite on ``prefix``), enable auth."""
    root_pw, user_pw = secrets.token_hex(8), secrets.token_hex(8)
    for cmd in (
        ["user", "add", f"root:{root_pw}", "--interactive=false"],
        ["user", "grant-role", "root", "root"],
        ["role", "add", role],
        ["role", "grant-permission", role, "--prefix=true", "readwrite", prefix],
        ["user", "add", f"{user}:{user_pw}", "--interactive=false"],
        ["user", "grant-role", user, role],
        ["auth", "enable"],
    ):
        srv.etcdctl(*cmd, auth=None)
    srv.auth = ("root", root_pw)
    return root_pw, user_pw


@contextlib.contextmanager
def start_etcd_tls(
    *,
    auth: bool = True,
    prefix: str = "/coreos.com/network",
    user: str = "flannel",
    role: str = "flannel",
    client_cert_auth: bool = True,
    enable_v2: bool = False,
    netns: str | None = None,
    host: str | None = None,
    data_root: Path | None = None,
) -> Iterator[EtcdTLS]:
    """A single TLS member (on loopback, or on ``host`` inside ``netns``), auth enabled unless
    ``auth=False``. The harness itself then talks to it as root (``server.auth``).

    ``prefix`` is granted with ``--prefix=true``, so the role covers every key that starts with
    it (``/coreos.com/network/config``, ``.../subnets/...``).
    """
    tmp = Path(tempfile.mkdtemp(prefix="pyflannel-etcd-tls-"))
    try:
        hosts = ("127.0.0.1", "localhost", *([host] if host else []))
        files = make_tls_files(tmp / "pki", hosts)
        with start_etcd(
            enable_v2=enable_v2,
            netns=netns,
            host=host,
            data_root=data_root,
            server_tls=files.server(client_cert_auth),
            client_tls=files.client(),
        ) as srv:
            root_pw = user_pw = ""
            if auth:
                root_pw, user_pw = _enable_auth(srv, prefix, user, role)
            yield EtcdTLS(srv, files, prefix, auth, "root", root_pw, user, user_pw, role)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
