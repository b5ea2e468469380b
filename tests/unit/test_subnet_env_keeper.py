"""subnet.env is put back when deleted or changed while the daemon runs (issue 19)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import trio
from structlog.testing import capture_logs

from pyflannel.subnet.subnet_env import render_subnet_env, subnet_env_for
from pyflannel.subnet.subnet_env_keeper import keep_subnet_env

ENV = subnet_env_for(
    network=ipaddress.IPv4Network("10.5.0.0/16"),
    lease_subnet=ipaddress.IPv4Network("10.5.7.0/24"),
    ipv6_network=None,
    ipv6_lease_subnet=None,
    mtu=1450,
    ipmasq=True,
)


async def test_deleted_or_edited_file_is_restored(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    wanted = render_subnet_env(ENV)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_subnet_env, path, ENV, 0.02)
            for _ in range(100):
                await trio.sleep(0.01)
                if path.exists():
                    break
            assert path.read_text() == wanted
            path.write_text("FLANNEL_SUBNET=10.5.99.1/24\n")
            for _ in range(100):
                await trio.sleep(0.01)
                if path.read_text() == wanted:
                    break
            assert path.read_text() == wanted
            nursery.cancel_scope.cancel()
    reasons = [e["reason"] for e in logs if e["event"] == "subnet_env.restored"]
    assert reasons == ["missing", "changed by someone else"]


async def test_unwritable_path_is_retried_and_logged_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "subnet.env"
    with capture_logs() as logs, trio.move_on_after(0.5):
        await keep_subnet_env(path, ENV, 0.01)
    failed = [e for e in logs if e["event"] == "subnet_env.write_failed"]
    assert failed and failed[0]["log_level"] == "warning"
    assert sum(e["log_level"] == "warning" for e in failed) == 1
    assert len(failed) < 10, "backs off"
