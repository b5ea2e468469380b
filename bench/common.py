"""Shared pieces of the bench suite: machine facts, the results record, ratios, a peer lab.

Every benchmark script here runs stand-alone (``.venv/bin/python bench/bench_x.py``) and, with
``--json FILE``, also hands its rows to :mod:`bench.run_all`, which prints one table and appends
it to bench/RESULTS.md. A row always carries the measured figure, the limit it is compared to
(measured in the same run, or context such as flanneld's published numbers), the ratio, the
target and whether it was met.

:class:`PeerLab` is the namespaced lab (pyflannel.lab.topology) with an etcd in its etcd
namespace, a stdlib etcd v3 client that talks to it from this process (:class:`EtcdHttp`, its
socket opened inside the etcd namespace, so nothing listens or connects in the root namespace),
and helpers to write fake peer leases in flanneld's format and to run the real daemon on a node.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import ipaddress
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pyflannel.lab.netns import delete_prefixed, netns_exists, prefixed_netns  # noqa: E402
from pyflannel.lab.topology import LabNode, Topology  # noqa: E402
from pyflannel.lease import LeaseAttrs, encode_attrs  # noqa: E402
from pyflannel.netlink.nsenter import in_netns  # noqa: E402

__all__ = [
    "ETCD_PREFIX",
    "PYTHON",
    "RESULTS",
    "EtcdHttp",
    "PeerLab",
    "PeerSpec",
    "PySpy",
    "Row",
    "append_results",
    "cpu_seconds",
    "fmt_ratio",
    "git_rev",
    "machine_line",
    "memory_kib",
    "new_prefix",
    "peer_specs",
    "percentile",
    "read_json_log",
    "render_rows",
    "rows_from_json",
    "rows_to_json",
    "status_text",
    "wait_until",
]

PYTHON = sys.executable
RESULTS = REPO / "bench" / "RESULTS.md"
ETCD_PREFIX = "/coreos.com/network"
HEALTHZ_PORT = 10256
# Fake peers advertise public IPs from .100 up, so lab nodes (.1 .. .99) never see their own.
PEER_IP_FIRST = 100
PEER_IP_COUNT = 150


# -- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table. ``measured`` and ``limit`` are display text (absolute
    figures); ``ratio`` and ``status`` carry the verdict."""

    benchmark: str
    measured: str
    limit: str
    ratio: str
    target: str
    status: str  # "met", "MISSED", or "n/a" (context only)
    note: str = ""


def status_text(ok: bool | None) -> str:
    """The table's verdict word."""
    if ok is None:
        return "n/a"
    return "met" if ok else "MISSED"


def fmt_ratio(value: float) -> str:
    """A ratio as the tables print it."""
    if math.isinf(value) or math.isnan(value):
        return "—"
    return f"{value:.2f}×"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (the value below which ``pct`` % of the samples lie)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def rows_to_json(path: Path | str, rows: Sequence[Row], detail: str = "") -> None:
    """Write a script's rows and its detail section (markdown) for run_all."""
    Path(path).write_text(json.dumps({"rows": [asdict(r) for r in rows], "detail": detail}))


def rows_from_json(path: Path | str) -> tuple[list[Row], str]:
    """Read what :func:`rows_to_json` wrote."""
    data = json.loads(Path(path).read_text())
    return [Row(**r) for r in data["rows"]], str(data.get("detail", ""))


def render_rows(rows: Sequence[Row]) -> str:
    """The markdown table of ``rows``."""
    lines = [
        "| benchmark | measured | limit (same run) | ratio | target | result |",
        "|---|---|---|---:|---|---|",
    ]
    for r in rows:
        result = r.status if not r.note else f"{r.status} ({r.note})"
        lines.append(
            f"| {r.benchmark} | {r.measured} | {r.limit} | {r.ratio} | {r.target} | {result} |"
        )
    return "\n".join(lines) + "\n"


def git_rev() -> str:
    """Short revision of the work tree, ``+dirty`` when files differ from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}+dirty" if dirty else rev


def machine_line() -> str:
    """Date, kernel, CPU count, Python, git revision and load: the header of a run."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now}, kernel {platform.release()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, git {git_rev()}, load average at start {load}"
    )


