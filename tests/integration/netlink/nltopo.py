"""Helpers for the netlink integration tests: a namespaced node on a veth underlay.

Topology (all names carry a random per-test prefix, removed in ``finally``)::

    <p>n (node)  <p>u 198.51.100.1/24  ──veth──  <p>u 198.51.100.2/24  <p>p (peer)

The node's rtnetlink socket is opened inside ``<p>n``; tests act through it and check the
kernel's state with ``ip -n``/``bridge -n``. Nothing is created in the root namespace.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass
from typing import Any

from pyflannel.netlink.links import VxlanSpec
from pyflannel.netlink.nlsocket import NetlinkSocket

LOCAL_IP = ipaddress.IPv4Address("198.51.100.1")
PEER_IP = ipaddress.IPv4Address("198.51.100.2")


def sh(*args: str) -> str:
    """Run a command, fail the test with its stderr if it fails; return stdout."""
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def sh_json(*args: str) -> Any:
    out = sh(*args)
    return json.loads(out) if out.strip() else []


@dataclass
class Node:
    prefix: str
    ns: str
    peer_ns: str
    ext_name: str
    ext_ifindex: int
    sock: NetlinkSocket

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.ns, *args)

    def ip_json(self, *args: str) -> Any:
        return sh_json("ip", "-n", self.ns, "-j", *args)

    def bridge_json(self, *args: str) -> Any:
        return sh_json("bridge", "-n", self.ns, "-j", *args)

    def vxlan_spec(self, **kw: Any) -> VxlanSpec:
        args: dict[str, Any] = {
            "name": "flannel.1",
            "vni": 1,
            "vtep_ifindex": self.ext_ifindex,
            "local": LOCAL_IP,
        }
        args.update(kw)
        return VxlanSpec(**args)
