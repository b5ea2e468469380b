"""The lease table as shown, and which lease is this node's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pyflannel.backend.validate import normalize_mac
from pyflannel.lease import Lease
from pyflannel.netlink.ops import IPAddress, IPNetwork

__all__ = ["LeaseRow", "find_own_lease", "lease_rows", "subnets_text", "vtep_mac"]


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One lease as shown: text fields, times in seconds."""

    subnet: str
    ipv6_subnet: str | None
    public_ip: str
    public_ipv6: str | None
    backend: str
    vtep_mac: str | None
    expiration: float | None
    expires_in: float | None
    reservation: bool
    this_node: bool
    failing: str | None = None
    """Why the daemon quarantined this peer (e.g. ``ENETUNREACH``); None when programmed."""

    def as_dict(self) -> dict[str, Any]:
        """The row as a JSON object (stable keys: the fields, in order; whole seconds left)."""
        expires_in = None if self.expires_in is None else round(self.expires_in)
        return {**asdict(self), "expires_in": expires_in}


def vtep_mac(data: Any) -> str | None:
    """The ``VtepMAC`` of a lease's BackendData (any key case), normalised; None if absent."""
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(k, str) and k.lower() == "vtepmac":
                return normalize_mac(v) or (str(v) if v is not None else None)
    return None


def find_own_lease(
    leases: Iterable[Lease], local_ips: Iterable[IPAddress], env_subnet: IPNetwork | None
) -> Lease | None:
    """This node's lease: the one holding subnet.env's subnet, else the one whose PublicIP is
    an address of this host (the freshest if several; a reservation counts as freshest)."""
    leases = list(leases)
    if env_subnet is not None:
        for lease in leases:
            if env_subnet in (lease.subnet, lease.ipv6_subnet):
                return lease
    local = set(local_ips)
    mine = [
        le
        for le in leases
        if le.attrs.public_ip in local
        or (le.attrs.public_ipv6 is not None and le.attrs.public_ipv6 in local)
    ]
    if not mine:
        return None
    return max(mine, key=lambda le: float("inf") if le.expiration is None else le.expiration)


def _sort_key(lease: Lease) -> tuple[int, int, int]:
    net = lease.subnet if lease.subnet is not None else lease.ipv6_subnet
    if net is None:
        return (9, 0, 0)
    return (net.version, int(net.network_address), net.prefixlen)


def lease_rows(
    leases: Iterable[Lease],
    own: Lease | None,
    now: float,
    failing: Mapping[str, str] | None = None,
) -> list[LeaseRow]:
    """The lease table, sorted by subnet (pure); ``failing`` maps lease keys the daemon
    quarantined to the reason."""
    failing = failing or {}
    rows = []
    for lease in sorted(leases, key=_sort_key):
        a = lease.attrs
        rows.append(
            LeaseRow(
                subnet=str(lease.subnet) if lease.subnet is not None else "-",
                ipv6_subnet=str(lease.ipv6_subnet) if lease.ipv6_subnet is not None else None,
                public_ip=str(a.public_ip),
                public_ipv6=str(a.public_ipv6) if a.public_ipv6 is not None else None,
                # flanneld's udp and alloc backends write no BackendType at all
                backend=a.backend_type or "udp",
                vtep_mac=vtep_mac(a.backend_data),
                expiration=lease.expiration,
                expires_in=None if lease.expiration is None else lease.expiration - now,
                reservation=lease.is_reservation,
                this_node=own is not None
                and (lease.subnet, lease.ipv6_subnet) == (own.subnet, own.ipv6_subnet),
                failing=failing.get(lease.key_suffix),
            )
        )
    return rows


def subnets_text(lease: Lease) -> str:
    """The lease's IPv4 and IPv6 subnets, space-separated."""
    return " ".join(str(s) for s in (lease.subnet, lease.ipv6_subnet) if s is not None)