def append_results(text: str) -> None:
    """Append a section to bench/RESULTS.md."""
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write("\n" + text.rstrip() + "\n")


# -- small helpers ---------------------------------------------------------------------------


def new_prefix(tag: str = "") -> str:
    """A random lab prefix ("pb" + 4 hex + ``tag``): concurrent runs never share names."""
    return f"pb{secrets.token_hex(2)}{tag}"


def wait_until(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    """Call ``probe`` until it returns something truthy; return it. RuntimeError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not true within {timeout}s (last: {value!r})")
        time.sleep(interval)


def cpu_seconds(pid: int, children: bool = True) -> float:
    """user + system CPU seconds of process ``pid`` (its threads included), plus with
    ``children`` those of its finished children (iptables-save, ...)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    own = int(fields[11]) + int(fields[12])
    kids = int(fields[13]) + int(fields[14]) if children else 0
    return (own + kids) / ticks


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (peak RSS) / RssAnon ... of ``pid`` in KiB, from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def read_json_log(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a daemon log (``--log-format=json``); other lines are skipped."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def log_time(entry: dict[str, Any]) -> float:
    """UNIX time of a JSON log entry (structlog's ISO UTC timestamp)."""
    stamp = str(entry["timestamp"]).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp).timestamp()


# -- etcd over its v3 JSON gateway, from inside a namespace ------------------------------------


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


class EtcdHttp:
    """A minimal etcd v3 client (the JSON gateway etcd serves on its client URL).

    The TCP connection is opened inside network namespace ``ns`` and then used from this
    thread as any socket; it is re-opened (inside ``ns`` again) if etcd closes it.
    """

    def __init__(self, ns: str, host: str, port: int = 2379) -> None:
        self.ns = ns
        self.host = host
        self.port = port
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            with in_netns(self.ns):
                conn.connect()
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>``; the decoded answer. RuntimeError on an error."""
        payload = json.dumps(body).encode()
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("POST", f"/v3/{path}", payload, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            if resp.status != 200:
                raise RuntimeError(f"etcd /v3/{path} answered {resp.status}: {data[:300]!r}")
            answer: dict[str, Any] = json.loads(data)
            return answer
        raise AssertionError("unreachable")

    def put(self, key: str, value: str, lease: int = 0) -> int:
        """Put one key; the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("kv/put", body)["header"]["revision"])

    def put_many(self, items: Sequence[tuple[str, str]], lease: int = 0, chunk: int = 128) -> None:
        """Put many keys, ``chunk`` per transaction (etcd's default --max-txn-ops is 128)."""
        for start in range(0, len(items), chunk):
            ops = []
            for key, value in items[start : start + chunk]:
                put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
                if lease:
                    put["lease"] = str(lease)
                ops.append({"requestPut": put})
            self.call("kv/txn", {"success": ops})

    def delete(self, key: str) -> int:
        """Delete one key; the new revision."""
        return int(self.call("kv/deleterange", {"key": _b64(key)})["header"]["revision"])

    def grant(self, ttl: int) -> int:
        """Grant an etcd lease of ``ttl`` seconds; its id."""
        return int(self.call("lease/grant", {"TTL": str(ttl)})["ID"])

    def count(self, prefix: str) -> int:
        """Number of keys under ``prefix``."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = {"key": _b64(prefix), "range_end": _b64(end), "count_only": True}
        return int(self.call("kv/range", body).get("count", 0))

    def values(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` with its value."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        kvs = self.call("kv/range", {"key": _b64(prefix), "range_end": _b64(end)}).get("kvs", [])
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in kvs
        }


# -- fake peers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerSpec:
    """One fake peer lease: its /24 in 10.0.0.0/8, VTEP MAC and underlay public IP."""

    subnet: ipaddress.IPv4Network
    mac: str
    public_ip: ipaddress.IPv4Address

    @property
    def key_suffix(self) -> str:
        return f"{self.subnet.network_address}-{self.subnet.prefixlen}"

    def value(self, backend: str = "vxlan") -> str:
        """The lease value exactly as flanneld writes it."""
        data = {"VNI": 1, "VtepMAC": self.mac} if backend == "vxlan" else None
        attrs = LeaseAttrs(public_ip=self.public_ip, backend_type=backend, backend_data=data)
        return encode_attrs(attrs)


def peer_specs(n: int, underlay: ipaddress.IPv4Network, first: int = 0) -> list[PeerSpec]:
    """``n`` distinct peers (numbered from ``first``): subnets 10.0.1.0/24, 10.0.2.0/24, …,
    locally administered unicast MACs, public IPs .100 … .249 of ``underlay`` (repeating)."""
    base = int(underlay.network_address)
    out = []
    for i in range(first, first + n):
        subnet = ipaddress.IPv4Network(((10 << 24) | ((i + 1) << 8), 24))
        mac = f"0a:58:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01"
        public = ipaddress.IPv4Address(base + PEER_IP_FIRST + i % PEER_IP_COUNT)
        out.append(PeerSpec(subnet, mac, public))
    return out


# -- the lab -----------------------------------------------------------------------------------


class PeerLab:
    """A lab (switch, etcd host, ``nodes`` node hosts) with etcd running, and daemon helpers.

    etcd keeps its data on tmpfs (/dev/shm): the benchmarks measure pyflannel, not this box's
    disk, whose fsync latency other jobs on the machine make erratic. Everything is removed on
    exit, also when the block raises.
    """

    def __init__(self, prefix: str, nodes: int = 1, *, etcd_args: Sequence[str] = ()) -> None:
        self.prefix = prefix
        self.state_root = Path("/dev/shm/pyflannel-bench") / prefix
        self.topo = Topology(prefix, nodes, state_root=self.state_root)
        self.etcd_args = tuple(etcd_args)
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        self._etcd: EtcdHttp | None = None

    # -- life cycle
    def __enter__(self) -> PeerLab:
        try:
            self.topo.up()
            self.topo.start_etcd(extra_args=self.etcd_args)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill daemons and etcd, delete every namespace of the prefix and the state dir."""
        if self._etcd is not None:
            self._etcd.close()
        self.topo.down()
        delete_prefixed(self.prefix)
        shutil.rmtree(self.state_root, ignore_errors=True)

    @property
    def etcd(self) -> EtcdHttp:
        """The etcd client (connection opened inside the etcd namespace)."""
        if self._etcd is None:
            assert self.topo.etcd_ns is not None and self.topo.etcd_ip is not None
            self._etcd = EtcdHttp(self.topo.etcd_ns, str(self.topo.etcd_ip))
        return self._etcd

    @property
    def nodes(self) -> tuple[LabNode, ...]:
        return self.topo.nodes

    # -- etcd content
    def set_config(
        self,
        network: str = "10.0.0.0/8",
        backend: str = "vxlan",
        subnet_len: int = 24,
        etcd_prefix: str = ETCD_PREFIX,
    ) -> None:
        """Write the network config (v3 key ``<prefix>/config``)."""
        cfg = {"Network": network, "SubnetLen": subnet_len, "Backend": {"Type": backend}}
        self.etcd.put(f"{etcd_prefix}/config", json.dumps(cfg))

    def write_peers(
        self,
        peers: Sequence[PeerSpec],
        *,
        backend: str = "vxlan",
        ttl: int = 3600,
        etcd_prefix: str = ETCD_PREFIX,
    ) -> None:
        """Write peer leases as flanneld does: key per subnet, attached to an etcd lease."""
        lease = self.etcd.grant(ttl)
        items = [(f"{etcd_prefix}/subnets/{p.key_suffix}", p.value(backend)) for p in peers]
        self.etcd.put_many(items, lease=lease)

    # -- daemons
    def daemon_argv(self, *flags: str) -> list[str]:
        """``python -m pyflannel`` as a unit file runs it (``--ip-masq``, health port), JSON
        logs, plus ``flags``."""
        return [
            PYTHON,
            "-m",
            "pyflannel",
            f"--etcd-endpoints={self.topo.etcd_client_url}",
            "--log-format=json",
            f"--healthz-port={HEALTHZ_PORT}",
            "--healthz-ip=127.0.0.1",
            "--ip-masq",
            *flags,
        ]

    def log_path(self, node: LabNode) -> Path:
        return node.log_dir / "pyflanneld.log"

    def start_daemon(
        self, node: LabNode, *flags: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start the daemon on ``node`` (the Popen pid is the python process itself)."""
        full_env = {**os.environ, **(env or {})}
        proc = self.topo.spawn_in_node(
            node, self.daemon_argv(*flags), self.log_path(node), env=full_env
        )
        self.daemons[node.name] = proc
        return proc

    def stop_daemon(self, node: LabNode, timeout: float = 15.0) -> None:
        """SIGTERM the node's daemon and wait for it."""
        proc = self.daemons.pop(node.name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def log_event(self, node: LabNode, event: str) -> dict[str, Any] | None:
        """The first JSON log entry of the node's daemon whose event is ``event``."""
        for entry in read_json_log(self.log_path(node)):
            if entry.get("event") == event:
                return entry
        return None

    def wait_log_event(
        self, node: LabNode, event: str, timeout: float, interval: float = 0.01
    ) -> dict[str, Any]:
        """Wait for ``event`` in the node's log; fail early if the daemon died."""
        path = self.log_path(node)
        size = -1
        deadline = time.monotonic() + timeout
        proc = self.daemons.get(node.name)
        while True:
            # Re-read only when the file grew: a 10k-peer log is re-parsed a handful of times.
            now_size = path.stat().st_size if path.exists() else 0
            if now_size != size:
                size = now_size
                found = self.log_event(node, event)
                if found is not None:
                    return found
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"daemon on {node.name} exited {proc.returncode} before {event!r}:\n"
                    + self.log_tail(node)
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no {event!r} from the daemon on {node.name} within {timeout}s:\n"
                    + self.log_tail(node)
                )
            time.sleep(interval)

    def log_tail(self, node: LabNode, chars: int = 2000) -> str:
        path = self.log_path(node)
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    # -- kernel state
    def counts(self, node: LabNode, dev: str = "flannel.1") -> tuple[int, int, int]:
        """(routes, permanent neighbours, FDB ``self`` entries with a dst) on ``dev``."""

        def lines(argv: list[str], pattern: str | None = None) -> int:
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            return sum(
                1
                for line in out.splitlines()
                if line.strip() and (pattern is None or re.search(pattern, line))
            )

        ns = node.ns
        return (
            lines(["ip", "-n", ns, "route", "show", "dev", dev]),
            lines(["ip", "-n", ns, "neigh", "show", "dev", dev, "nud", "permanent"]),
            lines(["bridge", "-n", ns, "fdb", "show", "dev", dev], r" dst "),
        )


@contextlib.contextmanager
def leftover_guard(prefixes: Sequence[str]) -> Iterator[None]:
    """Remove any namespace of ``prefixes`` when the block ends, however it ends."""
    try:
        yield
    finally:
        for p in prefixes:
            if prefixed_netns(p) or netns_exists(p):
                delete_prefixed(p)


# -- profiling -----------------------------------------------------------------------------------


class PySpy:
    """``py-spy record`` of a running process for the duration of a ``with`` block.

    Writes collapsed stacks (``--format raw``) to ``out``; :meth:`top` summarises them. Only
    used when a benchmark is given ``--py-spy PATH`` (``pip install py-spy`` into any prefix).
    """

    def __init__(self, py_spy: str, pid: int, out: Path, rate: int = 500) -> None:
        self.argv = [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                     "--threads", "-o", str(out)]  # fmt: skip
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PySpy:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)  # let it attach
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def top(self, n: int = 25) -> str:
        """The hottest functions: self samples and inclusive samples, as text."""
        if not self.out.exists():
            return "(no profile written)"
        own: dict[str, int] = {}
        incl: dict[str, int] = {}
        total = 0
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            c = int(count)
            total += c
            frames = stack.split(";")
            own[frames[-1]] = own.get(frames[-1], 0) + c
            for f in set(frames):
                incl[f] = incl.get(f, 0) + c
        lines = [f"{total} samples; self% / incl%  function (file:line)"]
        for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
            lines.append(f"{100 * c / total:5.1f} / {100 * incl[f] / total:5.1f}  {f}")
        lines.append("-- inclusive --")
        for f, c in sorted(incl.items(), key=lambda kv: -kv[1])[:n]:
            lines.append(f"{100 * own.get(f, 0) / total:5.1f} / {100 * c / total:5.1f}  {f}")
        return "\n".join(lines)
