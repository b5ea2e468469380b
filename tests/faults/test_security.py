"""Security: etcd with client-cert TLS and auth, and no shell anywhere.

- A lab whose etcd requires TLS client certificates and a user/password (``start_lab(etcd_tls=
  True)``, the harness's TLS + auth member): daemons with the right credentials come up and
  program each other; with a wrong CA, a wrong password or plain http against the TLS endpoint
  the daemon reports one clear error line (what failed, where, what to check) -- never a
  traceback, never the password -- and does not become ready.
- No code path of the daemon, the CNI plugin or the tools runs a shell or sources a file: a
  static scan of the package, and a subnet.env full of shell syntax read by every reader
  (daemon, CNI plugin, mk-docker-opts) without anything being executed.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyflannel.errors import ConfigError
from tests.e2e.helpers import DaemonLab, wait_for
from tests.faults.helpers import fault_lab, healthz, log_text
from tests.harness.fixtures import require_root
from tests.harness.lab import LabEnv

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------- TLS + auth


def tls_flags(env: LabEnv, **override: str) -> list[str]:
    """flanneld's etcd TLS/auth flags for the lab's TLS etcd (``override`` by flag name)."""
    tls = env.tls
    assert tls is not None
    flags = {
        "etcd-cafile": str(tls.ca_file),
        "etcd-certfile": str(tls.cert_file),
        "etcd-keyfile": str(tls.key_file),
        "etcd-username": tls.user,
        "etcd-password": tls.password,
    }
    flags.update(override)
    return [f"--{k}={v}" for k, v in flags.items()]


@pytest.fixture(scope="module")
def tls_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonLab]:
    require_root()
    with fault_lab(
        Path(tmp_path_factory.mktemp("tls-lab")),
        nodes=2,
        etcd="tls",
        daemon_flags=tls_flags,
        pods=False,
    ) as lab:
        yield lab


@pytest.mark.root
@pytest.mark.slow
def test_daemons_work_with_client_cert_tls_and_auth(tls_lab: DaemonLab) -> None:
    lab = tls_lab
    assert lab.etcd.client_url.startswith("https://")
    leases = lab.leases()
    assert {rec.attrs["PublicIP"] for rec in leases.values()} == {str(n.ip) for n in lab.nodes}
    lab.wait_converged(timeout=5)
    tls = lab.env.tls
    assert tls is not None
    for node in lab.nodes:
        log = log_text(lab, node)
        assert "etcd.insecure_http" not in log  # no insecure-connection warning
        assert tls.password not in log, "the etcd password must never be logged"


def run_bad_daemon(lab: DaemonLab, flags: list[str], expect: list[str]) -> str:
    """Start a daemon on n2 with ``flags`` replacing its etcd ones; return its first error line
    once it has logged one containing every string in ``expect``; it must not get ready."""
    node = lab.node("n2")
    base = [a for a in lab.daemon_argv() if not a.startswith("--etcd-")]
    log_path = node.log_dir / f"bad-{time.monotonic_ns()}.log"
    proc = lab.topo.spawn_in_node(node, [*base, *flags], log_path)
    try:

        def error_line() -> str | None:
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            lines = [ln for ln in text.splitlines() if "[error" in ln or '"error"' in ln]
            return next((ln for ln in lines if all(s in ln for s in expect)), None)

        line = wait_for(f"daemon logged an error with {expect}", error_line, timeout=15)
        assert isinstance(line, str)
        text = log_path.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        assert healthz(lab, node, "/readyz")[0] == 503, "must not report ready"
        assert proc.poll() is None, "retries like flanneld (the config may appear later)"
        return line
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrong CA", "wrong password", "http against TLS"])
def test_bad_credentials_give_one_clear_error_line(tls_lab: DaemonLab, case: str) -> None:
    lab = tls_lab
    env = lab.env
    tls = env.tls
    assert tls is not None
    n2 = lab.node("n2")
    lab.stop_daemon(n2)
    try:
        if case == "wrong CA":
            flags = tls_flags(env, **{"etcd-cafile": str(tls.wrong_ca_file)})
            expect = ["TLS handshake", "--etcd-cafile"]
        elif case == "wrong password":
            flags = tls_flags(env, **{"etcd-password": "not-the-password"})
            expect = ["authentication failed", "--etcd-password"]
        else:
            # No certificates at all (with them pyflannel, like flanneld, uses TLS anyway).
            flags = [f for f in tls_flags(env) if f.startswith(("--etcd-user", "--etcd-pass"))]
            flags.append("--etcd-endpoints=" + lab.etcd.client_url.replace("https:", "http:"))
            expect = ["could not reach etcd", "https://"]
        if not any(f.startswith("--etcd-endpoints=") for f in flags):
            flags.append(f"--etcd-endpoints={lab.etcd.client_url}")
        line = run_bad_daemon(lab, flags, expect)
        print(f"\n{case}: {line[:400]}")
        assert tls.password not in line
    finally:
        lab.start_daemon(n2)
        lab.wait_ready(n2)


# --------------------------------------------------------------------------------- no shell

# The lab (a test/dev tool, never run by the daemon or the plugin) enters namespaces with a
# fixed `sh -c` script whose arguments are passed positionally, never interpolated.
ALLOWED_SHELL = {"pyflannel/lab/topology.py"}
SHELLS = {"sh", "bash", "dash", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash"}


def _python_files() -> list[Path]:
    return sorted(p for d in ("pyflannel", "cni_plugin") for p in (REPO / d).rglob("*.py"))


def _shell_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func in (
                "os.system",
                "os.popen",
                "os.spawnl",
                "os.spawnlp",
                "commands.getoutput",
                "subprocess.getoutput",
                "subprocess.getstatusoutput",
            ):
                found.append(f"{path.name}:{node.lineno}: {func}()")
            for kw in node.keywords:
                if kw.arg == "shell" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    found.append(f"{path.name}:{node.lineno}: shell={ast.unparse(kw.value)}")
        if isinstance(node, ast.List | ast.Tuple):
            items = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            for a, b in itertools.pairwise(items):
                if a in SHELLS and b == "-c":
                    found.append(f"{path.name}:{node.lineno}: [{a!r}, '-c', ...]")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            for needle in (". /run/flannel", "source /run/flannel", ". $FLANNEL", "source $"):
                if needle in text:
                    found.append(f"{path.name}:{node.lineno}: sources a file: {text[:60]!r}")
    return found


def test_no_code_path_runs_a_shell() -> None:
    files = _python_files()
    assert len(files) > 30, "scanned the package"
    bad = {
        str(p.relative_to(REPO)): uses
        for p in files
        if (uses := _shell_uses(p)) and str(p.relative_to(REPO)) not in ALLOWED_SHELL
    }
    assert bad == {}
    # The allow-list is not stale: the lab really is the only shell user.
    assert all(_shell_uses(REPO / p) for p in ALLOWED_SHELL)


HOSTILE_ENV = """\
FLANNEL_NETWORK=10.5.0.0/16
FLANNEL_SUBNET=$(touch {m}/subst)10.5.3.1/24
FLANNEL_MTU=`touch {m}/backtick`1450
FLANNEL_IPMASQ=true; touch {m}/semicolon
$(touch {m}/bare)
. {m}/script.sh
source {m}/script.sh
export FLANNEL_OTHER="$(touch {m}/quoted)"
"""


@pytest.fixture
def hostile_env(tmp_path: Path) -> tuple[Path, Path]:
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "script.sh").write_text(f"touch {marks}/sourced\n")
    env = tmp_path / "subnet.env"
    env.write_text(HOSTILE_ENV.format(m=marks))
    return env, marks


def _executed(marks: Path) -> list[str]:
    return sorted(p.name for p in marks.iterdir() if p.name != "script.sh")


def test_subnet_env_with_shell_code_is_parsed_never_executed(
    hostile_env: tuple[Path, Path], tmp_path: Path
) -> None:
    env, marks = hostile_env
    # The daemon's reader (previous subnet.env at start-up).
    from pyflannel.subnet.subnet_env import read_subnet_env, read_subnet_env_vars

    with pytest.raises(ConfigError):
        read_subnet_env(env)
    with pytest.raises(ConfigError):
        read_subnet_env_vars(env)
    # The CNI plugin's reader.
    from cni_plugin.netconf import read_subnet_env as cni_read
    from cni_plugin.protocol import CniError

    with pytest.raises(CniError) as err:
        cni_read(str(env))
    assert "subnet.env" in str(err.value)
    # The CNI plugin and mk-docker-opts as the runtime / a docker unit run them. The delegate
    # is a stub that only leaves a mark: the plugin must stop at subnet.env before it.
    stubs = tmp_path / "cni-bin"
    stubs.mkdir()
    stub = stubs / "bridge"
    stub.write_text(f"#!{sys.executable}\nopen({str(marks / 'delegated')!r}, 'w').close()\n")
    stub.chmod(0o755)
    conf = {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": str(env),
        "dataDir": str(tmp_path / "data"),
    }
    cni_env = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/run/netns/none",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(stubs),
    }
    cni = subprocess.run(
        [sys.executable, "-I", "-m", "cni_plugin"],
        input=json.dumps(conf),
        env=cni_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cni.returncode == 1
    doc = json.loads(cni.stdout)
    assert doc["code"] == 999 and "subnet.env" in doc["msg"], doc
    tools = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyflannel.cli.tools",
            "mk-docker-opts",
            "-f",
            str(env),
            "-d",
            str(tmp_path / "docker_opts.env"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert tools.returncode != 0 and "Traceback" not in tools.stderr, tools.stderr
    assert _executed(marks) == [], "something in subnet.env was executed"


def test_subnet_env_values_with_shell_code_stay_literal(tmp_path: Path) -> None:
    """Quoted values that parse fine keep their `$(...)` as text and run nothing."""
    from pyflannel.subnet.subnet_env import parse_subnet_env_vars

    marks = tmp_path / "m"
    marks.mkdir()
    text = f"FLANNEL_OTHER='$(touch {marks}/a)'\nFLANNEL_X=\"`touch {marks}/b`\"\n"
    got = parse_subnet_env_vars(text)
    assert "$(touch" in got["FLANNEL_OTHER"] and "`touch" in got["FLANNEL_X"], got
    assert list(marks.iterdir()) == []
