"""``pyflannel doctor``: check this node for the problems flannel users trip over most.

One finding per check, each OK / WARN / FAIL with one actionable line (see flannel-spec §11):

- ``br_netfilter``: ``/proc/sys/net/bridge/bridge-nf-call-iptables`` exists (pyflanneld refuses
  to start without it in iptables mode) and is 1;
- ``etcd``: reachable, its version, credentials accepted;
- ``config``: ``<prefix>/config`` present and valid (with the v2/v3 diagnosis when missing);
- ``interface``: the interface and public IP pyflanneld would choose, and the other interfaces
  it could have chosen (multi-NIC hosts: pass ``--iface``);
- ``lease``: this node's lease, and whether its PublicIP is the one chosen now;
- ``subnet.env``: present and matching the lease;
- ``mtu``: external interface -> vxlan device -> ``FLANNEL_MTU`` -> ``cni0``;
- ``udp-port``: the VXLAN port (8472 or the config's ``Port``) has a bound socket;
- ``device``: the vxlan device is up and its MAC is the lease's VtepMAC;
- ``offload``: tx checksum offload on the vxlan device (a known kernel bug).

Exit status 1 when any check FAILs. ``--output json`` prints ``"schema": "pyflannel-doctor/1"``.
The checks are pure functions over facts gathered once (tested in
``tests/unit/test_doctor_checks.py``).
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pyflannel.cli.status import Finding, count_levels, format_duration, render_findings

if TYPE_CHECKING:
    from pyflannel.cli.etcd_tool_opts import HttpAnswer
    from pyflannel.cli.flags import Options
    from pyflannel.config import NetworkConfig
    from pyflannel.iface import ExternalInterface, HostNetwork
    from pyflannel.lease import Lease

__all__ = [
    "DEFAULT_VXLAN_PORT",
    "SCHEMA",
    "DoctorReport",
    "check_br_netfilter",
    "check_etcd",
    "check_interfaces",
    "check_lease",
    "check_mtu",
    "check_network_config",
    "check_tx_offload",
    "check_udp_port",
    "main",
    "other_candidates",
    "parse_ethtool_features",
    "parse_proc_net_udp",
    "render_report",
    "report_document",
]

PROG: Final = "pyflannel doctor"
SCHEMA: Final = "pyflannel-doctor/1"
DEFAULT_VXLAN_PORT: Final = 8472
_BRIDGE_SYSCTL: Final = Path("/proc/sys/net/bridge")
# Devices that container networking creates: never the interface between nodes.
_VIRTUAL_PREFIXES: Final = (
    "lo",
    "flannel",
    "cni",
    "docker",
    "veth",
    "cali",
    "vxlan",
    "kube-",
    "virbr",
    "br-",
    "tun",
    "tap",
)


@dataclass
class DoctorReport:
    """The findings of one run, in check order."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No FAIL finding."""
        return not any(f.level == "FAIL" for f in self.findings)


# --- pure: parsing ---------------------------------------------------------------------------


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


# --- pure: checks ----------------------------------------------------------------------------


def check_network_config(
    cfg: NetworkConfig, subject: str, chosen: ExternalInterface | None = None
) -> list[Finding]:
    """A WARN per risky-but-accepted Network (the sentences of ``config validate``), and a
    FAIL when the Network contains the chosen interface's addresses (the daemon refuses it)."""
    from pyflannel.config import network_warnings, node_network_conflict

    findings = [Finding("WARN", "config", subject, w) for w in network_warnings(cfg)]
    if chosen is not None:
        addrs = (chosen.ipv4_addr, chosen.ipv6_addr, chosen.public_ip, chosen.public_ipv6)
        error = node_network_conflict(cfg, addrs)
        if error is not None:
            findings.append(Finding("FAIL", "config", subject, str(error)))
    return findings


