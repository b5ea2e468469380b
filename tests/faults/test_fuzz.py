"""Cross-module fuzzing: hostile input travelling through several modules, as it does in the
daemon and the plugin.

The per-module property tests live in tests/unit (lease codecs, config, subnet.env, planner,
lease cache, CNI plugin ``main()``); these chain the modules instead:

1. etcd key/value bytes → the registry's decoder → the peer-lease cache → the planner (events
   and full reconcile), for a fuzzed network config and a fuzzed "own" lease: nothing raises but
   the documented errors, and no operation ever touches anything outside the Network, our own
   subnet, or entries that are not ours;
2. the same leases → subnet allocation: the pick is always inside [SubnetMin, SubnetMax] and
   overlaps no lease;
3. what the daemon writes as subnet.env → what the CNI plugin reads → the delegate config it
   builds: same subnet, network, MTU and masquerade setting; any other text gives a CNI error;
4. the CNI plugin as a process (``python -I -m cni_plugin``): every failure is exit 1 with one
   spec-conformant error object on stdout, nothing on stdout otherwise.

Run time is bounded: ~200 examples per in-process property, 60 for the process one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from cni_plugin.netconf import build_delegate, parse_flannel_conf
from cni_plugin.netconf import parse_subnet_env as cni_parse_subnet_env
from pyflannel.backend.base import PlanContext
from pyflannel.backend.plan import ProgrammedState, plan_events, plan_reconcile
from pyflannel.backend.wanted import WantedPeers
from pyflannel.config import NetworkConfig, parse_network_config
from pyflannel.errors import ConfigError, OutOfSubnets
from pyflannel.lease import Event, EventKind, Lease, LeaseAttrs
from pyflannel.netlink.ops import (
    FdbEntry,
    NeighEntry,
    Op,
    Replace,
    RouteEntry,
)
from pyflannel.subnet.allocation import PreviousSubnets, plan_acquisition
from pyflannel.subnet.etcd.client import KeyValue
from pyflannel.subnet.etcd.leases import decode_lease
from pyflannel.subnet.subnet_env import render_subnet_env, subnet_env_for
from pyflannel.subnet.watch import PeerFeed

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow
PREFIX = "/coreos.com/network"
DEV, EXT = 7, 2
OWN_MAC = "0a:00:00:00:00:aa"
OWN_IP = ipaddress.IPv4Address("198.51.100.1")

FUZZ = settings(
    max_examples=200,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# --------------------------------------------------------------------------------- strategies

octet = st.integers(0, 255)
ipv4_text = st.one_of(
    st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", octet, octet, octet, octet),
    st.sampled_from(
        [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            str(OWN_IP),
            "10.5.1.1",
            "198.51.100.2",
            "1.2.3",
            "::1",
            "",
            "x",
        ]
    ),
)
key_text = st.one_of(
    st.builds(
        lambda a, b, c, p: f"{PREFIX}/subnets/10.{a}.{b}.{c}-{p}",
        st.integers(0, 9),
        octet,
        octet,
        st.integers(0, 40),
    ),
    st.builds(lambda ip, p: f"{PREFIX}/subnets/{ip}-{p}", ipv4_text, st.integers(0, 40)),
    st.builds(
        lambda ip, p, v6, p6: f"{PREFIX}/subnets/{ip}-{p}&{v6}-{p6}",
        ipv4_text,
        st.integers(0, 33),
        st.sampled_from(["fd00::", "2001:db8:1::", "zz", "::"]),
        st.integers(0, 130),
    ),
    st.text(max_size=60).map(lambda t: f"{PREFIX}/subnets/{t}"),
)
key_bytes = st.one_of(key_text.map(str.encode), st.binary(max_size=40))
mac_text = st.one_of(
    st.builds(lambda bs: ":".join(f"{b:02x}" for b in bs), st.binary(min_size=6, max_size=6)),
    st.sampled_from(
        [
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            OWN_MAC,
            "0A-00-00-00-00-01",
            "0a00.0000.0002",
            "zz",
            "",
            "0a:00:00:00:00",
        ]
    ),
)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=8))
backend_data = st.one_of(
    st.fixed_dictionaries(
        {"VNI": st.one_of(st.integers(-1, 2**33), json_scalar), "VtepMAC": mac_text}
    ),
    st.fixed_dictionaries({"vtepmac": mac_text}),
    json_scalar,
    st.lists(json_scalar, max_size=3),
)
value_doc = st.fixed_dictionaries(
    {},
    optional={
        "PublicIP": st.one_of(ipv4_text, json_scalar),
        "PublicIPv6": st.one_of(st.none(), st.sampled_from(["fd00::1", "::", "x", "1.2.3.4"])),
        "BackendType": st.one_of(
            st.sampled_from(["vxlan", "host-gw", "udp", "VXLAN", ""]), json_scalar
        ),
        "BackendData": backend_data,
        "publicip": ipv4_text,
    },
)
value_bytes = st.one_of(
    value_doc.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=60),
    st.text(max_size=60).map(str.encode),
    st.just(b"{" + b" " * (70 * 1024) + b"}"),  # past the registry's size limit
)
raw_kv = st.tuples(key_bytes, value_bytes, st.integers(0, 3), st.booleans())


@st.composite
def config_doc(draw: st.DrawFn) -> dict[str, Any]:
    """Network configs: mostly valid with varied sizes, sometimes broken."""
    a, plen = draw(st.integers(0, 9)), draw(st.integers(8, 24))
    doc: dict[str, Any] = {
        "Network": draw(
            st.sampled_from(
                [f"10.{a}.0.0/{plen}"] * 12 + ["0.0.0.0/0", "10.5.0.0/16", "10.5.0.0/33", "x"]
            )
        ),
        "Backend": {"Type": draw(st.sampled_from(["vxlan", "host-gw"]))},
    }
    if draw(st.booleans()):
        sane = draw(st.integers(0, 5)) > 0
        doc["SubnetLen"] = draw(
            st.integers(plen + 1, min(30, plen + 10)) if sane else st.integers(0, 33)
        )
    if draw(st.integers(0, 9)) == 0:
        doc["SubnetMin"] = draw(ipv4_text)
    if draw(st.integers(0, 9)) == 0:
        doc["SubnetMax"] = draw(ipv4_text)
    return doc


@st.composite
def network_config(draw: st.DrawFn) -> NetworkConfig:
    doc = draw(config_doc())
    try:
        cfg = parse_network_config(json.dumps(doc))
    except ConfigError:
        assume(False)
        raise  # unreachable: assume(False) aborts the example
    assume(cfg.network is not None and cfg.subnet_min is not None)
    return cfg


@st.composite
def plausible_kv(draw: st.DrawFn, cfg: NetworkConfig) -> tuple[bytes, bytes, int, bool]:
    """A key-value that looks like a real peer of ``cfg``'s network, sometimes slightly off."""
    assert cfg.network is not None
    plen = draw(
        st.sampled_from(
            [
                cfg.subnet_len,
                cfg.subnet_len,
                cfg.network.prefixlen,
                min(32, cfg.subnet_len + 1),
                max(0, cfg.subnet_len - 2),
            ]
        )
    )
    base = int(cfg.network.network_address)
    addr = base + draw(st.integers(0, cfg.network.num_addresses - 1))
    subnet = ipaddress.IPv4Network((addr, plen), strict=False)
    value = {
        "PublicIP": draw(
            st.one_of(st.builds(lambda h: f"198.51.100.{h}", st.integers(2, 254)), ipv4_text)
        ),
        "PublicIPv6": None,
        "BackendType": draw(st.sampled_from([cfg.backend_type] * 4 + ["udp", ""])),
        "BackendData": draw(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "VNI": st.just(1),
                        "VtepMAC": st.builds(
                            lambda b: "0a:" + ":".join(f"{x:02x}" for x in b),
                            st.binary(min_size=5, max_size=5),
                        ),
                    }
                ),
                backend_data,
            )
        ),
    }
    key = f"{PREFIX}/subnets/{subnet.network_address}-{subnet.prefixlen}"
    is_put = draw(st.sampled_from([True, True, True, False]))
    return key.encode(), json.dumps(value).encode(), draw(st.integers(0, 3)), is_put


