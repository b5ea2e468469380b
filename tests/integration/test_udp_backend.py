"""The udp backend against the real kernel, in namespaces: the TUN device and its route, pods
pinging across nodes through the userspace forwarder, ICMP net unreachable for a lost peer, a
byte-exact TCP transfer, and TUN re-creation."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pyflannel.backend.udp import UdpBackend, UdpNetwork
from pyflannel.config import parse_network_config
from pyflannel.errors import ConfigError, InterfaceError
from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs, encode_attrs
from tests.harness.backend_nodes import Node, Nodes, ip_json, make_nodes, ping

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

CFG = parse_network_config(b'{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}')


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    with make_nodes(2) as topo:
        yield topo


@contextlib.contextmanager
def udp_nodes(topo: Nodes, tmp_path: Path) -> Iterator[tuple[list[UdpNetwork], list[Lease]]]:
    """Both nodes prepared and configured, peers applied, forwarders running; closed after."""
    backends, prepared, leases, nets = [], [], [], []
    try:
        for node in topo.nodes:
            be = UdpBackend()
            backends.append(be)
            prep = node.run(trio.run, be.prepare, CFG, node.ext_iface(), tmp_path)
            prepared.append(prep)
            leases.append(
                Lease(node.subnet, prep.attrs, expiration=time.time() + 3600, etcd_lease_id=1)
            )
        for node, be, prep, le in zip(topo.nodes, backends, prepared, leases, strict=True):
            net = node.run(trio.run, be.configure, prep, le)
            nets.append(net)
            node.run(trio.run, net.apply_snapshot, leases)
            net.forwarder.start()
        yield nets, leases
    finally:
        for net in nets:
            net.forwarder.stop()
        for be in backends:
            be.close()


def ping_output(ns: str, dst: str) -> str:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", dst],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout + proc.stderr


def test_device_route_socket_and_lease_attrs(nodes: Nodes, tmp_path: Path) -> None:
    n0 = nodes[0]
    be = UdpBackend()
    try:
        prep = n0.run(trio.run, be.prepare, CFG, n0.ext_iface(mtu=1450), tmp_path)
        attrs = prep.attrs
        # exactly what flanneld writes: no BackendType, no BackendData
        assert attrs == LeaseAttrs(public_ip=n0.ip)
        assert encode_attrs(attrs) == '{"PublicIP":"198.51.100.11","PublicIPv6":null}'
        lease = Lease(n0.subnet, attrs)
        net = n0.run(trio.run, be.configure, prep, lease)
        assert be.tun_name == "flannel0"
        assert net.mtu == 1450 - 28

        link = ip_json("-n", n0.ns, "-d", "link", "show", "flannel0")[0]
        assert link["linkinfo"]["info_kind"] == "tun"
        assert link["linkinfo"]["info_data"]["type"] == "tun"
        assert link["linkinfo"]["info_data"]["pi"] is False
        assert link["mtu"] == 1422 and "UP" in link["flags"]
        addrs = ip_json("-n", n0.ns, "-4", "addr", "show", "dev", "flannel0")[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.5.1.0", 32)]
        routes = ip_json("-n", n0.ns, "route", "show", "10.5.0.0/16")
        assert [(r["dst"], r["dev"], r.get("scope", "global")) for r in routes] == [
            ("10.5.0.0/16", "flannel0", "global")
        ]
        ss = subprocess.run(
            ["ip", "netns", "exec", n0.ns, "ss", "-Hunl"], capture_output=True, text=True
        ).stdout
        assert "198.51.100.11:8285" in ss

        # A second backend cannot take the same port: refused before any lease is taken.
        other = UdpBackend()
        with pytest.raises(InterfaceError, match="8285"):
            n0.run(trio.run, other.prepare, CFG, n0.ext_iface(), tmp_path)
        other.close()
    finally:
        be.close()
    # the TUN is not persistent: closing it removes the device (and its route)
    assert subprocess.run(["ip", "-n", n0.ns, "link", "show", "flannel0"],
                          capture_output=True).returncode != 0  # fmt: skip
    assert ip_json("-n", n0.ns, "route", "show", "10.5.0.0/16") == []


def test_ipv6_is_refused(nodes: Nodes, tmp_path: Path) -> None:
    cfg = parse_network_config(
        b'{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:5::/48",'
        b' "Backend": {"Type": "udp"}}'
    )
    with pytest.raises(ConfigError, match="IPv4 only"):
        nodes[0].run(trio.run, UdpBackend().prepare, cfg, nodes[0].ext_iface(), tmp_path)


def test_pods_ping_and_lost_peer_is_net_unreachable(nodes: Nodes, tmp_path: Path) -> None:
    n0, n1 = nodes.nodes
    with udp_nodes(nodes, tmp_path) as (nets, leases):
        assert ping(n0.pod_ns, n1.pod_ip) and ping(n1.pod_ns, n0.pod_ip)
        assert ping(n0.ns, n1.pod_ip)  # host → remote pod, sourced from flannel0's address
        out = ping_output(n0.pod_ns, n1.pod_ip)
        assert "ttl=60" in out  # 64, -1 per kernel hop and per forwarder, as with flanneld

        # A vxlan or host-gw node's lease is not a udp peer: ignored.
        foreign = Lease(
            ipaddress.IPv4Network("10.5.9.0/24"),
            LeaseAttrs(public_ip=ipaddress.IPv4Address("198.51.100.19"), backend_type="host-gw"),
        )
        n0.run(trio.run, nets[0].apply_events, [Event(EventKind.ADDED, foreign)])
        assert len(nets[0].table) == 1 and nets[0].stats.leases_rejected_total == 1

        # The peer's lease goes: the sender hears "Destination Net Unreachable" at once.
        n0.run(trio.run, nets[0].apply_events, [Event(EventKind.REMOVED, leases[1])])
        t0 = time.monotonic()
        out = ping_output(n0.pod_ns, n1.pod_ip)
        assert "Destination Net Unreachable" in out, out
        assert "From 10.5.0.0" in out
        assert time.monotonic() - t0 < 1.0
        assert nets[0].traffic.no_route >= 1 and nets[0].traffic.icmp_sent >= 1

        # TCP gets the error too: connect() fails instead of hanging.
        proc = subprocess.run(
            ["ip", "netns", "exec", n0.pod_ns, "python3", "-c",
             "import socket,sys\n"
             "try:\n socket.create_connection((sys.argv[1], 9), timeout=5)\n"
             "except OSError as e:\n print(type(e).__name__, e.errno)",
             n1.pod_ip],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert proc.stdout.split()[0] in ("OSError", "ConnectionRefusedError")
        assert "TimeoutError" not in proc.stdout

        # And back, without restarting anything.
        n0.run(trio.run, nets[0].apply_events, [Event(EventKind.ADDED, leases[1])])
        assert ping(n0.pod_ns, n1.pod_ip)


SENDER = r"""
import hashlib, os, socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = hashlib.sha256()
chunk = os.urandom(1 << 16)
with socket.create_connection((host, port), timeout=30) as s:
    left = size
    while left:
        part = chunk[: min(left, len(chunk))]
        h.update(part)
        s.sendall(part)
        left -= len(part)
        chunk = chunk[1:] + chunk[:1]  # vary the data between chunks