def check_br_netfilter(
    values: Mapping[str, str | None], *, nftables: bool, ipv6: bool
) -> list[Finding]:
    """``values``: the content of ``bridge-nf-call-iptables`` (and ``-ip6tables``), None when
    the file does not exist (the br_netfilter module is not loaded)."""
    names = ["bridge-nf-call-iptables"] + (["bridge-nf-call-ip6tables"] if ipv6 else [])
    out: list[Finding] = []
    for name in names:
        value = values.get(name)
        path = f"/proc/sys/net/bridge/{name}"
        if value is None:
            if nftables:
                out.append(
                    Finding(
                        "WARN",
                        "br_netfilter",
                        name,
                        f"{path} does not exist (br_netfilter not loaded); not required in "
                        "nftables mode, but bridged pod traffic then skips iptables "
                        "(kube-proxy needs it)",
                        "modprobe br_netfilter",
                    )
                )
            else:
                out.append(
                    Finding(
                        "FAIL",
                        "br_netfilter",
                        name,
                        f"{path} does not exist: the br_netfilter module is not loaded, and "
                        "pyflanneld (like flanneld >= 0.26) refuses to start in iptables mode",
                        "modprobe br_netfilter && echo br_netfilter > "
                        "/etc/modules-load.d/br_netfilter.conf",
                    )
                )
        elif value.strip() != "1":
            out.append(
                Finding(
                    "WARN",
                    "br_netfilter",
                    name,
                    f"{path} is {value.strip()}: traffic between pods on the same bridge "
                    "bypasses iptables (services and network policies break)",
                    f"sysctl -w net.bridge.{name}=1",
                )
            )
        else:
            out.append(Finding("OK", "br_netfilter", name, f"{path} = 1"))
    return out


def check_etcd(
    endpoints: str,
    version: HttpAnswer | None,
    error: str | None,
    *,
    username: str = "",
) -> Finding:
    """etcd: the ``/version`` answer (None: no endpoint answered) and the error of the first
    real request (None: it worked, so the endpoint and credentials are fine)."""
    ver = "unknown version"
    if version is not None and version.status == 200:
        doc = version.json()
        if isinstance(doc, dict) and isinstance(doc.get("etcdserver"), str):
            ver = f"etcd {doc['etcdserver']}"
    if error is not None:
        return Finding(
            "FAIL",
            "etcd",
            endpoints,
            error,
            "check --etcd-endpoints, the TLS files and --etcd-username/--etcd-password "
            "(the same flags and FLANNELD_* variables as pyflanneld)",
        )
    who = f", authenticated as {username}" if username else ""
    return Finding("OK", "etcd", endpoints, f"{ver} answers{who}")


def other_candidates(
    host: HostNetwork, chosen: str | None, network: ipaddress.IPv4Network | None
) -> list[tuple[str, str]]:
    """(interface, address) of every other interface with a global IPv4 address that could
    carry the overlay (container and flannel devices and addresses in Network excluded)."""
    out: list[tuple[str, str]] = []
    for link in host.links:
        if link.name == chosen or link.name.startswith(_VIRTUAL_PREFIXES):
            continue
        for addr in link.addrs:
            ip = addr.ip
            if not isinstance(ip, ipaddress.IPv4Address):
                continue
            if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
                continue
            if network is not None and ip in network:
                continue
            out.append((link.name, str(ip)))
            break
    return out


def check_interfaces(
    chosen: ExternalInterface | None,
    error: str | None,
    candidates: Sequence[tuple[str, str]],
    *,
    explicit: bool,
) -> list[Finding]:
    """The interface pyflanneld would choose and the multi-NIC warning."""
    if chosen is None:
        return [
            Finding(
                "FAIL",
                "interface",
                "external",
                error or "no interface could be chosen",
                "pass --iface=<name or IP> of the interface that reaches the other nodes",
            )
        ]
    how = "chosen by --iface/--iface-regex/--iface-can-reach" if explicit else "default route"
    public = chosen.public_ip or chosen.public_ipv6
    addr = chosen.ipv4_addr or chosen.ipv6_addr
    nat = f", public IP {public}" if public != addr else ""
    out = [
        Finding(
            "OK",
            "interface",
            chosen.name,
            f"{chosen.name} ({how}): address {addr}{nat}, MTU {chosen.mtu}",
        )
    ]
    if candidates and not explicit:
        listed = ", ".join(f"{n} ({ip})" for n, ip in candidates)
        out.append(
            Finding(
                "WARN",
                "interface",
                chosen.name,
                f"other interfaces could carry the overlay: {listed}; flannel uses "
                f"{chosen.name} (default route). If the nodes reach each other through "
                "another one, cross-node pod traffic fails (flannel #871)",
                f"pass --iface=<name> to pyflanneld (FLANNELD_IFACE), e.g. --iface="
                f"{candidates[0][0]}",
            )
        )
    return out