def decode(kvs: list[tuple[bytes, bytes, int, bool]]) -> list[tuple[bool, Lease]]:
    """Raw key-values through the registry decoder; (is_put, lease) for what it accepts."""
    out = []
    for key, value, lease_id, is_put in kvs:
        lease = decode_lease(KeyValue(key, value, lease_id, 1, 0), None if lease_id == 0 else 1e12)
        if lease is not None:
            out.append((is_put, lease))
    return out


def own_context(cfg: NetworkConfig, pick: int) -> PlanContext:
    assert cfg.network is not None and cfg.subnet_min is not None
    first = ipaddress.IPv4Network(f"{cfg.subnet_min}/{cfg.subnet_len}")
    n_subnets = max(1, 2 ** (cfg.subnet_len - cfg.network.prefixlen) - 2)
    own = ipaddress.IPv4Network(
        (int(first.network_address) + (pick % n_subnets) * first.num_addresses, cfg.subnet_len)
    )
    assume(own.subnet_of(cfg.network))
    return PlanContext(
        family=4,
        backend_type=cfg.backend_type,
        network=cfg.network,
        own_subnet=own,
        own_public_ip=OWN_IP,
        dev_index=DEV if cfg.backend_type == "vxlan" else EXT,
        ext_index=EXT,
        own_mac=OWN_MAC if cfg.backend_type == "vxlan" else None,
    )


