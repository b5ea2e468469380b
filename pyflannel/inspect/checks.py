"""doctor's checks of this host: pure functions over facts gathered once (see
:mod:`pyflannel.cli.doctor` for the list and :mod:`.host` for the gathering)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from pyflannel.backend import vxlan
from pyflannel.inspect.findings import Finding, format_duration

if TYPE_CHECKING:
    from pyflannel.config import NetworkConfig
    from pyflannel.iface import ExternalInterface, HostNetwork
    from pyflannel.inspect.etcd_http import HttpAnswer
    from pyflannel.lease import Lease

__all__ = [
    "DEFAULT_VXLAN_PORT",
    "check_br_netfilter",
    "check_etcd",
    "check_interfaces",
    "check_lease",
    "check_mtu",
    "check_network_config",
    "check_tx_offload",
    "check_udp_port",
    "other_candidates",
]

DEFAULT_VXLAN_PORT: Final = vxlan.KERNEL_DEFAULT_PORT
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
    overhead: int = vxlan.ENCAP_OVERHEAD,
    device: str = vxlan.device_name(4, 1),
    dev_mtu: int | None = None,
    env_mtu: int | None = None,
    cni_mtu: int | None = None,
    pod_mtu: int | None = None,
) -> list[Finding]:
    """The MTU chain ext -> vxlan device -> FLANNEL_MTU -> cni0 (None: not present).

    ``overhead``: the vxlan device's (its family's encapsulation); ``pod_mtu``: the
    ``FLANNEL_MTU`` the backend computes, when it differs from the device's MTU (vxlan with IPv6
    enabled, udp); None means the device's MTU (vxlan) or the external MTU (host-gw).
    """
    out: list[Finding] = []
    chain = [f"{ext_name} {ext_mtu}"]
    expected_pod = ext_mtu if pod_mtu is None else pod_mtu
    if backend in ("vxlan", "wireguard"):
        underlay = cfg_mtu or ext_mtu
        expected_dev = underlay - overhead
        expected_pod = expected_dev if pod_mtu is None else pod_mtu
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
            expected_pod = min(expected_pod, dev_mtu)
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