def check_lease(own: Lease | None, chosen: ExternalInterface | None, now: float) -> Finding:
    """This node's lease, and whether its PublicIP is the address chosen now."""
    if own is None:
        return Finding(
            "FAIL",
            "lease",
            "this host",
            "no lease in etcd belongs to this host (none holds subnet.env's subnet, none has a "
            "PublicIP of this host): pyflanneld is not running, or lost its lease",
            "systemctl restart pyflanneld",
        )
    subject = str(own.subnet if own.subnet is not None else own.ipv6_subnet)
    public = own.attrs.public_ip
    if chosen is not None and chosen.public_ip is not None and chosen.public_ip != public:
        return Finding(
            "WARN",
            "lease",
            subject,
            f"the lease's PublicIP {public} is not the address chosen now ({chosen.name}, "
            f"{chosen.public_ip}): pyflanneld runs with other interface flags than these, or "
            "the host's addresses changed",
            "run doctor with pyflanneld's --iface/--public-ip flags, or restart pyflanneld",
        )
    left = (
        "a reservation (never expires)"
        if own.expiration is None
        else f"expires in {format_duration(own.expiration - now)}"
    )
    return Finding("OK", "lease", subject, f"PublicIP {public}, {left}")


def check_mtu(
    *,
    backend: str,
    ext_name: str,
    ext_mtu: int,
    cfg_mtu: int = 0,
    overhead: int = 50,
    device: str = "flannel.1",
    dev_mtu: int | None = None,
    env_mtu: int | None = None,
    cni_mtu: int | None = None,
) -> list[Finding]:
    """The MTU chain ext -> vxlan device -> FLANNEL_MTU -> cni0 (None: not present)."""
    out: list[Finding] = []
    chain = [f"{ext_name} {ext_mtu}"]
    expected_pod = ext_mtu
    if backend == "vxlan":
        underlay = cfg_mtu or ext_mtu
        expected_dev = underlay - overhead
        expected_pod = expected_dev
        if cfg_mtu > ext_mtu:
            out.append(
                Finding(
                    "FAIL",
                    "mtu",
                    device,
                    f'the Backend "MTU" {cfg_mtu} is larger than {ext_name}\'s MTU {ext_mtu}: '
                    "encapsulated packets do not fit and are dropped",
                    f'set "MTU" to at most {ext_mtu} (or leave it out)',
                )
            )
        if dev_mtu is not None:
            chain.append(f"{device} {dev_mtu}")
            if dev_mtu > ext_mtu - overhead:
                out.append(
                    Finding(
                        "FAIL",
                        "mtu",
                        device,
                        f"{device} MTU {dev_mtu} > {ext_name} MTU {ext_mtu} - {overhead}: large "
                        "packets between pods on different nodes are dropped",
                        f"ip link set dev {device} mtu {ext_mtu - overhead}",
                    )
                )
            elif dev_mtu != expected_dev:
                out.append(
                    Finding(
                        "WARN",
                        "mtu",
                        device,
                        f"{device} MTU {dev_mtu}, expected {expected_dev} ({underlay} - "
                        f"{overhead})",
                        "restart pyflanneld (it sets the device MTU)",
                    )
                )
            expected_pod = min(expected_dev, dev_mtu)
    if env_mtu is not None:
        chain.append(f"FLANNEL_MTU {env_mtu}")
        if env_mtu > expected_pod:
            out.append(
                Finding(
                    "FAIL",
                    "mtu",
                    "FLANNEL_MTU",
                    f"FLANNEL_MTU {env_mtu} is larger than the path allows ({expected_pod}): "
                    "pods send packets that are dropped",
                    "restart pyflanneld to rewrite subnet.env, then re-create the pods",
                )
            )
        elif env_mtu < expected_pod:
            out.append(
                Finding(
                    "WARN",
                    "mtu",
                    "FLANNEL_MTU",
                    f"FLANNEL_MTU {env_mtu} is smaller than the path allows ({expected_pod}); "
                    "it works, with some overhead",
                    "restart pyflanneld to rewrite subnet.env",
                )
            )
    if cni_mtu is not None:
        chain.append(f"cni0 {cni_mtu}")
        limit = env_mtu if env_mtu is not None else expected_pod
        if cni_mtu > limit:
            out.append(
                Finding(
                    "FAIL",
                    "mtu",
                    "cni0",
                    f"cni0 MTU {cni_mtu} is larger than FLANNEL_MTU {limit}: pods created "
                    "with it send packets the overlay drops",
                    "re-create the pods (the CNI bridge plugin sets the MTU from FLANNEL_MTU)",
                )
            )
        elif cni_mtu < limit:
            out.append(
                Finding(
                    "WARN",
                    "mtu",
                    "cni0",
                    f"cni0 MTU {cni_mtu} is below FLANNEL_MTU {limit}: pods were created "
                    "before an MTU change",
                    "re-create the pods to use the new MTU",
                )
            )
    if not any(f.level != "OK" for f in out):
        out.append(Finding("OK", "mtu", ext_name, " -> ".join(chain)))
    return out