def assert_ops_safe(ops: list[Op], ctx: PlanContext) -> None:
    network, own = ctx.network, ctx.own_subnet
    for op in ops:
        e = op.entry
        if isinstance(e, RouteEntry):
            assert e.dst.version == 4 and e.dst.subnet_of(network), op  # type: ignore[arg-type]
            assert e.dst.prefixlen > 0 and not e.dst.overlaps(own), op
            assert e.ifindex in ctx.managed_ifindexes, op
            if isinstance(op, Replace):
                assert e.gw is not None and e.gw != ctx.own_public_ip, op
        elif isinstance(e, NeighEntry):
            assert ctx.is_vxlan and e.ifindex == ctx.dev_index, op
            assert e.ip in network and e.ip not in own, op
        elif isinstance(e, FdbEntry):
            assert ctx.is_vxlan and e.ifindex == ctx.dev_index, op
            first = int(e.mac[:2], 16)
            assert not first & 1 and e.mac not in (OWN_MAC, "00:00:00:00:00:00"), op
            if isinstance(op, Replace):
                assert e.dst != ctx.own_public_ip, op


# --------------------------------------------------------------------------------- properties


@FUZZ
@given(
    cfg=network_config(),
    pick=st.integers(0, 2**16),
    data=st.data(),
    batch=st.integers(1, 4),
)
def test_etcd_bytes_to_planned_ops_never_leave_the_network(
    cfg: NetworkConfig, pick: int, data: st.DataObject, batch: int
) -> None:
    ctx = own_context(cfg, pick)
    kvs = data.draw(
        st.lists(st.one_of(raw_kv, plausible_kv(cfg), plausible_kv(cfg)), min_size=1, max_size=16),
        label="kvs",
    )
    changes = decode(kvs)
    assert isinstance(ctx.own_subnet, ipaddress.IPv4Network)
    feed = PeerFeed((ctx.own_subnet, None))
    wanted = WantedPeers()
    state = ProgrammedState()
    for i in range(0, len(changes), batch):
        chunk = [
            Event(EventKind.ADDED if is_put else EventKind.REMOVED, lease)
            for is_put, lease in changes[i : i + batch]
        ]
        msg = feed.changes(chunk)
        events = wanted.update(msg.events) if msg is not None else []
        plan = plan_events(events, state, ctx)
        assert_ops_safe(plan.ops, ctx)
        state = plan.state
    # What a restart would do with the same leases and the kernel as the events left it.
    programmed = list(state.programmed_entries().values())
    routes = [e for e in programmed if isinstance(e, RouteEntry)]
    neighs = [e for e in programmed if isinstance(e, NeighEntry)]
    fdb = [e for e in programmed if isinstance(e, FdbEntry)]
    full = plan_reconcile(wanted.programmable(), routes, neighs, fdb, ctx)
    assert_ops_safe(full.ops, ctx)
    # Incremental and full planning agree on what should be programmed.
    assert full.state.programmed_entries().keys() == state.programmed_entries().keys()
    event(f"peers programmed: {min(len(state.peers), 3)}{'+' if len(state.peers) >= 3 else ''}")


