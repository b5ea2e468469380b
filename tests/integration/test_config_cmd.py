"""``pyflannel config get|set|validate`` against a real etcd, including the v2/v3 diagnosis
against an etcd started with ``--enable-v2`` (flannel #755, #1057, #1191, #1584).

Most tests call the tool's ``main()`` in-process (what ``pyflannel config`` runs), with stdin,
the environment and the output captured; a few run it as a real subprocess
(``python -m pyflannel.cli.tools config ...``) with a pipe or a pseudo-terminal as stdin. Exit
codes, stdout and stderr are what is asserted.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
import trio

from pyflannel.cli import config_cmd
from pyflannel.cli.config_cmd import config_diff, describe_config
from pyflannel.cli.etcd_tool_opts import new_registry
from pyflannel.cli.flags import parse_flags
from pyflannel.config import parse_network_config
from pyflannel.errors import ConfigError
from pyflannel.inspect.etcd_http import HttpAnswer
from pyflannel.inspect.missing_config import V2Probe, classify_v2_answer, missing_config_text
from tests.harness.etcd import EtcdServer, etcdctl_env
from tests.harness.etcd_tls import start_etcd_tls

CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'


def new_prefix() -> str:
    return f"/pf{secrets.token_hex(3)}/network"


Tool = Callable[..., "subprocess.CompletedProcess[str]"]


def tool_process(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``pyflannel config ARGS`` as a separate process."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pyflannel.cli.tools", "config", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        check=False,
    )


@pytest.fixture
def keep_structlog() -> Iterator[None]:
    """The tool's main() reconfigures structlog for the process; put it back afterwards."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.fixture
