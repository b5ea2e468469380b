"""KubeSubnetManager against the real kube-apiserver v1.20.2 (as the RBAC-limited flannel user).

Lease from podCIDR, annotations byte-equal to flanneld's, NetworkUnavailable=False, waiting for a
podCIDR / a Node, peers listed and watched (added, changed, deleted, malformed, annotation-less),
and a 410-expired watch recovered by a re-list.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from pyflannel.config import parse_network_config
from pyflannel.errors import KubeWatchExpired
from pyflannel.lab.kube import KubeApiServer
from pyflannel.lease import EventKind, Lease, LeaseAttrs
from pyflannel.netlink.nsenter import in_netns
from pyflannel.peer_messages import PeerChanges, PeerMessage, PeerSnapshot
from pyflannel.subnet.kube.annotations import annotation_keys
from pyflannel.subnet.kube.client import KubeClient, NodeList
from pyflannel.subnet.kube.connection import KubeConnection, load_kubeconfig
from pyflannel.subnet.kube.manager import KubeSubnetManager
from tests.harness.kube import unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

K = annotation_keys()
NET_CONF = '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'
CFG = parse_network_config(NET_CONF)
ATTRS = LeaseAttrs(
    public_ip=ipaddress.IPv4Address("198.51.100.11"),
    backend_type="vxlan",
    backend_data={"VNI": 1, "VtepMAC": "c6:a1:c1:c7:11:ef"},
)
FLANNELD_VXLAN = {
    "flannel.alpha.coreos.com/backend-data": '{"VNI":1,"VtepMAC":"c6:a1:c1:c7:11:ef"}',
    "flannel.alpha.coreos.com/backend-type": "vxlan",
    "flannel.alpha.coreos.com/kube-subnet-manager": "true",
    "flannel.alpha.coreos.com/public-ip": "198.51.100.11",
}


def conn(api: KubeApiServer) -> KubeConnection:
    return KubeConnection(server=api.url, token=api.flannel_token, ca_file=str(api.ca_file))


@contextmanager
def inside(api: KubeApiServer) -> Iterator[None]:
    with in_netns(api.ns):
        yield


def manager(api: KubeApiServer, node: str, tmp_path: Path, **kw: object) -> KubeSubnetManager:
    conf = tmp_path / "net-conf.json"
    conf.write_text(NET_CONF)
    return KubeSubnetManager(
        conn(api),
        net_config_path=str(conf),
        environ={"NODE_NAME": node},
        node_wait=0.2,
        **kw,  # type: ignore[arg-type]
    )


def peer_annotations(n: int, mac: str = "c6:a1:c1:c7:11:13") -> dict[str, str]:
    return {
        K.backend_data: json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":")),
        K.backend_type: "vxlan",
        K.kube_managed: "true",
        K.public_ip: f"198.51.100.{n}",
    }


async def test_lease_annotations_and_condition(kube_api: KubeApiServer, tmp_path: Path) -> None:
    name = unique()
    kube_api.create_node(name, ["10.244.1.0/24"], {"unrelated": "x"})
    with inside(kube_api):
        mgr = manager(kube_api, name, tmp_path)
        assert parse_network_config(await mgr.get_network_config()).network == CFG.network
        lease = await mgr.acquire_lease(CFG, ATTRS)
        assert lease.subnet == ipaddress.IPv4Network("10.244.1.0/24")
        assert lease.ipv6_subnet is None
        node = kube_api.get_node_json(name)
        ann = node["metadata"]["annotations"]
        assert {k: v for k, v in ann.items() if k.startswith(K.prefix)} == FLANNELD_VXLAN
        assert ann["unrelated"] == "x"
        # A restart with the same data sends no patch (the resourceVersion does not move).
        rv = node["metadata"]["resourceVersion"]
        await manager(kube_api, name, tmp_path).acquire_lease(CFG, ATTRS)
        assert kube_api.get_node_json(name)["metadata"]["resourceVersion"] == rv
        await mgr.complete_lease(lease)
        await mgr.aclose()
    conds = {c["type"]: c for c in kube_api.get_node_json(name)["status"]["conditions"]}
    cond = conds["NetworkUnavailable"]
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "False",
        "FlannelIsUp",
        "Flannel is running on this node",
    )


async def test_waits_for_node_and_pod_cidr(kube_api: KubeApiServer, tmp_path: Path) -> None:
    name = unique()
    got: list[Lease] = []
    with inside(kube_api):
        mgr = manager(kube_api, name, tmp_path)
        async with trio.open_nursery() as nursery:

            async def acquire() -> None:
                got.append(await mgr.acquire_lease(CFG, ATTRS))

            nursery.start_soon(acquire)
            await trio.sleep(0.6)
            assert not got  # no Node yet
            await trio.to_thread.run_sync(kube_api.create_node, name, [], {"a": "b"})
            await trio.sleep(0.6)
            assert not got  # Node without a podCIDR
            await trio.to_thread.run_sync(
                lambda: kube_api.patch_node(name, {"spec": {"podCIDR": "10.244.7.0/24"}})
            )
            with trio.fail_after(10):
                while not got:
                    await trio.sleep(0.05)
        await mgr.aclose()
    assert got[0].subnet == ipaddress.IPv4Network("10.244.7.0/24")


async def test_pod_cidr_outside_network_is_refused(kube_api: KubeApiServer, tmp_path: Path) -> None:
    from pyflannel.errors import LeaseError

    name = unique()
    kube_api.create_node(name, ["10.99.1.0/24"], {})
    with inside(kube_api):
        mgr = manager(kube_api, name, tmp_path)
        with pytest.raises(LeaseError, match="doesn't contain"):
            await mgr.acquire_lease(CFG, ATTRS)
        await mgr.aclose()


class _Collector:
    def __init__(self) -> None:
        self.messages: list[PeerMessage] = []

    def peers(self, names: dict[str, str]) -> dict[str, str]:
        """subnet -> public ip of the wanted set after all messages, limited to ``names``."""
        wanted: dict[ipaddress.IPv4Network | None, Lease] = {}
        for msg in self.messages:
            if isinstance(msg, PeerSnapshot):
                wanted = {le.subnet: le for le in msg.leases}
            else:
                for ev in msg.events:
                    if ev.kind == EventKind.ADDED:
                        wanted[ev.lease.subnet] = ev.lease
                    else:
                        wanted.pop(ev.lease.subnet, None)
        keep = set(names.values())
        return {str(s): str(le.attrs.public_ip) for s, le in wanted.items() if str(s) in keep}


async def _wait(pred: object, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not pred():  # type: ignore[operator]
            await trio.sleep(0.05)


async def test_peers_listed_and_watched(kube_api: KubeApiServer, tmp_path: Path) -> None:
    me, p2, p3, bare, bad = (unique() for _ in range(5))
    cidr = {me: "10.244.11.0/24", p2: "10.244.12.0/24", p3: "10.244.13.0/24",
            bare: "10.244.14.0/24", bad: "10.244.15.0/24"}  # fmt: skip
    kube_api.create_node(me, [cidr[me]], {})
    kube_api.create_node(p2, [cidr[p2]], peer_annotations(12))
    kube_api.create_node(bare, [cidr[bare]], None)  # no annotations at all: flanneld panics
    got = _Collector()
    with inside(kube_api):
        mgr = manager(kube_api, me, tmp_path)
        lease = await mgr.acquire_lease(CFG, ATTRS)
        send, recv = trio.open_memory_channel[PeerMessage](100)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mgr.watch_leases, lease, send)

            async def collect() -> None:
                async for m in recv:
                    got.messages.append(m)

            nursery.start_soon(collect)
            await _wait(lambda: got.peers(cidr) == {cidr[p2]: "198.51.100.12"})
            assert isinstance(got.messages[0], PeerSnapshot)
            # Added later, as if a flanneld ran there.
            await trio.to_thread.run_sync(
                kube_api.create_node, p3, [cidr[p3]], peer_annotations(13)
            )
            await _wait(lambda: cidr[p3] in got.peers(cidr))
            # Changed public IP.
            await trio.to_thread.run_sync(
                lambda: kube_api.patch_node(
                    p3, {"metadata": {"annotations": {K.public_ip: "198.51.100.33"}}}
                )
            )
            await _wait(lambda: got.peers(cidr).get(cidr[p3]) == "198.51.100.33")
            # Malformed annotations: refused (and a node that turns malformed is removed).
            ann = {**peer_annotations(15), K.backend_data: "{not json"}
            await trio.to_thread.run_sync(kube_api.create_node, bad, [cidr[bad]], ann)
            await trio.to_thread.run_sync(
                lambda: kube_api.patch_node(
                    p2, {"metadata": {"annotations": {K.public_ip: "not-an-ip"}}}
                )
            )
            await _wait(lambda: cidr[p2] not in got.peers(cidr))
            # Deleted.
            await trio.to_thread.run_sync(kube_api.delete_node, p3)
            await _wait(lambda: got.peers(cidr) == {})
            assert all(isinstance(m, PeerChanges) for m in got.messages[1:])
            nursery.cancel_scope.cancel()
        await mgr.aclose()


class _StaleFirstList(KubeClient):
    """After the first listing, moves the cluster on and compacts etcd, so the watch from the
    listing's resourceVersion gets 410 Gone."""

    lists = 0
    api: KubeApiServer | None = None

    async def list_nodes(self) -> NodeList:
        listing = await super().list_nodes()
        type(self).lists += 1
        api = type(self).api
        if type(self).lists == 1 and api is not None:
            for _ in range(2):  # a watch from rv+1 must be below the compaction
                await trio.to_thread.run_sync(api.create_node, unique("filler"), [], {})
            await trio.to_thread.run_sync(api.compact_etcd)
        return listing


