"""A real Kubernetes API server for the lab and the tests: kube-apiserver + its own etcd, both
inside one lab namespace (never the root namespace), token authentication and RBAC.

The binary is the v1.20.2 kube-apiserver shipped (xz-compressed) in ``../shared/tools/kube/``
next to the repository, or the file named by ``$PYFLANNEL_KUBE_APISERVER`` (xz or plain). It is
unpacked once into a cache directory. Two tokens are issued: ``admin`` (system:masters, for the
lab's own set-up) and ``flannel`` (the user ``system:serviceaccount:kube-flannel:flannel``), which
has only what flannel's ClusterRole grants, so every daemon run in the lab proves the RBAC is
enough.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pyflannel.errors import ConfigError, KubeApiError
from pyflannel.lab.netns import http_request, netns_exists, run, spawn_in

__all__ = [
    "APISERVER_ENV",
    "FLANNEL_CLUSTER_ROLE",
    "FLANNEL_USER",
    "KubeApiServer",
    "locate_apiserver",
    "unpack_apiserver",
]

APISERVER_ENV = "PYFLANNEL_KUBE_APISERVER"
XZ_NAME = "kube-apiserver-v1.20.2.xz"
FLANNEL_USER = "system:serviceaccount:kube-flannel:flannel"
API_PORT = 6443
_T = TypeVar("_T")

# flannel's ClusterRole (kube-flannel.yml, v0.20.2 and HEAD), and no more.
FLANNEL_CLUSTER_ROLE: dict[str, Any] = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "flannel"},
    "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
    ],
}


def locate_apiserver(repo_root: Path | None = None) -> Path | None:
    """``$PYFLANNEL_KUBE_APISERVER``, else ``<repo>/../shared/tools/kube/<xz>``; None if neither."""
    env = os.environ.get(APISERVER_ENV, "")
    if env:
        return Path(env) if Path(env).is_file() else None
    root = repo_root or Path(__file__).resolve().parents[2]
    candidate = root.parent / "shared" / "tools" / "kube" / XZ_NAME
    return candidate if candidate.is_file() else None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "pyflannel" / "kube"


def unpack_apiserver(src: Path) -> Path:
    """The runnable binary for ``src`` (unpacked once into the cache when it is xz)."""
    if src.suffix != ".xz":
        return src
    st = src.stat()
    tag = hashlib.sha256(f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / f"kube-apiserver-{tag[:16]}"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test sessions unpack once
        if not binary.exists():
            tmp = binary.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                subprocess.run(["xz", "-dc", str(src)], stdout=out, check=True)
            tmp.chmod(0o755)
            tmp.rename(binary)
    return binary


@dataclass
class KubeApiServer:
    """kube-apiserver and its etcd inside namespace ``ns``, serving on ``https://host:6443``."""

    ns: str
    host: str
    state_dir: Path
    binary: Path
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    flannel_token: str = field(default_factory=lambda: secrets.token_hex(16))
    # Without the watch cache, watches go to etcd and an old resourceVersion gets 410 Gone
    # after a compaction (tests of the re-list); the lab keeps the server's default.
    watch_cache: bool = True
    _etcd: subprocess.Popen[bytes] | None = None
    _api: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL (an underlay or loopback address inside :attr:`ns`)."""
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{h}:{API_PORT}"

    @property
    def ca_file(self) -> Path:
        """The self-signed serving certificate (also its CA), to verify the server with."""
        return self.state_dir / "certs" / "apiserver.crt"

    @property
    def running(self) -> bool:
        """True while the API server process runs."""
        return self._api is not None and self._api.poll() is None

    # -- life cycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> KubeApiServer:
        """Start etcd (first time) and the API server; wait until ``/readyz`` answers 200."""
        if not netns_exists(self.ns):
            raise ConfigError(f"namespace {self.ns} does not exist", hint="build the lab first")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self._etcd is None or self._etcd.poll() is not None:
            self._start_etcd()
        self._prepare_files()
        argv = [
            str(self.binary),
            "--etcd-servers=http://127.0.0.1:2379",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={API_PORT}",
            f"--cert-dir={self.state_dir / 'certs'}",
            f"--token-auth-file={self.state_dir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.state_dir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.state_dir / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/12",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            # 1.20 keeps only the first of a Node's podCIDRs unless dual stack is enabled.
            "--feature-gates=IPv6DualStack=true",
            *([] if self.watch_cache else ["--watch-cache=false"]),
        ]
        self._api = spawn_in(self.ns, argv, self.state_dir / "kube-apiserver.log")
        self.wait_ready(timeout)
        return self

    def _start_etcd(self) -> None:
        data = self.state_dir / "etcd"
        argv = [
            shutil.which("etcd") or "/usr/bin/etcd",
            "--name", "kube", "--data-dir", str(data),
            "--listen-client-urls", "http://127.0.0.1:2379",
            "--advertise-client-urls", "http://127.0.0.1:2379",
            "--listen-peer-urls", "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "kube=http://127.0.0.1:2380",
            "--heartbeat-interval", "25", "--election-timeout", "250", "--logger", "zap",
        ]  # fmt: skip
        self._etcd = spawn_in(self.ns, argv, self.state_dir / "etcd.log")
        status, _, err = http_request(
            "http://127.0.0.1:2379/health", ns=self.ns, wait=15.0, expect="true"
        )
        if status != 200:
            raise KubeApiError(
                f"etcd for the lab API server in {self.ns} is not healthy: {err}",
                hint=f"see {self.state_dir / 'etcd.log'}",
            )

    def _prepare_files(self) -> None:
        d = self.state_dir
        if not (d / "sa.key").exists():
            run(["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"])
            run(["openssl", "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")])
        (d / "tokens.csv").write_text(
            f"{self.admin_token},admin,admin-uid,system:masters\n"
            f'{self.flannel_token},{FLANNEL_USER},flannel-uid,"system:serviceaccounts,'
            'system:serviceaccounts:kube-flannel"\n'
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until ``/readyz`` is 200; raise with the log's tail if the server exits."""
        deadline = time.monotonic() + timeout
        err = ""
        while time.monotonic() < deadline:
            if self._api is not None and self._api.poll() is not None:
                break
            status, _, err = http_request(
                f"{self.url}/readyz",
                ns=self.ns,
                headers={"Authorization": f"Bearer {self.admin_token}"},
                cafile=self.ca_file if self.ca_file.exists() else None,
                wait=min(2.0, max(0.1, deadline - time.monotonic())),
                expect="ok",
            )
            if status == 200:
                return
            time.sleep(0.2)
        log = (self.state_dir / "kube-apiserver.log").read_text(errors="replace")[-1500:]
        raise KubeApiError(
            f"kube-apiserver in {self.ns} not ready after {timeout}s ({err}):\n{log}",
            hint=f"see {self.state_dir / 'kube-apiserver.log'}",
        )

    def compact_etcd(self) -> int:
        """Compact the API server's etcd at its current revision (older watches get 410)."""
        from pyflannel.lab.netns import run_in

        etcdctl = shutil.which("etcdctl") or "/usr/bin/etcdctl"
        env = {**os.environ, "ETCDCTL_API": "3"}
        ep = "--endpoints=http://127.0.0.1:2379"
        out = run_in(self.ns, [etcdctl, ep, "endpoint", "status", "-w", "json"], env=env)
        rev = int(json.loads(out.stdout)[0]["Status"]["header"]["revision"])
        run_in(self.ns, [etcdctl, ep, "compact", str(rev)], env=env)
        return rev

    def stop_apiserver(self) -> None:
        """Kill the API server only (etcd keeps the state), e.g. for outage tests."""
        _kill(self._api)
        self._api = None

    def stop(self) -> None:
        """Kill the API server and its etcd."""
        self.stop_apiserver()
        _kill(self._etcd)
        self._etcd = None

    # -- talking to it -------------------------------------------------------------------------

    def kubeconfig(self, path: Path, *, admin: bool = False, embed_ca: bool = True) -> Path:
        """Write a kubeconfig for the flannel (or admin) user; returns ``path``."""
        import base64

        cluster: dict[str, Any] = {"server": self.url}
        if embed_ca:
            cluster["certificate-authority-data"] = base64.b64encode(
                self.ca_file.read_bytes()
            ).decode()
        else:
            cluster["certificate-authority"] = str(self.ca_file)
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "lab", "cluster": cluster}],
            "users": [
                {
                    "name": "u",
                    "user": {"token": self.admin_token if admin else self.flannel_token},
                }
            ],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "u"}}],
            "current-context": "lab",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
        return path

    def call(self, fn: Callable[[Any], Awaitable[_T]], *, admin: bool = True) -> _T:
        """Run ``await fn(client)`` with a KubeClient inside the server's namespace."""
        from pyflannel.netlink.nsenter import run_in_netns

        async def body() -> _T:
            from pyflannel.subnet.kube.client import KubeClient
            from pyflannel.subnet.kube.connection import KubeConnection

            token = self.admin_token if admin else self.flannel_token
            conn = KubeConnection(server=self.url, token=token, ca_file=str(self.ca_file))
            client = KubeClient(conn)
            try:
                return await fn(client)
            finally:
                await client.aclose()

        import trio

        def sync() -> _T:
            return trio.run(body)

        return run_in_netns(self.ns, sync)

    def apply_flannel_rbac(self) -> None:
        """flannel's ClusterRole bound to the flannel user (idempotent)."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "flannel"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "flannel"},
            "subjects": [{"kind": "ServiceAccount", "name": "flannel",
                          "namespace": "kube-flannel"}],
        }  # fmt: skip

        async def go(c: Any) -> None:
            for path, obj in (
                ("/apis/rbac.authorization.k8s.io/v1/clusterroles", FLANNEL_CLUSTER_ROLE),
                ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding),
            ):
                with contextlib.suppress(KubeApiError):  # 409: exists already
                    await c.create(path, obj)

        self.call(go)

    def create_node(
        self,
        name: str,
        pod_cidrs: Sequence[str] = (),
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Create a Node with ``spec.podCIDR(s)`` (empty: none assigned yet)."""
        spec: dict[str, Any] = {}
        if pod_cidrs:
            spec = {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)}
        meta: dict[str, Any] = {"name": name}
        if annotations is not None:
            meta["annotations"] = dict(annotations)
        obj = {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec}
        self.call(lambda c: c.create("/api/v1/nodes", obj))

    def delete_node(self, name: str) -> None:
        """Delete a Node."""
        self.call(lambda c: c.request_json("DELETE", f"/api/v1/nodes/{name}"))

    def patch_node(self, name: str, patch: Mapping[str, Any], *, status: bool = False) -> None:
        """Merge-patch a Node (or its status)."""
        path = f"/api/v1/nodes/{name}" + ("/status" if status else "")
        self.call(
            lambda c: c.request_json(
                "PATCH", path, patch, content_type="application/merge-patch+json"
            )
        )

    def get_node_json(self, name: str) -> dict[str, Any]:
        """The Node object as the API returns it."""
        result: dict[str, Any] = self.call(lambda c: c.request_json("GET", f"/api/v1/nodes/{name}"))
        return result


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def pod_cidr_for(index: int, ipv6: bool = False) -> list[str]:
    """The lab's podCIDR(s) of node ``n<index>`` (10.244.<i>.0/24, fd00:244:<i>::/64)."""
    cidrs = [str(ipaddress.IPv4Network(f"10.244.{index}.0/24"))]
    if ipv6:
        cidrs.append(f"fd00:244:{index:x}::/64")
    return cidrs


