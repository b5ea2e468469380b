"""No traceback reaches the terminal from any start-up failure (issue 19).

The real daemon (``python -m pyflannel``) is started on one lab node for each failure an
operator meets at start-up; every case asserts one clear line that names the problem, no
``Traceback``, and the documented outcome: an exit code, or -- where flanneld keeps going --
that the daemon stays alive (it is then stopped with SIGTERM and must exit 0).

=========================  ==========================================================
failure                    outcome
=========================  ==========================================================
bad flag                   exit 2, ``pyflanneld: …`` on stderr
etcd unreachable (http)    keeps retrying every second (flanneld too); says "cannot
                           connect", never "TLS"
bad network config         keeps retrying (the config may be fixed in etcd)
no interface               exit 1, InterfaceError
healthz port taken         exit 1, names the address and port
subnet-file dir unwritable exit 1, names the path
MAC file corrupt           warns, picks another MAC, runs
NOTIFY_SOCKET bogus        warns once, runs
=========================  ==========================================================

The last test is the one failure that comes after start-up: the network config changing in etcd
while the daemon runs (exit 1, and the restart uses the new config).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyflannel.lab.netns import exec_argv
from tests.e2e.helpers import ETCD_PREFIX, NETWORK, wait_for
from tests.harness.fixtures import require_root
from tests.harness.lab import LabEnv, start_lab

pytestmark = pytest.mark.root

# An underlay address no lab host has: ARP gets no answer, gRPC's connect fails with
# "tcp handshaker shutdown" -- the text that used to be mistaken for a TLS failure.
NOBODY = "198.51.100.249"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEnv]:
    require_root()
    with start_lab(1, state_root=Path(tmp_path_factory.mktemp("startup-lab"))) as env:
        assert env.etcd is not None
        env.etcd.put(
            f"{ETCD_PREFIX}/config",
            json.dumps({"Network": str(NETWORK), "Backend": {"Type": "vxlan"}}),
        )
        yield env


@dataclass
class Run:
    """One daemon run: its process and the log it writes."""

    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def lines(self, pattern: str) -> list[str]:
        return [ln for ln in self.text().splitlines() if re.search(pattern, ln)]

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"daemon did not exit within {timeout}s:\n{self.text()}") from None

    def wait_line(self, pattern: str, timeout: float = 30.0) -> str:
        def probe() -> str | None:
            found = self.lines(pattern)
            if not found and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.text()}")
            return found[0] if found else None

        line = wait_for(f"log line {pattern!r}", probe, timeout, interval=0.1)
        assert isinstance(line, str)
        return line

    def stop(self) -> int:
        """SIGTERM; the exit status (0 expected)."""
        assert self.proc.poll() is None, f"daemon died:\n{self.text()}"
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(15.0)


def _start(
    lab: LabEnv,
    name: str,
    flags: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
) -> Run:
    node = lab.node("n1")
    log = node.log_dir / f"startup-{name}.log"
    log.unlink(missing_ok=True)
    iface = [] if any(f.startswith("--iface=") for f in flags) else ["--iface=eth0"]
    argv = [
        sys.executable, "-m", "pyflannel", f"--etcd-endpoints={lab.etcd_endpoint}",
        *iface, *flags,
    ]  # fmt: skip
    full_env = None if env is None else {**os.environ, **env}
    return Run(lab.topo.spawn_in_node(node, argv, log, env=full_env), log)


def _no_traceback(run: Run) -> None:
    assert "Traceback" not in run.text(), run.text()


def _fatal_line(run: Run) -> str:
    """The one ``daemon.stopped`` line of a run that must exit 1 (and no traceback)."""
    assert run.wait_exit() == 1
    line = run.wait_line("daemon.stopped")
    assert len(run.lines("daemon.stopped")) == 1, run.text()
    _no_traceback(run)
    return line


def test_bad_flag_exits_2_with_one_line(lab: LabEnv) -> None:
    run = _start(lab, "bad-flag", ["--subnet-lease-ttl=soon"])
    assert run.wait_exit() == 2
    assert len(run.lines(r"^pyflanneld: .*subnet-lease-ttl")) == 1, run.text()
    _no_traceback(run)


def test_unreachable_http_etcd_says_cannot_connect_and_keeps_retrying(lab: LabEnv) -> None:
    run = _start(lab, "no-etcd", [f"--etcd-endpoints=http://{NOBODY}:2379"])
    line = run.wait_line("could not get the network config")
    assert "cannot connect" in line and f"http://{NOBODY}:2379" in line, line
    assert "TLS" not in line and "cafile" not in line, line
    time.sleep(2.5)  # two more retries: logged at debug level only
    assert len(run.lines("could not get the network config")) == 1, run.text()
    assert run.stop() == 0
    _no_traceback(run)


def test_bad_network_config_keeps_retrying_with_one_line(lab: LabEnv) -> None:
    assert lab.etcd is not None
    lab.etcd.put("/bad/config", '{"Network": "10.5.0.0/33"}')
    run = _start(lab, "bad-config", ["--etcd-prefix=/bad"])
    line = run.wait_line("could not get the network config")
    assert "10.5.0.0/33" in line, line
    assert run.proc.poll() is None
    assert run.stop() == 0
    _no_traceback(run)


def test_no_interface_exits_1(lab: LabEnv) -> None:
    line = _fatal_line(_start(lab, "no-iface", ["--iface=nosuch0"]))
    assert "InterfaceError" in line and "nosuch0" in line, line


def test_healthz_port_taken_exits_1_naming_address_and_port(lab: LabEnv) -> None:
    node = lab.node("n1")
    hold_port = (
        "import socket,time; s=socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        "s.bind(('127.0.0.1', 10299)); s.listen(); print('up', flush=True); time.sleep(60)"
    )
    listener = subprocess.Popen(
        exec_argv(node.ns, [sys.executable, "-c", hold_port]), stdout=subprocess.PIPE
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline() == b"up\n"
        run = _start(lab, "port-taken", ["--healthz-port=10299", "--healthz-ip=127.0.0.1"])
        line = _fatal_line(run)
    finally:
        listener.kill()
        listener.wait(10)
    assert "127.0.0.1:10299" in line and "--healthz-port" in line, line
    assert "Address already in use" in line, line


def test_unwritable_subnet_file_dir_exits_1_naming_the_path(lab: LabEnv) -> None:
    node = lab.node("n1")
    (node.run_flannel_dir / "plainfile").write_text("not a directory\n")
    line = _fatal_line(_start(lab, "no-dir", ["--subnet-file=/run/flannel/plainfile/subnet.env"]))
    assert "/run/flannel/plainfile" in line and "ConfigError" in line, line


def test_corrupt_mac_file_and_bogus_notify_socket_warn_and_run(lab: LabEnv) -> None:
    """Both are noticed with one warning each; the daemon sets up fully and stays up."""
    node = lab.node("n1")
    (node.run_flannel_dir / "vxlan-1.mac").write_text("zz:not:a:mac\n")
    run = _start(lab, "side", [], env={"NOTIFY_SOCKET": "/run/nonexistent/notify.sock"})
    run.wait_line("sdnotify.failed")
    assert len(run.lines("mac_file_invalid")) == 1, run.text()
    assert len(run.lines("sdnotify.failed")) == 1, run.text()
    assert "/run/nonexistent/notify.sock" in run.lines("sdnotify.failed")[0]
    mac = (node.run_flannel_dir / "vxlan-1.mac").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac), mac
    time.sleep(1.0)
    assert run.stop() == 0
    _no_traceback(run)


def test_network_config_change_while_running_exits_1_then_restarts_with_it(
    lab: LabEnv,
) -> None:
    """Issue 19 #7 (a deliberate difference, docs/compatibility.md): a reformatted or invalid
    config is no change; a new Network makes the daemon exit 1 with one line, and the restart
    (what systemd's Restart=on-failure does) runs with the new Network."""
    assert lab.etcd is not None
    key = "/change/config"
    old = {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}
    lab.etcd.put(key, json.dumps(old))
    env = {"PYFLANNEL_CONFIG_CHECK_SECONDS": "0.3"}
    run = _start(lab, "change", ["--etcd-prefix=/change"], env=env)
    run.wait_line("daemon.subnet_file_written")
    lab.etcd.put(key, json.dumps(old, indent=2))  # same config, other text
    lab.etcd.put(key, '{"Network": "10.6.0.0/40"}')  # invalid: reported once, ignored
    run.wait_line("config.change_ignored")
    time.sleep(1.0)
    assert run.proc.poll() is None, run.text()
    assert len(run.lines("config.change_ignored")) == 1, run.text()
    lab.etcd.put(key, json.dumps({**old, "Network": "10.6.0.0/16"}))
    line = _fatal_line(run)
    assert "network config in etcd changed" in line and "10.6.0.0/16" in line, line

    again = _start(lab, "change-restart", ["--etcd-prefix=/change"], env=env)
    again.wait_line("daemon.subnet_file_written")
    env_text = (lab.node("n1").run_flannel_dir / "subnet.env").read_text()
    assert "FLANNEL_NETWORK=10.6.0.0/16" in env_text, env_text
    assert again.stop() == 0
    _no_traceback(again)


def test_sigterm_exits_promptly_while_etcd_hangs(lab: LabEnv) -> None:
    """A stop must not wait on etcd: with the etcd process frozen (every call and the watch
    stream hang, as behind a dead link), SIGTERM still ends the daemon, exit 0, within two
    seconds; systemd would otherwise SIGKILL it after TimeoutStopSec."""
    assert lab.etcd is not None and lab.etcd.proc is not None
    run = _start(lab, "frozen-etcd", [])
    run.wait_line("daemon.subnet_file_written")
    os.killpg(lab.etcd.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(0.5)  # let renewals/watches get stuck in flight
        started = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        code = run.wait_exit(15.0)
        took = time.monotonic() - started
    finally:
        os.killpg(lab.etcd.proc.pid, signal.SIGCONT)
    assert code == 0, run.text()
    assert took < 2.0, f"exit took {took:.1f}s:\n{run.text()}"
    _no_traceback(run)
