"""The flannel plugin end to end, in-process, with a scripted fake delegate.

``main()`` runs with the test's environment and byte streams; the delegate is a small shell
script on ``CNI_PATH`` whose behaviour per command is set through environment variables (the
plugin passes its environment on, as CNI requires) and which records what it was given. The
real Debian bridge is exercised in tests/integration/test_cni_bridge.py.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni_plugin.delegation import state_marker
from cni_plugin.netconf import build_delegate, parse_flannel_conf, parse_subnet_env
from cni_plugin.plugin import main
from cni_plugin.protocol import dumps

SUBNET_ENV = (
    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)
# Odd formatting on purpose: the plugin must print the delegate's result byte for byte.
FAKE_RESULT = '{"cniVersion": "1.0.0",\n  "ips": [{"address": "10.1.17.2/24"}], "dns": {}}'

FAKE_DELEGATE = """#!/bin/sh
# A scripted CNI plugin. FAKE_<COMMAND> = ok | fail<code> | crash | silent | garbage
cat > "$FAKE_DIR/$CNI_COMMAND.stdin"
env > "$FAKE_DIR/$CNI_COMMAND.env"
echo "$CNI_COMMAND" >> "$FAKE_DIR/calls"
mode=$(eval echo "\\${FAKE_$CNI_COMMAND:-ok}")
case "$mode" in
  ok)
    case "$CNI_COMMAND" in
      VERSION) printf '{"cniVersion":"1.1.0","supportedVersions":[%s]}\\n' "$FAKE_VERSIONS" ;;
      ADD) printf '%s' "$FAKE_RESULT" ;;
    esac
    echo "fake $CNI_COMMAND done" >&2
    exit 0 ;;
  fail*)
    printf '{"code": %s, "msg": "fake %s failure", "details": "d"}' "${mode#fail}" "$CNI_COMMAND"
    exit 1 ;;
  crash) echo "panic: boom" >&2; exit 2 ;;
  silent) exit 3 ;;
  garbage) echo "not json"; exit 1 ;;
esac
"""


@dataclass
class Run:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def error(self) -> dict[str, Any]:
        assert self.code == 1, self
        doc: dict[str, Any] = json.loads(self.stdout)
        return doc


class World:
    """Temp dirs, a fake delegate named ``bridge`` and a way to call ``main``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        self.fake_dir = root / "fake"
        self.fake_dir.mkdir()
        self.subnet_env = root / "subnet.env"
        self.subnet_env.write_text(SUBNET_ENV)
        self.data_dir = root / "data"
        self.delegate = self.bin / "bridge"
        self.delegate.write_text(FAKE_DELEGATE)
        self.delegate.chmod(0o755)
        self.fake: dict[str, str] = {
            "FAKE_RESULT": FAKE_RESULT,
            "FAKE_VERSIONS": '"0.4.0","1.0.0"',
        }

    def conf(self, **overrides: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": str(self.subnet_env),
            "dataDir": str(self.data_dir),
            "delegate": {"hairpinMode": True},
        }
        conf.update(overrides)
        return conf

    def run(
        self,
        command: str,
        conf: dict[str, Any] | bytes | None = None,
        cid: str = "cid-1",
        **env: str,
    ) -> Run:
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": "/run/netns/fake",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.bin),
            "FAKE_DIR": str(self.fake_dir),
            **self.fake,
            **env,
        }
        environ = {k: v for k, v in environ.items() if v is not None}
        data = conf if isinstance(conf, bytes) else json.dumps(conf or self.conf()).encode()
        out, err = io.BytesIO(), io.BytesIO()
        code = main(environ, io.BytesIO(data), out, err)
        return Run(code, out.getvalue(), err.getvalue())

    def saved(self, cid: str = "cid-1", network: str = "cbr0", ifname: str = "eth0") -> Path:
        return self.data_dir / f"{network}:{cid}:{ifname}"

    def saved_config(self, cid: str = "cid-1") -> bytes:
        """The delegate config in the saved state, without its marker line."""
        data = self.saved(cid).read_bytes()
        marker = state_marker("cbr0", cid, "eth0")
        assert data.startswith(marker)
        return data[len(marker) :]

    def calls(self) -> list[str]:
        path = self.fake_dir / "calls"
        return path.read_text().split() if path.exists() else []

    def delegate_stdin(self, command: str) -> bytes:
        return (self.fake_dir / f"{command}.stdin").read_bytes()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def expected_delegate_bytes(world: World, conf: dict[str, Any] | None = None) -> bytes:
    delegate = build_delegate(
        parse_flannel_conf(conf or world.conf()), parse_subnet_env(SUBNET_ENV)
    )
    return dumps(delegate).encode()


