"""status/doctor in kube mode: findings from a Node listing (pure)."""

from __future__ import annotations

from pyflannel.inspect.kube import evaluate
from pyflannel.subnet.kube.annotations import annotation_keys
from pyflannel.subnet.kube.node import Node, NodeCondition

K = annotation_keys()
CONF = '{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}'
GOOD = {K.kube_managed: "true", K.backend_type: "host-gw", K.backend_data: "null"}


def test_healthy_node_and_refused_peer() -> None:
    me = Node(
        "n1",
        annotations={**GOOD, K.public_ip: "198.51.100.1"},
        pod_cidr="10.244.1.0/24",
        conditions=(NodeCondition("NetworkUnavailable", "False", "FlannelIsUp"),),
    )
    bad = Node("n2", annotations={**GOOD, K.public_ip: "x"}, pod_cidr="10.244.2.0/24")
    report = evaluate([bad, me], "n1", K, CONF, "https://198.51.100.250:6443")
    assert report.healthy
    levels = {(f.check, f.subject): f.level for f in report.findings}
    assert levels == {
        ("peer", "n2"): "WARN",
        ("podCIDR", "n1"): "OK",
        ("annotations", "n1"): "OK",
        ("condition", "n1"): "OK",
    }
    text = report.render()
    assert "n1 *" in text and "refused" in text
    assert report.document()["nodes"][0]["name"] == "n1"


def test_missing_pod_cidr_fails() -> None:
    report = evaluate([Node("n1", annotations=None)], "n1", K, CONF)
    assert not report.healthy
    assert "allocate-node-cidrs" in report.render()
