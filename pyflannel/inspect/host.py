"""This host as the checks see it, read once: links and addresses (one netlink socket), bound
UDP ports, a device's offload features."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyflannel.backend.kernel import NetlinkKernel
from pyflannel.netlink import consts as c
from pyflannel.netlink.addresses import IPInterface, list_addresses
from pyflannel.netlink.links import LinkInfo, list_links
from pyflannel.netlink.nlsocket import NetlinkSocket
from pyflannel.netlink.ops import IPAddress

__all__ = [
    "Node",
    "bound_udp_ports",
    "ethtool_features",
    "parse_ethtool_features",
    "parse_proc_net_udp",
    "read_node",
    "read_text",
]


@dataclass
class Node:
    """This host's links and addresses, and the socket they were read with (close it)."""

    sock: NetlinkSocket
    links: list[LinkInfo]
    addresses: dict[int, list[IPInterface]]

    @property
    def names(self) -> dict[int, str]:
        """ifindex → device name."""
        return {link.ifindex: link.name for link in self.links}

    @property
    def local_ips(self) -> set[IPAddress]:
        """Every address of this host."""
        return {a.ip for addrs in self.addresses.values() for a in addrs}

    def link(self, name: str) -> LinkInfo | None:
        """The device called ``name``, if any."""
        return next((link for link in self.links if link.name == name), None)

    def link_holding(self, ip: IPAddress | None) -> LinkInfo | None:
        """The device that has ``ip`` as one of its addresses."""
        for link in self.links:
            if any(a.ip == ip for a in self.addresses.get(link.ifindex, ())):
                return link
        return None

    def kernel(self) -> NetlinkKernel:
        """The kernel as the peer programmer reads it, on this node's socket."""
        return NetlinkKernel(self.sock)

    def close(self) -> None:
        """Close the netlink socket."""
        self.sock.close()


def _local_addresses(
    sock: NetlinkSocket, links: Sequence[LinkInfo]
) -> dict[int, list[IPInterface]]:
    return {
        link.ifindex: [
            *list_addresses(sock, link.ifindex, c.AF_INET),
            *list_addresses(sock, link.ifindex, c.AF_INET6),
        ]
        for link in links
    }


def read_node() -> Node:
    """Links and addresses of the current network namespace."""
    sock = NetlinkSocket()
    links = list_links(sock)
    return Node(sock, links, _local_addresses(sock, links))


def read_text(path: Path) -> str | None:
    """The file's text, None when it cannot be read."""
    try:
        return path.read_text()
    except OSError:
        return None


def parse_proc_net_udp(text: str) -> set[int]:
    """Local ports of every socket in ``/proc/net/udp`` or ``/proc/net/udp6`` text."""
    ports: set[int] = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 2 or ":" not in parts[1]:
            continue
        try:
            ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except ValueError:
            continue
    return ports


def parse_ethtool_features(text: str) -> dict[str, str]:
    """``ethtool -k DEV`` output as feature → value (``on``, ``off``, ``off [fixed]``...)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and name and " " not in name:
            out[name] = value.strip()
    return out


def bound_udp_ports() -> set[int] | None:
    """Local ports of every UDP socket (IPv4 and IPv6); None when /proc/net/udp is unreadable."""
    texts = [read_text(Path("/proc/net/udp")), read_text(Path("/proc/net/udp6"))]
    if all(t is None for t in texts):
        return None
    return {p for t in texts if t for p in parse_proc_net_udp(t)}


def ethtool_features(device: str) -> dict[str, str] | None:
    """``ethtool -k device``; None when ethtool is not installed, empty when it failed."""
    binary = shutil.which("ethtool")
    if binary is None:
        return None
    try:
        proc = subprocess.run(
            [binary, "-k", device], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_ethtool_features(proc.stdout) if proc.returncode == 0 else {}
