"""Where the daemon's settings come from: the network config in etcd and subnet.env, and
whether they agree with this node's lease."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pyflannel.inspect.findings import Finding
from pyflannel.lease import Lease
from pyflannel.netlink.ops import IPNetwork

if TYPE_CHECKING:
    from pyflannel.config import NetworkConfig
    from pyflannel.options import Options
    from pyflannel.subnet.etcd.registry import EtcdRegistry
    from pyflannel.subnet.subnet_env import SubnetEnv

__all__ = ["config_summary", "evaluate_subnet_env", "load_config", "read_env"]


def config_summary(cfg: NetworkConfig) -> dict[str, Any]:
    """The config's essentials for the status document."""
    return {
        "network": str(cfg.network) if cfg.network is not None else None,
        "ipv6_network": str(cfg.ipv6_network) if cfg.ipv6_network is not None else None,
        "backend": cfg.backend_type,
        "nftables": cfg.enable_nftables,
    }


async def load_config(
    reg: EtcdRegistry, opts: Options
) -> tuple[NetworkConfig | None, list[Finding]]:
    """The network config, or the findings that explain why there is none."""
    from pyflannel.errors import ConfigError
    from pyflannel.inspect.etcd_http import etcdctl_command
    from pyflannel.inspect.missing_config import (
        check_config_text,
        missing_config_summary,
        probe_v2_config,
    )
    from pyflannel.subnet.etcd.errors import ConfigNotFound

    key = reg.config_key
    try:
        raw = await reg.get_config()
    except ConfigNotFound:
        probe = probe_v2_config(opts, key)
        message, fix = missing_config_summary(key, probe, etcdctl_command(opts))
        return None, [Finding("FAIL", "config", key, message, fix)]
    try:
        cfg = check_config_text(raw)
    except ConfigError as exc:
        return None, [
            Finding(
                "FAIL",
                "config",
                key,
                f"invalid network config: {exc}",
                "pyflannel config validate FILE; pyflannel config set FILE",
            )
        ]
    return cfg, []


def read_env(path: str) -> tuple[SubnetEnv | None, str | None]:
    """subnet.env (None if absent) or the reason it could not be read."""
    from pyflannel.errors import ConfigError
    from pyflannel.subnet.subnet_env import read_subnet_env

    if not os.path.lexists(path):
        return None, None
    try:
        return read_subnet_env(path), None
    except ConfigError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"


def evaluate_subnet_env(
    path: str,
    env: SubnetEnv | None,
    env_error: str | None,
    own: Lease | None,
    network: IPNetwork | None,
) -> list[Finding]:
    """subnet.env against this node's lease and the config's Network (pure)."""
    if env_error is not None:
        return [Finding("FAIL", "subnet.env", path, env_error)]
    if env is None:
        return [
            Finding(
                "FAIL",
                "subnet.env",
                path,
                f"{path} does not exist: pyflanneld writes it once it is ready, and the CNI "
                "plugin fails with 'no such file or directory' until then (flannel #2253)",
                "systemctl status pyflanneld  # is it running and ready?",
            )
        ]
    subnet = env.subnet.network if env.subnet is not None else None
    out: list[Finding] = []
    if own is None:
        out.append(
            Finding(
                "FAIL",
                "subnet.env",
                path,
                f"{path} names FLANNEL_SUBNET={env.subnet} but no lease in etcd holds it: the "
                "lease expired or was deleted (pyflanneld exits when it loses its lease)",
                "systemctl restart pyflanneld",
            )
        )
        return out
    if subnet is not None and own.subnet is not None and subnet != own.subnet:
        out.append(
            Finding(
                "FAIL",
                "subnet.env",
                path,
                f"FLANNEL_SUBNET={env.subnet} but this node's lease is {own.subnet}: pods get "
                "addresses another node's route points at",
                "systemctl restart pyflanneld",
            )
        )
    if network is not None and env.network is not None and env.network != network:
        out.append(
            Finding(
                "FAIL",
                "subnet.env",
                path,
                f"FLANNEL_NETWORK={env.network} but the network config says {network}: "
                "pyflanneld was started before the config changed",
                "systemctl restart pyflanneld",
            )
        )
    if not out:
        out.append(
            Finding(
                "OK",
                "subnet.env",
                path,
                f"FLANNEL_SUBNET={env.subnet} FLANNEL_MTU={env.mtu} matches this node's lease",
            )
        )
    return out