# -------------------------------------------------------------------------- VERSION, about


def test_version(world: World) -> None:
    run = world.run("VERSION", b"this is ignored")
    assert run.code == 0
    assert run.stdout == (
        b'{"cniVersion":"1.1.0","supportedVersions":'
        b'["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n'
    )


def test_no_command_prints_about_on_stderr() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    assert main({}, io.BytesIO(b""), out, err, commit="abc123") == 0
    assert out.getvalue() == b""
    lines = err.getvalue().decode().splitlines()
    assert lines[0].startswith("CNI Plugin flannel version v")
    assert lines[0].endswith(" commit abc123")
    assert (
        lines[1]
        == "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
    )


# ----------------------------------------------------------------------------- bad input


DECODE = "error unmarshall network config: "


@pytest.mark.parametrize(
    ("stdin", "code", "msg"),
    [
        (b"", 6, DECODE + "unexpected end of JSON input"),
        (
            b'{"name": "cbr0",',
            6,
            DECODE
            + "Expecting property name enclosed in double quotes: line 1 column 17 (char 16)",
        ),
        (b"[]", 6, DECODE + "cannot unmarshal array into a network config object"),
        (b'{"name": 5}', 6, DECODE + 'cannot unmarshal number into "name" of type string'),
        (b"{}", 7, "missing network name"),
        (b"null", 7, "missing network name"),
        (b'{"name": "bad name"}', 7, "invalid characters found in network name"),
    ],
)
def test_stdin_errors(world: World, stdin: bytes, code: int, msg: str) -> None:
    err = world.run("ADD", stdin).error
    assert (err["code"], err["msg"]) == (code, msg)
    assert not world.data_dir.exists()


def test_error_output_is_the_skels_format(world: World) -> None:
    run = world.run("ADD", b"{}")
    assert run.stdout == b'{\n    "code": 7,\n    "msg": "missing network name"\n}'


def test_missing_env(world: World) -> None:
    run = world.run("ADD", CNI_CONTAINERID="", CNI_PATH="")
    assert run.error == {
        "code": 4,
        "msg": "required env variables [CNI_CONTAINERID,CNI_PATH] missing",
    }


def test_seed_release_number_version(world: World) -> None:
    err = world.run("ADD", world.conf(cniVersion="0.8.5")).error
    assert err["code"] == 1
    assert "looks like a CNI plugins release number" in err["msg"]
    assert not world.data_dir.exists() and world.calls() == []


# ------------------------------------------------------------------------------------ ADD


def test_add_saves_config_runs_delegate_prints_result(world: World) -> None:
    run = world.run("ADD", MY_VAR="passed-on")
    assert run.code == 0, run
    assert run.stdout == FAKE_RESULT.encode()
    assert b"fake ADD done" in run.stderr  # the delegate's stderr is passed on
    expected = expected_delegate_bytes(world)
    assert world.saved_config() == expected
    assert world.delegate_stdin("ADD") == expected
    assert stat.S_IMODE(world.saved().stat().st_mode) == 0o600
    assert stat.S_IMODE(world.data_dir.stat().st_mode) == 0o700
    env = (world.fake_dir / "ADD.env").read_text().splitlines()
    assert "MY_VAR=passed-on" in env and "CNI_COMMAND=ADD" in env
    assert world.calls() == ["ADD"]


def test_add_delegate_error_is_passed_through_and_file_kept(world: World) -> None:
    world.fake["FAKE_ADD"] = "fail1"
    run = world.run("ADD")
    assert run.code == 1
    assert run.stdout == b'{"code": 1, "msg": "fake ADD failure", "details": "d"}'
    assert world.saved().exists()  # the runtime calls DEL next, which needs it


@pytest.mark.parametrize(
    ("mode", "msg"),
    [
        ("crash", 'netplugin failed: "panic: boom\\n"'),
        ("silent", "netplugin failed with no error message: exit status 3"),
        (
            "garbage",
            'netplugin failed but error parsing its diagnostic message "not json\\n":'
            " Expecting value: line 1 column 1 (char 0)",
        ),
    ],
)
def test_add_delegate_without_error_object(world: World, mode: str, msg: str) -> None:
    world.fake["FAKE_ADD"] = mode
    assert world.run("ADD").error == {"code": 999, "msg": msg}