# -- `pyflannel lab up --kube` -------------------------------------------------------------------

LAB_SERVERS: dict[str, KubeApiServer] = {}  # by lab prefix, for callers in the same process


def lab_pod_cidrs(index: int, network: str | None, network6: str | None) -> list[str]:
    """Node ``n<index>``'s podCIDRs: the index-th /24 of ``network`` and /64 of ``network6``
    (what a controller manager with --allocate-node-cidrs would assign)."""
    cidrs: list[str] = []
    if network:
        cidrs.append(str(list(ipaddress.IPv4Network(network).subnets(new_prefix=24))[index]))
    if network6:
        net6 = ipaddress.IPv6Network(network6)
        cidrs.append(str(ipaddress.IPv6Network((int(net6.network_address) + (index << 64), 64))))
    return cidrs


def lab_kube_up(
    topo: Any, root: Path, net_conf: str, network: str | None, network6: str | None
) -> KubeApiServer:
    """Start the API server in the lab's etcd namespace (on the underlay address), apply
    flannel's RBAC, create one Node per lab node with its podCIDRs, and write the kubeconfig
    (flannel user) and net-conf.json the daemons use."""
    src = locate_apiserver()
    if src is None:
        raise ConfigError(
            "kube-apiserver not found for `lab up --kube`",
            hint=f"put {XZ_NAME} in ../shared/tools/kube/ or set ${APISERVER_ENV} to it",
        )
    srv = KubeApiServer(topo.etcd_ns, str(topo.etcd_ip), root / "kube", unpack_apiserver(src))
    srv.start()
    srv.apply_flannel_rbac()
    for node in topo.nodes:
        cidrs = lab_pod_cidrs(node.index, network, network6)
        srv.create_node(node.name, cidrs, {"lab.pyflannel.dev/prefix": topo.prefix})
    (root / "net-conf.json").write_text(net_conf)
    srv.kubeconfig(root / "kubeconfig")
    LAB_SERVERS[topo.prefix] = srv
    return srv