def check_udp_port(
    *, backend: str, port: int, bound: set[int] | None, device: str = "", dev_port: int = 0
) -> Finding:
    """The overlay's UDP port: the device uses the config's port and a socket is bound."""
    if backend == "host-gw":
        return Finding("OK", "udp-port", "host-gw", "host-gw needs no UDP port")
    if dev_port and dev_port != port:
        return Finding(
            "FAIL",
            "udp-port",
            str(port),
            f"{device} sends to UDP port {dev_port} but the config's Port is {port}; every "
            "node must use the same port",
            f"ip link del {device}  # then restart pyflanneld to re-create it",
        )
    if bound is None:
        return Finding("WARN", "udp-port", str(port), "could not read /proc/net/udp")
    if port not in bound:
        return Finding(
            "WARN",
            "udp-port",
            str(port),
            f"no socket is bound to UDP port {port}: overlay packets from peers are dropped "
            "(is pyflanneld running and its device up?)",
            f"ss -uln | grep {port}",
        )
    return Finding(
        "OK",
        "udp-port",
        str(port),
        f"UDP {port} is bound; firewalls/security groups between the nodes must allow it "
        "(the most common cause of cross-node failures, flannel #2388)",
    )


def check_tx_offload(device: str, features: Mapping[str, str] | None) -> Finding:
    """``features``: ``ethtool -k`` of the device; None when ethtool is not installed."""
    if features is None:
        return Finding(
            "WARN",
            "offload",
            device,
            "ethtool is not installed: tx checksum offload of the vxlan device not checked",
            "apt-get install ethtool  # or your distribution's package",
        )
    value = features.get("tx-checksum-ip-generic")
    if value is None:
        return Finding("OK", "offload", device, "tx-checksum-ip-generic not offered by the device")
    if value.split()[0] == "on":
        return Finding(
            "WARN",
            "offload",
            device,
            f"tx-checksum-ip-generic is on for {device}: some kernels send vxlan packets with "
            "bad checksums (63 s connection delays through NAT/kube-proxy, flannel #1279, "
            "#2152)",
            f"ethtool -K {device} tx-checksum-ip-generic off",
        )
    return Finding("OK", "offload", device, f"tx-checksum-ip-generic is {value}")


def render_report(report: DoctorReport) -> str:
    """The human-readable report."""
    lines = ["pyflannel doctor:", *render_findings(report.findings, collapse_ok_peers=False), ""]
    counts = count_levels(report.findings)
    if report.ok:
        lines.append(f"no problems found, {counts['warn']} warning(s)")
    else:
        lines.append(f"{counts['fail']} problem(s) found, {counts['warn']} warning(s)")
    return "\n".join(lines) + "\n"


