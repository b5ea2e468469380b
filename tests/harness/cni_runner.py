"""A tiny CNI runtime for tests: run one plugin, or a conflist chain, inside test namespaces.

Plays the part of libcni (cni-spec §2.3/§2.4): for each plugin of a list it injects ``name``
and ``cniVersion`` from the list, ``runtimeConfig`` with the capabilities the plugin declares
and the runtime supplies, and ``prevResult``. ADD runs the list in order, each plugin getting
the previous plugin's result; DEL runs it in reverse, every plugin getting the final ADD
result; CHECK runs in order with the final result. The first failure stops ADD/DEL/CHECK.

:class:`CniSandbox` builds the world the plugin runs in, and removes it again: a "node"
network namespace (where the plugin runs, through ``ip netns exec``), pod namespaces, and a
temporary directory with a subnet.env, the plugin's dataDir, host-local's dataDir and a bin
directory holding the plugin installed by :func:`cni_plugin.install.install`. Nothing is
created outside these namespaces and that directory; names carry a random ``pf`` prefix.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_plugin.install import install

__all__ = [
    "SYSTEM_CNI",
    "CniSandbox",
    "Invocation",
    "ListRun",
    "cni_sandbox",
    "netns_exec",
    "run_list",
]

SYSTEM_CNI = "/usr/lib/cni"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Invocation:
    """One plugin run: exit code, stdout, stderr; ``json`` is stdout decoded (or None)."""

    argv: list[str]
    command: str
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def json(self) -> Any:
        """stdout as JSON, or None when empty or not JSON."""
        try:
            return json.loads(self.stdout) if self.stdout.strip() else None
        except ValueError:
            return None

    def ok(self) -> Invocation:
        """Return self if the run succeeded, else raise AssertionError with everything."""
        if self.returncode != 0:
            raise AssertionError(
                f"{self.command} via {self.argv} failed ({self.returncode}):\n"
                f"stdout: {self.stdout.decode(errors='replace')}\n"
                f"stderr: {self.stderr.decode(errors='replace')}"
            )
        return self


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class CniSandbox:
    """Namespaces and files for one test; see the module docstring."""

    prefix: str
    root: Path
    node: str
    bindir: Path
    plugin: Path
    pods: list[str] = field(default_factory=list)

    @property
    def subnet_env(self) -> Path:
        """Where the fake flanneld writes subnet.env."""
        return self.root / "run-flannel" / "subnet.env"

    @property
    def data_dir(self) -> Path:
        """The flannel plugin's dataDir (saved delegate configs)."""
        return self.root / "flannel-data"

    def saved(self, container_id: str, network: str = "cbr0", ifname: str = "eth0") -> Path:
        """The plugin's saved-state file of one attachment."""
        return self.data_dir / f"{network}:{container_id}:{ifname}"

    def saved_config(self, container_id: str, network: str = "cbr0", ifname: str = "eth0") -> str:
        """The delegate config saved for one attachment (the file without its marker line)."""
        marker, _, config = self.saved(container_id, network, ifname).read_text().partition("\n")
        assert marker == f"pyflannel-cni-state/1 {network} {container_id} {ifname}", marker
        return config

    @property
    def ipam_dir(self) -> Path:
        """host-local's dataDir."""
        return self.root / "ipam"

    @property
    def cni_path(self) -> str:
        """Our bin dir first, then the Debian plugins."""
        return f"{self.bindir}:{SYSTEM_CNI}"

    def write_subnet_env(self, text: str) -> None:
        """Write subnet.env as flanneld would."""
        self.subnet_env.parent.mkdir(parents=True, exist_ok=True)
        self.subnet_env.write_text(text)

    def add_pod(self) -> str:
        """Create a pod namespace; return its name (CNI_NETNS is /run/netns/<name>)."""
        name = f"{self.prefix}-p{len(self.pods)}"
        _ip("netns", "add", name)
        self.pods.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def flannel_conf(self, **overrides: Any) -> dict[str, Any]:
        """The seed's flannel entry with our scratch paths (cni-spec §3.8)."""
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": str(self.subnet_env),
            "dataDir": str(self.data_dir),
            "ipam": {"dataDir": str(self.ipam_dir)},
            "delegate": {"hairpinMode": True, "isDefaultGateway": True},
        }
        conf.update(overrides)
        return conf

    def env(
        self,
        command: str,
        container_id: str = "",
        pod: str | None = None,
        ifname: str = "eth0",
        cni_path: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The CNI_* environment of one call."""
        env = {
            "PATH": _PATH,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": f"/run/netns/{pod}" if pod else "",
            "CNI_IFNAME": ifname,
            "CNI_PATH": self.cni_path if cni_path is None else cni_path,
        }
        env.update(extra or {})
        return env

    def invoke(
        self,
        plugin: str | Path,
        env: Mapping[str, str],
        stdin: bytes | Mapping[str, Any],
        *,
        in_node: bool = True,
    ) -> Invocation:
        """Run one plugin binary with ``env`` and ``stdin`` (in the node namespace)."""
        data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
        argv = [str(plugin)]
        if in_node:
            argv = ["ip", "netns", "exec", self.node, *argv]
        done = subprocess.run(argv, env=dict(env), input=data, capture_output=True, timeout=60)
        return Invocation(argv, env["CNI_COMMAND"], done.returncode, done.stdout, done.stderr)

    def flannel(
        self,
        command: str,
        conf: bytes | Mapping[str, Any],
        container_id: str = "",
        pod: str | None = None,
        **env_kwargs: Any,
    ) -> Invocation:
        """Run our installed ``flannel`` plugin."""
        return self.invoke(self.plugin, self.env(command, container_id, pod, **env_kwargs), conf)

    def find(self, plugin_type: str, cni_path: str | None = None) -> Path:
        """The binary of ``plugin_type`` on the sandbox's CNI_PATH."""
        for directory in (cni_path or self.cni_path).split(":"):
            candidate = Path(directory) / plugin_type
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"plugin {plugin_type} not on {cni_path or self.cni_path}")