def test_add_missing_delegate_leaves_nothing(world: World) -> None:
    empty = world.root / "empty"
    empty.mkdir()
    err = world.run("ADD", CNI_PATH=f"{empty}::{empty}").error
    assert err == {"code": 999, "msg": f'failed to find plugin "bridge" in path [{empty} {empty}]'}
    assert not world.data_dir.exists()


def test_add_unexecutable_delegate_leaves_nothing(world: World) -> None:
    world.delegate.chmod(0o644)
    err = world.run("ADD").error
    assert err == {"code": 999, "msg": f"fork/exec {world.delegate}: permission denied"}
    assert not world.saved().exists()


def test_add_without_subnet_env_says_try_again_later(world: World) -> None:
    world.subnet_env.unlink()
    err = world.run("ADD").error
    assert err == {
        "code": 11,
        "msg": f"flanneld is not running or not ready on this node: {world.subnet_env} missing",
    }
    assert not world.data_dir.exists() and world.calls() == []


def test_add_config_errors_come_before_any_io(world: World) -> None:
    world.subnet_env.unlink()
    err = world.run("ADD", world.conf(delegate={"name": "x"})).error
    assert err["code"] == 7
    assert err["msg"] == "'delegate' dictionary must not have 'name' field, it'll be set by flannel"


def test_add_twice_overwrites_the_saved_config(world: World) -> None:
    assert world.run("ADD").code == 0
    world.saved().write_bytes(b"x" * 5000)
    assert world.run("ADD").code == 0
    assert world.saved_config() == expected_delegate_bytes(world)


# ------------------------------------------------------------------------------------ DEL


def test_del_replays_the_saved_config(world: World) -> None:
    assert world.run("ADD").code == 0
    saved = world.saved_config()
    world.subnet_env.unlink()  # DEL never needs subnet.env
    changed = world.conf(ipam={"routes": [{"dst": "10.99.0.0/16"}]})
    run = world.run("DEL", changed)
    assert (run.code, run.stdout) == (0, b"")
    assert world.delegate_stdin("DEL") == saved
    assert not world.saved().exists()
    assert world.calls() == ["ADD", "DEL"]
    again = world.run("DEL", changed)
    assert (again.code, again.stdout) == (0, b"")
    assert world.calls() == ["ADD", "DEL"]  # nothing left to replay


def test_del_without_saved_config_succeeds_without_delegate(world: World) -> None:
    run = world.run("DEL", CNI_NETNS="")
    assert (run.code, run.stdout, world.calls()) == (0, b"", [])


def test_del_ignores_everything_but_data_dir(world: World) -> None:
    assert world.run("ADD").code == 0
    sloppy = world.conf(delegate="not an object", ipam=[], subnetFile=7)
    assert world.run("DEL", sloppy).code == 0
    assert not world.saved().exists()


def test_del_transient_failure_keeps_the_file_for_a_retry(world: World) -> None:
    assert world.run("ADD").code == 0
    world.fake["FAKE_DEL"] = "fail999"
    run = world.run("DEL")
    assert run.stdout == b'{"code": 999, "msg": "fake DEL failure", "details": "d"}'
    assert world.saved().exists()
    assert b"kept" in run.stderr
    world.fake["FAKE_DEL"] = "ok"
    assert world.run("DEL").code == 0
    assert not world.saved().exists()
    assert world.calls() == ["ADD", "DEL", "DEL"]


def test_del_rejected_config_is_forgotten(world: World) -> None:
    assert world.run("ADD").code == 0
    world.fake["FAKE_DEL"] = "fail1"  # e.g. bridge refusing cniVersion 1.1.0
    assert world.run("DEL").error["code"] == 1
    assert not world.saved().exists()
    assert world.run("DEL").code == 0


def test_del_missing_delegate_keeps_the_file(world: World) -> None:
    assert world.run("ADD").code == 0
    empty = world.root / "empty"
    empty.mkdir()
    err = world.run("DEL", CNI_PATH=str(empty)).error
    assert err["msg"] == f'failed to find plugin "bridge" in path [{empty}]'
    assert world.saved().exists()


