"""The installed flannel plugin with the real Debian plugins (bridge, host-local, portmap).

Each test gets a fresh "node" namespace where the plugin runs (``ip netns exec``), pod
namespaces, and a temporary subnet.env / dataDir / host-local dataDir (tests/harness/
cni_runner.py). Assertions look at the kernel (addresses, routes, links, iptables), at the
files, and at pings from the pod to its gateway.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cni_runner import SYSTEM_CNI, CniSandbox, cni_sandbox, netns_exec, run_list

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not Path(SYSTEM_CNI, "bridge").exists(), reason="no /usr/lib/cni/bridge"),
]

V4_ENV = (
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
)
DUAL_ENV = (
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
    "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
)
CONFLIST = Path(__file__).resolve().parents[2] / "systemd" / "10-flannel.conflist"


@pytest.fixture
def sandbox() -> Iterator[CniSandbox]:
    with cni_sandbox() as sb:
        sb.write_subnet_env(V4_ENV)
        yield sb


def ip_json(ns: str, *args: str) -> Any:
    return json.loads(netns_exec(ns, "ip", "-j", *args).stdout or "[]")


def addresses(ns: str, dev: str) -> list[str]:
    links = ip_json(ns, "addr", "show", "dev", dev)
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in links
        for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    ]


def link_exists(ns: str, dev: str) -> bool:
    return netns_exec(ns, "ip", "link", "show", "dev", dev, check=False).returncode == 0


def ping(ns: str, target: str) -> bool:
    cmd = ["ping", "-c", "1", "-W", "2", target]
    for _ in range(5):  # IPv6 gateways answer only after duplicate address detection
        if netns_exec(ns, *cmd, check=False).returncode == 0:
            return True
        netns_exec(ns, "sleep", "0.5")
    return False


def ipam_reservations(sandbox: CniSandbox) -> list[str]:
    net = sandbox.ipam_dir / "cbr0"
    if not net.is_dir():
        return []
    return sorted(p.name for p in net.iterdir() if p.name[0].isdigit() or ":" in p.name)


# ---------------------------------------------------------------------------------------------


def test_add_check_del_with_the_debian_bridge(sandbox: CniSandbox) -> None:
    pod = sandbox.add_pod()
    conf = sandbox.flannel_conf()

    added = sandbox.flannel("ADD", conf, "cid-1", pod).ok()

    result = added.json
    assert result["cniVersion"] == "1.0.0"
    assert result["interfaces"][0]["name"] == "cni0"
    assert result["interfaces"][-1] == {
        **result["interfaces"][-1],
        "name": "eth0",
        "sandbox": f"/run/netns/{pod}",
    }
    pod_ip = ipaddress.ip_interface(result["ips"][0]["address"])
    assert pod_ip.network == ipaddress.ip_network("10.244.1.0/24")
    assert result["ips"][0]["gateway"] == "10.244.1.1"
    # The kernel agrees: the pod's address, the route to the flannel network, the node bridge.
    assert addresses(pod, "eth0") == [str(pod_ip)]
    routes = ip_json(pod, "route", "show")
    assert any(r["dst"] == "10.244.0.0/16" for r in routes)
    assert any(r["dst"] == "default" and r.get("gateway") == "10.244.1.1" for r in routes)
    assert addresses(sandbox.node, "cni0") == ["10.244.1.1/24"]
    assert ip_json(sandbox.node, "link", "show", "dev", "cni0")[0]["mtu"] == 1450
    assert ping(pod, "10.244.1.1")
    # The saved delegate config: exact bytes, modes.
    saved = sandbox.saved("cid-1")
    assert sandbox.saved_config("cid-1") == (
        '{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{"dataDir":'
        f'"{sandbox.ipam_dir}","ranges":[[{{"subnet":"10.244.1.0/24"}}]],"routes":'
        '[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,'
        '"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}'
    )
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(sandbox.data_dir.stat().st_mode) == 0o700
    assert ipam_reservations(sandbox) == [str(pod_ip.ip)]

    checked = sandbox.flannel("CHECK", {**conf, "prevResult": result}, "cid-1", pod).ok()
    assert checked.stdout == b""

    deleted = sandbox.flannel("DEL", {**conf, "prevResult": result}, "cid-1", pod).ok()
    assert deleted.stdout == b""
    assert not saved.exists()
    assert not link_exists(pod, "eth0")
    assert ipam_reservations(sandbox) == []
    # Again, and without a netns (the spec's idempotency rules).
    sandbox.flannel("DEL", conf, "cid-1", pod).ok()
    sandbox.flannel("DEL", conf, "cid-1", None).ok()


def test_result_is_what_bridge_printed(sandbox: CniSandbox) -> None:
    pod = sandbox.add_pod()
    added = sandbox.flannel("ADD", sandbox.flannel_conf(), "cid-1", pod).ok()
    # Passed through byte for byte: the Debian bridge's own formatting (4-space indent, its key
    # order, "dns": {}) and no trailing newline.
    assert added.stdout.startswith(b'{\n    "cniVersion": "1.0.0",\n    "interfaces": [')
    assert added.stdout.endswith(b'    "dns": {}\n}')


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", None])
def test_spec_versions(sandbox: CniSandbox, version: str | None) -> None:
    pod = sandbox.add_pod()
    conf = sandbox.flannel_conf(cniVersion=version)
    if version is None:
        del conf["cniVersion"]
    result = sandbox.flannel("ADD", conf, "cid-v", pod).ok().json
    if version is None:  # no version → the 0.1.0 result format
        assert result["ip4"]["ip"].startswith("10.244.1.")
    else:
        assert result["cniVersion"] == version
        assert result["ips"][0]["address"].startswith("10.244.1.")
    check = sandbox.flannel("CHECK", conf, "cid-v", pod)
    if version in ("0.4.0", "1.0.0"):
        check.ok()
    else:
        assert check.returncode == 1
        assert check.json == {"code": 1, "msg": "config version does not allow CHECK"}
    sandbox.flannel("DEL", conf, "cid-v", pod).ok()
    assert not link_exists(pod, "eth0")


def test_dual_stack_gives_both_addresses(sandbox: CniSandbox) -> None:
    sandbox.write_subnet_env(DUAL_ENV)
    pod = sandbox.add_pod()
    conf = sandbox.flannel_conf()
    result = sandbox.flannel("ADD", conf, "cid-ds", pod).ok().json
    ips = [ipaddress.ip_interface(i["address"]) for i in result["ips"]]
    assert [ip.version for ip in ips] == [4, 6]
    assert ips[1].network == ipaddress.ip_network("fd00:10:244:1::/64")
    saved = json.loads(sandbox.saved_config("cid-ds"))
    assert saved["ipam"]["ranges"] == [
        [{"subnet": "10.244.1.0/24"}],
        [{"subnet": "fd00:10:244:1::/64"}],
    ]
    assert saved["ipam"]["routes"] == [{"dst": "10.244.0.0/16"}, {"dst": "fd00:10:244::/56"}]
    assert set(addresses(pod, "eth0")) == {str(ip) for ip in ips}
    v6_routes = ip_json(pod, "-6", "route", "show")
    assert any(r["dst"] == "fd00:10:244::/56" for r in v6_routes)
    assert ping(pod, "10.244.1.1")
    assert ping(pod, "fd00:10:244:1::1")
    sandbox.flannel("DEL", conf, "cid-ds", pod).ok()
    assert ipam_reservations(sandbox) == []


def test_two_pods_share_the_bridge_and_reach_each_other(sandbox: CniSandbox) -> None:
    pods = [sandbox.add_pod(), sandbox.add_pod()]
    conf = sandbox.flannel_conf()
    ips = [
        sandbox.flannel("ADD", conf, f"cid-{i}", pod).ok().json["ips"][0]["address"]
        for i, pod in enumerate(pods)
    ]
    assert len(set(ips)) == 2
    assert ping(pods[0], ips[1].split("/")[0])
    for i, pod in enumerate(pods):
        sandbox.flannel("DEL", conf, f"cid-{i}", pod).ok()
    assert list(sandbox.data_dir.iterdir()) == []


def test_chained_portmap_with_the_shipped_conflist(sandbox: CniSandbox) -> None:
    conflist = json.loads(CONFLIST.read_text())
    assert conflist["cniVersion"] == "1.0.0"
    conflist["plugins"][0].update(
        subnetFile=str(sandbox.subnet_env),
        dataDir=str(sandbox.data_dir),
        ipam={"dataDir": str(sandbox.ipam_dir)},
    )
    pod = sandbox.add_pod()
    mappings = {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}

    added = run_list(sandbox, "ADD", conflist, "cid-pm", pod, capability_args=mappings)

    assert added.failed is None, added.invocations
    flannel_result, portmap_result = (inv.json for inv in added.invocations)
    assert portmap_result == {**flannel_result, "dns": portmap_result.get("dns", {})}
    pod_ip = flannel_result["ips"][0]["address"].split("/")[0]
    nat = netns_exec(sandbox.node, "iptables-save", "-t", "nat").stdout
    assert "CNI-HOSTPORT-DNAT" in nat
    assert f"--to-destination {pod_ip}:80" in nat
    # flannel's own config got no runtimeConfig: it declares no capabilities.
    assert "runtimeConfig" not in json.loads(sandbox.saved_config("cid-pm"))

    # CHECK of flannel alone: the Debian portmap's own CHECK fails here (cni-spec §3.7).
    flannel_only = {**conflist, "plugins": conflist["plugins"][:1]}
    checked = run_list(sandbox, "CHECK", flannel_only, "cid-pm", pod, cached_result=added.result)
    assert checked.failed is None and checked.invocations[0].stdout == b""

    deleted = run_list(
        sandbox,
        "DEL",
        conflist,
        "cid-pm",
        pod,
        capability_args=mappings,
        cached_result=added.result,
    )
    assert deleted.failed is None, deleted.invocations
    assert [inv.argv[-1].rsplit("/", 1)[-1] for inv in deleted.invocations] == [
        "portmap",
        "flannel",
    ]
    nat = netns_exec(sandbox.node, "iptables-save", "-t", "nat").stdout
    assert f"--to-destination {pod_ip}:80" not in nat
    assert not sandbox.saved("cid-pm").exists()
    assert not link_exists(pod, "eth0")


def test_missing_subnet_env_is_try_again_later(sandbox: CniSandbox) -> None:
    sandbox.subnet_env.unlink()
    pod = sandbox.add_pod()
    failed = sandbox.flannel("ADD", sandbox.flannel_conf(), "cid-1", pod)
    assert failed.returncode == 1
    assert failed.json == {
        "code": 11,
        "msg": f"flanneld is not running or not ready on this node: {sandbox.subnet_env} missing",
    }
    assert not sandbox.data_dir.exists()
    assert not link_exists(pod, "eth0")


def test_delegate_error_is_passed_through_and_del_recovers(sandbox: CniSandbox) -> None:
    # The Debian bridge speaks up to 1.0.0: a 1.1.0 config fails at the delegate.
    pod = sandbox.add_pod()
    conf = sandbox.flannel_conf(cniVersion="1.1.0")
    failed = sandbox.flannel("ADD", conf, "cid-1", pod)
    assert failed.returncode == 1
    assert failed.json["code"] == 1
    assert failed.json["msg"] == "incompatible CNI versions"
    assert sandbox.saved("cid-1").exists()  # kept for the runtime's DEL
    # The bridge rejects the saved config on DEL too: reported, and forgotten so that the
    # pod is not stuck forever.
    first = sandbox.flannel("DEL", conf, "cid-1", pod)
    assert first.returncode == 1 and first.json["code"] == 1
    assert not sandbox.saved("cid-1").exists()
    sandbox.flannel("DEL", conf, "cid-1", pod).ok()


def test_failed_delegate_del_keeps_the_config_for_a_retry(sandbox: CniSandbox) -> None:
    pod = sandbox.add_pod()
    conf = sandbox.flannel_conf()
    result = sandbox.flannel("ADD", conf, "cid-1", pod).ok().json
    # A CNI_PATH where bridge exists but host-local does not: bridge DEL fails after it
    # removed the veth (cni-spec §3.4).
    only_bridge = sandbox.root / "only-bridge"
    only_bridge.mkdir()
    (only_bridge / "bridge").symlink_to(f"{SYSTEM_CNI}/bridge")
    failed = sandbox.flannel("DEL", conf, "cid-1", pod, cni_path=f"{sandbox.bindir}:{only_bridge}")
    assert failed.returncode == 1
    assert 'failed to find plugin "host-local"' in failed.json["msg"]
    assert sandbox.saved("cid-1").exists()
    assert ipam_reservations(sandbox) == [result["ips"][0]["address"].split("/")[0]]
    # The retry with a complete CNI_PATH finishes the job: the IP is released.
    sandbox.flannel("DEL", conf, "cid-1", pod).ok()
    assert not sandbox.saved("cid-1").exists()
    assert ipam_reservations(sandbox) == []


def test_missing_delegate_leaves_nothing(sandbox: CniSandbox) -> None:
    pod = sandbox.add_pod()
    failed = sandbox.flannel(
        "ADD", sandbox.flannel_conf(), "cid-1", pod, cni_path=str(sandbox.bindir)
    )
    assert failed.returncode == 1
    assert failed.json == {
        "code": 999,
        "msg": f'failed to find plugin "bridge" in path [{sandbox.bindir}]',
    }
    assert not sandbox.data_dir.exists()


def test_torn_saved_config_still_frees_the_ip(sandbox: CniSandbox) -> None:
    """Issue 14 probe: a torn saved file made DEL succeed without the delegate (IP leaked)."""
    pod = sandbox.add_pod()
    conf = sandbox.flannel_conf()
    sandbox.flannel("ADD", conf, "cid-x", pod).ok()
    assert len(ipam_reservations(sandbox)) == 1
    full = sandbox.saved("cid-x").read_text()
    sandbox.saved("cid-x").write_text(full[: len(full) // 2] + '"tail":1}')
    deleted = sandbox.flannel("DEL", conf, "cid-x", pod).ok()
    assert b"running DEL with the current config" in deleted.stderr
    assert not sandbox.saved("cid-x").exists()
    assert ipam_reservations(sandbox) == []
    assert not link_exists(pod, "eth0")


def test_concurrent_adds_never_tear_the_saved_config(sandbox: CniSandbox) -> None:
    """Issue 14 probe: parallel ADDs of one container left a short config + a longer tail."""
    pod = sandbox.add_pod()
    confs = [
        sandbox.flannel_conf(delegate={"hairpinMode": True, "padding": "x" * (400 * k)})
        for k in range(4)
    ]
    wanted = {json.dumps({**c["delegate"]}, sort_keys=True) for c in confs}
    for _ in range(4):
        with ThreadPoolExecutor(len(confs)) as pool:
            list(pool.map(lambda c: sandbox.flannel("ADD", c, "cid-r", pod), confs))
        saved = json.loads(sandbox.saved_config("cid-r"))  # complete JSON, never torn
        picked = {k: saved[k] for k in ("hairpinMode", "padding")}
        assert json.dumps(picked, sort_keys=True) in wanted
        assert [p.name for p in sandbox.data_dir.iterdir()] == ["cbr0:cid-r:eth0"]
    sandbox.flannel("DEL", confs[0], "cid-r", pod).ok()
    assert ipam_reservations(sandbox) == []
    assert not link_exists(pod, "eth0")


def test_gc_spares_another_network_sharing_the_data_dir(sandbox: CniSandbox) -> None:
    """Issue 14 probe: GC of cbr0 deleted netb's saved state (and net.d-like files)."""
    other_env = sandbox.root / "netb.env"
    other_env.write_text(V4_ENV.replace("10.244.1.1/24", "10.244.2.1/24"))
    conf = sandbox.flannel_conf()
    conf_b = sandbox.flannel_conf(
        name="netb", subnetFile=str(other_env), delegate={"bridge": "cni1"}
    )
    pod_a, pod_b = sandbox.add_pod(), sandbox.add_pod()
    sandbox.flannel("ADD", conf, "cid-a", pod_a).ok()
    sandbox.flannel("ADD", conf_b, "cid-b", pod_b).ok()
    netd = '{"cniVersion":"1.0.0","name":"mynet","type":"bridge"}'
    (sandbox.data_dir / "10-mynet.conf").write_text(netd)
    gc = {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []}
    sandbox.flannel("GC", gc).ok()
    assert not sandbox.saved("cid-a").exists()
    assert sandbox.saved("cid-b", network="netb").exists()
    assert (sandbox.data_dir / "10-mynet.conf").read_text() == netd
    # netb's pod is still torn down properly: its veth and its IP are gone.
    assert (sandbox.ipam_dir / "netb").is_dir()
    sandbox.flannel("DEL", conf_b, "cid-b", pod_b).ok()
    assert not link_exists(pod_b, "eth0")
    assert not any(p.name[0].isdigit() for p in (sandbox.ipam_dir / "netb").iterdir())


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "huge"])
def test_subnet_file_must_be_a_small_regular_file(sandbox: CniSandbox, kind: str) -> None:
    """Issue 14 probe: subnetFile=/dev/zero grew the plugin to 15 GB; a FIFO blocked it."""
    path = sandbox.root / "odd.env"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        path.write_text(V4_ENV + "#" * (64 * 1024))
    else:
        path = Path(kind)
    pod = sandbox.add_pod()
    failed = sandbox.flannel("ADD", sandbox.flannel_conf(subnetFile=str(path)), "cid-1", pod)
    assert failed.returncode == 1
    assert failed.json["code"] == 999
    assert str(path) in failed.json["msg"] and "subnetFile" in failed.json["msg"]
    assert not sandbox.data_dir.exists()


