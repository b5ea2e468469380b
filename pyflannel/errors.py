"""The one error tree of pyflannel.

Every failure the daemon or a tool can report is one of these. Each message says what failed,
with which input, and what to do about it; the CLI prints ``str(err)`` as one line and picks the
exit code from :attr:`FlannelError.exit_code`. Tracebacks are shown only with ``-v``.

::

    FlannelError
    ├── ConfigError            bad flags, bad network config, bad subnet.env
    ├── InterfaceError         no usable external interface / public IP
    ├── RegistryError          etcd said no, or could not be reached
    │   ├── EtcdUnavailable    no endpoint answered
    │   ├── EtcdAuthError      TLS or username/password rejected
    │   └── KubeApiError       the Kubernetes API server said no (kube mode)
    │       └── KubeWatchExpired  a Node watch expired (410 Gone): re-list
    ├── LeaseError             subnet lease could not be acquired or kept
    │   ├── OutOfSubnets       every subnet in [SubnetMin, SubnetMax] is taken
    │   └── LeaseLost          our lease vanished and another node holds the subnet
    ├── NetlinkError           the kernel refused a link/address/route/neighbour operation
    └── TrafficRuleError       iptables/nftables rules could not be applied
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EtcdAuthError",
    "EtcdUnavailable",
    "FlannelError",
    "InterfaceError",
    "KubeApiError",
    "KubeWatchExpired",
    "LeaseError",
    "LeaseLost",
    "NetlinkError",
    "OutOfSubnets",
    "RegistryError",
    "TrafficRuleError",
]


class FlannelError(Exception):
    """Base of every pyflannel error; ``str()`` is a complete, actionable one-line message."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class ConfigError(FlannelError):
    """Invalid flags, network config, CNI config or subnet.env contents."""


class InterfaceError(FlannelError):
    """No external interface or public IP could be chosen."""


class RegistryError(FlannelError):
    """An etcd operation failed."""


class EtcdUnavailable(RegistryError):
    """No etcd endpoint could be reached."""


class EtcdAuthError(RegistryError):
    """etcd rejected our credentials or TLS identity."""


class LeaseError(FlannelError):
    """A subnet lease could not be acquired, renewed or kept."""


class OutOfSubnets(LeaseError):
    """All subnets in the configured range are leased."""


class LeaseLost(LeaseError):
    """Our lease disappeared from etcd and could not be re-acquired."""


class NetlinkError(FlannelError):
    """The kernel rejected a netlink operation."""


class TrafficRuleError(FlannelError):
    """iptables / nftables rules could not be installed or repaired."""


# -- kube mode (--kube-subnet-mgr, pyflannel/subnet/kube/) ----------------------------------------


class KubeApiError(RegistryError):
    """The Kubernetes API server refused a request or could not be reached.

    ``status`` is the HTTP status (0 when no answer came), ``reason`` the API's ``reason``
    (e.g. ``NotFound``, ``Expired``)."""

    def __init__(
        self, message: str, *, hint: str | None = None, status: int = 0, reason: str = ""
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.reason = reason


class KubeWatchExpired(KubeApiError):
    """A watch's resourceVersion is too old (410 Gone / ``Expired``): list again."""
