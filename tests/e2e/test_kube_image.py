"""The image: deploy/build-image.sh builds localhost/pyflannel from a Debian 12 base made with
mmdebstrap (offline apart from Debian's mirror), and the daemon runs *from the image* under
podman in the network namespace of a lab node (host network of that node), in kube mode, until
the node is ready (subnet.env written, NetworkUnavailable=False)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyflannel.lab.kube import LAB_SERVERS, lab_kube_up
from pyflannel.lab.topology import Topology, cleanup_prefix
from tests.harness.kube import require_kube
from tests.harness.lab import new_prefix

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# runc + cgroupfs: crun refuses hybrid cgroup hierarchies, and rootful defaults for rlimits
# exceed what some hosts allow.
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]


@pytest.fixture
def image() -> str:
    require_kube()
    for tool in ("podman", "mmdebstrap", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (scripts/setup installs it)")
    # Building needs Debian's mirror and PyPI, and the session runs in a private network
    # namespace (tests/harness/isolation.py), so scripts/test builds it first and names it here.
    prebuilt = os.environ.get("PYFLANNEL_TEST_IMAGE")
    if not prebuilt:
        pytest.skip(
            "image not built: run scripts/test, "
            "or PYFLANNEL_TEST_IMAGE=$(bash deploy/build-image.sh) pytest ..."
        )
    return prebuilt


@pytest.fixture
def lab() -> Iterator[Topology]:
    prefix = new_prefix()
    topo = Topology(prefix, nodes=1)
    try:
        yield topo.up()
    finally:
        subprocess.run([*PODMAN, "rm", "-f", f"{prefix}-flannel"], capture_output=True, check=False)
        LAB_SERVERS.pop(prefix, None)
        topo.down()
        cleanup_prefix(prefix)


def test_daemon_runs_from_the_image(image: str, lab: Topology) -> None:
    root = Path(lab.state_root)
    conf = '{"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}}'
    srv = lab_kube_up(lab, root, conf, "10.5.0.0/16", None)
    node = lab.nodes[0]
    node.run_flannel_dir.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [*PODMAN, "run", "-d", "--name", f"{lab.prefix}-flannel",
         "--network", f"ns:/run/netns/{node.ns}", "--cap-add", "NET_ADMIN,NET_RAW", *LIMITS,
         "-v", f"{node.run_flannel_dir}:/run/flannel",
         "-v", f"{root / 'kubeconfig'}:/etc/pyflannel/kubeconfig:ro",
         "-v", f"{root / 'net-conf.json'}:/etc/kube-flannel/net-conf.json:ro",
         "-e", f"NODE_NAME={node.name}",
         image, "pyflanneld", "--kube-subnet-mgr",
         "--kubeconfig-file=/etc/pyflannel/kubeconfig"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    deadline = time.monotonic() + 60
    cond: dict[str, str] = {}
    while time.monotonic() < deadline:
        conds = srv.get_node_json(node.name).get("status", {}).get("conditions", [])
        cond = next((c for c in conds if c["type"] == "NetworkUnavailable"), {})
        if cond.get("status") == "False" and node.subnet_env.exists():
            break
        time.sleep(0.5)
    logs = subprocess.run(
        [*PODMAN, "logs", f"{lab.prefix}-flannel"], capture_output=True, text=True, check=False
    )
    assert cond.get("reason") == "FlannelIsUp", logs.stdout + logs.stderr
    assert "FLANNEL_SUBNET=10.5.1.1/24" in node.subnet_env.read_text()
