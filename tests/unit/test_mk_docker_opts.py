"""``pyflannel mk-docker-opts`` writes the same bytes as upstream ``dist/mk-docker-opts.sh``."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyflannel.cli.mk_docker_opts import PROG, main, run

DATA = Path(__file__).parent / "data" / "mk_docker_opts"
CASES = sorted(p.name for p in DATA.iterdir() if (p / "case.json").is_file())
VETH = "eth7"
# Deliberate differences from the recorded script (issue 14): -h prints the usage on stdout
# and exits 0.
HELP_REQUESTED = {"help_h", "help_after_flags"}
REPO = Path(__file__).resolve().parents[2]


def test_enough_recorded_cases() -> None:
    assert len(CASES) >= 8


def _fill(text: str, tmp: Path) -> str:
    return (
        text.replace("{in}", str(tmp / "subnet.env"))
        .replace("{out}", str(tmp / "docker_opts.env"))
        .replace("{dir}", str(tmp))
        .replace("{veth}", VETH)
    )


@pytest.mark.parametrize("name", CASES)
def test_matches_upstream_script(name: str, tmp_path: Path) -> None:
    case: dict[str, Any] = json.loads((DATA / name / "case.json").read_text())
    if case["subnet_env"] is not None:
        (tmp_path / "subnet.env").write_text(case["subnet_env"])
    out = tmp_path / "docker_opts.env"
    if case["preexisting_output"] is not None:
        out.write_text(case["preexisting_output"])
    err, std = io.StringIO(), io.StringIO()
    rc = run(
        [_fill(a, tmp_path) for a in case["args"]],
        {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **case["env"]},
        route_table=lambda: _fill(case["ip_route_show"], tmp_path),
        stderr=err,
        stdout=std,
        prog="{prog}",
    )
    if name in HELP_REQUESTED:
        assert (rc, std.getvalue(), err.getvalue()) == (0, case["stderr"], "")
        return
    assert rc == case["rc"]
    assert err.getvalue() == _fill(case["stderr"], tmp_path)
    assert out.exists() == case["output_created"]
    if case["output_created"]:
        expected = (DATA / name / "expected_output").read_bytes()
        assert out.read_bytes() == _fill(expected.decode(), tmp_path).encode()


def test_malformed_subnet_env_is_an_error_not_executed(tmp_path: Path) -> None:
    env = tmp_path / "subnet.env"
    env.write_text(f"touch {tmp_path}/pwned\n")
    err = io.StringIO()
    rc = run(["-f", str(env), "-d", str(tmp_path / "o")], {}, route_table=str, stderr=err)
    assert rc == 1
    assert f"{env}:1: expected KEY=VALUE" in err.getvalue()
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "o").exists()


def test_unwritable_output(tmp_path: Path) -> None:
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_SUBNET=10.1.74.1/24\n")
    err = io.StringIO()
    rc = run(
        ["-f", str(env), "-d", str(tmp_path / "no" / "such" / "dir")],
        {},
        route_table=str,
        stderr=err,
    )
    assert rc == 1
    assert "cannot write" in err.getvalue()


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_usage_and_exits_0(flag: str) -> None:
    """Issue 14: --help said "Illegal option --" and exited 1."""
    out, err = io.StringIO(), io.StringIO()
    assert run([flag], {}, stderr=err, stdout=out) == 0
    assert out.getvalue().startswith(f"{PROG} [-f FLANNEL-ENV-FILE]")
    assert err.getvalue() == ""


def test_usage_names_the_tool() -> None:
    err = io.StringIO()
    assert run(["-?"], {}, stderr=err) == 1
    assert err.getvalue().startswith(f"{PROG} [-f FLANNEL-ENV-FILE]")


GOOD = {"FLANNEL_SUBNET": "10.1.74.1/24", "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}


@pytest.mark.parametrize(
    ("env", "args", "names"),
    [
        ({"FLANNEL_SUBNET": '10.5.1.1/24" ; touch X ; "'}, [], "FLANNEL_SUBNET="),
        ({"FLANNEL_SUBNET": "10.5.1.300/24"}, [], "FLANNEL_SUBNET="),
        ({"FLANNEL_SUBNET": "$(touch X)"}, [], "FLANNEL_SUBNET="),
        ({"FLANNEL_SUBNET": "2001:db8::1/64"}, [], "FLANNEL_SUBNET="),
        ({"FLANNEL_MTU": "1450; touch X"}, [], "FLANNEL_MTU="),
        ({"FLANNEL_MTU": "-1"}, [], "FLANNEL_MTU="),
        ({"FLANNEL_MTU": "9" * 5000}, [], "FLANNEL_MTU="),
        ({"FLANNEL_IPMASQ": "yes"}, [], "FLANNEL_IPMASQ"),
        ({}, ["-k", "X=1;touch"], "-k "),
        ({"DOCKER_OPTS": '" ; touch X ; "'}, [], "DOCKER_OPTS="),
        ({"DOCKER_OPT_EXTRA": "`touch X`"}, [], "DOCKER_OPT_EXTRA="),
    ],
)
def test_bad_values_write_nothing_and_name_the_key(
    tmp_path: Path, env: dict[str, str], args: list[str], names: str
) -> None:
    """Issue 14: FLANNEL_SUBNET with shell code was copied into docker_opts.env."""
    out = tmp_path / "docker_opts.env"
    err = io.StringIO()
    argv = ["-f", str(tmp_path / "none.env"), "-d", str(out), *args]  # values from the env
    rc = run(argv, {**GOOD, **env}, route_table=str, stderr=err)
    assert rc == 1
    assert not out.exists()
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and names in lines[0], lines
    assert not (tmp_path / "X").exists()


# --- against the kernel's routing table, in a private network namespace -------------------


@pytest.fixture
def netns() -> Iterator[str]:
    tag = secrets.token_hex(2)
    name, veth = f"pf{tag}md", f"pf{tag}m0"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            ["link", "add", veth, "type", "veth", "peer", "name", f"pf{tag}m1"],
            ["addr", "add", "198.51.100.2/24", "dev", veth],
            ["link", "set", veth, "up"],
            ["link", "set", f"pf{tag}m1", "up"],
            ["route", "add", "10.1.74.0/24", "via", "198.51.100.1"],
        ):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.root
def test_real_routing_table_conflict(netns: str, tmp_path: Path) -> None:
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    out = tmp_path / "docker_opts.env"
    tool = [sys.executable, "-m", "pyflannel.cli.mk_docker_opts"]
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, *tool, "-f", str(env), "-d", str(out), "-c"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        "Your routing table already contains the subnet: 10.1.74.0/24 via 198.51.100.1 dev pf"
    )
    assert out.read_text() == 'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450"\n'


def test_main_reads_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_MTU=1450\n")
    monkeypatch.setenv("DOCKER_OPTS", "--debug")
    out = tmp_path / "o.env"
    assert main(["-f", str(env), "-d", str(out), "-c"]) == 0
    assert out.read_text() == 'DOCKER_OPTS="--debug  --mtu=1450"\n'


def test_the_issue_probe_through_subnet_env(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_SUBNET='10.5.1.1/24\" ; touch X ; \"'\nFLANNEL_MTU=1450\n")
    out = tmp_path / "docker_opts.env"
    err = io.StringIO()
    assert run(["-f", str(path), "-d", str(out)], {}, route_table=str, stderr=err) == 1
    assert not out.exists() and not (tmp_path / "X").exists()
    assert err.getvalue().count("\n") == 1 and "FLANNEL_SUBNET" in err.getvalue()
