"""``pyflannel doctor``'s pure checks and parsers, and the tools' shared flag handling."""

from __future__ import annotations

import argparse
import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.cli.doctor import SCHEMA, DoctorReport
from pyflannel.cli.etcd_tool_opts import (
    ETCD_FLAGS,
    IFACE_FLAGS,
    TRAFFIC_FLAGS,
    add_flanneld_flags,
    options_from,
)
from pyflannel.cli.flags import Options
from pyflannel.errors import ConfigError
from pyflannel.iface import Addr, ExternalInterface, HostNetwork, Link
from pyflannel.inspect.checks import (
    check_br_netfilter,
    check_etcd,
    check_interfaces,
    check_lease,
    check_mtu,
    check_tx_offload,
    check_udp_port,
    other_candidates,
)
from pyflannel.inspect.etcd_http import HttpAnswer, etcdctl_command
from pyflannel.inspect.findings import Finding
from pyflannel.inspect.host import parse_ethtool_features, parse_proc_net_udp
from pyflannel.lease import Lease, LeaseAttrs

PROC_NET_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
14869: 00000000:2118 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 240444 2 00000000f44c075a 0
  201: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 1234 2 0000000000000000 0
"""  # noqa: E501

PROC_NET_UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
   5: 00000000000000000000000000000000:2105 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0
"""  # noqa: E501

ETHTOOL_K = """\
Features for flannel.1:
rx-checksumming: on
tx-checksumming: on
\ttx-checksum-ipv4: off [fixed]
\ttx-checksum-ip-generic: on
\ttx-checksum-ipv6: off [fixed]
scatter-gather: on
"""

ETH0 = ExternalInterface(
    name="eth0",
    index=2,
    ipv4_addr=IPv4Address("198.51.100.1"),
    ipv6_addr=None,
    public_ip=IPv4Address("198.51.100.1"),
    public_ipv6=None,
    mtu=1500,
)
OWN = Lease(
    IPv4Network("10.5.16.0/24"),
    LeaseAttrs(
        public_ip=IPv4Address("198.51.100.1"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "7a:32:d2:fe:61:82"},
    ),
    expiration=1000.0 + 3600,
    etcd_lease_id=5,
)


def levels(findings: list[Finding]) -> list[str]:
    return [f.level for f in findings]


# --- parsers -------------------------------------------------------------------------------------


def test_parse_proc_net_udp() -> None:
    assert parse_proc_net_udp(PROC_NET_UDP) == {8472, 53}
    assert parse_proc_net_udp(PROC_NET_UDP6) == {8453}
    assert parse_proc_net_udp("header only\n") == set()
    assert parse_proc_net_udp("h\n garbage line\n 1: 0100007F:zz 0:0 07\n") == set()


def test_parse_ethtool_features() -> None:
    got = parse_ethtool_features(ETHTOOL_K)
    assert got["tx-checksum-ip-generic"] == "on"
    assert got["tx-checksum-ipv4"] == "off [fixed]"
    assert "Features for flannel.1" not in got


# --- br_netfilter --------------------------------------------------------------------------------


def test_br_netfilter() -> None:
    ok = check_br_netfilter({"bridge-nf-call-iptables": "1\n"}, nftables=False, ipv6=False)
    assert levels(ok) == ["OK"]
    (missing,) = check_br_netfilter({}, nftables=False, ipv6=False)
    assert missing.level == "FAIL" and "modprobe br_netfilter" in (missing.fix or "")
    (nft,) = check_br_netfilter({}, nftables=True, ipv6=False)
    assert nft.level == "WARN"
    (off,) = check_br_netfilter({"bridge-nf-call-iptables": "0\n"}, nftables=False, ipv6=False)
    assert off.level == "WARN" and off.fix == "sysctl -w net.bridge.bridge-nf-call-iptables=1"
    dual = check_br_netfilter({"bridge-nf-call-iptables": "1"}, nftables=False, ipv6=True)
    assert levels(dual) == ["OK", "FAIL"] and dual[1].subject == "bridge-nf-call-ip6tables"


# --- etcd ----------------------------------------------------------------------------------------


