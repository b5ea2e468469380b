"""Why the network config is missing from etcd's v3 store, and what to run about it.

The most common cause (flannel #755, #1057, #1191, #1584) is a config written through etcd's v2
API (``etcdctl set``, etcdctl's default before etcd 3.4): the v2 store is invisible to v3
clients. :func:`probe_v2_config` asks the v2 API of the same endpoints; the texts say what was
found and print the v3 command that fixes it. Also :func:`check_config_text`, the daemon's own
validation of a config text (network config, then the backend's options)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from pyflannel.inspect.etcd_http import HttpAnswer, endpoint_urls, etcd_http_get

if TYPE_CHECKING:
    from pyflannel.config import NetworkConfig
    from pyflannel.options import Options

__all__ = [
    "EXAMPLE_CONFIG",
    "V2Probe",
    "check_config_text",
    "classify_v2_answer",
    "missing_config_summary",
    "missing_config_text",
    "probe_v2_config",
]

EXAMPLE_CONFIG: Final = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'

V2State = Literal["found", "absent", "v2-disabled", "unknown", "unreachable"]


@dataclass(frozen=True, slots=True)
class V2Probe:
    """What etcd's v2 API says about the config key.

    ``found``: the key exists in the v2 store (``value``); ``absent``: v2 is on, no such key;
    ``v2-disabled``: the endpoint has no v2 API (etcd >= 3.4 without ``--enable-v2``);
    ``unknown``: an answer we cannot interpret (e.g. v2 auth refused us); ``unreachable``: no
    endpoint answered over HTTP.
    """

    state: V2State
    url: str = ""
    value: str | None = None
    detail: str = ""


def classify_v2_answer(answer: HttpAnswer) -> V2Probe:
    """Interpret one ``GET /v2/keys<key>`` exchange (pure)."""
    if answer.status == 0:
        return V2Probe("unreachable", answer.url, detail=answer.error)
    doc = answer.json()
    if answer.status == 200 and isinstance(doc, dict):
        node = doc.get("node")
        if isinstance(node, dict) and isinstance(node.get("value"), str):
            return V2Probe("found", answer.url, value=node["value"])
        if isinstance(node, dict) and node.get("dir"):
            return V2Probe("absent", answer.url, detail="the v2 key is a directory")
    if answer.status == 404:
        if isinstance(doc, dict) and doc.get("errorCode") == 100:
            return V2Probe("absent", answer.url)
        # etcd 3.4+ without --enable-v2 answers its plain "404 page not found".
        return V2Probe("v2-disabled", answer.url)
    text = answer.body.decode("utf-8", "replace").strip()[:200]
    return V2Probe("unknown", answer.url, detail=f"HTTP {answer.status}: {text}")


def probe_v2_config(opts: Options, key: str, *, timeout: float = 3.0) -> V2Probe:
    """Ask the v2 API of each endpoint in turn for ``key`` until one answers."""
    import urllib.parse

    path = "/v2/keys" + urllib.parse.quote(key)
    last = V2Probe("unreachable")
    for base in endpoint_urls(opts):
        probe = classify_v2_answer(etcd_http_get(opts, base, path, timeout=timeout))
        if probe.state != "unreachable":
            return probe
        last = probe
    return last


def missing_config_text(key: str, endpoints: str, probe: V2Probe, fix_command: str) -> str:
    """What to tell the operator when ``key`` is missing from the v3 store (pure).

    ``fix_command`` is the ``etcdctl`` prefix (see
    :func:`~pyflannel.inspect.etcd_http.etcdctl_command` without arguments).
    """
    head = (
        "flannel config not found in etcd store. Did you create your config using etcdv3 "
        f"API? (looked for {key} at {endpoints})"
    )
    if probe.state == "found":
        assert probe.value is not None
        return "\n".join(
            [
                head,
                f"{key} exists in etcd's v2 store: it was written through the v2 API "
                "(`etcdctl set`, etcdctl's default before etcd 3.4). pyflanneld, like flanneld "
                ">= 0.18, reads only the v3 key, and the v2 and v3 stores are separate.",
                "Fix: write it through the v3 API:",
                f"  {fix_command} put {shlex.quote(key)} {shlex.quote(probe.value)}",
            ]
        )
    lines = [
        head,
        "Create it through the v3 API, e.g.:",
        f"  {fix_command} put {shlex.quote(key)} {shlex.quote(EXAMPLE_CONFIG)}",
        "or with: pyflannel config set FILE",
    ]
    if probe.state == "absent":
        lines.append(f"(the v2 store has no {key} either)")
    elif probe.state == "v2-disabled":
        lines.append(
            "(etcd's v2 API is off, so a config written with `etcdctl set` could not be looked "
            "for; with etcd >= 3.4 `etcdctl put` already uses v3)"
        )
    elif probe.detail:
        lines.append(f"(could not look in etcd's v2 store: {probe.detail})")
    return "\n".join(lines)


def missing_config_summary(key: str, probe: V2Probe, fix_command: str) -> tuple[str, str]:
    """One-line diagnosis and the command that fixes it, for status/doctor findings (pure)."""
    if probe.state == "found":
        assert probe.value is not None
        return (
            f"{key} is missing from etcd's v3 store but exists in its v2 store: it was written "
            "with the v2 API (`etcdctl set`), which pyflanneld does not read",
            f"{fix_command} put {shlex.quote(key)} {shlex.quote(probe.value)}",
        )
    return (
        "flannel config not found in etcd store. Did you create your config using etcdv3 API? "
        f"(looked for {key})",
        f"{fix_command} put {shlex.quote(key)} {shlex.quote(EXAMPLE_CONFIG)}",
    )


def check_config_text(text: str | bytes) -> NetworkConfig:
    """Validate like the daemon: the network config, then the chosen backend's options.

    Raises :class:`~pyflannel.errors.ConfigError` with the daemon's message and a hint.
    """
    from pyflannel.config import parse_network_config, udp_options, vxlan_options

    cfg = parse_network_config(text)
    if cfg.backend_type == "vxlan":
        vxlan_options(cfg)
    elif cfg.backend_type == "udp":
        udp_options(cfg)
    return cfg
