"""Benchmark: the installed ``flannel`` plugin (→ bridge) vs the bare Debian ``bridge``.

N iterations of ADD + DEL each, interleaved, through our plugin (installed with
:func:`cni_plugin.install.install` into a temporary bin directory) and through
``/usr/lib/cni/bridge`` given the identical delegate config. Both run in a "node" network
namespace via ``nsenter --net`` (the wrapper costs the same for both and cancels out); the pod
is a second namespace. Everything lives in namespaces named with a random ``pfc`` prefix and in
a temporary directory, removed in ``finally``.

Reported: median wall time per command, our added time (ours − bridge), and the ratio
added / start-up time of the same interpreter (``python -IS -c pass``, measured in the same
run). Target: ratio ≤ 1.2, i.e. the plugin adds little beyond the interpreter's own start-up.
Results are printed and appended to bench/RESULTS.md.

    sudo .venv/bin/python bench/cni_bench.py [-n 20]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cni_plugin.install import install
from cni_plugin.netconf import build_delegate, parse_flannel_conf, parse_subnet_env

TARGET_RATIO = 1.2
RESULTS = Path(__file__).with_name("RESULTS.md")
SYSTEM_CNI = "/usr/lib/cni"
SUBNET_ENV = (
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[float, float]:
    """(wall, CPU) seconds of one run; CPU = user+sys of everything it started."""
    cpu = _cpu()
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, input=stdin, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{argv} {env.get('CNI_COMMAND')} failed ({done.returncode}):"
            f" {done.stdout.decode()} {done.stderr.decode()}"
        )
    return elapsed, _cpu() - cpu


def _git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass
class Result:
    """Samples (wall and CPU seconds) per measured command, and the interpreter used."""

    python: str
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, sample: tuple[float, float]) -> None:
        """Record one (wall, CPU) sample of ``key``."""
        self.wall.setdefault(key, []).append(sample[0])
        self.cpu.setdefault(key, []).append(sample[1])

    def median(self, key: str, cpu: bool = False) -> float:
        """Median in seconds."""
        return statistics.median((self.cpu if cpu else self.wall)[key])

    def round_ratio(self, command: str, cpu: bool = False) -> float:
        """Median over rounds of (ours − bridge) / start-up, all three from the same round.

        Other jobs share the CPUs; pairing samples taken seconds apart cancels their drift,
        which a ratio of medians taken over the whole run does not.
        """
        table = self.cpu if cpu else self.wall
        ours, bridge, start = table[f"ours_{command}"], table[f"bridge_{command}"], table["startup"]
        rounds = zip(ours, bridge, start, strict=True)
        return statistics.median((o - b) / s for o, b, s in rounds)


def run(n: int) -> Result:
    """Run the benchmark in throw-away namespaces; return all samples."""
    prefix = f"pfc{secrets.token_hex(2)}"
    node, pod = f"{prefix}-node", f"{prefix}-pod"
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    try:
        _ip("netns", "add", node)
        _ip("netns", "add", pod)
        _ip("-n", node, "link", "set", "lo", "up")
        bindir = tmp / "bin"
        plugin = install(bindir)
        python = plugin.read_text().split("\n", 1)[0][2:].split()[0]
        (tmp / "subnet.env").write_text(SUBNET_ENV)
        conf = {
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": str(tmp / "subnet.env"),
            "dataDir": str(tmp / "flannel"),
            "ipam": {"dataDir": str(tmp / "ipam")},
            "delegate": {"hairpinMode": True, "isDefaultGateway": True},
        }
        ours_stdin = json.dumps(conf).encode()
        # The bare bridge gets exactly what our plugin hands it.
        delegate = build_delegate(parse_flannel_conf(conf), parse_subnet_env(SUBNET_ENV))
        bridge_stdin = json.dumps(delegate, sort_keys=True, separators=(",", ":")).encode()
        nsenter = ["nsenter", f"--net=/run/netns/{node}"]
        base_env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_NETNS": f"/run/netns/{pod}",
            "CNI_IFNAME": "eth0",
        }
        plugins = {
            "ours": ([*nsenter, str(plugin)], f"{bindir}:{SYSTEM_CNI}", ours_stdin),
            "bridge": ([*nsenter, f"{SYSTEM_CNI}/bridge"], SYSTEM_CNI, bridge_stdin),
        }
        result = Result(python)
        names = list(plugins)
        for i in range(-2, n):  # two warm-up rounds (page cache, creation of cni0)
            for name in names if i % 2 == 0 else names[::-1]:
                argv, cni_path, stdin = plugins[name]
                env = {**base_env, "CNI_CONTAINERID": f"{prefix}-{name}-{i + 2}"}
                env["CNI_PATH"] = cni_path
                add = _timed(argv, {**env, "CNI_COMMAND": "ADD"}, stdin)
                delete = _timed(argv, {**env, "CNI_COMMAND": "DEL"}, stdin)
                if i >= 0:
                    result.add(f"{name}_add", add)
                    result.add(f"{name}_del", delete)
            (wall1, cpu1), (wall2, cpu2) = (
                _timed([python, "-IS", "-c", "pass"], dict(base_env), b"") for _ in "ab"
            )
            if i >= 0:
                result.add("startup", ((wall1 + wall2) / 2, (cpu1 + cpu2) / 2))
        if any((tmp / "flannel").iterdir()):
            raise RuntimeError("our DEL left saved configs behind")
        return result
    finally:
        for ns in (pod, node):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def report(result: Result, n: int) -> tuple[str, bool]:
    """The markdown section for RESULTS.md (also printed) and whether the target was met."""
    version = subprocess.run(
        [result.python, "-IS", "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    rows = []
    ratios = {}
    for cpu in (False, True):
        startup = result.median("startup", cpu)
        for command in ("add", "del"):
            bridge = result.median(f"bridge_{command}", cpu)
            ours = result.median(f"ours_{command}", cpu)
            ratio = result.round_ratio(command, cpu)
            ratios[(cpu, command)] = ratio
            rows.append(
                f"| {command.upper()} | {'CPU' if cpu else 'wall'} | {bridge * 1e3:.1f}"
                f" | {ours * 1e3:.1f} | {(ours - bridge) * 1e3:.1f} | {startup * 1e3:.1f}"
                f" | {(ours - bridge) / startup:.2f} | {ratio:.2f} |"
            )
    met = ratios[(False, "add")] <= TARGET_RATIO and ratios[(False, "del")] <= TARGET_RATIO
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"## CNI plugin: flannel (pyflannel) vs bare bridge — {datetime.date.today()}",
        "",
        f"kernel {platform.release()}, {os.cpu_count()} CPUs (load {load}), python {version}"
        f" (`{result.python} -IS`), git {_git_rev()}, N={n} ADD+DEL each, medians,"
        " plugins run via `nsenter --net`; CPU = user+sys of all processes of the command",
        "",
        "| cmd | time | bridge (ms) | flannel→bridge (ms) | added (ms) | start-up (ms)"
        " | added / start-up | same, per round |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "start-up = `python -IS -c pass`; added = ours − bridge (medians); the last column is"
        " the median over rounds of the ratio within each round (robust to load drift)."
        f" Target, wall time per round, added / start-up ≤ {TARGET_RATIO}:"
        f" **{'met' if met else 'missed'}**.",
        "",
    ]
    return "\n".join(lines), met


def main() -> int:
    """Parse arguments, run, print and append the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=20, help="iterations of ADD+DEL per plugin")
    parser.add_argument("--no-save", action="store_true", help="do not append to RESULTS.md")
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("cni_bench needs root (network namespaces)", file=sys.stderr)
        return 2
    text, _ = report(run(options.n), options.n)
    print(text)
    if not options.no_save:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