def report_document(report: DoctorReport) -> dict[str, Any]:
    """The ``--output json`` document."""
    return {
        "schema": SCHEMA,
        "ok": report.ok,
        "findings": [f.as_dict() for f in report.findings],
        "summary": count_levels(report.findings),
    }


# --- I/O -------------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _bound_udp_ports() -> set[int] | None:
    texts = [_read(Path("/proc/net/udp")), _read(Path("/proc/net/udp6"))]
    if all(t is None for t in texts):
        return None
    return {p for t in texts if t for p in parse_proc_net_udp(t)}


def _ethtool_features(device: str) -> dict[str, str] | None:
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


def _select_interface(
    opts: Options, cfg: NetworkConfig | None
) -> tuple[ExternalInterface | None, str | None, HostNetwork | None]:
    from pyflannel.errors import FlannelError
    from pyflannel.iface import read_host_network, select_interface_from

    try:
        host = read_host_network()
    except Exception as exc:  # pyroute2 raises its own error types
        return None, f"cannot read this host's interfaces: {exc}", None
    try:
        chosen = select_interface_from(
            host,
            iface=opts.iface,
            iface_regex=opts.iface_regex,
            iface_can_reach=opts.iface_can_reach,
            public_ip=opts.public_ip,
            public_ipv6=opts.public_ipv6,
            enable_ipv4=cfg.enable_ipv4 if cfg is not None else True,
            enable_ipv6=cfg.enable_ipv6 if cfg is not None else False,
        )
    except FlannelError as exc:
        return None, str(exc), host
    return chosen, None, host


def _skipped(check: str, why: str) -> Finding:
    return Finding("WARN", check, "-", f"not checked: {why}")


async def collect(opts: Options) -> DoctorReport:
    """Gather the facts and run every check."""
    from pyflannel.cli.etcd_tool_opts import endpoint_urls, etcd_http_get, new_registry
    from pyflannel.cli.status import (
        evaluate_device,
        evaluate_subnet_env,
        find_own_lease,
        load_config,
        read_env,
        read_node,
    )
    from pyflannel.config import vxlan_options
    from pyflannel.errors import FlannelError

    report = DoctorReport()
    add = report.findings.extend

    # etcd, config, leases
    cfg: NetworkConfig | None = None
    cfg_findings: list[Finding] = []
    leases: list[Lease] = []
    etcd_error: str | None = None
    endpoints = ",".join(opts.etcd_endpoints)
    try:
        async with new_registry(opts) as reg:
            endpoints = reg.endpoints_text
            cfg, cfg_findings = await load_config(reg, opts)
            leases, _ = await reg.list_leases(with_ttl=True)
    except FlannelError as exc:
        etcd_error = str(exc)
    version: HttpAnswer | None = None
    for base in endpoint_urls(opts):
        answer = etcd_http_get(opts, base, "/version")
        if answer.status:
            version = answer
            break

    nftables = cfg.enable_nftables if cfg is not None else False
    ipv6 = cfg.enable_ipv6 if cfg is not None else False
    names = ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"]
    add(
        check_br_netfilter(
            {n: _read(_BRIDGE_SYSCTL / n) for n in names}, nftables=nftables, ipv6=ipv6
        )
    )
    add([check_etcd(endpoints, version, etcd_error, username=opts.etcd_username)])
    if etcd_error is None:
        add(cfg_findings)
        if cfg is not None:
            add([Finding("OK", "config", f"{opts.etcd_prefix}/config", _config_line(cfg))])
    else:
        add([_skipped("config", "etcd did not answer")])

    chosen, iface_error, host = _select_interface(opts, cfg)
    explicit = bool(opts.iface or opts.iface_regex or opts.iface_can_reach)
    network = cfg.network if cfg is not None else None
    candidates = other_candidates(host, chosen.name if chosen else None, network) if host else []
    add(check_interfaces(chosen, iface_error, candidates, explicit=explicit))
    if cfg is not None:
        add(check_network_config(cfg, f"{opts.etcd_prefix}/config", chosen))

    env, env_error = read_env(opts.subnet_file)
    node = read_node()
    try:
        env_subnet = env.subnet.network if env is not None and env.subnet is not None else None
        own = find_own_lease(leases, node.local_ips, env_subnet)
        if etcd_error is None:
            add([check_lease(own, chosen, time.time())])
            add(evaluate_subnet_env(opts.subnet_file, env, env_error, own, network))
        else:
            add([_skipped("lease", "etcd did not answer")])
            if env is None or env_error is not None:
                add(evaluate_subnet_env(opts.subnet_file, env, env_error, None, None))

        backend = cfg.backend_type if cfg is not None else "vxlan"
        port = DEFAULT_VXLAN_PORT
        vni, cfg_mtu = 1, 0
        try:
            if cfg is not None and backend == "vxlan":
                vx = vxlan_options(cfg)
                port, vni, cfg_mtu = vx.port or DEFAULT_VXLAN_PORT, vx.vni, vx.mtu
            elif cfg is not None and backend == "udp":
                from pyflannel.config import udp_options

                port = udp_options(cfg).port
        except FlannelError:
            pass  # the config finding already says what is wrong
        device = f"flannel.{vni}"
        link = node.link(device) if backend == "vxlan" else None
        cni = node.link("cni0")
        if chosen is not None:
            add(
                check_mtu(
                    backend=backend,
                    ext_name=chosen.name,
                    ext_mtu=chosen.mtu,
                    cfg_mtu=cfg_mtu,
                    overhead=70 if ipv6 else 50,
                    device=device,
                    dev_mtu=link.mtu if link is not None else None,
                    env_mtu=env.mtu if env is not None else None,
                    cni_mtu=cni.mtu if cni is not None else None,
                )
            )
        else:
            add([_skipped("mtu", "no external interface")])
        dev_port = link.vxlan.port if link is not None and link.vxlan is not None else 0
        add(
            [
                check_udp_port(
                    backend=backend,
                    port=port,
                    bound=_bound_udp_ports(),
                    device=device,
                    dev_port=dev_port,
                )
            ]
        )
        if backend == "vxlan":
            if own is not None:
                add(evaluate_device(device, link, own.attrs.backend_data))
            elif link is None:
                add(evaluate_device(device, None, None))
            if link is not None:
                add([check_tx_offload(device, _ethtool_features(device))])
    finally:
        node.sock.close()
    return report