def lab_daemon_flags(root: Path) -> list[str]:
    """pyflanneld's kube-mode flags in a lab built by :func:`lab_kube_up`."""
    return [
        "--kube-subnet-mgr",
        f"--kubeconfig-file={root / 'kubeconfig'}",
        f"--net-config-path={root / 'net-conf.json'}",
    ]


def lab_daemon_env(node: str) -> dict[str, str]:
    """The daemon's environment on lab node ``node`` (its Node name, as the downward API)."""
    return {**os.environ, "NODE_NAME": node}


def lab_node_rows(root: Path, etcd_ns: str, host: str) -> list[tuple[str, ...]]:
    """NAME, PODCIDRS, PUBLIC IP, BACKEND, VTEP MAC, NetworkUnavailable of every Node (for
    ``lab check``), read with the admin token from a lab up in another process."""
    token = (root / "kube" / "tokens.csv").read_text().split(",", 1)[0]
    status, body, err = http_request(
        f"https://{host}:{API_PORT}/api/v1/nodes",
        ns=etcd_ns,
        headers={"Authorization": f"Bearer {token}"},
        cafile=root / "kube" / "certs" / "apiserver.crt",
        timeout=5.0,
    )
    if status != 200:
        raise KubeApiError(f"cannot list the lab's Nodes: HTTP {status} {err}", hint="lab up again")
    from pyflannel.subnet.kube.annotations import annotation_keys
    from pyflannel.subnet.kube.node import parse_node

    keys = annotation_keys()
    rows: list[tuple[str, ...]] = []
    for item in json.loads(body).get("items", []):
        n = parse_node(item)
        try:
            mac = str(json.loads(n.annotation(keys.backend_data) or "null")["VtepMAC"])
        except (ValueError, KeyError, TypeError):
            mac = "-"
        cond = n.condition("NetworkUnavailable")
        rows.append(
            (
                n.name,
                ",".join(n.pod_cidrs or (n.pod_cidr,)) or "-",
                n.annotation(keys.public_ip) or "-",
                n.annotation(keys.backend_type) or "-",
                mac,
                f"{cond.status} ({cond.reason})" if cond else "-",
            )
        )
    return rows