def test_etcd() -> None:
    ver = HttpAnswer("http://e:2379/version", 200, b'{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}')
    ok = check_etcd("http://e:2379", ver, None, username="flannel")
    assert ok.level == "OK" and ok.message == "etcd 3.4.23 answers, authenticated as flannel"
    assert check_etcd("http://e:2379", None, None).message == "unknown version answers"
    bad = check_etcd("http://e:2379", ver, "etcd get x failed: permission denied (hint)")
    assert bad.level == "FAIL" and bad.message.startswith("etcd get x failed")


# --- interfaces ----------------------------------------------------------------------------------


def host(*links: Link) -> HostNetwork:
    return HostNetwork(links=links)


def test_other_candidates_skip_virtual_and_overlay_devices() -> None:
    h = host(
        Link(1, "lo", 65536, (Addr(IPv4Address("127.0.0.1")),)),
        Link(2, "eth0", 1500, (Addr(IPv4Address("198.51.100.1")),)),
        Link(3, "eth1", 9000, (Addr(IPv4Address("203.0.113.1")),)),
        Link(4, "flannel.1", 1450, (Addr(IPv4Address("10.5.16.0")),)),
        Link(5, "cni0", 1450, (Addr(IPv4Address("10.5.16.1")),)),
        Link(6, "eth2", 1500, (Addr(IPv4Address("169.254.3.3")),)),
        Link(7, "ens9", 1500, (Addr(IPv4Address("10.5.200.1")),)),  # inside Network
        Link(8, "docker0", 1500, (Addr(IPv4Address("172.17.0.1")),)),
    )
    assert other_candidates(h, "eth0", IPv4Network("10.5.0.0/16")) == [("eth1", "203.0.113.1")]
    assert other_candidates(h, "eth0", None) == [("eth1", "203.0.113.1"), ("ens9", "10.5.200.1")]


def test_interfaces() -> None:
    (ok,) = check_interfaces(ETH0, None, [], explicit=False)
    assert ok.level == "OK" and "default route" in ok.message and "MTU 1500" in ok.message
    multi = check_interfaces(ETH0, None, [("eth1", "203.0.113.1")], explicit=False)
    assert levels(multi) == ["OK", "WARN"]
    assert "eth1 (203.0.113.1)" in multi[1].message and "--iface=eth1" in (multi[1].fix or "")
    # chosen on purpose with --iface: no multi-NIC warning
    assert levels(check_interfaces(ETH0, None, [("eth1", "x")], explicit=True)) == ["OK"]
    (fail,) = check_interfaces(
        None, "Failed to find any valid interface to use", [], explicit=False
    )
    assert fail.level == "FAIL" and fail.message.startswith("Failed to find")
    nat = ExternalInterface(
        "eth0", 2, IPv4Address("10.0.0.5"), None, IPv4Address("198.51.100.77"), None, 1500
    )
    (natf,) = check_interfaces(nat, None, [], explicit=True)
    assert "public IP 198.51.100.77" in natf.message


# --- lease ---------------------------------------------------------------------------------------


def test_lease() -> None:
    ok = check_lease(OWN, ETH0, now=1000.0)
    assert ok.level == "OK" and ok.message == "PublicIP 198.51.100.1, expires in 1h00m"
    assert check_lease(None, ETH0, now=0).level == "FAIL"
    moved = ExternalInterface(
        "eth1", 3, IPv4Address("203.0.113.1"), None, IPv4Address("203.0.113.1"), None, 1500
    )
    warn = check_lease(OWN, moved, now=1000.0)
    assert warn.level == "WARN" and "203.0.113.1" in warn.message
    reserved = Lease(OWN.subnet, OWN.attrs, etcd_lease_id=0)
    assert "reservation" in check_lease(reserved, ETH0, now=0).message


# --- MTU -----------------------------------------------------------------------------------------


def test_mtu_chain_ok() -> None:
    (ok,) = check_mtu(
        backend="vxlan", ext_name="eth0", ext_mtu=1500, dev_mtu=1450, env_mtu=1450, cni_mtu=1450
    )
    assert ok.level == "OK"
    assert ok.message == "eth0 1500 -> flannel.1 1450 -> FLANNEL_MTU 1450 -> cni0 1450"
    (hgw,) = check_mtu(backend="host-gw", ext_name="eth0", ext_mtu=9000, env_mtu=9000)
    assert hgw.level == "OK"


