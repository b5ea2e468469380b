"""The systemd units in systemd/ pass ``systemd-analyze verify``.

``verify`` refuses a unit whose ExecStart binary does not exist, so each unit is copied to a
temporary directory with the install paths (/usr/local/bin/pyflanneld, /usr/local/bin/pyflannel,
/usr/bin/dockerd) replaced by executables that exist here. The docker drop-in is verified
attached to a stub docker.service; ``SYSTEMD_UNIT_PATH`` makes verify load drop-ins from the
temporary directory (a control drop-in with an unknown key proves they are really parsed).
Runs without systemd as PID 1: ``verify`` only parses and checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _script(name: str) -> str:
    """The installed console script ``name`` of this environment (the venv's bin dir)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        assert found, f"{name} is not installed in this environment"
        return found
    return str(path)


def _substitute(text: str) -> str:
    return (
        text.replace("/usr/local/bin/pyflanneld", _script("pyflanneld"))
        .replace("/usr/local/bin/pyflannel ", _script("pyflannel") + " ")
        .replace("/usr/bin/dockerd", shutil.which("true") or "/bin/true")
    )


def _verify(unit_dir: Path, *units: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:", "SYSTEMD_LOG_COLOR": "0"}
    env.pop("SYSTEMD_LOG_LEVEL", None)
    return subprocess.run(
        [ANALYZE, "verify", *(str(unit_dir / u) for u in units)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order (repeated keys kept, as systemd reads them)."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(text: str, section: str, key: str) -> list[str]:
    return [v for s, k, v in _directives(text) if (s, k) == (section, key)]


def test_pyflanneld_service_verifies(tmp_path: Path) -> None:
    (tmp_path / "pyflanneld.service").write_text(
        _substitute((UNITS / "pyflanneld.service").read_text())
    )
    res = _verify(tmp_path, "pyflanneld.service")
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr  # not even a warning


def test_pyflanneld_service_needs_only_the_install_path(tmp_path: Path) -> None:
    """Unmodified, the only complaint allowed is the missing /usr/local/bin/pyflanneld."""
    shutil.copy(UNITS / "pyflanneld.service", tmp_path / "pyflanneld.service")
    res = _verify(tmp_path, "pyflanneld.service")
    if Path("/usr/local/bin/pyflanneld").exists():
        assert res.returncode == 0, res.stderr
        return
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [
        "pyflanneld.service: Command /usr/local/bin/pyflanneld is not executable: No such file or "
        "directory"
    ], res.stderr


def test_pyflanneld_service_contract() -> None:
    text = (UNITS / "pyflanneld.service").read_text()
    # READY=1 only after subnet.env is written: docker/CNI must wait for it (flannel #205)
    assert _values(text, "Service", "Type") == ["notify"]
    (exec_start,) = _values(text, "Service", "ExecStart")
    assert exec_start.split()[0] == "/usr/local/bin/pyflanneld"
    # SIGTERM keeps lease, device and routes: the zero-downtime restart path
    assert _values(text, "Service", "KillSignal") in ([], ["SIGTERM"])
    assert "docker.service" in " ".join(_values(text, "Unit", "Before"))


def test_docker_dropin_verifies(tmp_path: Path) -> None:
    dropins = tmp_path / "docker.service.d"
    dropins.mkdir()
    (tmp_path / "docker.service").write_text(
        "[Unit]\nDescription=stub of the packaged docker.service\n\n"
        f"[Service]\nExecStart={shutil.which('true') or '/bin/true'}\n"
    )
    (dropins / "flannel.conf").write_text(
        _substitute((UNITS / "docker.service.d" / "flannel.conf").read_text())
    )
    (tmp_path / "pyflanneld.service").write_text(
        _substitute((UNITS / "pyflanneld.service").read_text())
    )
    res = _verify(tmp_path, "docker.service", "pyflanneld.service")
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr

    # control: a broken drop-in next to ours is reported, so ours was really parsed
    (dropins / "zz-control.conf").write_text("[Service]\nNoSuchDirective=1\n")
    res = _verify(tmp_path, "docker.service")
    assert "zz-control.conf" in res.stderr and "NoSuchDirective" in res.stderr
    assert "flannel.conf" not in res.stderr


def test_docker_dropin_contract() -> None:
    text = (UNITS / "docker.service.d" / "flannel.conf").read_text()
    assert "pyflanneld.service" in _values(text, "Unit", "After")
    (pre,) = _values(text, "Service", "ExecStartPre")
    argv = pre.split()
    assert argv[:2] == ["/usr/local/bin/pyflannel", "mk-docker-opts"]
    written = argv[argv.index("-d") + 1]
    # the file mk-docker-opts writes is the one the service reads (optional: leading "-")
    assert _values(text, "Service", "EnvironmentFile") == [f"-{written}"]
    # the drop-in resets the packaged ExecStart before setting its own
    assert _values(text, "Service", "ExecStart")[0] == ""
    assert "$DOCKER_OPTS" in _values(text, "Service", "ExecStart")[1]


# --- what the journal gets: pyflanneld's log lines on stderr ------------------------------------


def _daemon_log_lines(tmp_path: Path, *flags: str) -> list[str]:
    """Start pyflanneld against a closed loopback port (it logs, then retries every second),
    collect stderr until the first retry message, stop it with SIGTERM."""
    import selectors
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyflannel", "--etcd-endpoints=http://127.0.0.1:1",
         f"--subnet-file={tmp_path / 'subnet.env'}", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("network config" in ln for ln in lines):
            if sel.select(timeout=0.5):
                line = proc.stderr.readline()
                if not line:
                    break
                lines.append(line.rstrip("\n"))
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=15)
        lines += rest.splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, lines  # SIGTERM: "daemon.exiting" and exit 0
    return [ln for ln in lines if ln.strip()]


def test_log_format_json_gives_json_lines(tmp_path: Path) -> None:
    import json

    lines = _daemon_log_lines(tmp_path, "--log-format=json")
    docs = [json.loads(ln) for ln in lines]  # every line is one JSON object
    assert all({"event", "level", "timestamp"} <= set(d) for d in docs), docs
    retry = next(d for d in docs if "network config" in d["event"])
    assert retry["level"] == "error" and "127.0.0.1:1" in retry["error"]
    assert docs[-1]["event"] == "daemon.exiting"


def test_default_log_format_is_key_value(tmp_path: Path) -> None:
    import re

    lines = _daemon_log_lines(tmp_path)
    line_re = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[(debug|info|warning|error)\s*\] \S")
    assert all(line_re.match(ln) for ln in lines), lines
    assert not any("\x1b[" in ln for ln in lines)  # no colours when stderr is not a terminal
    retry = next(ln for ln in lines if "network config" in ln)
    assert re.search(r" error='etcd get \S+ failed: could not reach etcd at http://127", retry)
    assert lines[-1].endswith("daemon.exiting")
