"""Attach lab pods through the real CNI chain (flannel + portmap), as a container runtime would.

A minimal conflist runner following the spec's chaining rules: ADD runs the plugins in order,
each later one receiving the previous result as ``prevResult``. It runs on a node (its netns
and private /run/flannel, /var/lib/cni), so the plugin reads that node's subnet.env. Standard
library only.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyflannel.errors import ConfigError
from pyflannel.lab.topology import NodeRef, Topology

__all__ = ["SEED_CONFLIST", "CniError", "cni_add"]

# The seed's /etc/cni/net.d/10-flannel.conflist (kube-flannel.yml's shape) with a valid spec
# version: the Debian plugins here speak up to 1.0.0. systemd/10-flannel.conflist holds the same.
SEED_CONFLIST: dict[str, Any] = {
    "name": "cbr0",
    "cniVersion": "1.0.0",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


class CniError(ConfigError):
    """A plugin in the chain failed; the message carries its error JSON."""


def _run_plugin(
    topo: Topology,
    node: NodeRef,
    plugin: Mapping[str, Any],
    conflist: Mapping[str, Any],
    env: Mapping[str, str],
    prev_result: Any | None,
) -> Any:
    conf = dict(plugin)
    conf["cniVersion"] = conflist["cniVersion"]
    conf["name"] = conflist["name"]
    conf.pop("capabilities", None)
    if prev_result is not None:
        conf["prevResult"] = prev_result
    cni_path = env["CNI_PATH"]
    binary = next(
        (Path(d) / conf["type"] for d in cni_path.split(":") if (Path(d) / conf["type"]).is_file()),
        None,
    )
    if binary is None:
        raise CniError(f"CNI plugin {conf['type']!r} not found in CNI_PATH {cni_path}")
    proc = subprocess.run(
        topo.node_exec_argv(node, [str(binary)]),
        input=json.dumps(conf),
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise CniError(
            f"CNI {env['CNI_COMMAND']} of {conf['type']} failed on {topo.node(node).name}: "
            f"{proc.stdout.strip() or proc.stderr.strip()}",
            hint=f"see {topo.node(node).log_dir}",
        )
    return json.loads(proc.stdout) if proc.stdout.strip() else prev_result


def _env(command: str, container_id: str, netns: str, cni_path: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": f"/run/netns/{netns}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": cni_path,
    }


def cni_add(
    topo: Topology,
    node: NodeRef,
    pod_ns: str,
    container_id: str,
    cni_path: str,
    conflist: Mapping[str, Any] = SEED_CONFLIST,
) -> Any:
    """Run ADD through the whole chain; return the final result.

    The lab never runs DEL: ``lab down`` removes the pods' namespaces and the nodes' state
    directories with them."""
    env = _env("ADD", container_id, pod_ns, cni_path)
    result: Any = None
    for plugin in conflist["plugins"]:
        result = _run_plugin(topo, node, plugin, conflist, env, result)
    return result
