"""Fixtures for the netlink integration tests (topology: see nltopo.py)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from pyflannel.netlink.links import LinkInfo, ensure_vxlan, get_link, set_link_up
from pyflannel.netlink.nlsocket import NetlinkSocket
from pyflannel.netlink.nsenter import create_netns, delete_netns, in_netns

from .nltopo import LOCAL_IP, PEER_IP, Node, sh


@pytest.fixture
def node() -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    prefix = f"pf{secrets.token_hex(2)}"
    ns, peer_ns, ext = f"{prefix}n", f"{prefix}p", f"{prefix}u"
    try:
        create_netns(ns)
        create_netns(peer_ns)
        sh(
            "ip",
            "-n",
            ns,
            "link",
            "add",
            ext,
            "type",
            "veth",
            "peer",
            "name",
            ext,
            "netns",
            peer_ns,
        )
        sh("ip", "-n", ns, "addr", "add", f"{LOCAL_IP}/24", "dev", ext)
        sh("ip", "-n", peer_ns, "addr", "add", f"{PEER_IP}/24", "dev", ext)
        sh("ip", "-n", ns, "link", "set", ext, "up")
        sh("ip", "-n", peer_ns, "link", "set", ext, "up")
        with in_netns(ns):
            sock = NetlinkSocket()
        try:
            link = get_link(sock, ext)
            assert link is not None
            yield Node(prefix, ns, peer_ns, ext, link.ifindex, sock)
        finally:
            sock.close()
    finally:
        delete_netns(ns)
        delete_netns(peer_ns)


@pytest.fixture
def vxlan(node: Node) -> LinkInfo:
    """flannel.1 (VNI 1, on the underlay veth, local 198.51.100.1), up."""
    link = ensure_vxlan(node.sock, node.vxlan_spec())
    set_link_up(node.sock, link.ifindex)
    return link
