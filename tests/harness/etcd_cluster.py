"""A 3-member (or N-member) etcd cluster on loopback, with leader lookup and member kill/restart.

Raft timers are shortened (heartbeat 50 ms, election 500 ms) so a new leader is elected within
about a second after the old one is killed; still long enough not to flap on a loaded 2-core CI.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness.etcd import EtcdServer, free_port

__all__ = ["EtcdCluster", "start_etcd_cluster"]


@dataclass
class EtcdCluster:
    """The members of one cluster; iterable and indexable like a list of EtcdServer."""

    members: list[EtcdServer]
    root: Path

    def __iter__(self) -> Iterator[EtcdServer]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> EtcdServer:
        return self.members[i]

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of all members (running or not), as a client would be configured."""
        return [m.client_url for m in self.members]

    @property
    def endpoints_csv(self) -> str:
        """The same, comma-separated (flanneld's ``--etcd-endpoints`` form)."""
        return ",".join(self.endpoints)

    def running(self) -> list[EtcdServer]:
        return [m for m in self.members if m.running]

    def leader(self, timeout: float = 10.0) -> EtcdServer:
        """The running member that running members agree is leader; waits for an election."""
        deadline = time.monotonic() + timeout
        last = "no running member answered"
        while time.monotonic() < deadline:
            ids: dict[int, EtcdServer] = {}
            leaders: set[int] = set()
            for m in self.running():
                try:
                    st = m.status()
                except RuntimeError as exc:
                    last = str(exc)
                    continue
                ids[st["member_id"]] = m
                leaders.add(st["leader"])
            if len(leaders) == 1 and (lid := leaders.pop()) in ids:
                return ids[lid]
            time.sleep(0.05)
        raise TimeoutError(f"etcd cluster has no agreed leader after {timeout}s: {last}")

    def followers(self) -> list[EtcdServer]:
        """Running members that are not the leader."""
        lead = self.leader()
        return [m for m in self.running() if m is not lead]

    def kill(self, member: EtcdServer | int) -> EtcdServer:
        """SIGKILL one member (by object or index); returns it."""
        m = member if isinstance(member, EtcdServer) else self.members[member]
        m.kill()
        return m

    def kill_leader(self) -> EtcdServer:
        """Find the leader, SIGKILL it, return it."""
        return self.kill(self.leader())

    def restart(self, member: EtcdServer | int, timeout: float = 15.0) -> EtcdServer:
        """Start a killed member again on its data dir and wait until it is healthy."""
        m = member if isinstance(member, EtcdServer) else self.members[member]
        m.restart(timeout)
        return m

    def wait_healthy(self, timeout: float = 15.0) -> None:
        for m in self.running():
            m.wait_healthy(timeout)

    def stop_all(self) -> None:
        for m in self.members:
            m.kill()


def _make_members(root: Path, size: int, extra: list[str]) -> tuple[list[EtcdServer], str]:
    token = f"pf-{secrets.token_hex(4)}"
    members = [
        EtcdServer(
            name=f"m{i}",
            data_dir=root / f"m{i}.etcd",
            client_url=f"http://127.0.0.1:{free_port()}",
            peer_url=f"http://127.0.0.1:{free_port()}",
            extra_args=list(extra),
            cluster_token=token,
        )
        for i in range(size)
    ]
    return members, ",".join(f"{m.name}={m.peer_url}" for m in members)


@contextlib.contextmanager
def start_etcd_cluster(
    size: int = 3,
    *,
    extra_args: list[str] | None = None,
    enable_v2: bool = False,
    heartbeat_ms: int = 50,
    election_ms: int = 500,
    attempts: int = 3,
) -> Iterator[EtcdCluster]:
    """Start ``size`` members on loopback, wait until all are healthy; kill and remove after."""
    extra = [
        f"--heartbeat-interval={heartbeat_ms}",
        f"--election-timeout={election_ms}",
        *(["--enable-v2=true"] if enable_v2 else []),
        *(extra_args or []),
    ]
    root = Path(tempfile.mkdtemp(prefix="pyflannel-etcd-cluster-"))
    cluster: EtcdCluster | None = None
    try:
        for attempt in range(attempts):
            sub = root / f"try{attempt}"
            members, initial = _make_members(sub, size, extra)
            cluster = EtcdCluster(members, sub)
            for m in members:
                m.start(initial_cluster=initial)
            try:
                cluster.wait_healthy()
                cluster.leader()
                break
            except (RuntimeError, TimeoutError):
                cluster.stop_all()
                # A port taken between free_port() and etcd's bind: try again with new ports.
                clash = any("address already in use" in m.log_text() for m in members)
                if attempt + 1 < attempts and clash:
                    continue
                raise
        assert cluster is not None
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop_all()
        shutil.rmtree(root, ignore_errors=True)