@pytest.mark.parametrize(
    ("kwargs", "want"),
    [
        ({"dev_mtu": 1500, "env_mtu": 1450}, [("FAIL", "flannel.1")]),
        ({"dev_mtu": 1400, "env_mtu": 1400}, [("WARN", "flannel.1")]),
        ({"dev_mtu": 1450, "env_mtu": 1500}, [("FAIL", "FLANNEL_MTU")]),
        ({"dev_mtu": 1450, "env_mtu": 1400}, [("WARN", "FLANNEL_MTU")]),
        ({"dev_mtu": 1450, "env_mtu": 1450, "cni_mtu": 1500}, [("FAIL", "cni0")]),
        ({"dev_mtu": 1450, "env_mtu": 1450, "cni_mtu": 1400}, [("WARN", "cni0")]),
        ({"cfg_mtu": 9000, "dev_mtu": 8950}, [("FAIL", "flannel.1"), ("FAIL", "flannel.1")]),
    ],
)
def test_mtu_problems(kwargs: dict[str, int], want: list[tuple[str, str]]) -> None:
    got = check_mtu(backend="vxlan", ext_name="eth0", ext_mtu=1500, **kwargs)  # type: ignore[arg-type]
    assert [(f.level, f.subject) for f in got] == want
    assert all(f.fix for f in got)


def test_mtu_jumbo_config_and_ipv6_overhead() -> None:
    (ok,) = check_mtu(backend="vxlan", ext_name="eth0", ext_mtu=9000, cfg_mtu=9000, dev_mtu=8950)
    assert ok.level == "OK"
    (ok6,) = check_mtu(
        backend="vxlan", ext_name="eth0", ext_mtu=1500, overhead=70, dev_mtu=1430, env_mtu=1430
    )
    assert ok6.level == "OK"


# --- UDP port and offload ------------------------------------------------------------------------


def test_udp_port() -> None:
    ok = check_udp_port(backend="vxlan", port=8472, bound={8472}, device="flannel.1", dev_port=8472)
    assert ok.level == "OK" and "firewalls" in ok.message
    none = check_udp_port(backend="vxlan", port=8472, bound={53}, device="flannel.1")
    assert none.level == "WARN" and "no socket is bound to UDP port 8472" in none.message
    other = check_udp_port(
        backend="vxlan", port=4789, bound={8472}, device="flannel.1", dev_port=8472
    )
    assert other.level == "FAIL" and "4789" in other.message
    assert check_udp_port(backend="host-gw", port=8472, bound=set()).level == "OK"
    assert check_udp_port(backend="udp", port=8285, bound=None).level == "WARN"


def test_tx_offload() -> None:
    on = check_tx_offload("flannel.1", parse_ethtool_features(ETHTOOL_K))
    assert on.level == "WARN"
    assert on.fix == "ethtool -K flannel.1 tx-checksum-ip-generic off"
    off = check_tx_offload("flannel.1", {"tx-checksum-ip-generic": "off"})
    assert off.level == "OK"
    absent = check_tx_offload("flannel.1", None)
    assert absent.level == "WARN" and "ethtool is not installed" in absent.message
    assert check_tx_offload("flannel.1", {}).level == "OK"


# --- report --------------------------------------------------------------------------------------


def test_report_render_and_json() -> None:
    rep = DoctorReport(
        [
            Finding("OK", "etcd", "http://e:2379", "etcd 3.4.23 answers"),
            Finding("WARN", "offload", "flannel.1", "on", "ethtool -K flannel.1 ..."),
        ]
    )
    assert rep.ok
    text = rep.render()
    assert text.endswith("no problems found, 1 warning(s)\n")
    assert "fix: ethtool -K flannel.1 ..." in text
    rep.findings.append(Finding("FAIL", "device", "flannel.1", "gone"))
    assert not rep.ok
    doc = rep.document()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["schema"] == SCHEMA and doc["ok"] is False
    assert doc["summary"] == {"ok": 1, "warn": 1, "fail": 1}
    assert rep.render().endswith("1 problem(s) found, 1 warning(s)\n")


# --- shared tool flags (pyflannel/cli/etcd_tool_opts.py) -----------------------------------------


def parse(argv: list[str], env: dict[str, str] | None = None) -> Options:
    names = (*ETCD_FLAGS, *IFACE_FLAGS, *TRAFFIC_FLAGS)
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_flanneld_flags(parser, names)
    return options_from(parser.parse_args(argv), names, env or {})


