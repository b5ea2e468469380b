"""Self-tests of the etcd harness: single member, v2 mode, 3-member cluster, TLS + auth."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest

from pyflannel.lab.netns import CommandFailed, http_request
from tests.harness.etcd import EtcdServer, free_port, reap_orphans, start_etcd
from tests.harness.etcd_cluster import EtcdCluster
from tests.harness.etcd_tls import EtcdTLS


def _port(srv: EtcdServer) -> int:
    return int(urllib.parse.urlsplit(srv.client_url).port or 0)


def test_single_member_put_get(etcd: EtcdServer) -> None:
    assert _port(etcd) not in (2379, 2380), "must never use the packaged etcd's port"
    etcd.etcdctl("put", "/coreos.com/network/config", '{"Network":"10.5.0.0/16"}')
    assert etcd.get("/coreos.com/network/config") == '{"Network":"10.5.0.0/16"}'
    assert etcd.get("/absent") is None
    st = etcd.status()
    assert st["leader"] == st["member_id"] and st["version"].startswith("3.4")


def test_single_member_is_off_the_host_network(etcd: EtcdServer) -> None:
    # Network-safety rule: the member without a namespace of its own listens on the session's
    # private loopback (tests/harness/isolation.py), not in the namespace the session came from.
    assert etcd.proc is not None
    member = os.stat(f"/proc/{etcd.proc.pid}/ns/net").st_ino
    assert member == os.stat("/proc/self/ns/net").st_ino
    assert member != os.stat(f"/proc/{os.getppid()}/ns/net").st_ino, "etcd on the host network"


def test_members_a_killed_session_left_are_reaped() -> None:
    data = Path(tempfile.mkdtemp(prefix="pyflannel-etcd-orphan-"))
    try:
        first, second = free_port(), free_port()
        while second == first:  # two calls can return the same free port
            second = free_port()
        urls = [f"http://127.0.0.1:{port}" for port in (first, second)]
        # sh starts the member in the background and exits: like a session killed with -9.
        subprocess.run(
            ["sh", "-c", 'setsid "$@" >/dev/null 2>&1 &', "sh", "etcd", "--data-dir", str(data),
             "--listen-client-urls", urls[0], "--advertise-client-urls", urls[0],
             "--listen-peer-urls", urls[1]],
            check=True,
        )  # fmt: skip
        orphan = _wait_for_pid(str(data))
        assert reap_orphans() >= 1
        _wait_gone(orphan)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _wait_for_pid(arg: str) -> int:
    """The etcd process with ``arg`` in its argv (not the sh that started it, whose argv holds
    ``arg`` too: reaping before sh exited found no orphan, once in a full run)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if proc.name.isdigit() and argv[0] == b"etcd" and arg.encode() in argv:
                    return int(proc.name)
        time.sleep(0.05)
    raise AssertionError(f"no etcd with {arg} in its argv")


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), f"orphan etcd {pid} still running"


def test_v2_written_key_is_invisible_to_v3(etcd_v2: EtcdServer) -> None:
    etcd_v2.v2_set("/coreos.com/network/config", '{"Network":"10.6.0.0/16"}')
    assert etcd_v2.v2_get("/coreos.com/network/config") == '{"Network":"10.6.0.0/16"}'
    # The v2 and v3 stores are separate: a v3 client (flanneld >= 0.x) sees nothing.
    assert etcd_v2.get("/coreos.com/network/config") is None


def test_v2_is_off_by_default(etcd: EtcdServer) -> None:
    status, _, _ = etcd.http("/v2/keys/x")
    assert status == 404


def test_etcd_restart_keeps_data() -> None:
    with start_etcd() as srv:
        srv.put("/k", "v")
        srv.kill()
        assert not srv.running
        srv.restart()
        assert srv.get("/k") == "v"


def test_cluster_put_on_one_read_on_another(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster) == 3 and len(set(etcd_cluster.endpoints)) == 3
    etcd_cluster[0].put("/coreos.com/network/subnets/10.5.1.0-24", '{"PublicIP":"198.51.100.1"}')
    assert etcd_cluster[2].get("/coreos.com/network/subnets/10.5.1.0-24") == (
        '{"PublicIP":"198.51.100.1"}'
    )


def test_cluster_survives_leader_kill(etcd_cluster: EtcdCluster) -> None:
    old = etcd_cluster.kill_leader()
    assert not old.running
    new = etcd_cluster.leader()
    assert new is not old and new.running
    a, b = etcd_cluster.running()
    a.put("/after-kill", "1")
    assert b.get("/after-kill") == "1"
    # A client configured with all endpoints still works (etcdctl fails over).
    out = a.etcdctl("get", "/after-kill", "--print-value-only").stdout
    assert out.strip() == "1"
    etcd_cluster.restart(old)
    assert old.get("/after-kill") == "1"


def test_tls_auth_right_credentials_work(etcd_tls: EtcdTLS) -> None:
    assert etcd_tls.endpoint.startswith("https://127.0.0.1:")
    for p in (etcd_tls.ca_file, etcd_tls.cert_file, etcd_tls.key_file, etcd_tls.wrong_ca_file):
        assert p.exists()
    etcd_tls.etcdctl_as_user("put", f"{etcd_tls.prefix}/config", "{}")
    out = etcd_tls.etcdctl_as_user("get", f"{etcd_tls.prefix}/config", "--print-value-only")
    assert out.stdout.strip() == "{}"


def test_tls_auth_role_is_limited_to_prefix(etcd_tls: EtcdTLS) -> None:
    res = etcd_tls.etcdctl_as_user("put", "/elsewhere", "x", check=False)
    assert res.returncode != 0 and "permission denied" in res.stderr


@pytest.mark.parametrize("case", ["wrong-ca", "wrong-client-cert", "no-tls", "bad-password"])
def test_tls_auth_wrong_credentials_fail(etcd_tls: EtcdTLS, case: str) -> None:
    files, srv = etcd_tls.files, etcd_tls.server
    tls = {
        "wrong-ca": files.wrong_ca_client(),
        "wrong-client-cert": files.wrong_cert_client(),
        "no-tls": None,
        "bad-password": files.client(),
    }[case]
    password = "wrong" if case == "bad-password" else etcd_tls.password
    key = f"{etcd_tls.prefix}/config"
    # Control: the right credentials succeed with the same short dial timeout.
    srv.etcdctl("get", key, auth=(etcd_tls.user, etcd_tls.password), dial_timeout="500ms")
    with pytest.raises(CommandFailed) as err:
        srv.etcdctl("get", key, tls=tls, auth=(etcd_tls.user, password), dial_timeout="500ms")
    # etcdctl only says "context deadline exceeded" for handshake failures; check the cause.
    if case == "bad-password":
        assert "authentication failed" in err.value.stderr
    elif case == "wrong-ca":
        status, _, error = http_request(
            f"{srv.client_url}/health",
            cafile=files.wrong_ca_file,
            certfile=files.client_cert,
            keyfile=files.client_key,
        )
        assert status == 0 and "CERTIFICATE_VERIFY_FAILED" in error
    elif case == "wrong-client-cert":
        assert "failed to verify client certificate" in srv.log_text()


def test_tls_cert_without_password_is_not_a_login(etcd_tls: EtcdTLS) -> None:
    res = etcd_tls.server.etcdctl("put", f"{etcd_tls.prefix}/x", "1", auth=None, check=False)
    assert res.returncode != 0
