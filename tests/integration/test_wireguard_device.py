"""The WireGuard device against the real thing, inside a namespace with a private
/run/wireguard: wireguard-go (this kernel has no module) started detached, configured over UAPI,
reused by a second start (its peers kept), and re-created after a SIGKILL that left its socket
behind. The kernel path runs only where the module exists."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from pyflannel.lab.netns import exec_argv

pytestmark = [pytest.mark.root]

SCRIPT = textwrap.dedent(
    """
    import ipaddress, json, os, signal, time
    from pyflannel.backend.wireguard.device import device_alive, ensure_device
    from pyflannel.backend.wireguard.uapi import PeerSet, SetDevice, socket_path
    from pyflannel.netlink.nlsocket import NetlinkSocket

    out = {}
    peer = PeerSet(bytes(range(32)), endpoint=(ipaddress.ip_address("198.51.100.2"), 51820),
                   keepalive=25, allowed_ips=(ipaddress.ip_network("10.5.2.0/24"),))
    with NetlinkSocket() as nl:
        dev = ensure_device(nl, "flannel-wg")
        out["kind"] = dev.kind
        dev.client.set(SetDevice(private_key=bytes([7]) * 32, listen_port=51820, peers=(peer,)))
        again = ensure_device(nl, "flannel-wg")  # a daemon restart: reused, peers kept
        state = again.client.get()
        out["reused_peers"] = [p.allowed_ips[0].compressed for p in state.peers]
        out["keepalive"] = state.peers[0].keepalive
        out["port"] = state.listen_port
        if dev.kind == "userspace":
            def ours(p):  # wireguard-go in this network namespace (other tests run theirs)
                try:
                    me = os.stat("/proc/self/ns/net").st_ino
                    same = os.stat(f"/proc/{p}/ns/net").st_ino == me
                    argv0 = open(f"/proc/{p}/cmdline", "rb").read().split(b"\\0")[0]
                    return same and argv0.endswith(b"wireguard-go")
                except OSError:
                    return False
            pid = next(int(p) for p in os.listdir("/proc") if p.isdigit() and ours(p))
            out["own_session"] = os.getsid(pid) != os.getsid(0)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while device_alive(nl, dev) and time.monotonic() < deadline:
                time.sleep(0.05)
            out["alive_after_kill"] = device_alive(nl, dev)
            out["socket_left"] = socket_path("flannel-wg").exists()
            fresh = ensure_device(nl, "flannel-wg")
            out["fresh_peers"] = len(fresh.client.get().peers)
    print(json.dumps(out))
    """
)


def test_device_lifecycle(netns: Callable[[str | None], str]) -> None:
    ns = netns("wg")
    argv = exec_argv(
        ns,
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mkdir -p /run/wireguard && mount -t tmpfs none /run/wireguard && exec "$@"', "sh",
         sys.executable, "-c", SCRIPT],
    )  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["reused_peers"] == ["10.5.2.0/24"] and out["keepalive"] == 25
    assert out["port"] == 51820
    if out["kind"] == "userspace":
        assert out["own_session"]  # not in our session: outlives the daemon
        assert out["alive_after_kill"] is False and out["socket_left"] is True
        assert out["fresh_peers"] == 0  # a new process: the daemon re-applies the peers


GENL_SCRIPT = textwrap.dedent(
    """
    import json, os
    from pyflannel.backend.wireguard import genl
    from pyflannel.backend.wireguard.uapi import UapiError

    out = {}
    # Our CTRL_CMD_GETFAMILY encoding against the real kernel: nlctrl always exists (id 0x10).
    client = genl.GenlWireguard("flannel-wg")
    seq = 77
    answers = client.request(genl.encode_get_family(seq, "nlctrl"), seq)
    out["nlctrl"] = genl.parse_family_id(answers[0])
    try:
        out["wireguard"] = client.family()
    except UapiError as exc:
        out["wireguard"] = None
        out["errno"] = exc.errno
    print(json.dumps(out))
    """
)


def test_generic_netlink_family_lookup(netns: Callable[[str | None], str]) -> None:
    """The family look-up the kernel path starts with, against the real kernel: ``nlctrl`` is
    found; ``wireguard`` is found exactly when the module is there, else a clean ENOENT."""
    ns = netns("genl")
    res = subprocess.run(
        exec_argv(ns, [sys.executable, "-c", GENL_SCRIPT]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["nlctrl"] == 0x10
    if out["wireguard"] is None:
        assert out["errno"] == 2  # ENOENT: no module, the userspace path is taken
    else:
        assert out["wireguard"] > 0x10
