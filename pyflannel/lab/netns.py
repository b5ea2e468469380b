"""Network namespaces through iproute2: create, delete, run in, ping, probe HTTP.

Standard library only (plus the ``ip`` binary), so the tests, bench/ and the ``pyflannel lab``
command share it without pulling pyroute2 in. Nothing here touches the root namespace's links,
addresses or routes: every ``ip`` configuration command runs with ``-n <namespace>``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

from pyflannel.errors import ConfigError, NetlinkError

__all__ = [
    "NETNS_DIR",
    "CommandFailed",
    "RunOptions",
    "add_netns",
    "delete_netns",
    "delete_prefixed",
    "exec_argv",
    "http_request",
    "ip_batch",
    "kill_netns_processes",
    "list_netns",
    "netns_exists",
    "netns_pids",
    "ping",
    "prefixed_netns",
    "run",
    "run_in",
    "spawn_in",
    "sysctl_in",
    "validate_prefix",
]

NETNS_DIR = Path("/run/netns")
IP = shutil.which("ip") or "/usr/sbin/ip"
PING = shutil.which("ping") or "/usr/bin/ping"

# A prefix is glued to "-<role>" to form namespace names; keeping it to a plain word means a
# cleanup by prefix can never match another run's namespaces by accident ("pf1" vs "pf12-...").
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")


class CommandFailed(subprocess.CalledProcessError):
    """A command run by the lab exited non-zero; ``str()`` includes the namespace and stderr."""

    def __init__(
        self,
        returncode: int,
        cmd: Sequence[str],
        output: str | None = None,
        stderr: str | None = None,
        *,
        ns: str | None = None,
    ) -> None:
        super().__init__(returncode, list(cmd), output, stderr)
        self.ns = ns

    def __str__(self) -> str:
        where = f" in namespace {self.ns}" if self.ns else ""
        tail = (self.stderr or self.output or "").strip()[-800:]
        return (
            f"command {' '.join(map(str, self.cmd))!r}{where} exited {self.returncode}: {tail}"
            " (check the command's arguments and that the namespace exists)"
        )


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe namespace-name prefix, else raise ConfigError."""
    if not _PREFIX_RE.match(prefix):
        raise ConfigError(
            f"lab prefix {prefix!r} is not a plain word of 1-32 letters, digits or '_'",
            hint="use something like 'pf3a9c'; the prefix names every namespace of one lab",
        )
    return prefix


def list_netns() -> list[str]:
    """Names of all named network namespaces (those under /run/netns)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    """True if the named namespace exists."""
    return (NETNS_DIR / name).exists()


def prefixed_netns(prefix: str) -> list[str]:
    """Namespaces that belong to the lab ``prefix``: ``prefix`` itself or ``prefix-*``."""
    validate_prefix(prefix)
    return [n for n in list_netns() if n == prefix or n.startswith(prefix + "-")]


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside namespace ``ns`` (``ip netns exec``).

    ``ip netns exec`` also remounts /sys in a private mount namespace, so /sys/class/net shows
    the namespace's own interfaces, as it would on a real host.
    """
    return [IP, "netns", "exec", ns, *map(str, argv)]


class RunOptions(TypedDict, total=False):
    """:func:`run`'s options (defaults there), for the helpers that pass them on."""

    check: bool
    timeout: float | None
    input: str | None
    env: Mapping[str, str] | None


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 60.0,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    ns: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as given, capture text output; raise CommandFailed if ``check`` and rc != 0.

    ``ns`` only labels the error message; use :func:`run_in` to actually enter a namespace.
    """
    proc = subprocess.run(
        list(map(str, argv)),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(proc.returncode, proc.args, proc.stdout, proc.stderr, ns=ns)
    return proc


def run_in(
    ns: str, argv: Sequence[str], **options: Unpack[RunOptions]
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``ns`` and return the finished process (text output)."""
    return run(exec_argv(ns, argv), ns=ns, **options)


