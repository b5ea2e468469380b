"""deploy/kube-pyflannel.yml: accepted by the real kube-apiserver (server-side dry run), with
flanneld's RBAC and no more, and configs pyflannel and its CNI plugin accept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pyflannel.config import parse_network_config
from pyflannel.lab.kube import FLANNEL_CLUSTER_ROLE, KubeApiServer

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kube-pyflannel.yml"

_PATHS = {
    "Namespace": "/api/v1/namespaces",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets",
}


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def by_kind(kind: str) -> dict[str, Any]:
    return next(d for d in docs() if d["kind"] == kind)


def test_manifest_kinds_and_rbac() -> None:
    assert sorted(d["kind"] for d in docs()) == sorted(_PATHS)
    assert by_kind("ClusterRole")["rules"] == FLANNEL_CLUSTER_ROLE["rules"]
    cm = by_kind("ConfigMap")["data"]
    cfg = parse_network_config(cm["net-conf.json"])
    assert (str(cfg.network), cfg.backend_type) == ("10.244.0.0/16", "vxlan")
    conflist = json.loads(cm["cni-conf.json"])
    assert [p["type"] for p in conflist["plugins"]] == ["flannel", "portmap"]
    spec = by_kind("DaemonSet")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["serviceAccountName"] == "flannel"
    main = spec["containers"][0]
    assert "--kube-subnet-mgr" in main["command"]
    assert main["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert {e["name"] for e in main["env"]} >= {"POD_NAME", "POD_NAMESPACE"}
    assert spec["initContainers"][0]["command"][:2] == ["pyflannel", "install-cni"]


@pytest.mark.root
def test_server_side_dry_run(kube_api: KubeApiServer) -> None:
    items = docs()
    ns = items[0]["metadata"]["name"]

    async def apply(client: Any) -> list[str]:
        # The namespace must exist for namespaced dry runs; everything else is dry run only.
        from pyflannel.errors import KubeApiError

        try:
            await client.create(_PATHS["Namespace"], items[0])
        except KubeApiError as exc:
            if exc.status != 409:
                raise
        made = []
        for obj in items[1:]:
            if obj["kind"].startswith("Cluster"):
                # The session's server already has flannel's RBAC (same names): dry-run copies.
                obj = json.loads(
                    json.dumps(obj).replace('"name": "flannel"', '"name": "flannel-dry"')
                )
            path = _PATHS[obj["kind"]].format(ns=obj["metadata"].get("namespace", ns))
            out = await client.create(path, obj, dry_run=True)
            made.append(f"{out['kind']}/{out['metadata']['name']}")
        return made

    assert kube_api.call(apply) == [
        "ServiceAccount/flannel",
        "ClusterRole/flannel-dry",
        "ClusterRoleBinding/flannel-dry",
        "ConfigMap/kube-flannel-cfg",
        "DaemonSet/kube-flannel-ds",
    ]
