"""Real etcd processes for tests: a single member on a free loopback port, or inside a namespace.

The 3-member cluster (etcd_cluster.py) and the TLS/auth variant (etcd_tls.py) build on this.
Every process is started from Debian's ``etcd`` binary with a temp data dir and is killed and
removed when the context ends, also after failures. Members without a namespace of their own
listen on 127.0.0.1 of the session's private network namespace (tests/harness/isolation.py: never
the host's) with ports from the ephemeral range, never on 2379/2380, and every etcdctl call names
its endpoint explicitly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any

import pytest

from pyflannel.lab.netns import exec_argv, http_request, run
from tests.harness.isolation import in_private_netns

__all__ = [
    "ETCDCTL_BIN",
    "ETCD_BIN",
    "ClientTLS",
    "EtcdServer",
    "ServerTLS",
    "free_port",
    "start_etcd",
    "start_member_with_retry",
]

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ClientTLS:
    """What a client presents/trusts: CA bundle, and optionally a client cert + key."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class ServerTLS:
    """Server side TLS of a member (client URLs only; peers stay plain http on loopback)."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_cert_auth: bool = True


@dataclass
class EtcdServer:
    """One etcd member; optionally inside a network namespace and/or speaking TLS.

    ``tls``/``auth`` are the credentials the harness itself uses (health probe, ``etcdctl()``):
    ``auth`` is (user, password), set to the root user once auth is enabled.
    """

    name: str
    data_dir: Path
    client_url: str
    peer_url: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    netns: str | None = None
    server_tls: ServerTLS | None = None
    tls: ClientTLS | None = None
    auth: tuple[str, str] | None = None
    cluster_token: str | None = None
    initial_cluster: str | None = None

    @property
    def endpoint(self) -> str:
        return self.client_url

    @property
    def host(self) -> str:
        """Host part of the client URL (an IP address)."""
        return urllib.parse.urlsplit(self.client_url).hostname or ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self, *, initial_cluster: str | None = None, state: str = "new") -> list[str]:
        """The etcd command line of this member (wrapped in ``ip netns exec`` when namespaced)."""
        cluster = initial_cluster or self.initial_cluster or f"{self.name}={self.peer_url}"
        args = [
            ETCD_BIN,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.cluster_token or f"tok-{self.name}",
            "--logger", "zap",
        ]  # fmt: skip
        if self.server_tls:
            t = self.server_tls
            args += ["--cert-file", str(t.cert_file), "--key-file", str(t.key_file)]
            args += ["--trusted-ca-file", str(t.ca_file)]
            if t.client_cert_auth:
                args.append("--client-cert-auth")
        args += self.extra_args
        return exec_argv(self.netns, args) if self.netns else args

    def start(self, *, initial_cluster: str | None = None, state: str = "new") -> None:
        """Start (or restart) the member; call :meth:`wait_healthy` to wait for it.

        A member without ``netns`` listens on the session's loopback, which is only allowed once
        the session left the host's network namespace (as root; tests/harness/isolation.py).
        """
        if self.netns is None and not in_private_netns():
            pytest.skip("needs root: the suite's etcd runs in its own network namespace")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if initial_cluster:
            self.initial_cluster = initial_cluster
        self.log_path = self.data_dir.parent / f"{self.name}.log"
        args = self.argv(initial_cluster=initial_cluster, state=state)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def restart(self, timeout: float = 15.0) -> None:
        """Start a stopped member again on its existing data dir and wait until healthy."""
        if self.running:
            return
        self.start(state="existing")
        self.wait_healthy(timeout)

    def log_text(self) -> str:
        """The member's log so far ('' if none)."""
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except FileNotFoundError:
            return ""

    def http(
        self, path: str, *, data: bytes | None = None, method: str | None = None, wait: float = 0
    ) -> tuple[int, bytes, str]:
        """An HTTP request to this member (from inside its namespace when it has one)."""
        t = self.tls
        return http_request(
            self.client_url + path,
            ns=self.netns,
            method=method or ("POST" if data is not None else "GET"),
            data=data,
            cafile=t.ca_file if t else None,
            certfile=t.cert_file if t else None,
            keyfile=t.key_file if t else None,
            wait=wait,
            expect='"health":"true"' if path == "/health" else None,
        )

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Block until the member serves ``/health`` with ``true``; fail fast if etcd exits."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd {self.name} exited with {self.proc.returncode}: see {self.log_path}\n"
                    + self.log_text()[-1500:]
                )
            # Poll for a short while per call so a crashed etcd is noticed quickly.
            status, body, err = self.http("/health", wait=min(1.0, deadline - time.monotonic()))
            if status == 200 and b'"health":"true"' in body:
                return
            last = err or body.decode(errors="replace")
        raise TimeoutError(f"etcd {self.name} not healthy after {timeout}s: {last}")

    def status(self) -> dict[str, Any]:
        """``/v3/maintenance/status`` through the HTTP gateway (ids as ints)."""
        code, body, err = self.http("/v3/maintenance/status", data=b"{}")
        if code != 200:
            raise RuntimeError(f"status of etcd {self.name} failed: {code} {err}")
        st: dict[str, Any] = json.loads(body)
        st["member_id"] = int(st["header"]["member_id"])
        st["leader"] = int(st.get("leader", 0))
        return st

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the member (SIGKILL with ``sig=signal.SIGKILL``) and wait for it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the member (a crash, not a shutdown)."""
        self.stop(signal.SIGKILL)

    # -- etcdctl ----------------------------------------------------------------------------------

    def etcdctl_argv(
        self,
        *args: str,
        tls: ClientTLS | EllipsisType | None = ...,
        auth: tuple[str, str] | EllipsisType | None = ...,
        endpoints: Sequence[str] | None = None,
        dial_timeout: str = "2s",
    ) -> list[str]:
        """etcdctl (v3) argv against this member; ``...`` = the harness's own tls/auth,
        ``None`` = none (for negative tests)."""
        t = self.tls if isinstance(tls, EllipsisType) else tls
        a = self.auth if isinstance(auth, EllipsisType) else auth
        argv = [
            ETCDCTL_BIN,
            f"--endpoints={','.join(endpoints or [self.client_url])}",
            f"--dial-timeout={dial_timeout}",
            "--command-timeout=5s",
        ]
        if t:
            argv.append(f"--cacert={t.ca_file}")
            if t.cert_file and t.key_file:
                argv += [f"--cert={t.cert_file}", f"--key={t.key_file}"]
        if a:
            argv.append(f"--user={a[0]}:{a[1]}")
        argv += args
        return exec_argv(self.netns, argv) if self.netns else argv

    def etcdctl(
        self,
        *args: str,
        check: bool = True,
        tls: ClientTLS | EllipsisType | None = ...,
        auth: tuple[str, str] | EllipsisType | None = ...,
        input: str | None = None,
        timeout: float = 30.0,
        dial_timeout: str = "2s",
    ) -> subprocess.CompletedProcess[str]:
        """Run etcdctl (API v3) against this member; raises CommandFailed if ``check``.

        Negative tests (a connection that must fail) can pass a short ``dial_timeout``: etcdctl
        keeps retrying a failing TLS handshake until it expires."""
        argv = self.etcdctl_argv(*args, tls=tls, auth=auth, dial_timeout=dial_timeout)
        return run(argv, check=check, input=input, timeout=timeout, env=etcdctl_env())

    def get(self, key: str) -> str | None:
        """Value of ``key`` via etcdctl, None if absent."""
        out = self.etcdctl("get", key, "--print-value-only").stdout
        return out[:-1] if out.endswith("\n") else (out or None)

    def put(self, key: str, value: str) -> None:
        """Put ``key`` = ``value`` via etcdctl."""
        self.etcdctl("put", key, value)

    # -- v2 API (only with --enable-v2) ------------------------------------------------------------

    def v2_set(self, key: str, value: str) -> None:
        """Write ``key`` through the v2 API, as an old flannel setup guide would."""
        form = urllib.parse.urlencode({"value": value}).encode()
        code, body, err = http_request(
            f"{self.client_url}/v2/keys{key}",
            ns=self.netns,
            method="PUT",
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            cafile=self.tls.ca_file if self.tls else None,
            certfile=self.tls.cert_file if self.tls else None,
            keyfile=self.tls.key_file if self.tls else None,
        )
        if code not in (200, 201):
            raise RuntimeError(f"v2 set {key} on etcd {self.name} failed: {code} {err} {body!r}")

    def v2_get(self, key: str) -> str | None:
        """Read ``key`` through the v2 API (None if absent)."""
        code, body, _ = http_request(f"{self.client_url}/v2/keys{key}", ns=self.netns)
        if code == 404:
            return None
        return str(json.loads(body)["node"]["value"])


_TEMP_PREFIX = os.fsencode(os.path.join(tempfile.gettempdir(), "pyflannel-etcd-"))


def reap_orphans() -> int:
    """Kill etcd members a killed test session left behind; returns how many. Ours: a harness
    temp dir in the argv. Orphaned: the parent is no pytest process (reparented to PID 1 or a
    subreaper), so a live session's members, whose parent is that session, are left alone."""
    reaped = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes() if ppid > 0 else b""
        except (OSError, ValueError, IndexError):
            continue
        ours = any(a.startswith(_TEMP_PREFIX) for a in argv)
        if ours and os.path.basename(argv[0]) == b"etcd" and b"pytest" not in parent:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)
                reaped += 1
    return reaped


