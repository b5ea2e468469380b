"""End to end in kube mode: `lab up --kube` (a real kube-apiserver, Node objects with podCIDRs,
pyflanneld --kube-subnet-mgr on 3 nodes as the RBAC-limited flannel user).

vxlan: subnet.env from the podCIDR, annotations in flanneld's format, NetworkUnavailable=False,
all pods ping; a Node added with flanneld-format annotations (as if a flanneld ran there) is
programmed on every node and removed when deleted; SIGKILL + restart of a daemon keeps the data
path (and sends no new annotation patch); the API server stopped for 20 s leaves the data path
intact and a change made right after it returns is applied. host-gw and dual-stack vxlan: the
pods ping and an added Node is programmed and removed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyflannel.lab.command import NETWORK6, LabState, down, up
from pyflannel.lab.kube import LAB_SERVERS, KubeApiServer, lab_daemon_env, lab_daemon_flags
from pyflannel.lab.netns import netns_pids, ping, run_in
from pyflannel.lab.topology import Topology
from pyflannel.subnet.kube.annotations import annotation_keys
from tests.e2e.helpers import wait_for as wait_until
from tests.harness.kube import require_kube
from tests.harness.lab import new_prefix

pytestmark = [pytest.mark.root, pytest.mark.slow]

K = annotation_keys()
GHOST_MAC = "0a:58:0a:05:09:01"


@pytest.fixture
def prefix() -> Iterator[str]:
    require_kube()
    p = new_prefix()
    try:
        yield p
    finally:
        down(p)
        LAB_SERVERS.pop(p, None)


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 15.0) -> None:
    """helpers.wait_for with this module's default timeout and a 0.1 s poll."""
    wait_until(what, probe, timeout, 0.1)


def all_ping(state: LabState) -> list[str]:
    bad = []
    for src in state.pods:
        for dst in state.pods:
            for addr in dst.addresses:
                if src is not dst and not ping(src.ns, addr, count=1, timeout=2.0)[0]:
                    bad.append(f"{src.node}->{addr}")
    return bad


def routes(ns: str, family: str = "-4") -> str:
    return run_in(ns, ["ip", family, "route", "show"]).stdout


def ghost_annotations(backend: str, v6: bool = False) -> dict[str, str]:
    ann = {
        K.backend_type: backend,
        K.kube_managed: "true",
        K.public_ip: "198.51.100.99",
        K.backend_data: json.dumps({"VNI": 1, "VtepMAC": GHOST_MAC}, separators=(",", ":"))
        if backend == "vxlan"
        else "null",
    }
    if v6:
        ann[K.public_ipv6] = "2001:db8::63"
        ann[K.backend_v6_data] = json.dumps(
            {"VNI": 1, "VtepMAC": "0a:58:0a:05:09:02"}, separators=(",", ":")
        )
    return ann


def check_ghost_node(
    state: LabState, srv: KubeApiServer, backend: str, name: str, v6: bool = False
) -> None:
    """A Node added as if a flanneld ran there is programmed everywhere, then removed."""
    cidrs = ["10.5.9.0/24", *(["fd00:10:5:9::/64"] if v6 else [])]
    srv.create_node(name, cidrs, ghost_annotations(backend, v6))
    nodes = [f"{state.prefix}-n{i}" for i in range(1, state.nodes + 1)]
    want = (
        "10.5.9.0/24 via 10.5.9.0 dev flannel.1 onlink"
        if backend == "vxlan"
        else ("10.5.9.0/24 via 198.51.100.99 dev eth0")
    )
    # Each probe binds ns as a default (ruff's B023); mypy cannot infer such a lambda [misc].
    for ns in nodes:
        wait_for(f"{want} on {ns}", lambda ns=ns: want in routes(ns))  # type: ignore[misc]
        if v6:
            wait_for(
                f"fd00:10:5:9::/64 on {ns}",
                lambda ns=ns: "fd00:10:5:9::/64" in routes(ns, "-6"),  # type: ignore[misc]
            )
        if backend == "vxlan":
            fdb = run_in(ns, ["bridge", "fdb", "show", "dev", "flannel.1"]).stdout
            assert f"{GHOST_MAC} dst 198.51.100.99" in fdb
    srv.delete_node(name)
    for ns in nodes:
        wait_for(f"route removed on {ns}", lambda ns=ns: "10.5.9.0/24" not in routes(ns))  # type: ignore[misc]


def daemon_pid(ns: str) -> int:
    for pid in netns_pids(ns):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pyflannel" in cmd and b"--kube-subnet-mgr" in cmd:
            return pid
    raise AssertionError(f"no pyflanneld in {ns}")