@pytest.mark.parametrize(
    "content", [b"{not json", b"", b'{"name": "cbr0"}', b"[1]", b'{"type": "bridge"}']
)
def test_del_torn_saved_state_runs_delegate_with_rebuilt_config(
    world: World, content: bytes
) -> None:
    """Issue 14: a torn or marker-less saved file no longer skips the delegate (IP leak)."""
    world.data_dir.mkdir()
    world.saved().write_bytes(content)
    run = world.run("DEL")
    assert (run.code, run.stdout) == (0, b""), run
    assert b"running DEL with the current config" in run.stderr
    assert world.delegate_stdin("DEL") == expected_delegate_bytes(world)
    assert world.calls() == ["DEL"]
    assert not world.saved().exists()


def test_del_torn_saved_state_without_subnet_env_keeps_it(world: World) -> None:
    world.data_dir.mkdir()
    world.saved().write_bytes(b"{torn")
    world.subnet_env.unlink()
    run = world.run("DEL")
    assert (run.code, run.stdout, world.calls()) == (0, b"", [])
    assert b"cannot be rebuilt" in run.stderr
    assert world.saved().read_bytes() == b"{torn"


def test_del_reads_flannels_legacy_file_of_this_network(world: World) -> None:
    world.data_dir.mkdir()
    legacy = expected_delegate_bytes(world)
    (world.data_dir / "cid-1").write_bytes(legacy)
    (world.data_dir / "cid-2").write_bytes(legacy.replace(b'"cbr0"', b'"other"'))
    (world.data_dir / "cid-3").write_bytes(b"{torn")
    (world.data_dir / "cid-4").mkdir()
    os.mkfifo(world.data_dir / "cid-5")
    assert world.run("DEL").code == 0
    assert world.delegate_stdin("DEL") == legacy
    assert not (world.data_dir / "cid-1").exists()
    for cid in ("cid-2", "cid-3", "cid-4", "cid-5"):  # not provably ours: left alone
        assert world.run("DEL", cid=cid).code == 0
        assert (world.data_dir / cid).exists()
    assert world.calls() == ["DEL"]


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_del_saved_state_that_is_no_file_is_an_io_error(world: World, kind: str) -> None:
    world.data_dir.mkdir()
    if kind == "dir":
        world.saved().mkdir()  # a directory where the file should be
    else:
        os.mkfifo(world.saved())  # must not block
    err = world.run("DEL").error
    assert err["code"] == 5
    assert err["msg"].startswith(f"failed to read saved delegate config: {world.saved()} is a ")


# ---------------------------------------------------------------------------------- CHECK


def test_check_is_a_no_op_from_0_4_0(world: World) -> None:
    run = world.run("CHECK", world.conf(cniVersion="0.4.0"))
    assert (run.code, run.stdout, world.calls()) == (0, b"", [])
    old = world.run("CHECK", world.conf(cniVersion="0.3.1")).error
    assert old == {"code": 1, "msg": "config version does not allow CHECK"}
    none = world.run("CHECK", world.conf(cniVersion=None)).error
    assert none == {"code": 1, "msg": "config version does not allow CHECK"}


# ------------------------------------------------------------------------------ GC, STATUS


def gc_conf(
    world: World, valid: list[str], key: str = "cni.dev/valid-attachments"
) -> dict[str, Any]:
    return world.conf(
        cniVersion="1.1.0", **{key: [{"containerID": c, "ifname": "eth0"} for c in valid]}
    )


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_1_1_0(world: World, command: str) -> None:
    err = world.run(command, world.conf()).error
    assert err == {"code": 1, "msg": f"config version does not allow {command}"}


def test_gc_drops_stale_configs_and_skips_an_old_delegate(world: World) -> None:
    for cid in ("keep-1", "gone-1", "gone-2"):
        assert world.run("ADD", cid=cid).code == 0
    (world.data_dir / "not-ours").write_text("hello")
    (world.data_dir / "subdir").mkdir()
    run = world.run("GC", gc_conf(world, ["keep-1", "unknown"]), cid="")
    assert (run.code, run.stdout) == (0, b""), run
    assert sorted(p.name for p in world.data_dir.iterdir()) == [
        "cbr0:keep-1:eth0",
        "not-ours",
        "subdir",
    ]
    assert b"not forwarding GC to" in run.stderr and b"needs 1.1.0" in run.stderr
    assert world.calls()[-1] == "VERSION"


