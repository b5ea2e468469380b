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
The checks are pure functions over facts gathered once (:mod:`pyflannel.inspect.checks`,
tested in ``tests/unit/test_doctor_checks.py``); this module gathers, renders and exits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pyflannel.backend import udp, vxlan
from pyflannel.backend.wireguard import options as wireguard
from pyflannel.backend.wireguard.options import wireguard_options
from pyflannel.cli import etcd_tool_opts as tool_opts
from pyflannel.config import udp_options, vxlan_options
from pyflannel.inspect import checks, etcd_http, findings, host, sources
from pyflannel.inspect.datapath import evaluate_device
from pyflannel.inspect.findings import Finding, FindingsReport
from pyflannel.inspect.leases import find_own_lease
from pyflannel.inspect.wireguard import wireguard_findings

if TYPE_CHECKING:
    import argparse

    from pyflannel.cli.flags import Options
    from pyflannel.config import NetworkConfig
    from pyflannel.iface import ExternalInterface, HostNetwork
    from pyflannel.inspect.etcd_http import HttpAnswer
    from pyflannel.lease import Lease

__all__ = ["SCHEMA", "TOOL", "DoctorReport", "collect", "main"]

SCHEMA: Final = "pyflannel-doctor/1"
_BRIDGE_SYSCTL: Final = Path("/proc/sys/net/bridge")


class DoctorReport(FindingsReport):
    """The findings of one run, in check order."""

    def render(self) -> str:
        """The human-readable report."""
        warnings = findings.count_levels(self.findings)["warn"]
        verdict = findings.verdict_line(self.findings, f"no problems found, {warnings} warning(s)")
        lines = [
            "pyflannel doctor:",
            *findings.render_findings(self.findings, collapse_ok_peers=False),
        ]
        return "\n".join([*lines, "", verdict]) + "\n"

    def document(self) -> dict[str, Any]:
        """The ``--output json`` document."""
        return {"schema": SCHEMA, "ok": self.ok, **findings.findings_document(self.findings)}


# --- I/O -------------------------------------------------------------------------------------


def _select_interface(
    opts: Options, cfg: NetworkConfig | None
) -> tuple[ExternalInterface | None, str | None, HostNetwork | None]:
    from pyflannel.errors import FlannelError
    from pyflannel.iface import read_host_network, select_interface_from

    try:
        host_net = read_host_network()
    except Exception as exc:  # pyroute2 raises its own error types
        return None, f"cannot read this host's interfaces: {exc}", None
    try:
        chosen = select_interface_from(
            host_net,
            **opts.interface_flags(),
            enable_ipv4=cfg.enable_ipv4 if cfg is not None else True,
            enable_ipv6=cfg.enable_ipv6 if cfg is not None else False,
        )
    except FlannelError as exc:
        return None, str(exc), host_net
    return chosen, None, host_net


def _skipped(check: str, why: str) -> Finding:
    return Finding("WARN", check, "-", f"not checked: {why}")