def etcdctl_env() -> dict[str, str]:
    """Environment for etcdctl: API v3, and no inherited ETCDCTL_* that could redirect it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


def _port_clash(srv: EtcdServer) -> bool:
    return "address already in use" in srv.log_text()


def start_member_with_retry(make: Any, attempts: int = 3, timeout: float = 15.0) -> EtcdServer:
    """Start ``make()``'s member and wait until healthy, retrying with fresh ports when another
    process grabbed a port between :func:`free_port` and etcd's bind (tests run concurrently)."""
    for attempt in range(attempts):
        srv: EtcdServer = make()
        srv.start()
        try:
            srv.wait_healthy(timeout)
            return srv
        except (RuntimeError, TimeoutError):
            srv.kill()
            if attempt + 1 < attempts and _port_clash(srv):
                continue
            raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def start_etcd(
    extra_args: list[str] | None = None,
    *,
    enable_v2: bool = False,
    netns: str | None = None,
    host: str | None = None,
    data_root: Path | None = None,
    name: str = "m0",
    server_tls: ServerTLS | None = None,
    client_tls: ClientTLS | None = None,
) -> Iterator[EtcdServer]:
    """A single-member etcd, removed afterwards.

    Without ``netns``: 127.0.0.1 of the session's private namespace, on free ephemeral ports.
    With ``netns``: on ``host`` (the namespace's own address) ports 2379/2380, health-checked
    from inside the namespace.
    ``enable_v2`` adds ``--enable-v2=true`` (for tests of configs written with the v2 API).
    """
    if netns and not host:
        raise ValueError("start_etcd(netns=...) needs host=<address inside that namespace>")
    tmp = Path(tempfile.mkdtemp(prefix="pyflannel-etcd-"))
    root = data_root or tmp
    scheme = "https" if server_tls else "http"
    args = [*(extra_args or []), *(["--enable-v2=true"] if enable_v2 else [])]
    if not any(a.startswith(("--heartbeat-interval", "--election-timeout")) for a in args):
        # A lone member has no peer to lose touch with, so short raft timers are safe; they cut
        # the first self-election (and that after a restart) from ~1 s to ~0.25 s.
        args = ["--heartbeat-interval=25", "--election-timeout=250", *args]

    def make() -> EtcdServer:
        if netns:
            h = f"[{host}]" if host and ":" in host else host
            client, peer = f"{scheme}://{h}:2379", f"http://{h}:2380"
        else:
            client = f"{scheme}://127.0.0.1:{free_port()}"
            peer = f"http://127.0.0.1:{free_port()}"
        return EtcdServer(
            name=name,
            data_dir=root / f"{name}.etcd",
            client_url=client,
            peer_url=peer,
            extra_args=list(args),
            netns=netns,
            server_tls=server_tls,
            tls=client_tls,
        )

    srv: EtcdServer | None = None
    try:
        srv = start_member_with_retry(make)
        yield srv
    finally:
        if srv is not None:
            srv.kill()
        shutil.rmtree(tmp, ignore_errors=True)