async def test_expired_watch_is_recovered_by_relist(
    kube_api: KubeApiServer, tmp_path: Path
) -> None:
    me, peer = unique(), unique()
    kube_api.create_node(me, ["10.244.21.0/24"], {})
    with inside(kube_api):
        client = _StaleFirstList(conn(kube_api))
        _StaleFirstList.api = kube_api
        stale = (await client.list_nodes()).resource_version
        with pytest.raises(KubeWatchExpired):
            async with client.watch_nodes(stale) as events:
                async for _ in events:
                    pass
        _StaleFirstList.lists = 0
        mgr = manager(kube_api, me, tmp_path, client=client)
        lease = await mgr.acquire_lease(CFG, ATTRS)
        send, recv = trio.open_memory_channel[PeerMessage](100)
        got = _Collector()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mgr.watch_leases, lease, send)

            async def collect() -> None:
                async for m in recv:
                    got.messages.append(m)

            nursery.start_soon(collect)
            await _wait(lambda: _StaleFirstList.lists >= 2)
            await trio.to_thread.run_sync(
                kube_api.create_node, peer, ["10.244.22.0/24"], peer_annotations(22)
            )
            await _wait(lambda: "10.244.22.0/24" in got.peers({peer: "10.244.22.0/24"}))
            snapshots = [m for m in got.messages if isinstance(m, PeerSnapshot)]
            assert len(snapshots) == 2  # the first listing, then the re-list after 410
            nursery.cancel_scope.cancel()
        await mgr.aclose()


async def test_kubeconfig_with_token_and_ca_data(kube_api: KubeApiServer, tmp_path: Path) -> None:
    path = kube_api.kubeconfig(tmp_path / "kubeconfig")
    c = load_kubeconfig(str(path))
    assert c.server == kube_api.url and c.ca_data and c.token == kube_api.flannel_token
    with inside(kube_api):
        client = KubeClient(c)
        listing = await client.list_nodes()
        assert listing.resource_version
        await client.aclose()


async def test_node_name_from_pod(kube_api: KubeApiServer, tmp_path: Path) -> None:
    node, pod = unique(), unique("pod")
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
    }
    kube_api.call(lambda c: c.create("/api/v1/namespaces/default/pods", obj))
    with inside(kube_api):
        env = {"POD_NAME": pod, "POD_NAMESPACE": "default"}
        mgr = KubeSubnetManager(conn(kube_api), environ=env)
        assert await mgr.resolve_node_name() == node
        await mgr.aclose()
        bare = KubeSubnetManager(conn(kube_api), environ={})
        with pytest.raises(Exception, match="POD_NAME and POD_NAMESPACE must be set"):
            await bare.resolve_node_name()
        await bare.aclose()
