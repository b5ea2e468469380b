"""Installing the plugin: the script it writes, the interpreter it names, what it imports.

No root needed: everything happens in a temporary bin directory and the plugin is only asked
for VERSION, "about" and errors here (the real ADD/DEL are in test_cni_bridge.py).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cni_plugin.install import InstallError, install

# Modules the plugin may import at all on its way through ADD/DEL: its own and three C or
# built-in modules. Anything heavier (json → re, subprocess, os, typing) costs start-up time.
ALLOWED_NEW_MODULES = {
    "_json",
    "cni_plugin",
    "cni_plugin.delegation",
    "cni_plugin.netconf",
    "cni_plugin.plugin",
    "cni_plugin.protocol",
}


def run_plugin(
    plugin: Path, env: dict[str, str], stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(plugin)], env=env, input=stdin, capture_output=True, timeout=60, cwd="/"
    )


def shebang(plugin: Path) -> list[str]:
    first = plugin.read_text().split("\n", 1)[0]
    assert first.startswith("#!")
    return first[2:].split()


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    return install(tmp_path / "bin")


def test_writes_an_executable_script_with_the_real_interpreter(installed: Path) -> None:
    assert installed.name == "flannel"
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    interpreter, flags = shebang(installed)
    assert flags == "-IS"
    assert interpreter == os.path.realpath(interpreter)  # no symlink, no venv launcher
    assert "/shims/" not in interpreter
    assert Path(interpreter).read_bytes()[:4] == b"\x7fELF"
    assert interpreter == os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def test_runs_with_an_empty_environment(installed: Path) -> None:
    done = run_plugin(installed, {"CNI_COMMAND": "VERSION"})
    assert done.returncode == 0, done
    assert json.loads(done.stdout)["supportedVersions"][-1] == "1.1.0"
    about = run_plugin(installed, {})
    assert about.returncode == 0 and about.stdout == b""
    assert about.stderr.startswith(b"CNI Plugin flannel version v")


def test_errors_are_json_on_stdout(installed: Path) -> None:
    done = run_plugin(installed, {"CNI_COMMAND": "ADD"}, b"{}")
    assert done.returncode == 1
    assert json.loads(done.stdout) == {
        "code": 4,
        "msg": "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing",
    }


def test_ignores_python_environment_variables(installed: Path, tmp_path: Path) -> None:
    poison = tmp_path / "poison"
    (poison / "cni_plugin").mkdir(parents=True)
    (poison / "cni_plugin" / "__init__.py").write_text("raise SystemExit('poisoned')\n")
    (poison / "_json.py").write_text("raise SystemExit('poisoned')\n")
    env = {"CNI_COMMAND": "VERSION", "PYTHONPATH": str(poison), "PYTHONSTARTUP": "/nonexistent"}
    done = run_plugin(installed, env)
    assert done.returncode == 0 and b"poisoned" not in done.stdout + done.stderr


def test_library_copy_is_precompiled_and_private(installed: Path) -> None:
    libs = list(installed.parent.glob(".flannel-lib-*"))
    assert len(libs) == 1
    pkg = libs[0] / "cni_plugin"
    sources = sorted(p.stem for p in pkg.glob("*.py"))
    assert "plugin" in sources and "install" not in sources
    compiled = {p.name.split(".")[0] for p in (pkg / "__pycache__").glob("*.pyc")}
    assert set(sources) <= compiled


def test_imports_only_what_the_budget_allows(installed: Path) -> None:
    interpreter, _ = shebang(installed)
    lib = str(next(installed.parent.glob(".flannel-lib-*")))
    probe = (
        "import sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]);"
        "import cni_plugin.plugin, cni_plugin.delegation, cni_plugin.netconf;"
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [interpreter, "-IS", "-c", probe, lib], capture_output=True, text=True, check=True
    )
    assert set(done.stdout.split()) <= ALLOWED_NEW_MODULES


def test_reinstall_is_idempotent_and_prunes_old_copies(tmp_path: Path) -> None:
    dest = tmp_path / "bin"
    first = install(dest)
    lib = next(dest.glob(".flannel-lib-*"))
    stale = dest / ".flannel-lib-000000000000"
    stale.mkdir()
    second = install(dest)
    assert first == second
    assert list(dest.glob(".flannel-lib-*")) == [lib]
    assert sorted(p.name for p in dest.iterdir()) == [lib.name, "flannel"]


def test_other_interpreter_gets_its_own_compiled_copy(tmp_path: Path) -> None:
    system = "/usr/bin/python3"
    if not Path(system).exists() or os.path.realpath(system) == os.path.realpath(sys.executable):
        pytest.skip("no second interpreter on this machine")
    dest = tmp_path / "bin"
    install(dest)
    plugin = install(dest, python=system)
    assert shebang(plugin)[0] == os.path.realpath(system)
    assert len(list(dest.glob(".flannel-lib-*"))) == 1
    assert run_plugin(plugin, {"CNI_COMMAND": "VERSION"}).returncode == 0


def test_a_pyenv_shim_is_resolved_to_its_binary(tmp_path: Path) -> None:
    shim = Path.home() / ".pyenv" / "shims" / "python3"
    if not shim.exists():
        pytest.skip("no pyenv shim on this machine")
    plugin = install(tmp_path / "bin", python=str(shim))
    interpreter = shebang(plugin)[0]
    assert "/shims/" not in interpreter
    assert Path(interpreter).read_bytes()[:4] == b"\x7fELF"


def test_rejects_something_that_is_not_python(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    with pytest.raises(InstallError, match=r"did not report its path|older than"):
        install(tmp_path / "bin", python=str(fake))
    with pytest.raises(InstallError, match="not found on PATH"):
        install(tmp_path / "bin", python="no-such-python-here")


def test_a_broken_installation_still_answers_in_json(installed: Path) -> None:
    lib = next(installed.parent.glob(".flannel-lib-*"))
    lib.rename(lib.with_name("moved-away"))
    done = run_plugin(installed, {"CNI_COMMAND": "VERSION"})
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert error["code"] == 999
    assert "cannot load the flannel CNI plugin" in error["msg"]
    assert "re-run pyflannel install-cni" in error["msg"]


FAKE_BRIDGE = """#!/bin/sh
cat > "$FAKE_DIR/stdin"
echo "$CNI_COMMAND" > "$FAKE_DIR/command"
echo "bridge says hi" >&2
printf '%s' "$FAKE_OUT"
exit "$FAKE_EXIT"
"""


@pytest.mark.parametrize("exit_code", [0, 1])
def test_installed_add_hands_over_to_the_delegate(
    installed: Path, tmp_path: Path, exit_code: int
) -> None:
    # The installed plugin execs the ADD delegate: its stdout, stderr and exit code are the
    # runtime's to see, unchanged.
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "bridge").write_text(FAKE_BRIDGE)
    (fake_bin / "bridge").chmod(0o755)
    (tmp_path / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
        "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
    )
    out = '{"cniVersion": "1.0.0", "ips": []}' if exit_code == 0 else '{"code": 7, "msg": "no"}'
    conf = {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "subnetFile": str(tmp_path / "subnet.env"),
        "dataDir": str(tmp_path / "data"),
    }
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "cid-1",
        "CNI_NETNS": "/run/netns/x",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(fake_bin),
        "FAKE_DIR": str(tmp_path),
        "FAKE_OUT": out,
        "FAKE_EXIT": str(exit_code),
    }
    done = run_plugin(installed, env, json.dumps(conf).encode())
    assert (done.returncode, done.stdout, done.stderr) == (
        exit_code,
        out.encode(),
        b"bridge says hi\n",
    )
    saved = (tmp_path / "data" / "cbr0:cid-1:eth0").read_bytes()
    assert saved == b"pyflannel-cni-state/1 cbr0 cid-1 eth0\n" + (tmp_path / "stdin").read_bytes()
    assert (tmp_path / "command").read_text() == "ADD\n"
    # A delegate that cannot be started: a clean error, and nothing saved for it.
    (fake_bin / "bridge").chmod(0o644)
    env["CNI_CONTAINERID"] = "cid-2"
    failed = run_plugin(installed, env, json.dumps(conf).encode())
    assert failed.returncode == 1
    assert json.loads(failed.stdout) == {
        "code": 999,
        "msg": f"fork/exec {fake_bin / 'bridge'}: permission denied",
    }
    assert not (tmp_path / "data" / "cbr0:cid-2:eth0").exists()