print(h.hexdigest())
"""

RECEIVER = r"""
import hashlib, socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
conn.settimeout(30)
h = hashlib.sha256()
total = 0
while True:
    data = conn.recv(1 << 16)
    if not data:
        break
    h.update(data)
    total += len(data)
print(total, h.hexdigest())
"""


def tcp_transfer(src_ns: str, dst_ns: str, dst_ip: str, size: int, port: int = 5555) -> None:
    """Send ``size`` random bytes over TCP and check both sides' sha256 agree."""
    rx = subprocess.Popen(
        ["ip", "netns", "exec", dst_ns, "python3", "-c", RECEIVER, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "listening"
        tx = subprocess.run(
            ["ip", "netns", "exec", src_ns, "python3", "-c", SENDER, dst_ip, str(port), str(size)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        out, _ = rx.communicate(timeout=60)
    finally:
        rx.kill()
    total, digest = out.split()
    assert int(total) == size
    assert digest == tx.stdout.strip()


def test_tcp_transfer_is_byte_exact(nodes: Nodes, tmp_path: Path) -> None:
    n0, n1 = nodes.nodes
    with udp_nodes(nodes, tmp_path) as (nets, _):
        tcp_transfer(n0.pod_ns, n1.pod_ns, n1.pod_ip, 20 << 20)
        tcp_transfer(n1.pod_ns, n0.pod_ns, n0.pod_ip, 5 << 20, port=5556)
        assert nets[0].traffic.tx_bytes > 20 << 20
        assert nets[1].traffic.rx_packets >= (20 << 20) // 1422


def test_offload_off_path_is_byte_exact(nodes: Nodes, tmp_path: Path) -> None:
    """The plain per-packet path (no GSO/GRO, no coalescing) carries the same bytes."""
    n0, n1 = nodes.nodes
    os.environ["PYFLANNEL_UDP_OFFLOAD"] = "0"
    os.environ["PYFLANNEL_UDP_THREADS"] = "split"
    try:
        with udp_nodes(nodes, tmp_path) as (nets, _):
            assert not nets[0].forwarder.gso and nets[0].forwarder.mode == "split"
            tcp_transfer(n0.pod_ns, n1.pod_ns, n1.pod_ip, 5 << 20)
    finally:
        del os.environ["PYFLANNEL_UDP_OFFLOAD"], os.environ["PYFLANNEL_UDP_THREADS"]


class Running:
    """``network.run()`` in its own trio loop, in a thread inside the node's namespace."""

    def __init__(self, node: Node, net: UdpNetwork) -> None:
        self.net = net
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=self._main, args=(node,), daemon=True)
        self._thread.start()
        assert self.ready.wait(5)

    def _main(self, node: Node) -> None:
        async def inner() -> None:
            with trio.CancelScope() as scope:
                self._scope = scope
                self._token = trio.lowlevel.current_trio_token()
                self.ready.set()
                await self.net.run()

        try:
            node.run(trio.run, inner)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        assert self._token is not None and self._scope is not None
        self._token.run_sync_soon(self._scope.cancel)
        self._thread.join(10)
        assert not self._thread.is_alive()


def run_owned(node: Node, net: UdpNetwork) -> Running:
    """Start ``net.run()``, which owns the forwarder from here on (a fresh one)."""
    net.forwarder.stop()
    net.forwarder = net._new_forwarder()
    return Running(node, net)


def test_run_recreates_a_deleted_tun_and_cleans_up(nodes: Nodes, tmp_path: Path) -> None:
    n0, n1 = nodes.nodes
    with udp_nodes(nodes, tmp_path) as (nets, _):
        runner = run_owned(n0, nets[0])
        try:
            assert ping(n0.pod_ns, n1.pod_ip)
            subprocess.run(["ip", "-n", n0.ns, "link", "del", "flannel0"], check=True)
            deadline = time.monotonic() + 10
            while not ping(n0.pod_ns, n1.pod_ip, count=1, timeout=0.5):
                assert time.monotonic() < deadline, "no traffic after the TUN was deleted"
            assert nets[0].stats.device_recreations_total == 1
            addrs = ip_json("-n", n0.ns, "-4", "addr", "show", "dev", "flannel0")[0]["addr_info"]
            assert [a["local"] for a in addrs] == ["10.5.1.0"]
            assert ip_json("-n", n0.ns, "route", "show", "10.5.0.0/16")[0]["dev"] == "flannel0"
        finally:
            runner.stop()
        assert runner.error is None
        # cancelled: the forwarder stopped and the TUN is gone
        assert not nets[0].forwarder.alive
        links = [link["ifname"] for link in ip_json("-n", n0.ns, "link", "show")]
        assert "flannel0" not in links


def test_route_for_the_network_via_another_device_is_replaced(nodes: Nodes, tmp_path: Path) -> None:
    n0 = nodes[0]
    subprocess.run(
        ["ip", "-n", n0.ns, "route", "add", "10.5.0.0/16", "via", "198.51.100.99"], check=True
    )
    be = UdpBackend()
    try:
        prep = n0.run(trio.run, be.prepare, CFG, n0.ext_iface(), tmp_path)
        n0.run(trio.run, be.configure, prep, Lease(n0.subnet, prep.attrs))
        routes = ip_json("-n", n0.ns, "route", "show", "10.5.0.0/16")
        assert [(r["dev"], r.get("gateway")) for r in routes] == [("flannel0", None)]
    finally:
        be.close()


def test_udp_socket_is_bound_to_the_interface_address(nodes: Nodes, tmp_path: Path) -> None:
    """flanneld listens on the interface IP, not on the public IP (NAT) nor on 0.0.0.0."""
    n0 = nodes[0]
    be = UdpBackend()
    try:
        prep = n0.run(trio.run, be.prepare, CFG, n0.ext_iface(public_ip="203.0.113.5"),
                      tmp_path)  # fmt: skip
        assert prep.attrs.public_ip == ipaddress.IPv4Address("203.0.113.5")
        assert prep.sock.getsockname() == ("198.51.100.11", 8285)
        assert prep.sock.type == socket.SOCK_DGRAM
    finally:
        be.close()


UDP_RX = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(2)
print("ready", flush=True)
good = bad = 0
try:
    while True:
        d = s.recv(65536)
        if hashlib.sha256(d[32:]).digest() == d[:32]:
            good += 1
        else:
            bad += 1
except TimeoutError:
    pass
print(good, bad)
"""

UDP_TX = r"""
import hashlib, os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    body = os.urandom(1200) + i.to_bytes(4, "big")
    s.sendto(hashlib.sha256(body).digest() + body, (sys.argv[1], int(sys.argv[2])))
"""


def test_udp_datagrams_arrive_intact(nodes: Nodes, tmp_path: Path) -> None:
    """Equal-size datagrams of one flow take the batched paths (GSO send, GRO receive, UDP GSO
    write into the TUN); every one that arrives is whole and a flood mostly arrives."""
    n0, n1 = nodes.nodes
    count = 3000
    with udp_nodes(nodes, tmp_path) as (nets, _):
        rx = subprocess.Popen(
            ["ip", "netns", "exec", n1.pod_ns, "python3", "-c", UDP_RX, "7777"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
            subprocess.run(
                ["ip", "netns", "exec", n0.pod_ns, "python3", "-c", UDP_TX, n1.pod_ip, "7777",
                 str(count)],
                check=True, timeout=60,
            )  # fmt: skip
            out, _ = rx.communicate(timeout=30)
        finally:
            rx.kill()
        good, bad = map(int, out.split())
        assert bad == 0
        assert good >= count * 0.8, (good, nets[0].traffic, nets[1].traffic)


def _network_route_dev(ns: str) -> str | None:
    routes = ip_json("-n", ns, "route", "show", "10.5.0.0/16")
    return routes[0].get("dev") if routes else None


def test_run_restores_the_network_route_address_and_link_state(
    nodes: Nodes, tmp_path: Path
) -> None:
    """Issue 19: a link flap (which flushes the Network route), another tool deleting the
    route or the address, or the device set down: each is put back within a second, and
    traffic flows again."""
    n0, n1 = nodes.nodes
    with udp_nodes(nodes, tmp_path) as (nets, _):
        runner = run_owned(n0, nets[0])
        try:
            assert ping(n0.pod_ns, n1.pod_ip)
            faults = [
                ["link", "set", "flannel0", "down"],
                ["link", "set", "flannel0", "up"],  # the flap: now up, without the route
                ["route", "del", "10.5.0.0/16", "dev", "flannel0"],
                ["addr", "del", "10.5.1.0/32", "dev", "flannel0"],
                ["link", "set", "flannel0", "down"],
            ]
            for fault in faults:
                subprocess.run(["ip", "-n", n0.ns, *fault], check=True)
                started = time.monotonic()
                while True:
                    link = ip_json("-n", n0.ns, "link", "show", "flannel0")[0]
                    addrs = ip_json("-n", n0.ns, "-4", "addr", "show", "dev", "flannel0")
                    local = [a["local"] for a in addrs[0]["addr_info"]] if addrs else []
                    if (
                        "UP" in link["flags"]
                        and local == ["10.5.1.0"]
                        and _network_route_dev(n0.ns) == "flannel0"
                    ):
                        break
                    assert time.monotonic() - started < 2.0, f"not repaired after {fault}"
                    time.sleep(0.05)
                assert ping(n0.pod_ns, n1.pod_ip), f"no traffic after {fault}"
            assert nets[0].stats.device_recreations_total == 0
            assert nets[0].stats.resync_repairs_total >= len(faults) - 1
        finally:
            runner.stop()
        assert runner.error is None