def _config_line(cfg: NetworkConfig) -> str:
    from pyflannel.cli.config_cmd import describe_config

    return "valid: " + "; ".join(describe_config(cfg))


def _parser() -> argparse.ArgumentParser:
    from pyflannel.cli.etcd_tool_opts import (
        ETCD_FLAGS,
        IFACE_FLAGS,
        SUBNET_FILE_FLAGS,
        add_flanneld_flags,
        add_output_flag,
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Check this node for common flannel problems (exit 1 on any FAIL).",
        allow_abbrev=False,
    )
    add_output_flag(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    add_flanneld_flags(parser, (*ETCD_FLAGS, *SUBNET_FILE_FLAGS, *IFACE_FLAGS))
    return parser


def main(argv: Sequence[str]) -> int:
    """``pyflannel doctor``; 0 when no check failed, 1 otherwise."""
    if "--kube-subnet-mgr" in argv or os.environ.get("FLANNELD_KUBE_SUBNET_MGR") == "true":
        # kube mode: Nodes instead of etcd leases (pyflannel/subnet/kube/inspect.py).
        from pyflannel.subnet.kube.inspect import main as kube_main

        return kube_main("doctor", argv)
    from pyflannel.cli.etcd_tool_opts import (
        ETCD_FLAGS,
        IFACE_FLAGS,
        SUBNET_FILE_FLAGS,
        options_from,
        print_error,
        setup_tool_logging,
    )
    from pyflannel.errors import FlannelError

    args = _parser().parse_args(list(argv))
    setup_tool_logging(args.verbose)
    try:
        opts = options_from(args, (*ETCD_FLAGS, *SUBNET_FILE_FLAGS, *IFACE_FLAGS), os.environ)
        import trio

        report = trio.run(functools.partial(collect, opts))
    except FlannelError as exc:
        print_error(PROG, exc)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.output == "json":
        print(json.dumps(report_document(report), indent=2))
    else:
        print(render_report(report), end="")
    return 0 if report.ok else 1
