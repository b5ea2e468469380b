"""Property: whatever stdin and environment the runtime throws at it, the plugin never crashes.

``main()`` runs in-process (no subprocess per example) with ``CNI_PATH`` pointing at an empty
directory, so no delegate can ever run. Every example must end with exit code 0 or 1; every
failure must print one valid CNI error object on stdout; nothing may be left in the dataDir
(the delegate is looked up before ADD saves anything). Success prints nothing, except VERSION.

Configs that parse as JSON objects always get a temporary ``dataDir``/``subnetFile`` (or a
non-string that the plugin rejects), so no example can touch the real /var/lib/cni.

Issue 14 dimensions: the ``subnetFile`` may be ``/dev/zero``, a FIFO or larger than 64 KiB
(each must fail fast with an error); the ``dataDir`` may be shared with another network and
hold net.d-like files (nothing there may change); and :func:`test_concurrent_commands_*` runs
ADD/DEL/GC of one container at the same time with a delegate that succeeds.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from cni_plugin.plugin import main
from cni_plugin.protocol import SUPPORTED_VERSIONS, version_document

ROOT_KEYS = ("dataDir", "subnetFile")

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_any = st.recursive(
    json_leaf,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=9), kids, max_size=3)
    ),
    max_leaves=12,
)


def mostly(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` three times out of four, so examples get past the first checks."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: valid if ok else junk)


names = mostly(
    st.sampled_from(["cbr0", "cni-flannel", "a.b-c_d"]),
    st.sampled_from(["", "bad name", "-x", "é"]) | st.text(max_size=12),
)
versions = mostly(
    st.sampled_from(SUPPORTED_VERSIONS),
    st.sampled_from(["0.8.5", "9.9.9", "1.0", "", "x"]) | json_leaf,
)
delegates = st.one_of(
    st.none(),
    json_any,
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["bridge", "ptp", "a/b", ""]) | json_leaf,
            "name": json_leaf,
            "ipam": json_any,
            "hairpinMode": st.booleans(),
            "mtu": json_leaf,
        },
    ),
)
ipams = st.one_of(
    st.none(),
    json_any,
    st.fixed_dictionaries(
        {},
        optional={
            "type": json_leaf,
            "routes": st.lists(
                st.fixed_dictionaries(
                    {"dst": st.sampled_from(["10.96.0.0/12", "fd00::/8", "x", "1.2.3.4/33"])},
                    optional={"gw": st.sampled_from(["10.1.17.20", "bad"]) | json_leaf},
                )
                | json_any,
                max_size=3,
            )
            | json_any,
            "dataDir": st.text(max_size=10),
        },
    ),
)
attachment = st.fixed_dictionaries(
    {"containerID": st.text(max_size=8) | json_leaf, "ifname": st.text(max_size=4)}
)
attachments = st.lists(attachment | json_any, max_size=3)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    conf: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), json_any, max_size=3))
    conf["name"] = draw(names)
    if draw(st.booleans()):
        conf["cni.dev/valid-attachments"] = draw(attachments)
    for key, strategy in (
        ("cniVersion", versions),
        ("type", st.just("flannel") | json_leaf),
        ("delegate", delegates),
        ("ipam", ipams),
        ("runtimeConfig", json_any),
        ("prevResult", json_any),
    ):
        if draw(st.booleans()) or key == "cniVersion":
            conf[key] = draw(strategy)
    return conf


stdins = mostly(
    configs(),
    st.binary(max_size=64)
    | st.text(max_size=64).map(str.encode)
    | json_any.map(lambda v: json.dumps(v).encode()),
)

commands = mostly(
    st.sampled_from(["ADD", "ADD", "DEL", "DEL", "CHECK", "GC", "STATUS", "VERSION"]),
    st.sampled_from(["", "add", "FOO"]) | st.text(max_size=6),
)
ids = mostly(
    st.sampled_from(["cid-1", "c2"]),
    st.sampled_from(["", "-bad", "a/b", "..", "x" * 200]) | st.text(max_size=10),
)
ifnames = mostly(
    st.just("eth0"), st.sampled_from(["", ".", "x" * 16, "a b", "a:b"]) | st.text(max_size=17)
)
subnet_files = mostly(
    st.just("good"),
    st.sampled_from(
        ["missing", "incomplete", "garbage", "not-a-string", "dev-zero", "fifo", "huge"]
    ),
)
data_dirs = mostly(st.sampled_from(["dir", "shared"]), st.sampled_from(["not-a-string", "a-file"]))

# What another network, an operator or an older flannel left in a shared dataDir.
FOREIGN_FILES = {
    "10-mynet.conf": '{"cniVersion":"1.0.0","name":"mynet","type":"bridge"}',
    "cid-1": '{"name":"other","type":"bridge"}',
    "other:cid-1:eth0": "pyflannel-cni-state/1 other cid-1 eth0\n{}",
    "cbr0:cid-1:eth0": '{"truncated":',
    "cbr0:c2:eth0": '{"name":"cbr0","type":"bridge"}',
}


def _place(conf: dict[str, Any], root: Path, subnet_file: str, data_dir: str) -> dict[str, Any]:
    files = {
        "good": str(root / "good.env"),
        "missing": str(root / "missing.env"),
        "incomplete": str(root / "incomplete.env"),
        "garbage": str(root / "garbage.env"),
        "not-a-string": 7,
        "dev-zero": "/dev/zero",
        "fifo": str(root / "fifo.env"),
        "huge": str(root / "huge.env"),
    }
    dirs = {
        "dir": str(root / "data"),
        "shared": str(root / "data"),
        "not-a-string": ["x"],
        "a-file": str(root / "good.env"),
    }
    return {**conf, "subnetFile": files[subnet_file], "dataDir": dirs[data_dir]}


def _prepare(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    (root / "empty-bin").mkdir(parents=True)
    (root / "good.env").write_text(
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
        "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n"
        "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
    )
    (root / "incomplete.env").write_text("FLANNEL_NETWORK=10.1.0.0/16\n")
    (root / "garbage.env").write_bytes(b"FLANNEL_SUBNET=\xff\nFLANNEL_MTU=-3\n")
    (root / "huge.env").write_text((root / "good.env").read_text() + "#" * 70000)
    os.mkfifo(root / "fifo.env")
    return root


def _share(data: Path) -> dict[str, bytes]:
    data.mkdir()
    for name, text in FOREIGN_FILES.items():
        (data / name).write_text(text)
    return _snapshot(data)


def _snapshot(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in _files_under(data)}


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []


@settings(
    max_examples=400,
    deadline=1000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    stdin=stdins,
    command=commands,
    cid=ids,
    ifname=ifnames,
    netns=mostly(st.just("/run/netns/x"), st.sampled_from(["", "relative"])),
    cni_path=mostly(st.just("empty"), st.sampled_from(["", "::", "missing"])),
    subnet_file=subnet_files,
    data_dir=data_dirs,
    cni_args=st.text(max_size=10),
)
@example(
    stdin={"cniVersion": "1.0.0", "name": "cbr0"},
    command="ADD",
    cid="cid-1",
    ifname="eth0",
    netns="/run/netns/x",
    cni_path="empty",
    subnet_file="good",
    data_dir="dir",
    cni_args="",
)
def test_never_crashes_and_leaves_nothing_behind(
    tmp_path: Path,
    stdin: bytes | dict[str, Any],
    command: str,
    cid: str,
    ifname: str,
    netns: str,
    cni_path: str,
    subnet_file: str,
    data_dir: str,
    cni_args: str,
) -> None:
    root = _prepare(tmp_path / "world")
    before = _share(root / "data") if data_dir == "shared" else {}
    if isinstance(stdin, bytes):
        try:
            decoded = json.loads(stdin)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):  # never let it fall back to the real /var/lib/cni
            stdin = decoded
    if isinstance(stdin, dict):
        stdin = json.dumps(_place(stdin, root, subnet_file, data_dir)).encode()
    paths = {
        "empty": str(root / "empty-bin"),
        "": "",
        "::": "::",
        "missing": str(root / "nope"),
    }
    environ = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": paths[cni_path],
        "CNI_ARGS": cni_args,
    }
    out, err = io.BytesIO(), io.BytesIO()

    code = main(environ, io.BytesIO(stdin), out, err)

    stdout = out.getvalue()
    # --hypothesis-show-statistics shows how deep the examples got.
    event(f"{command[:8] or '-'} -> {code} {json.loads(stdout)['msg'][:30] if code else ''}")
    assert code in (0, 1)
    assert b"Traceback" not in stdout
    if code == 0:
        if command == "VERSION":
            assert stdout == version_document().encode()
        else:
            assert stdout == b""
            assert command in ("", "DEL", "CHECK", "GC")
    else:
        doc = json.loads(stdout)
        assert isinstance(doc, dict)
        assert isinstance(doc["code"], int) and doc["code"] > 0
        assert isinstance(doc["msg"], str) and doc["msg"]
        assert set(doc) <= {"code", "msg", "details"}
        assert isinstance(doc.get("details", ""), str)
    # No delegate can run, so nothing is saved; and nothing that was there may change.
    assert _snapshot(root / "data") == before


# ---------------------------------------------------------------------------------------------
# Concurrency: ADD/DEL/GC of one container at once, with a delegate that always succeeds

OK_DELEGATE = """#!/bin/sh
cat > /dev/null
[ "$CNI_COMMAND" = ADD ] && printf '{"cniVersion":"1.0.0"}'
exit 0
"""

ops = st.tuples(
    st.sampled_from(["ADD", "ADD", "DEL", "GC"]),
    st.integers(0, 3),  # which padding (config length) an ADD uses
    st.booleans(),  # GC: is the container still a valid attachment?
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(ops, min_size=2, max_size=6))
def test_concurrent_commands_never_tear_or_touch_foreign_state(
    tmp_path: Path, batch: list[tuple[str, int, bool]]
) -> None:
    root = _prepare(tmp_path / "world")
    (root / "bin").mkdir()
    (root / "bin" / "bridge").write_text(OK_DELEGATE)
    (root / "bin" / "bridge").chmod(0o755)
    data = root / "data"
    foreign = {k: v for k, v in _share(data).items() if not k.startswith("cbr0:cid-1:")}
    (data / "cbr0:cid-1:eth0").unlink()
    confs: list[dict[str, Any]] = [
        {
            "cniVersion": "1.1.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": str(root / "good.env"),
            "dataDir": str(data),
            "delegate": {"padding": "x" * (300 * k)},
        }
        for k in range(4)
    ]

    def one(command: str, k: int, valid: bool) -> int:
        conf: dict[str, Any] = dict(confs[k])
        if command == "GC":
            kept = [{"containerID": "cid-1", "ifname": "eth0"}] if valid else []
            conf["cni.dev/valid-attachments"] = kept
        environ = {
            "PATH": "/usr/bin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "cid-1",
            "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(root / "bin"),
        }
        out, err = io.BytesIO(), io.BytesIO()
        return main(environ, io.BytesIO(json.dumps(conf).encode()), out, err)

    codes: list[int] = []
    threads = [threading.Thread(target=lambda o=o: codes.append(one(*o))) for o in batch]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert codes == [0] * len(batch)
    ours = data / "cbr0:cid-1:eth0"
    if ours.exists():
        marker, _, body = ours.read_text().partition("\n")
        assert marker == "pyflannel-cni-state/1 cbr0 cid-1 eth0"
        assert json.loads(body)["padding"] in {c["delegate"]["padding"] for c in confs}
    assert {k: v for k, v in _snapshot(data).items() if k != ours.name} == foreign
    assert one("DEL", 0, False) == 0
    assert not ours.exists()
    assert not [p for p in data.iterdir() if p.name.startswith(".")]  # no temp files left
