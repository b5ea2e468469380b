"""Property: whatever stdin and environment the runtime throws at it, the plugin never crashes.

``main()`` runs in-process (no subprocess per example) with ``CNI_PATH`` pointing at an empty
directory, so no delegate can ever run. Every example must end with exit code 0 or 1; every
failure must print one valid CNI error object on stdout; nothing may be left in the dataDir
(the delegate is looked up before ADD saves anything). Success prints nothing, except VERSION.

Configs that parse as JSON objects always get a temporary ``dataDir``/``subnetFile`` (or a
non-string that the plugin rejects), so no example can touch the real /var/lib/cni.
"""

from __future__ import annotations

import io
import json
import shutil
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
    st.just("good"), st.sampled_from(["missing", "incomplete", "garbage", "not-a-string"])
)
data_dirs = mostly(st.just("dir"), st.sampled_from(["not-a-string", "a-file"]))


def _place(conf: dict[str, Any], root: Path, subnet_file: str, data_dir: str) -> dict[str, Any]:
    files = {
        "good": str(root / "good.env"),
        "missing": str(root / "missing.env"),
        "incomplete": str(root / "incomplete.env"),
        "garbage": str(root / "garbage.env"),
        "not-a-string": 7,
    }
    dirs = {"dir": str(root / "data"), "not-a-string": ["x"], "a-file": str(root / "good.env")}
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
    return root


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
    assert _files_under(root / "data") == []