@contextmanager
def cni_sandbox() -> Iterator[CniSandbox]:
    """Create a :class:`CniSandbox`; remove every namespace and file afterwards."""
    prefix = f"pf{secrets.token_hex(3)}"
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    node = f"{prefix}-node"
    sandbox: CniSandbox | None = None
    try:
        _ip("netns", "add", node)
        _ip("-n", node, "link", "set", "lo", "up")
        bindir = root / "bin"
        plugin = install(bindir)
        sandbox = CniSandbox(prefix, root, node, bindir, plugin)
        yield sandbox
    finally:
        names = [node, *(sandbox.pods if sandbox else [])]
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Conflist chains


def _plugin_config(
    conflist: Mapping[str, Any],
    plugin: Mapping[str, Any],
    capability_args: Mapping[str, Any],
    prev_result: Any,
) -> dict[str, Any]:
    conf = dict(plugin)
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist.get("cniVersion", "")
    caps = plugin.get("capabilities") or {}
    runtime_config = {k: v for k, v in capability_args.items() if caps.get(k) is True}
    if runtime_config:
        conf["runtimeConfig"] = runtime_config
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


@dataclass
class ListRun:
    """What running a conflist did: every invocation, and the final result (ADD)."""

    invocations: list[Invocation]
    result: Any = None

    @property
    def failed(self) -> Invocation | None:
        """The invocation that stopped the chain, if any."""
        last = self.invocations[-1] if self.invocations else None
        return last if last is not None and last.returncode != 0 else None


def run_list(
    sandbox: CniSandbox,
    command: str,
    conflist: Mapping[str, Any],
    container_id: str,
    pod: str | None,
    *,
    capability_args: Mapping[str, Any] | None = None,
    cached_result: Any = None,
    ifname: str = "eth0",
) -> ListRun:
    """Run ``command`` over the plugins of ``conflist`` with the spec's chaining rules.

    ``cached_result`` is the final ADD result (what libcni caches); DEL and CHECK pass it to
    every plugin as ``prevResult``.
    """
    plugins: Sequence[Mapping[str, Any]] = conflist["plugins"]
    caps = capability_args or {}
    env = sandbox.env(command, container_id, pod, ifname=ifname)
    run = ListRun([])
    if command == "ADD":
        prev = None
        for plugin in plugins:
            conf = _plugin_config(conflist, plugin, caps, prev)
            inv = sandbox.invoke(sandbox.find(plugin["type"]), env, conf)
            run.invocations.append(inv)
            if inv.returncode != 0:
                return run
            prev = inv.json
        run.result = prev
        return run
    order = list(reversed(plugins)) if command == "DEL" else list(plugins)
    for plugin in order:
        conf = _plugin_config(conflist, plugin, caps, cached_result)
        inv = sandbox.invoke(sandbox.find(plugin["type"]), env, conf)
        run.invocations.append(inv)
        if inv.returncode != 0:
            return run
    return run


def netns_exec(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace ``ns`` (for assertions on its state)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        check=check,
        timeout=30,
        env={"PATH": _PATH, **({"LANG": os.environ["LANG"]} if "LANG" in os.environ else {})},
    )