def spawn_in(
    ns: str | None,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``ns`` (root namespace if None), stdout+stderr appended to ``log_path``.

    The child leads its own session so it can be killed with its process group.
    ``ip netns exec`` execs the command, so the Popen pid is the command's own pid.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full = exec_argv(ns, argv) if ns else list(map(str, argv))
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )


def ip_batch(lines: Sequence[str], ns: str | None = None, *, force: bool = False) -> None:
    """Run ``ip [-n ns] -batch -`` over ``lines``; raise NetlinkError naming the failing line.

    With ``ns=None`` only namespace-management lines (``netns add|del``) are accepted, so the
    root namespace's own network configuration can never be changed from here.
    """
    if not lines:
        return
    if ns is None and any(not ln.startswith("netns ") for ln in lines):
        raise ConfigError(
            "refusing to run ip commands in the root namespace",
            hint="pass ns=<namespace>; the lab only configures namespaces it created",
        )
    argv = [IP, *(["-n", ns] if ns else []), *(["-force"] if force else []), "-batch", "-"]
    proc = subprocess.run(
        argv, input="\n".join(lines) + "\n", capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 and not force:
        failed = re.search(r"Command failed -:(\d+)", proc.stderr)
        line = lines[int(failed.group(1)) - 1] if failed else "?"
        where = f"namespace {ns}" if ns else "netns management"
        raise NetlinkError(
            f"ip -batch in {where} failed at {line!r}: {proc.stderr.strip()}",
            hint="an earlier run may have left state behind; clean up with cleanup_prefix(prefix)",
        )


def add_netns(names: Iterable[str]) -> list[str]:
    """Create the named namespaces that do not exist yet (one ``ip -batch``); return those made."""
    todo = [n for n in dict.fromkeys(names) if not netns_exists(n)]
    ip_batch([f"netns add {n}" for n in todo])
    return todo


def _ns_inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _pids_by_ns(names: Sequence[str]) -> dict[str, list[int]]:
    """One pass over /proc: which live processes sit in each named namespace."""
    wanted: dict[tuple[int, int], str] = {}
    for n in names:
        ino = _ns_inode(NETNS_DIR / n)
        if ino is not None:
            wanted[ino] = n
    found: dict[str, list[int]] = {n: [] for n in names}
    if not wanted:
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        # Zombies have no namespace links any more, so they drop out here by themselves.
        ino = _ns_inode(Path("/proc", entry, "ns", "net"))
        if ino is not None and ino in wanted:
            found[wanted[ino]].append(int(entry))
    return found


def netns_pids(name: str) -> list[int]:
    """Pids of the processes whose network namespace is ``name`` (like ``ip netns pids``)."""
    return _pids_by_ns([name])[name]


def kill_netns_processes(names: Sequence[str], *, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process inside the namespaces ``names``; wait until none is left."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for ps in _pids_by_ns(names).values() for p in ps]
        if not pids:
            return killed
        if time.monotonic() > deadline:
            raise NetlinkError(
                f"processes {pids} in namespaces {list(names)} survived SIGKILL for {timeout}s",
                hint="they may be stuck in the kernel (D state); check `ps -o stat,cmd -p PID`",
            )
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.02)


def delete_netns(names: Iterable[str]) -> list[str]:
    """Kill the processes in the namespaces, then delete the namespaces; return those deleted.

    Killing first matters: a namespace with a live process outlives ``ip netns del`` and keeps
    its veths (and the switch's ports) up.
    """
    present = [n for n in dict.fromkeys(names) if netns_exists(n)]
    if not present:
        return []
    kill_netns_processes(present)
    ip_batch([f"netns del {n}" for n in present], force=True)
    left = [n for n in present if netns_exists(n)]
    if left:
        raise NetlinkError(
            f"could not delete namespaces {left}",
            hint="see `ip netns del NAME` for the reason (a busy bind mount, usually)",
        )
    return present


def delete_prefixed(prefix: str) -> list[str]:
    """Delete every namespace named ``prefix`` or ``prefix-*`` (and its processes)."""
    return delete_netns(prefixed_netns(prefix))


def sysctl_in(ns: str, settings: Mapping[str, str | int]) -> None:
    """Set sysctls inside ``ns`` (net.* sysctls are per namespace)."""
    if settings:
        run_in(ns, ["sysctl", "-qw", *(f"{k}={v}" for k, v in settings.items())])


_RTT_RE = re.compile(r"= [\d.]+/([\d.]+)/")


def ping(
    src_ns: str, dst_ip: object, *, count: int = 1, timeout: float = 2.0
) -> tuple[bool, float | None]:
    """Ping ``dst_ip`` from inside ``src_ns``: (every probe answered, average rtt in ms or None)."""
    deadline = max(1, int(timeout + 0.999))
    argv = [PING, "-n", "-q", "-c", str(count), "-i", "0.05", "-w", str(deadline), str(dst_ip)]
    proc = run_in(src_ns, argv, check=False, timeout=deadline + 5)
    m = _RTT_RE.search(proc.stdout)
    ok = proc.returncode == 0 and f"{count} received" in proc.stdout
    return ok, (float(m.group(1)) if m else None)


# One stdlib-only probe, run in-process for the root namespace and by `python -I -S` inside others.
_HTTP_PROBE_SRC = r"""
import base64, json, ssl, sys, time, urllib.error, urllib.request

def probe(a):
    ctx = None
    if a["url"].startswith("https"):
        ctx = ssl.create_default_context(cafile=a["cafile"])
        if a["certfile"]:
            ctx.load_cert_chain(a["certfile"], a["keyfile"])
    deadline = time.monotonic() + a["wait"]
    while True:
        status, body, err = 0, b"", ""
        try:
            data = None if a["data"] is None else base64.b64decode(a["data"])
            req = urllib.request.Request(
                a["url"], method=a["method"], headers=a["headers"], data=data)
            with urllib.request.urlopen(req, timeout=a["timeout"], context=ctx) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body, err = e.code, e.read(), str(e)
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
        good = status == 200 and (a["expect"] is None or a["expect"].encode() in body)
        if good or time.monotonic() >= deadline:
            return {"status": status, "body": base64.b64encode(body).decode(), "error": err}
        time.sleep(0.05)
"""
_HTTP_CHILD_SRC = _HTTP_PROBE_SRC + "\nprint(json.dumps(probe(json.loads(sys.argv[1]))))\n"


def http_request(
    url: str,
    *,
    ns: str | None = None,
    method: str = "GET",
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 2.0,
    cafile: Path | str | None = None,
    certfile: Path | str | None = None,
    keyfile: Path | str | None = None,
    wait: float = 0.0,
    expect: str | None = None,
) -> tuple[int, bytes, str]:
    """One HTTP(S) request, from inside ``ns`` when given: (status or 0, body, error text).

    With ``wait > 0`` it retries for up to ``wait`` seconds until the answer is 200 and contains
    ``expect`` -- in one child process, so polling a namespaced server costs one fork, not many.
    """
    args = {
        "url": url,
        "method": method,
        "data": None if data is None else base64.b64encode(data).decode(),
        "headers": dict(headers or {}),
        "timeout": timeout,
        "cafile": None if cafile is None else str(cafile),
        "certfile": None if certfile is None else str(certfile),
        "keyfile": None if keyfile is None else str(keyfile),
        "wait": wait,
        "expect": expect,
    }
    if ns is None:
        scope: dict[str, Any] = {}
        # exec of our own constant source: the same probe runs as a child inside namespaces.
        exec(_HTTP_PROBE_SRC, scope)
        out = scope["probe"](args)
    else:
        argv = exec_argv(ns, [sys.executable, "-I", "-S", "-c", _HTTP_CHILD_SRC, json.dumps(args)])
        proc = run(argv, check=False, timeout=wait + timeout + 10, ns=ns)
        if proc.returncode != 0:
            return 0, b"", f"probe in {ns} failed: {proc.stderr.strip()[-400:]}"
        out = json.loads(proc.stdout)
    return int(out["status"]), base64.b64decode(out["body"]), str(out["error"])
