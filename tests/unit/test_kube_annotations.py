"""flanneld's annotation keys and values, and Node → peer lease (flannel-kube.md §4, §7)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.config import parse_network_config
from pyflannel.errors import ConfigError
from pyflannel.lease import LeaseAttrs, LeaseDecodeError
from pyflannel.subnet.kube.annotations import (
    annotation_keys,
    condition_patch,
    lease_from_node,
    own_annotation_patch,
)
from pyflannel.subnet.kube.node import Node, parse_node

K = annotation_keys()
CFG = parse_network_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
VX = LeaseAttrs(
    public_ip=ipaddress.IPv4Address("198.51.100.11"),
    backend_type="vxlan",
    backend_data={"VNI": 1, "VtepMAC": "c6:a1:c1:c7:11:ef"},
)


@pytest.mark.parametrize(
    ("prefix", "normalised"),
    [
        ("flannel.alpha.coreos.com", "flannel.alpha.coreos.com/"),
        ("example.com/net", "example.com/net-"),
        ("example.com/net-", "example.com/net-"),
        ("example.com/", "example.com/"),
    ],
)
def test_prefix_normalised_like_flanneld(prefix: str, normalised: str) -> None:
    keys = annotation_keys(prefix)
    assert keys.prefix == normalised
    assert keys.backend_data == normalised + "backend-data"
    assert keys.kube_managed == normalised + "kube-subnet-manager"


@pytest.mark.parametrize("prefix", ["a/b/c", "nodots", "example.com/UP"])
def test_bad_prefix_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="kube-annotation-prefix"):
        annotation_keys(prefix)


def test_vxlan_annotations_byte_equal_to_flanneld() -> None:
    node = Node("n1", annotations={"unrelated": "x"}, pod_cidr="10.244.1.0/24")
    assert own_annotation_patch(node, VX, K) == {
        "flannel.alpha.coreos.com/backend-data": '{"VNI":1,"VtepMAC":"c6:a1:c1:c7:11:ef"}',
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": "198.51.100.11",
    }


def test_host_gw_annotations_byte_equal_to_flanneld() -> None:
    attrs = LeaseAttrs(public_ip=ipaddress.IPv4Address("198.51.100.11"), backend_type="host-gw")
    patch = own_annotation_patch(Node("n1", annotations={}), attrs, K)
    assert patch == {
        "flannel.alpha.coreos.com/backend-data": "null",
        "flannel.alpha.coreos.com/backend-type": "host-gw",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": "198.51.100.11",
    }


def test_unchanged_node_gets_no_patch_and_changes_only_what_differs() -> None:
    full = own_annotation_patch(Node("n1", annotations={}), VX, K)
    assert own_annotation_patch(Node("n1", annotations=full), VX, K) == {}
    moved = {**full, K.public_ip: "198.51.100.99"}
    assert own_annotation_patch(Node("n1", annotations=moved), VX, K) == {
        K.public_ip: "198.51.100.11"
    }


def test_public_ip_overwrite_wins() -> None:
    node = Node("n1", annotations={K.public_ip_overwrite: "203.0.113.7"})
    assert own_annotation_patch(node, VX, K)[K.public_ip] == "203.0.113.7"


def test_dual_stack_vxlan_writes_v6_pair() -> None:
    attrs = LeaseAttrs(
        public_ip=ipaddress.IPv4Address("198.51.100.11"),
        public_ipv6=ipaddress.IPv6Address("2001:db8::11"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "c6:a1:c1:c7:11:ef"},
        backend_v6_data={"VNI": 1, "VtepMAC": "c6:a1:c1:c7:11:ee"},
    )
    patch = own_annotation_patch(Node("n1", annotations={}), attrs, K)
    assert patch[K.public_ipv6] == "2001:db8::11"
    assert patch[K.backend_v6_data] == '{"VNI":1,"VtepMAC":"c6:a1:c1:c7:11:ee"}'


def test_ipv4_only_writes_no_v6_keys() -> None:
    patch = own_annotation_patch(Node("n1", annotations={}), VX, K)
    assert K.public_ipv6 not in patch and K.backend_v6_data not in patch


def test_condition_patch_is_flanneld_s() -> None:
    body = condition_patch(now=1796457873.0)
    assert body == {
        "status": {
            "conditions": [
                {
                    "type": "NetworkUnavailable",
                    "status": "False",
                    "lastHeartbeatTime": "2026-12-05T08:04:33Z",
                    "lastTransitionTime": "2026-12-05T08:04:33Z",
                    "reason": "FlannelIsUp",
                    "message": "Flannel is running on this node",
                }
            ]
        }
    }


def _peer(**ann: str) -> Node:
    base = {
        K.kube_managed: "true",
        K.backend_type: "vxlan",
        K.backend_data: '{"VNI":1,"VtepMAC":"c6:a1:c1:c7:11:ef"}',
        K.public_ip: "198.51.100.13",
    }
    base.update(ann)
    return Node("n3", annotations=base, pod_cidr="10.244.3.0/24")


def test_lease_from_flanneld_node() -> None:
    lease = lease_from_node(_peer(), K, CFG)
    assert lease.subnet == ipaddress.IPv4Network("10.244.3.0/24")
    assert lease.attrs == LeaseAttrs(
        public_ip=ipaddress.IPv4Address("198.51.100.13"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "c6:a1:c1:c7:11:ef"},
    )


@pytest.mark.parametrize(
    ("ann", "match"),
    [
        ({K.public_ip: "bogus"}, "not an IPv4 address"),
        ({K.public_ip: ""}, "not an IPv4 address"),
        ({K.backend_data: "{not json"}, "not valid JSON"),
    ],
)
def test_malformed_annotations_refused_with_the_node_named(ann: dict[str, str], match: str) -> None:
    with pytest.raises(LeaseDecodeError, match=f"node 'n3'.*{match}"):
        lease_from_node(_peer(**ann), K, CFG)


def test_parse_node_without_annotations() -> None:
    node = parse_node({"metadata": {"name": "x", "resourceVersion": "7"}, "spec": {}})
    assert node.annotations is None and node.annotation(K.public_ip) == ""


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6))
def test_any_annotations_parse_or_refuse_cleanly(ann: dict[str, str]) -> None:
    node = Node("h", annotations={K.kube_managed: "true", **ann}, pod_cidr="10.244.9.0/24")
    try:
        lease_from_node(node, K, CFG)
    except LeaseDecodeError as exc:
        assert "node 'h'" in exc.message