def test_tool_flags_defaults_and_cli() -> None:
    d = parse([])
    assert d.etcd_endpoints == ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
    o = parse(
        [
            "--etcd-endpoints",
            "http://a:1,http://b:2",
            "-etcd-prefix=/x/net",
            "--ip-masq",
            "--iface",
            "eth1",
            "--iface=10.0.0.1",
            "--iptables-forward-rules=false",
        ]
    )
    assert o.etcd_endpoints == ("http://a:1", "http://b:2")
    assert o.etcd_prefix == "/x/net" and o.ip_masq and not o.iptables_forward_rules
    assert o.iface == ("eth1", "10.0.0.1")


def test_tool_flags_env_fallback_like_pyflanneld() -> None:
    env = {
        "FLANNELD_ETCD_ENDPOINTS": "http://env:2379",
        "FLANNELD_ETCD_USERNAME": "flannel",
        "FLANNELD_IFACE": "eth9,eth8",  # one element, no comma splitting
        "FLANNELD_IP_MASQ": "true",
        # not a flag of this tool: must not break it even though the value is out of range
        "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "0",
    }
    o = parse([], env)
    assert o.etcd_endpoints == ("http://env:2379",) and o.etcd_username == "flannel"
    assert o.iface == ("eth9,eth8",) and o.ip_masq
    # the command line wins over the environment
    assert parse(["--etcd-endpoints=http://cli:1"], env).etcd_endpoints == ("http://cli:1",)


def test_tool_flags_bad_values_use_pyflanneld_messages() -> None:
    with pytest.raises(ConfigError, match="invalid boolean value 'maybe' for -ip-masq"):
        parse(["--ip-masq=maybe"])
    with pytest.raises(ConfigError, match="names no endpoint"):
        parse(["--etcd-endpoints=,"])


def test_etcdctl_command() -> None:
    o = parse(["--etcd-endpoints=http://198.51.100.250:2379"])
    assert etcdctl_command(
        o, "put", "/coreos.com/network/config", '{"Network": "10.5.0.0/16"}'
    ) == (
        "ETCDCTL_API=3 etcdctl --endpoints=http://198.51.100.250:2379 put "
        '/coreos.com/network/config \'{"Network": "10.5.0.0/16"}\''
    )
    tls = parse(
        [
            "--etcd-endpoints=https://e:2379",
            "--etcd-cafile=/etc/ca.pem",
            "--etcd-certfile=/etc/c.pem",
            "--etcd-keyfile=/etc/k.pem",
            "--etcd-username=flannel",
            "--etcd-password=secret",
        ]
    )
    cmd = etcdctl_command(tls)
    assert cmd == (
        "ETCDCTL_API=3 etcdctl --endpoints=https://e:2379 --cacert=/etc/ca.pem "
        "--cert=/etc/c.pem --key=/etc/k.pem --user=flannel"
    )
    assert "secret" not in cmd


def test_network_config_findings_say_what_the_daemon_and_validate_say() -> None:
    """Issue 14: doctor refuses a Network holding the node's underlay address, warns for
    link-local, with the same sentences as the daemon and ``config validate``."""
    from pyflannel.config import (
        check_network_for_node,
        network_warnings,
        parse_network_config,
    )
    from pyflannel.inspect.checks import check_network_config

    ip = IPv4Address("203.0.113.7")
    chosen = ExternalInterface("eth0", 2, ip, None, ip, None, 1500)
    cfg = parse_network_config('{"Network": "203.0.113.0/24", "SubnetLen": 28}')
    [finding] = check_network_config(cfg, "/p/config", chosen)
    with pytest.raises(ConfigError) as excinfo:
        check_network_for_node(cfg, [ip])
    assert (finding.level, finding.message) == ("FAIL", str(excinfo.value))
    assert (
        check_network_config(parse_network_config('{"Network": "10.5.0.0/16"}'), "/p", chosen) == []
    )
    link_local = parse_network_config('{"Network": "169.254.0.0/16"}')
    [warn] = check_network_config(link_local, "/p/config", chosen)
    assert (warn.level, [warn.message]) == ("WARN", network_warnings(link_local))
