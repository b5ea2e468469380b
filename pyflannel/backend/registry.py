"""Backend type name → backend class, imported only when asked for.

``pyflannel.config`` already refused types pyflannel does not implement, so an unknown name here
is a programming error or a missing module (the udp backend lives in its own module).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pyflannel.errors import ConfigError

if TYPE_CHECKING:
    from pyflannel.backend.base import Backend

__all__ = ["BACKENDS", "backend_class", "make_backend"]

BACKENDS: dict[str, tuple[str, str]] = {
    "vxlan": ("pyflannel.backend.vxlan", "VxlanBackend"),
    "host-gw": ("pyflannel.backend.hostgw", "HostGwBackend"),
    "udp": ("pyflannel.backend.udp", "UdpBackend"),
    # issue 17: WireGuard (kernel module, else wireguard-go)
    "wireguard": ("pyflannel.backend.wireguard.network", "WireguardBackend"),
}
"""Lease ``BackendType`` (lower case, as in the network config) → (module, class)."""


def backend_class(backend_type: str) -> type[Backend]:
    """The class implementing ``backend_type``; ConfigError if there is none."""
    try:
        module_name, class_name = BACKENDS[backend_type.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown backend type: {backend_type}",
            hint=f"use one of {', '.join(sorted(BACKENDS))}",
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(
            f"backend type {backend_type} is not available in this build of pyflannel",
            hint='use "Backend": {"Type": "vxlan"}',
        ) from None
    cls: type[Backend] = getattr(module, class_name)
    return cls


def make_backend(backend_type: str, **options: Any) -> Backend:
    """Instantiate the backend for ``backend_type`` with its keyword ``options``.

    host-gw, vxlan and wireguard take :class:`~pyflannel.backend.base.BackendOptions`
    (``resync_interval``, ``metrics``, ``stats``); vxlan also ``mac_hint``, ``mac_hint_v6``,
    wireguard ``socket_dir``; udp ``mode``, ``offload``, ``metrics``, ``stats``.
    """
    return backend_class(backend_type)(**options)


if TYPE_CHECKING:
    # Static proof (for mypy) that the implementations satisfy the seams.
    from pyflannel.backend.base import Network
    from pyflannel.backend.hostgw import HostGwBackend, HostGwNetwork
    from pyflannel.backend.udp import UdpBackend, UdpNetwork
    from pyflannel.backend.vxlan import VxlanBackend, VxlanNetwork

    def _conforms(
        vb: VxlanBackend,
        hb: HostGwBackend,
        ub: UdpBackend,
        vn: VxlanNetwork,
        hn: HostGwNetwork,
        un: UdpNetwork,
    ) -> tuple[Backend, Backend, Backend, Network, Network, Network]:
        return vb, hb, ub, vn, hn, un

    from pyflannel.backend.wireguard.network import WireguardBackend, WireguardNetwork

    def _wireguard_conforms(
        wb: WireguardBackend, wn: WireguardNetwork
    ) -> tuple[Backend, Network]:  # issue 17
        return wb, wn