async def collect(opts: Options) -> DoctorReport:
    """Gather the facts and run every check."""
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
        async with tool_opts.new_registry(opts) as reg:
            endpoints = reg.endpoints_text
            cfg, cfg_findings = await sources.load_config(reg, opts)
            leases, _ = await reg.list_leases(with_ttl=True)
    except FlannelError as exc:
        etcd_error = str(exc)
    version: HttpAnswer | None = None
    for base in etcd_http.endpoint_urls(opts):
        answer = etcd_http.etcd_http_get(opts, base, "/version")
        if answer.status:
            version = answer
            break

    nftables = cfg.enable_nftables if cfg is not None else False
    ipv6 = cfg.enable_ipv6 if cfg is not None else False
    names = ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"]
    add(
        checks.check_br_netfilter(
            {n: host.read_text(_BRIDGE_SYSCTL / n) for n in names}, nftables=nftables, ipv6=ipv6
        )
    )
    add([checks.check_etcd(endpoints, version, etcd_error, username=opts.etcd_username)])
    if etcd_error is None:
        add(cfg_findings)
        if cfg is not None:
            add([Finding("OK", "config", f"{opts.etcd_prefix}/config", _config_line(cfg))])
    else:
        add([_skipped("config", "etcd did not answer")])

    chosen, iface_error, host_net = _select_interface(opts, cfg)
    explicit = bool(opts.iface or opts.iface_regex or opts.iface_can_reach)
    network = cfg.network if cfg is not None else None
    chosen_name = chosen.name if chosen else None
    candidates = checks.other_candidates(host_net, chosen_name, network) if host_net else []
    add(checks.check_interfaces(chosen, iface_error, candidates, explicit=explicit))
    if cfg is not None:
        add(checks.check_network_config(cfg, f"{opts.etcd_prefix}/config", chosen))

    env, env_error = sources.read_env(opts.subnet_file)
    node = host.read_node()
    try:
        env_subnet = env.subnet.network if env is not None and env.subnet is not None else None
        own = find_own_lease(leases, node.local_ips, env_subnet)
        if etcd_error is None:
            add([checks.check_lease(own, chosen, time.time())])
            add(sources.evaluate_subnet_env(opts.subnet_file, env, env_error, own, network))
        else:
            add([_skipped("lease", "etcd did not answer")])
            if env is None or env_error is not None:
                add(sources.evaluate_subnet_env(opts.subnet_file, env, env_error, None, None))

        backend = cfg.backend_type if cfg is not None else "vxlan"
        port = checks.DEFAULT_VXLAN_PORT
        vni, cfg_mtu = 1, 0
        try:
            if cfg is not None and backend == "vxlan":
                vx = vxlan_options(cfg)
                port, vni, cfg_mtu = vx.port or checks.DEFAULT_VXLAN_PORT, vx.vni, vx.mtu
            elif cfg is not None and backend == "udp":
                port = udp_options(cfg).port
            elif cfg is not None and backend == "wireguard":
                wg = wireguard_options(cfg.backend)
                port, cfg_mtu = wg.listen_port, wg.mtu
        except FlannelError:
            pass  # the config finding already says what is wrong
        device = wireguard.DEVICE_NAME if backend == "wireguard" else vxlan.device_name(4, vni)
        link = node.link(device) if backend in ("vxlan", "wireguard") else None
        cni = node.link("cni0")
        if chosen is not None:
            pod_mtu: int | None = None
            if backend == "vxlan":
                pod_mtu = vxlan.flannel_mtu(cfg_mtu or chosen.mtu, ipv6=ipv6)
            elif backend == "udp":
                pod_mtu = udp.tun_mtu(chosen.mtu)
            overhead = (
                wireguard.ENCAP_OVERHEAD if backend == "wireguard" else vxlan.encap_overhead(4)
            )
            add(
                checks.check_mtu(
                    backend=backend,
                    ext_name=chosen.name,
                    ext_mtu=chosen.mtu,
                    cfg_mtu=cfg_mtu,
                    overhead=overhead,
                    device=device,
                    dev_mtu=link.mtu if link is not None else None,
                    env_mtu=env.mtu if env is not None else None,
                    cni_mtu=cni.mtu if cni is not None else None,
                    pod_mtu=pod_mtu,
                )
            )
        else:
            add([_skipped("mtu", "no external interface")])
        dev_port = link.vxlan.port if link is not None and link.vxlan is not None else 0
        add(
            [
                checks.check_udp_port(
                    backend=backend,
                    port=port,
                    bound=host.bound_udp_ports(),
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
                add([checks.check_tx_offload(device, host.ethtool_features(device))])
        elif backend == "wireguard" and own is not None:
            add(wireguard_findings(own, leases))
    finally:
        node.close()
    return report


def _config_line(cfg: NetworkConfig) -> str:
    from pyflannel.cli.config_cmd import describe_config

    return "valid: " + "; ".join(describe_config(cfg))


async def _collect(_args: argparse.Namespace, opts: Options) -> DoctorReport:
    return await collect(opts)


TOOL: Final = tool_opts.ReportTool(
    name="doctor",
    description="Check this node for common flannel problems (exit 1 on any FAIL).",
    flags=(*tool_opts.ETCD_FLAGS, *tool_opts.SUBNET_FILE_FLAGS, *tool_opts.IFACE_FLAGS),
    collect=_collect,
)


def main(argv: Sequence[str]) -> int:
    """``pyflannel doctor``; 0 when no check failed, 1 otherwise (kube mode: the Nodes')."""
    return tool_opts.run_report_tool(TOOL, argv)
