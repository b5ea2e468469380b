"""The daemon's process exit (pyflannel/__main__.py ``run``): once main returns, the process
ends at once with main's exit code and every log line written, whatever library threads still
run (grpc's have hung interpreter teardown)."""

from __future__ import annotations

import subprocess
import sys
import time

# A non-daemon thread that never ends: interpreter teardown would wait for it forever.
# Output is left unflushed (a pipe is block-buffered) so a skipped flush would lose it.
_PROGRAM = """
import sys, threading
import pyflannel.__main__ as entry

threading.Thread(target=threading.Event().wait, name="stuck-library-thread").start()

def fake_main(argv=None):
    print('{"event": "daemon.exiting"}', file=sys.stderr)
    print("stdout line")
    return int(argv[0])

entry.main = fake_main
entry.run([sys.argv[1]])
"""


def _run(code: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, code], capture_output=True, text=True, timeout=30
    )
    return out, time.monotonic() - started


def test_exit_does_not_wait_for_library_threads_and_keeps_the_logs() -> None:
    out, took = _run("0")
    assert out.returncode == 0, out.stderr
    assert took < 10, f"exit took {took:.1f}s"  # interpreter start + imports; the hang was forever
    assert '"event": "daemon.exiting"' in out.stderr
    assert out.stdout == "stdout line\n"


def test_exit_code_is_mains() -> None:
    out, _ = _run("3")
    assert out.returncode == 3, out.stderr
    assert "daemon.exiting" in out.stderr