def test_gc_spares_other_networks_and_foreign_files(world: World) -> None:
    """Issue 14: GC of network A removed network B's saved state and net.d-like files."""
    assert world.run("ADD", cid="pod-a").code == 0
    assert world.run("ADD", world.conf(name="netb"), cid="pod-b").code == 0
    assert world.run("ADD", cid="pod-a", CNI_IFNAME="net1").code == 0
    foreign = {
        "10-mynet.conf": '{"cniVersion":"1.0.0","name":"mynet","type":"bridge"}',
        "pod-x": '{"name":"cbr0","type":"bridge"}',  # flannel's layout: whose is it?
        "cbr0:pod-y:eth0": '{"name":"cbr0","type":"bridge"}',  # our name, not our marker
    }
    for name, text in foreign.items():
        (world.data_dir / name).write_text(text)
    (world.data_dir / "cbr0:pod-z:eth0").symlink_to(world.data_dir / "10-mynet.conf")
    run = world.run("GC", gc_conf(world, ["pod-a"]), cid="")
    assert (run.code, run.stdout) == (0, b""), run
    left = sorted(p.name for p in world.data_dir.iterdir())
    # pod-a's eth0 is valid; its net1 is not; netb's pod-b belongs to another network.
    assert left == sorted(["cbr0:pod-a:eth0", "netb:pod-b:eth0", "cbr0:pod-z:eth0", *foreign])
    assert b"cbr0:pod-y:eth0 alone, this plugin did not write it" in run.stderr
    # netb's pod is still deleted properly later.
    assert world.run("DEL", world.conf(name="netb"), cid="pod-b").code == 0
    assert not world.saved("pod-b", network="netb").exists()
    assert world.calls().count("DEL") == 1


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_gc_removes_temp_files_a_killed_add_left(world: World) -> None:
    """A save() killed between its write and its rename leaves a temp file no reader ever
    renames; GC removes this network's when the writer is gone (and only then)."""
    assert world.run("ADD", cid="keep-1").code == 0
    dead, alive, now = _dead_pid(), os.getpid(), time.time()
    temps = {
        f".cbr0:pod.a:eth0.{dead}.0badc0de.tmp": now - 120,  # writer gone: removed
        f".cbr0:pod-b:eth0.{alive}.0badc0de.tmp": now - 120,  # writer alive: kept
        f".cbr0:pod-c:eth0.{dead}.0badc0de.tmp": now,  # maybe another PID namespace's ADD
        f".cbr0:pod-d:eth0.{alive}.0badc0de.tmp": now - 2 * 86400,  # a day old: removed
        f".netb:pod-e:eth0.{dead}.0badc0de.tmp": now - 120,  # another network's
        ".cbr0:pod-f:eth0.tmp": now - 2 * 86400,  # not a name save() writes
        # a lying neighbour's names: PIDs kill() cannot take (OverflowError) or 0 (our group)
        f".cbr0:pod-g:eth0.{10**30}.0badc0de.tmp": now - 120,
        ".cbr0:pod-h:eth0.0.0badc0de.tmp": now - 120,
        ".cbr0:pod-i:eth0.\u00b2\u00b3.0badc0de.tmp": now - 120,  # digits int() refuses
    }
    for name, mtime in temps.items():
        (world.data_dir / name).write_text("{")
        os.utime(world.data_dir / name, (mtime, mtime))
    run = world.run("GC", gc_conf(world, ["keep-1"]), cid="")
    assert run.code == 0, run
    left = sorted(p.name for p in world.data_dir.iterdir())
    assert left == sorted(
        [
            "cbr0:keep-1:eth0",
            f".cbr0:pod-b:eth0.{alive}.0badc0de.tmp",
            f".cbr0:pod-c:eth0.{dead}.0badc0de.tmp",
            f".netb:pod-e:eth0.{dead}.0badc0de.tmp",
            ".cbr0:pod-f:eth0.tmp",
            f".cbr0:pod-g:eth0.{10**30}.0badc0de.tmp",
            ".cbr0:pod-h:eth0.0.0badc0de.tmp",
            ".cbr0:pod-i:eth0.\u00b2\u00b3.0badc0de.tmp",
        ]
    )
    assert run.stderr.count(b"left by an ADD that was killed") == 2


