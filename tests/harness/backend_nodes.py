"""A small namespaced topology for the backend integration tests.

::

    <p>sw:   bridge br0 ── v<i> ══ eth0  <p>n<i>  198.51.100.(11+i)/24, forwarding on
                                         cni0 10.5.(i+1).1/24 ── veth0 ══ eth0  <p>p<i>
                                                                          10.5.(i+1).2/24

Nodes share one L2 segment (so host-gw works). Everything is named with a random prefix and
removed by name afterwards, also when the test fails. Nothing touches the root namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pyflannel.iface import ExternalInterface
from pyflannel.netlink.nsenter import create_netns, delete_netns, run_in_netns
from tests.harness.threads import send_idle_workers_home

__all__ = ["Node", "Nodes", "bridge", "bridge_json", "ip", "ip_json", "make_nodes", "ping"]

_T = TypeVar("_T")
NETWORK = ipaddress.IPv4Network("10.5.0.0/16")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (use ``-n NS`` in ARGS to act inside a namespace)."""
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def ip_json(*args: str) -> Any:
    """``ip -j ARGS`` parsed (``[]`` when the output is empty)."""
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def bridge(*args: str) -> None:
    """Run ``bridge ARGS`` (``-n NS`` for a namespace)."""
    subprocess.run(["bridge", *args], check=True, capture_output=True, text=True)


def bridge_json(*args: str) -> Any:
    """``bridge -j ARGS`` parsed."""
    out = subprocess.run(["bridge", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def ping(ns: str, dst: str, *, count: int = 2, timeout: float = 2.0) -> bool:
    """Whether ``dst`` answers pings sent from namespace ``ns``."""
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-q",
            "-c",
            str(count),
            "-i",
            "0.2",
            "-W",
            str(timeout),
            dst,
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0


@dataclass(frozen=True)
class Node:
    """One node namespace with its underlay address and one pod."""

    index: int
    ns: str
    pod_ns: str
    ip: ipaddress.IPv4Address
    subnet: ipaddress.IPv4Network
    ip6: ipaddress.IPv6Address | None = None
    subnet6: ipaddress.IPv6Network | None = None

    @property
    def pod_ip(self) -> str:
        """The pod's address (second host of the node's subnet)."""
        return str(self.subnet.network_address + 2)

    @property
    def pod_ip6(self) -> str:
        """The pod's IPv6 address (``::2`` of the node's IPv6 subnet)."""
        assert self.subnet6 is not None
        return str(self.subnet6.network_address + 2)

    def ext_iface(self, *, public_ip: str | None = None, mtu: int = 1500) -> ExternalInterface:
        """The node's eth0 as pyflannel.iface would report it."""
        link = ip_json("-n", self.ns, "link", "show", "eth0")[0]
        return ExternalInterface(
            name="eth0",
            index=int(link["ifindex"]),
            ipv4_addr=self.ip,
            ipv6_addr=self.ip6,
            public_ip=ipaddress.IPv4Address(public_ip) if public_ip else self.ip,
            public_ipv6=self.ip6,
            mtu=mtu,
        )

    def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Call ``fn(*args)`` in a thread inside this node's namespace."""
        try:
            return run_in_netns(self.ns, fn, *args)
        finally:
            # Worker threads trio spawned in there stay in there (tests/harness/threads.py).
            send_idle_workers_home()


@dataclass(frozen=True)
class Nodes:
    """The whole topology."""

    prefix: str
    switch: str
    nodes: Sequence[Node]

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]


def _batch(ns: str | None, lines: list[str]) -> None:
    argv = ["ip", "-batch", "-"] if ns is None else ["ip", "-n", ns, "-batch", "-"]
    subprocess.run(argv, input="\n".join(lines) + "\n", check=True, capture_output=True, text=True)


@contextlib.contextmanager
def make_nodes(count: int = 2, *, ipv6: bool = False) -> Iterator[Nodes]:
    """Build ``count`` nodes (each with one pod) behind one switch; remove them afterwards.

    With ``ipv6`` nodes also get 2001:db8::(11+i)/64 and pods 2001:db8:5:(i+1)::2/64.
    """
    prefix = f"pf{secrets.token_hex(2)}"
    switch = f"{prefix}sw"
    created: list[str] = []
    nodes: list[Node] = []
    try:
        create_netns(switch)
        created.append(switch)
        _batch(switch, ["link add br0 type bridge", "link set br0 up"])
        for i in range(count):
            node = Node(
                index=i,
                ns=f"{prefix}n{i}",
                pod_ns=f"{prefix}p{i}",
                ip=ipaddress.IPv4Address(f"198.51.100.{11 + i}"),
                subnet=ipaddress.IPv4Network(f"10.5.{i + 1}.0/24"),
                ip6=ipaddress.IPv6Address(f"2001:db8::{11 + i}") if ipv6 else None,
                subnet6=ipaddress.IPv6Network(f"2001:db8:5:{i + 1}::/64") if ipv6 else None,
            )
            for ns in (node.ns, node.pod_ns):
                create_netns(ns)
                created.append(ns)
            gw = node.subnet.network_address + 1
            ip(
                "link",
                "add",
                "eth0",
                "netns",
                node.ns,
                "type",
                "veth",
                "peer",
                "name",
                f"v{i}",
                "netns",
                switch,
            )
            _batch(switch, [f"link set v{i} master br0", f"link set v{i} up"])
            _batch(
                node.ns,
                [
                    f"addr add {node.ip}/24 dev eth0",
                    "link set eth0 up",
                    "link add cni0 type bridge",
                    f"addr add {gw}/24 dev cni0",
                    "link set cni0 up",
                ],
            )
            ip(
                "link",
                "add",
                "eth0",
                "netns",
                node.pod_ns,
                "type",
                "veth",
                "peer",
                "name",
                "veth0",
                "netns",
                node.ns,
            )
            _batch(node.ns, ["link set veth0 master cni0", "link set veth0 up"])
            _batch(
                node.pod_ns,
                [
                    f"addr add {node.pod_ip}/24 dev eth0",
                    "link set eth0 up",
                    f"route add default via {gw}",
                ],
            )
            sysctls = ["net.ipv4.ip_forward=1"]
            if node.ip6 is not None and node.subnet6 is not None:
                gw6 = node.subnet6.network_address + 1
                _batch(
                    node.ns,
                    [f"addr add {node.ip6}/64 dev eth0 nodad", f"addr add {gw6}/64 dev cni0 nodad"],
                )
                _batch(
                    node.pod_ns,
                    [f"addr add {node.pod_ip6}/64 dev eth0 nodad", f"route add default via {gw6}"],
                )
                sysctls.append("net.ipv6.conf.all.forwarding=1")
            subprocess.run(
                ["ip", "netns", "exec", node.ns, "sysctl", "-qw", *sysctls],
                check=True,
                capture_output=True,
            )
            nodes.append(node)
        yield Nodes(prefix, switch, nodes)
    finally:
        for ns in reversed(created):
            delete_netns(ns)