def tool(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keep_structlog: None
) -> Tool:
    """``pyflannel config ARGS`` in-process: stdin is ``stdin`` (not a terminal), the
    ``FLANNELD_*`` environment exactly ``env``."""

    def run(
        *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        for key in [k for k in os.environ if k.startswith("FLANNELD_")]:
            monkeypatch.delenv(key)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        capsys.readouterr()
        code = config_cmd.main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


def flags(srv: EtcdServer, prefix: str) -> list[str]:
    return [f"--etcd-endpoints={srv.client_url}", f"--etcd-prefix={prefix}"]


# --- offline validation: the daemon's rules and messages -------------------------------------


INVALID = [
    '{"Network": "10.5.0.0/30"}',
    '{"Network": "10.5.0.0/16", "SubnetLen": 31}',
    '{"Network": "10.5.0.0/16", "SubnetLen": 15}',
    '{"Network": "10.5.0.0/16", "SubnetMin": "10.6.0.0"}',
    '{"Network": "10.5.0.0/16", "SubnetMax": "10.5.3.7"}',
    '{"Network": "10.5.0.0/16", "Backend": {"Type": "aws-vpc"}}',
    '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": "one"}}',
    '{"EnableIPv4": false}',
    '{"Network": 5}',
    "not json",
    '{"Network": "127.0.0.0/8"}',  # issue 14: loopback was accepted
    '{"Network": "126.0.0.0/7"}',
    '{"EnableIPv6": true, "IPv6Network": "::/120", "Network": "10.5.0.0/16"}',
]


@pytest.mark.parametrize("text", INVALID)
def test_validate_file_gives_the_daemons_message(tool: Tool, tmp_path: Path, text: str) -> None:
    path = tmp_path / "net.json"
    path.write_text(text)
    # The message the daemon would log for this config:
    try:
        cfg = parse_network_config(text)
        from pyflannel.config import vxlan_options

        vxlan_options(cfg)
        raise AssertionError(f"{text} unexpectedly valid")
    except ConfigError as exc:
        expected = str(exc)
    res = tool("validate", str(path))
    assert res.returncode == 1
    assert res.stderr == f"{path}: invalid: {expected}\n"
    assert res.stdout == ""


def test_validate_file_and_stdin_valid(tmp_path: Path) -> None:
    tool = tool_process  # a real process: stdin is a pipe
    path = tmp_path / "net.json"
    path.write_text('{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4}}\n')
    res = tool("validate", str(path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"{path}: valid flannel network config",
        "  Network 10.5.0.0/16: subnets /24 from 10.5.1.0 to 10.5.255.0 (255 subnets)",
        "  Backend vxlan (VNI 4, UDP port 8472 (kernel default), device MTU = interface MTU - 50)",
        "  traffic rules: iptables",
    ]
    res = tool("validate", "-", stdin='{"Network": "10.9.0.0/24", "Backend": {"Type": "host-gw"}}')
    assert res.returncode == 0, res.stderr
    assert "Network 10.9.0.0/24: subnets /26 from 10.9.0.64 to 10.9.0.192 (3 subnets)" in res.stdout
    assert "Backend host-gw" in res.stdout
    missing = tool("validate", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


# --- get / validate / set against etcd v3 ------------------------------------------------------


def test_get_and_validate_missing_config(tool: Tool, etcd: EtcdServer) -> None:
    prefix = new_prefix()
    for action in ("get", "validate"):
        res = tool(action, *flags(etcd, prefix))
        assert res.returncode == 1
        assert res.stderr.startswith(
            "flannel config not found in etcd store. Did you create your config using etcdv3 "
            f"API? (looked for {prefix}/config at {etcd.client_url})"
        )
        # the plain fixture has no v2 API: say so, and how to create the v3 key
        assert "v2 API is off" in res.stderr
        assert f"ETCDCTL_API=3 etcdctl --endpoints={etcd.client_url} put {prefix}/config" in (
            res.stderr
        )


def test_set_get_validate_roundtrip(tool: Tool, etcd: EtcdServer, tmp_path: Path) -> None:
    prefix = new_prefix()
    key = f"{prefix}/config"
    path = tmp_path / "net.json"
    path.write_text(CONFIG + "\n")

    # without --yes and without a terminal: refused, nothing written
    res = tool("set", *flags(etcd, prefix), str(path))
    assert res.returncode == 1
    assert "stdin is not a terminal; pass --yes" in res.stderr
    assert f"+++ {path}" in res.stdout and f"+{CONFIG}" in res.stdout
    assert etcd.get(key) is None

    res = tool("set", *flags(etcd, prefix), str(path), "--yes")
    assert res.returncode == 0, res.stderr
    assert f"--- {key} (etcd, absent)" in res.stdout
    assert res.stdout.endswith(f"wrote {key}\n")
    assert etcd.get(key) == CONFIG  # the trailing newline is not part of the value

    res = tool("get", *flags(etcd, prefix))
    assert res.returncode == 0 and res.stdout == CONFIG + "\n"
    res = tool("validate", *flags(etcd, prefix))
    assert res.returncode == 0 and res.stdout.startswith(f"{key}: valid flannel network config")

    # same again: nothing to write
    res = tool("set", *flags(etcd, prefix), str(path), "-y")
    assert res.returncode == 0
    assert res.stdout == f"{key} already holds this config; nothing written\n"

    # a change from stdin shows a real diff; stdin cannot confirm, so --yes is required
    new = '{"Network": "10.6.0.0/16", "Backend": {"Type": "host-gw"}}'
    refused = tool("set", *flags(etcd, prefix), "-", stdin=new)
    assert refused.returncode == 1 and "came from stdin" in refused.stderr
    assert etcd.get(key) == CONFIG
    res = tool("set", *flags(etcd, prefix), "-", "--yes", stdin=new)
    assert res.returncode == 0, res.stderr
    assert f"-{CONFIG}\n+{new}\n" in res.stdout
    assert etcd.get(key) == new


def test_set_refuses_invalid_config(tool: Tool, etcd: EtcdServer) -> None:
    prefix = new_prefix()
    etcd.put(f"{prefix}/config", CONFIG)
    res = tool("set", *flags(etcd, prefix), "-", "--yes", stdin='{"Network": "10.5.0.0/30"}')
    assert res.returncode == 1
    assert "invalid, nothing written: network is too small" in res.stderr
    assert etcd.get(f"{prefix}/config") == CONFIG


def test_invalid_stored_config(tool: Tool, etcd: EtcdServer) -> None:
    prefix = new_prefix()
    etcd.put(f"{prefix}/config", '{"Network": "10.5.0.0/16", "SubnetLen": 31}')
    res = tool("validate", *flags(etcd, prefix))
    assert res.returncode == 1
    assert res.stderr.startswith(f"{prefix}/config: invalid: SubnetLen must be less than /31")


def test_flags_from_flanneld_environment(tool: Tool, etcd: EtcdServer) -> None:
    prefix = new_prefix()
    etcd.put(f"{prefix}/config", CONFIG)
    env = {"FLANNELD_ETCD_ENDPOINTS": etcd.client_url, "FLANNELD_ETCD_PREFIX": prefix}
    res = tool("get", env=env)
    assert res.returncode == 0 and res.stdout == CONFIG + "\n"


def test_unreachable_etcd_is_one_clear_line() -> None:
    tool = tool_process  # a real process: no traceback on stderr
    res = tool("get", "--etcd-endpoints=http://127.0.0.1:1")
    assert res.returncode == 1
    assert res.stderr.startswith("pyflannel config get: etcd get /coreos.com/network/config failed")
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


async def test_set_is_compare_and_swap(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    opts = parse_flags(flags(etcd, prefix), {})
    key = f"{prefix}/config"
    reg = new_registry(opts)
    try:
        assert await reg.put_config(CONFIG, expected=None)
        assert not await reg.put_config("{}", expected=None)  # no longer absent
        assert not await reg.put_config("{}", expected="something else")
        assert await trio.to_thread.run_sync(etcd.get, key) == CONFIG
        assert await reg.put_config("{}", expected=CONFIG)
        assert await trio.to_thread.run_sync(etcd.get, key) == "{}"
    finally:
        reg.close()


# --- the v2 diagnosis ----------------------------------------------------------------------------


def test_config_written_through_v2_api(tool: Tool, etcd_v2: EtcdServer) -> None:
    prefix = new_prefix()
    key = f"{prefix}/config"
    etcd_v2.v2_set(key, CONFIG)  # what `etcdctl set` (API v2) did in old setup guides
    assert etcd_v2.get(key) is None  # invisible to v3

    res = tool("get", *flags(etcd_v2, prefix))
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines[0].startswith("flannel config not found in etcd store. Did you create your")
    assert lines[1].startswith(f"{key} exists in etcd's v2 store: it was written through the v2")
    fix = f"ETCDCTL_API=3 etcdctl --endpoints={etcd_v2.client_url} put {key} {shlex.quote(CONFIG)}"
    assert lines[-1] == f"  {fix}"

    # the printed command really fixes it
    subprocess.run(["sh", "-c", fix], check=True, capture_output=True, env=etcdctl_env())
    res = tool("get", *flags(etcd_v2, prefix))
    assert res.returncode == 0 and res.stdout == CONFIG + "\n"
    assert tool("validate", *flags(etcd_v2, prefix)).returncode == 0


def test_v2_key_absent_and_set_note(tool: Tool, etcd_v2: EtcdServer) -> None:
    prefix = new_prefix()
    res = tool("validate", *flags(etcd_v2, prefix))
    assert res.returncode == 1 and f"the v2 store has no {prefix}/config either" in res.stderr
    etcd_v2.v2_set(f"{prefix}/config", CONFIG)
    res = tool("set", *flags(etcd_v2, prefix), "-", "-y", stdin=CONFIG)
    assert res.returncode == 0, res.stderr
    assert "exists only in etcd's v2 store" in res.stdout
    assert etcd_v2.get(f"{prefix}/config") == CONFIG


def test_v2_diagnosis_with_tls_and_auth(tool: Tool) -> None:
    with start_etcd_tls(enable_v2=True) as tls:
        key = f"{tls.prefix}/config"
        tls.server.v2_set(key, CONFIG)
        env = {
            "FLANNELD_ETCD_ENDPOINTS": tls.endpoint,
            "FLANNELD_ETCD_CAFILE": str(tls.ca_file),
            "FLANNELD_ETCD_CERTFILE": str(tls.cert_file),
            "FLANNELD_ETCD_KEYFILE": str(tls.key_file),
            "FLANNELD_ETCD_USERNAME": tls.user,
            "FLANNELD_ETCD_PASSWORD": tls.password,
        }
        res = tool("get", env=env)
        assert res.returncode == 1, res.stderr
        assert f"{key} exists in etcd's v2 store" in res.stderr
        fix = res.stderr.splitlines()[-1].strip()
        assert fix == (
            f"ETCDCTL_API=3 etcdctl --endpoints={tls.endpoint} --cacert={tls.ca_file} "
            f"--cert={tls.cert_file} --key={tls.key_file} --user={tls.user} put {key} "
            f"{shlex.quote(CONFIG)}"
        )
        assert tls.password not in res.stderr
        # etcdctl would prompt for the password; give it inline to run the fix here
        fix = fix.replace(f"--user={tls.user}", f"--user={tls.user}:{tls.password}")
        subprocess.run(["sh", "-c", fix], check=True, capture_output=True, env=etcdctl_env())
        res = tool("get", env=env)
        assert res.returncode == 0 and res.stdout == CONFIG + "\n"
        wrong = tool("get", env={**env, "FLANNELD_ETCD_PASSWORD": "nope"})
        assert wrong.returncode == 1 and "--etcd-password" in wrong.stderr


# --- pure helpers ---------------------------------------------------------------------------


def test_classify_v2_answers() -> None:
    url = "http://e:2379/v2/keys/x"
    found = classify_v2_answer(
        HttpAnswer(url, 200, json.dumps({"node": {"key": "/x", "value": CONFIG}}).encode())
    )
    assert found == V2Probe("found", url, value=CONFIG)
    absent = HttpAnswer(url, 404, b'{"errorCode":100,"message":"Key not found"}')
    assert classify_v2_answer(absent).state == "absent"
    assert classify_v2_answer(HttpAnswer(url, 404, b"404 page not found\n")).state == (
        "v2-disabled"
    )
    assert classify_v2_answer(HttpAnswer(url, 200, b'{"node":{"dir":true}}')).state == "absent"
    denied = classify_v2_answer(HttpAnswer(url, 401, b'{"errorCode":110}'))
    assert denied.state == "unknown" and "HTTP 401" in denied.detail
    assert classify_v2_answer(HttpAnswer(url, 0, b"", "refused")).state == "unreachable"


def test_missing_config_text_quotes_for_the_shell() -> None:
    value = '{"Network": "10.5.0.0/16", "Note": "it\'s"}'
    text = missing_config_text("/p/config", "http://e:1", V2Probe("found", value=value), "CMD")
    cmd = text.splitlines()[-1].strip()
    assert shlex.split(cmd) == ["CMD", "put", "/p/config", value]


def test_config_diff_and_description() -> None:
    diff = config_diff('{"a": 1}', '{"a": 2}\n', "/p/config", "new.json")
    assert diff.splitlines() == [
        "--- /p/config (etcd)",
        "+++ new.json",
        "@@ -1 +1 @@",
        '-{"a": 1}',
        '+{"a": 2}',
    ]
    cfg = parse_network_config(
        '{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:42::/56", '
        '"EnableNFTables": true, "Backend": {"Type": "vxlan", "Port": 4789, "MTU": 9000, '
        '"DirectRouting": true}}'
    )
    assert describe_config(cfg) == [
        "Network 10.5.0.0/16: subnets /24 from 10.5.1.0 to 10.5.255.0 (255 subnets)",
        "IPv6Network 2001:db8:42::/56: subnets /64 from 2001:db8:42:1:: to 2001:db8:42:ff:: "
        "(255 subnets)",
        "Backend vxlan (VNI 1, UDP port 4789, device MTU = 9000 - 50, DirectRouting)",
        "traffic rules: nftables",
    ]


def _set_on_terminal(etcd: EtcdServer, prefix: str, path: Path, answer: bytes) -> int:
    """Run ``config set FILE`` with a pseudo-terminal as stdin and type ``answer``."""
    import pty

    master, slave = pty.openpty()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyflannel.cli.tools", "config", "set",
             *flags(etcd, prefix), str(path)],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )  # fmt: skip
        os.write(master, answer)
        proc.communicate(timeout=60)
        return proc.returncode
    finally:
        os.close(master)
        os.close(slave)


def test_set_asks_on_a_terminal(etcd: EtcdServer, tmp_path: Path) -> None:
    prefix = new_prefix()
    path = tmp_path / "net.json"
    path.write_text(CONFIG)
    assert _set_on_terminal(etcd, prefix, path, b"n\n") == 1
    assert etcd.get(f"{prefix}/config") is None
    assert _set_on_terminal(etcd, prefix, path, b"y\n") == 0
    assert etcd.get(f"{prefix}/config") == CONFIG


def test_validate_warns_for_a_link_local_network(tmp_path: Path) -> None:
    """Issue 14: 169.254.0.0/16 was accepted silently; doctor says the same sentence."""
    from pyflannel.config import network_warnings
    from pyflannel.inspect.checks import check_network_config

    path = tmp_path / "net.json"
    path.write_text('{"Network": "169.254.0.0/16"}')
    res = tool_process("validate", str(path))
    assert res.returncode == 0, res.stderr
    [warning] = network_warnings(parse_network_config(path.read_text()))
    assert f"  warning: {warning}" in res.stdout.splitlines()
    assert "link-local" in warning
    [finding] = check_network_config(parse_network_config(path.read_text()), "/p/config")
    assert (finding.level, finding.message) == ("WARN", warning)