def test_gc_entry_without_ifname_keeps_all_interfaces(world: World) -> None:
    assert world.run("ADD", cid="p").code == 0
    assert world.run("ADD", cid="p", CNI_IFNAME="net1").code == 0
    conf = world.conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "p"}]})
    assert world.run("GC", conf, cid="").code == 0
    assert world.saved("p").exists() and world.saved("p", ifname="net1").exists()
    bad = world.conf(
        cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "p", "ifname": 1}]}
    )
    assert world.run("GC", bad, cid="").error["code"] == 7


def test_gc_accepts_the_old_attachments_key(world: World) -> None:
    assert world.run("ADD", cid="gone").code == 0
    run = world.run("GC", gc_conf(world, [], key="cni.dev/attachments"), cid="")
    assert run.code == 0 and not world.saved("gone").exists()


def test_gc_forwards_to_a_1_1_0_delegate(world: World) -> None:
    world.fake["FAKE_VERSIONS"] = '"1.0.0","1.1.0"'
    conf = gc_conf(world, ["a"])
    run = world.run("GC", conf, cid="")
    assert run.code == 0, run
    forwarded = json.loads(world.delegate_stdin("GC"))
    assert forwarded["cni.dev/valid-attachments"] == conf["cni.dev/valid-attachments"]
    assert forwarded["type"] == "bridge" and forwarded["cniVersion"] == "1.1.0"
    assert forwarded["ipam"]["ranges"] == [[{"subnet": "10.1.17.0/24"}]]
    world.fake["FAKE_GC"] = "fail999"
    assert world.run("GC", conf, cid="").error["msg"] == "fake GC failure"


def test_gc_without_attachments_collects_nothing(world: World) -> None:
    assert world.run("ADD", cid="c").code == 0
    err = world.run("GC", world.conf(cniVersion="1.1.0"), cid="").error
    assert err["code"] == 7 and "cni.dev/valid-attachments" in err["msg"]
    assert world.saved("c").exists()


def test_gc_keeps_going_past_a_missing_delegate(world: World) -> None:
    assert world.run("ADD", cid="gone").code == 0
    empty = world.root / "empty"
    empty.mkdir()
    err = world.run("GC", gc_conf(world, []), cid="", CNI_PATH=str(empty)).error
    assert err["msg"] == f'failed to find plugin "bridge" in path [{empty}]'
    assert not world.saved("gone").exists()


def test_status(world: World) -> None:
    conf = world.conf(cniVersion="1.1.0")
    ok = world.run("STATUS", conf, cid="")
    assert (ok.code, ok.stdout) == (0, b"")
    world.subnet_env.write_text("FLANNEL_NETWORK=10.1.0.0/16\n")
    incomplete = world.run("STATUS", conf, cid="").error
    assert incomplete["code"] == 50 and "is missing FLANNEL_SUBNET" in incomplete["msg"]
    world.subnet_env.unlink()
    assert world.run("STATUS", conf, cid="").error == {
        "code": 50,
        "msg": f"flanneld is not running or not ready on this node: {world.subnet_env} missing",
    }
    world.subnet_env.write_text(SUBNET_ENV)
    empty = world.root / "empty"
    empty.mkdir()
    gone = world.run("STATUS", conf, cid="", CNI_PATH=str(empty)).error
    assert gone == {"code": 50, "msg": f'failed to find plugin "bridge" in path [{empty}]'}


def test_status_forwards_to_a_1_1_0_delegate(world: World) -> None:
    world.fake["FAKE_VERSIONS"] = '"1.1.0"'
    world.fake["FAKE_STATUS"] = "fail51"
    conf = world.conf(cniVersion="1.1.0")
    assert world.run("STATUS", conf, cid="").error["code"] == 51
    world.fake["FAKE_STATUS"] = "ok"
    assert world.run("STATUS", conf, cid="").code == 0
    assert json.loads(world.delegate_stdin("STATUS"))["name"] == "cbr0"


# ------------------------------------------------------------------------------ catch-all


def test_unexpected_exception_is_reported_as_999(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cni_plugin.netconf

    def boom(*_: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(cni_plugin.netconf, "build_delegate", boom)
    err = world.run("ADD").error
    assert err == {
        "code": 999,
        "msg": "internal error in the flannel plugin: KeyError: 'surprise'",
    }
    assert not world.saved().exists()