@FUZZ
@given(cfg=network_config(), data=st.data(), seed=st.integers(0, 2**32))
def test_etcd_bytes_to_allocation_picks_a_free_subnet_in_range(
    cfg: NetworkConfig, data: st.DataObject, seed: int
) -> None:
    kvs = data.draw(st.lists(st.one_of(raw_kv, plausible_kv(cfg)), max_size=30), label="kvs")
    leases = [lease for is_put, lease in decode(kvs) if is_put]
    me = LeaseAttrs(public_ip=OWN_IP, backend_type=cfg.backend_type)
    try:
        plan = plan_acquisition(cfg, leases, me, PreviousSubnets(), random.Random(seed))
    except OutOfSubnets:
        return
    assert plan.subnet is not None and cfg.subnet_min is not None and cfg.subnet_max is not None
    assert plan.subnet.prefixlen == cfg.subnet_len
    assert cfg.subnet_min <= plan.subnet.network_address <= cfg.subnet_max
    if plan.action == "create":
        others = [lease.subnet for lease in leases if lease.subnet is not None]
        assert not any(plan.subnet.overlaps(o) for o in others), plan
    else:
        assert plan.existing is not None and plan.existing.attrs.public_ip == OWN_IP


@FUZZ
@given(
    net=st.builds(
        lambda a, p: ipaddress.IPv4Network((a << 24, p), strict=False),
        st.integers(1, 223),
        st.integers(8, 22),
    ),
    extra=st.integers(2, 8),
    index=st.integers(0, 2**16),
    mtu=st.integers(68, 65535),
    ipmasq=st.booleans(),
    user=st.fixed_dictionaries(
        {},
        optional={"delegate": st.fixed_dictionaries({}, optional={"hairpinMode": st.booleans()})},
    ),
)
def test_daemon_subnet_env_is_what_the_cni_plugin_hands_its_delegate(
    net: ipaddress.IPv4Network,
    extra: int,
    index: int,
    mtu: int,
    ipmasq: bool,
    user: dict[str, Any],
) -> None:
    subnets = list(net.subnets(prefixlen_diff=extra))
    lease = subnets[index % len(subnets)]
    text = render_subnet_env(
        subnet_env_for(network=net, lease_subnet=lease, mtu=mtu, ipmasq=ipmasq)
    )
    env = cni_parse_subnet_env(text)
    assert env.missing() == []
    conf = parse_flannel_conf({"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel", **user})
    delegate = build_delegate(conf, env)
    assert delegate["mtu"] == mtu
    assert delegate["ipMasq"] is (not ipmasq)
    assert delegate["ipam"]["ranges"] == [
        [{"subnet": f"{lease.network_address}/{lease.prefixlen}"}]
    ]
    assert delegate["ipam"]["routes"] == [{"dst": str(net)}]


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "FLANNEL_NETWORK",
                    "FLANNEL_SUBNET",
                    "FLANNEL_MTU",
                    "FLANNEL_IPMASQ",
                    "FLANNEL_IPV6_SUBNET",
                    "FLANNEL_IPV6_NETWORK",
                    "OTHER",
                    "",
                ]
            ),
            st.one_of(
                st.text(max_size=24), ipv4_text, st.sampled_from(["10.5.0.0/16", "1450", "true"])
            ),
            st.sampled_from(["=", "", "=="]),
        ),
        max_size=8,
    )
)
def test_cni_reads_any_subnet_env_text_into_a_value_or_a_clean_error(
    lines: list[tuple[str, str, str]],
) -> None:
    text = "\n".join(f"{k}{sep}{v}" for k, v, sep in lines)
    try:
        env = cni_parse_subnet_env(text)
    except ValueError as err:
        assert str(err)
        return
    if env.subnet is not None:
        ipaddress.ip_network(env.subnet)  # only valid networks get through


