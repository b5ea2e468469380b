"""What the daemon is told to do: :class:`Options`.

The command line (:mod:`pyflannel.cli.flags`) builds it; the daemon depends on this module, never
on the CLI. Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple, TypedDict

if TYPE_CHECKING:
    from pyflannel.subnet.etcd.session import EtcdCredentials

__all__ = ["InterfaceFlags", "Notice", "Options"]


class InterfaceFlags(TypedDict, total=False):
    """The interface-selection flags (keyword arguments of ``pyflannel.iface``'s selection)."""

    iface: Sequence[str]
    iface_regex: Sequence[str]
    iface_can_reach: str
    public_ip: str
    public_ipv6: str


class Notice(NamedTuple):
    """Something the caller should log once logging is set up (``level`` is a log level)."""

    level: Literal["warning", "error"]
    message: str


@dataclass(frozen=True, slots=True)
class Options:
    """Everything the daemon takes from its command line and ``FLANNELD_*`` environment."""

    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
    etcd_prefix: str = "/coreos.com/network"
    etcd_keyfile: str = ""
    etcd_certfile: str = ""
    etcd_cafile: str = ""
    etcd_username: str = ""
    etcd_password: str = ""
    iface: tuple[str, ...] = ()
    iface_regex: tuple[str, ...] = ()
    iface_can_reach: str = ""
    public_ip: str = ""
    public_ipv6: str = ""
    subnet_file: str = "/run/flannel/subnet.env"
    subnet_lease_renew_margin: int = 60  # minutes
    ip_masq: bool = False
    ip_masq_fully_random_disable: bool = False
    iptables_resync: int = 5  # seconds
    iptables_forward_rules: bool = True
    ip_blackhole_route: bool = False
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    version: bool = False
    verbosity: int = 0
    log_format: str = "console"
    subnet_lease_ttl: int = 86400  # seconds
    subnet_lease_renew_retry: int = 60  # seconds
    help: bool = False
    # -- kube mode (--kube-subnet-mgr; pyflannel/subnet/kube/) --
    kube_subnet_mgr: bool = False
    kube_api_url: str = ""
    kubeconfig_file: str = ""
    kube_annotation_prefix: str = "flannel.alpha.coreos.com"
    net_config_path: str = "/etc/kube-flannel/net-conf.json"
    set_node_network_unavailable: bool = True
    # Messages for the log: ignored flags, rejected env values, ignored arguments.
    notices: tuple[Notice, ...] = field(default=(), compare=False)

    @property
    def etcd_tls(self) -> bool:
        """flanneld uses TLS only when both the key and the certificate file are given."""
        return bool(self.etcd_keyfile and self.etcd_certfile)

    def etcd_credentials(self) -> EtcdCredentials:
        """``--etcd-keyfile/-certfile/-cafile/-username/-password``, for an etcd client."""
        return {
            "keyfile": self.etcd_keyfile,
            "certfile": self.etcd_certfile,
            "cafile": self.etcd_cafile,
            "username": self.etcd_username,
            "password": self.etcd_password,
        }

    def interface_flags(self) -> InterfaceFlags:
        """``--iface``, ``--iface-regex``, ``--iface-can-reach``, ``--public-ip[v6]``, for
        :func:`pyflannel.iface.select_interface`."""
        return InterfaceFlags(
            iface=self.iface,
            iface_regex=self.iface_regex,
            iface_can_reach=self.iface_can_reach,
            public_ip=self.public_ip,
            public_ipv6=self.public_ipv6,
        )