def test_gc_drops_configs_of_unknown_attachments(sandbox: CniSandbox) -> None:
    pods = [sandbox.add_pod(), sandbox.add_pod()]
    conf = sandbox.flannel_conf()
    for i, pod in enumerate(pods):
        sandbox.flannel("ADD", conf, f"cid-{i}", pod).ok()
    gc_conf = {
        **conf,
        "cniVersion": "1.1.0",
        "cni.dev/valid-attachments": [{"containerID": "cid-0", "ifname": "eth0"}],
    }
    collected = sandbox.flannel("GC", gc_conf).ok()
    assert collected.stdout == b""
    # Debian's bridge does not speak 1.1.0, so GC is not forwarded — and we say so.
    assert b"not forwarding GC to" in collected.stderr
    assert sorted(p.name for p in sandbox.data_dir.iterdir()) == ["cbr0:cid-0:eth0"]
    old = sandbox.flannel("GC", conf)
    assert old.returncode == 1
    assert old.json == {"code": 1, "msg": "config version does not allow GC"}
    sandbox.flannel("DEL", conf, "cid-0", pods[0]).ok()


def test_status(sandbox: CniSandbox) -> None:
    conf = sandbox.flannel_conf(cniVersion="1.1.0")
    ready = sandbox.flannel("STATUS", conf).ok()
    assert ready.stdout == b""
    sandbox.write_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\n")
    incomplete = sandbox.flannel("STATUS", conf)
    assert incomplete.returncode == 1 and incomplete.json["code"] == 50
    assert "is missing FLANNEL_SUBNET" in incomplete.json["msg"]
    sandbox.subnet_env.unlink()
    missing = sandbox.flannel("STATUS", conf)
    assert missing.json == {
        "code": 50,
        "msg": f"flanneld is not running or not ready on this node: {sandbox.subnet_env} missing",
    }
    old = sandbox.flannel("STATUS", sandbox.flannel_conf())
    assert old.json == {"code": 1, "msg": "config version does not allow STATUS"}