# --------------------------------------------------------------------------------- the process

cni_stdin = st.one_of(
    st.binary(max_size=40),
    st.fixed_dictionaries(
        {
            "cniVersion": st.sampled_from(["1.0.0", "0.4.0", "0.3.1", "9.9.9", ""]),
            "name": st.sampled_from(["cbr0", "", "x/y"]),
            "type": st.just("flannel"),
        },
        optional={
            # "/dev/zero" stays absolute when joined to the world's path (issue 14).
            "subnetFile": st.sampled_from(["good", "garbage", "missing", "", "/dev/zero", "fifo"]),
            "delegate": st.one_of(
                st.fixed_dictionaries({"type": st.sampled_from(["bridge", "nope", ""])}),
                json_scalar,
            ),
            "ipam": st.just({}),
        },
    ),
)


@pytest.fixture(scope="module")
def cni_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cni-fuzz")
    (root / "empty-bin").mkdir()
    (root / "good").write_text(
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.3.1/24\nFLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )
    (root / "garbage").write_bytes(b"FLANNEL_SUBNET=$(reboot)\nFLANNEL_MTU=-1\n\xff")
    os.mkfifo(root / "fifo")  # nobody ever writes: reading it must not block
    return root


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    stdin=cni_stdin,
    command=st.sampled_from(["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS", "", "BOGUS"]),
    cid=st.sampled_from(["c1", "", "a/b", "x" * 300]),
    ifname=st.sampled_from(["eth0", "", "a" * 20, "../x"]),
)
def test_cni_plugin_process_fails_only_with_spec_error_json(
    cni_world: Path, stdin: bytes | dict[str, Any], command: str, cid: str, ifname: str
) -> None:
    if isinstance(stdin, dict):
        doc = dict(stdin)
        doc["subnetFile"] = str(cni_world / str(doc.get("subnetFile", "missing")))
        doc["dataDir"] = str(cni_world / "data")  # never the real /var/lib/cni
        stdin = json.dumps(doc).encode()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/run/netns/pyflannel-fuzz-none",
        "CNI_IFNAME": ifname,
        # No delegate can be found, so nothing is ever configured (no root-namespace changes).
        "CNI_PATH": str(cni_world / "empty-bin"),
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-m", "cni_plugin"],
        input=stdin,
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=30,
    )
    assert b"Traceback" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    if proc.returncode == 0:
        assert command in ("VERSION", "DEL", "GC", "STATUS", "CHECK", ""), proc.stdout
        if command == "VERSION":
            assert "supportedVersions" in json.loads(proc.stdout)
        else:
            assert proc.stdout == b""
        return
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict) and set(doc) <= {"cniVersion", "code", "msg", "details"}, doc
    assert isinstance(doc["code"], int) and doc["code"] > 0, doc
    assert isinstance(doc["msg"], str) and doc["msg"], doc
    assert list((cni_world / "data").glob("**/*")) == [] or command != "ADD"
