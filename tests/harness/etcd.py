"""Real etcd processes for tests: a single member on a free loopback port.

The 3-member cluster, TLS/auth and in-namespace variants live beside this (see
tests/harness/). Every process is started from Debian's ``etcd`` binary with a temp data dir and
is killed and removed when the fixture ends, also after failures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EtcdServer", "free_port", "start_etcd"]

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdServer:
    """One running etcd member."""

    name: str
    data_dir: Path
    client_url: str
    peer_url: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    netns: str | None = None

    @property
    def endpoint(self) -> str:
        return self.client_url

    def start(self, *, initial_cluster: str | None = None, state: str = "new") -> None:
        """Start (or restart) the member and wait until it answers /health."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.name}.log"
        args = [
            ETCD_BIN,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state", state,
            "--initial-cluster-token", f"tok-{self.name}",
            *self.extra_args,
        ]  # fmt: skip
        if self.netns:
            args = ["ip", "netns", "exec", self.netns, *args]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Block until the member serves /health (plain-http members only)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1) as r:
                    if b"true" in r.read():
                        return
            except Exception as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"etcd {self.name} not healthy after {timeout}s: {last}")

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


@contextlib.contextmanager
def start_etcd(extra_args: list[str] | None = None) -> Iterator[EtcdServer]:
    """A single-member etcd on free loopback ports; removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="pyflannel-etcd-"))
    srv = EtcdServer(
        name="m0",
        data_dir=tmp / "m0.etcd",
        client_url=f"http://127.0.0.1:{free_port()}",
        peer_url=f"http://127.0.0.1:{free_port()}",
        extra_args=list(extra_args or []),
    )
    try:
        srv.start()
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop(signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