def test_vxlan_kube_lab(prefix: str) -> None:
    state = up(prefix, 3, "vxlan", kube=True)
    srv = LAB_SERVERS[prefix]
    root = Path(state.state_root)
    # subnet.env from the podCIDR, identical in form to etcd mode.
    env = (root / "n2" / "run-flannel" / "subnet.env").read_text()
    assert env.splitlines() == [
        "FLANNEL_NETWORK=10.5.0.0/16",
        "FLANNEL_SUBNET=10.5.2.1/24",
        "FLANNEL_MTU=1450",
        "FLANNEL_IPMASQ=true",
    ]
    node2 = srv.get_node_json("n2")
    ann = node2["metadata"]["annotations"]
    assert ann[K.backend_type] == "vxlan" and ann[K.kube_managed] == "true"
    assert ann[K.public_ip] == "198.51.100.2"
    data = ann[K.backend_data]
    assert data == json.dumps(json.loads(data), separators=(",", ":"))  # compact, as Go writes
    assert list(json.loads(data)) == ["VNI", "VtepMAC"]
    conds = {c["type"]: c for c in node2["status"]["conditions"]}
    assert conds["NetworkUnavailable"]["status"] == "False"
    assert conds["NetworkUnavailable"]["reason"] == "FlannelIsUp"
    assert all_ping(state) == []

    check_ghost_node(state, srv, "vxlan", "ghost1")

    # SIGKILL + restart of n2's daemon: the data path stays, no new annotation patch.
    rv = srv.get_node_json("n2")["metadata"]["annotations"]
    ns2 = f"{prefix}-n2"
    os.kill(daemon_pid(ns2), signal.SIGKILL)
    time.sleep(0.5)
    assert all_ping(state) == []
    topo = Topology(prefix, nodes=3, state_root=root)
    topo.spawn_in_node(
        "n2",
        [sys.executable, "-m", "pyflannel", *lab_daemon_flags(root), "--ip-masq",
         "--healthz-port=10256", "--healthz-ip=127.0.0.1"],
        root / "n2" / "log" / "pyflanneld-restart.log",
        env=lab_daemon_env("n2"),
    )  # fmt: skip
    wait_for(
        "restarted daemon",
        lambda: (
            b"kube.nodes_listed" in (root / "n2" / "log" / "pyflanneld-restart.log").read_bytes()
        ),
        timeout=30,
    )
    assert srv.get_node_json("n2")["metadata"]["annotations"] == rv
    assert all_ping(state) == []

    # API server down for 20 s: the data path stays; a change right after it returns applies.
    srv.stop_apiserver()
    stop_until = time.monotonic() + 20
    while time.monotonic() < stop_until:
        assert all_ping(state) == []
        time.sleep(2)
    srv.start()
    check_ghost_node(state, srv, "vxlan", "ghost2")
    assert all_ping(state) == []


def test_hostgw_kube_lab(prefix: str) -> None:
    state = up(prefix, 3, "host-gw", kube=True)
    srv = LAB_SERVERS[prefix]
    assert all_ping(state) == []
    assert srv.get_node_json("n1")["metadata"]["annotations"][K.backend_data] == "null"
    # `pyflannel status` in kube mode, on a node, as the flannel user.
    root = Path(state.state_root)
    out = run_in(
        f"{prefix}-n1",
        [sys.executable, "-m", "pyflannel.cli.tools", "status", "--kube-subnet-mgr",
         f"--kubeconfig-file={root / 'kubeconfig'}",
         f"--net-config-path={root / 'net-conf.json'}", "--node-name=n1"],
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"OK +condition +n1 +NetworkUnavailable=False \(FlannelIsUp\)", out.stdout)
    assert out.stdout.count("host-gw") == 3
    check_ghost_node(state, srv, "host-gw", "ghost1")


def test_dual_stack_vxlan_kube_lab(prefix: str) -> None:
    state = up(prefix, 3, "vxlan", "dual", kube=True)
    srv = LAB_SERVERS[prefix]
    ann = srv.get_node_json("n1")["metadata"]["annotations"]
    assert ann[K.public_ipv6] == "2001:db8::1"
    assert NETWORK6.startswith("fd00:10:5")
    assert all_ping(state) == []
    check_ghost_node(state, srv, "vxlan", "ghost1", v6=True)


def test_udp_kube_lab(prefix: str) -> None:
    state = up(prefix, 3, "udp", kube=True)
    srv = LAB_SERVERS[prefix]
    ann = srv.get_node_json("n3")["metadata"]["annotations"]
    # flanneld's udp lease has no BackendType: the annotation is written, empty.
    assert ann[K.backend_type] == "" and ann[K.backend_data] == "null"
    assert ann[K.public_ip] == "198.51.100.3"
    assert all_ping(state) == []
