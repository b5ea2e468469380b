"""``pyflanneld`` / ``python -m pyflannel``: the node agent's entry point.

Only the flag parser (stdlib) is imported before the flags are known, so ``--help`` and
``--version`` answer at interpreter speed; the daemon's dependencies load after that.
"""

from __future__ import annotations

import contextlib
import os
import posix
import sys
from typing import NoReturn

__all__ = ["main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Parse flanneld's flags, run the daemon, and return the process exit code."""
    from pyflannel import __version__
    from pyflannel.cli.flags import parse_flags, usage_text
    from pyflannel.errors import FlannelError

    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_flags(args, os.environ)
    except FlannelError as exc:
        print(f"pyflanneld: {exc}", file=sys.stderr)
        return 2
    if opts.help:
        print(usage_text(), file=sys.stdout)
        return 0
    if opts.version:
        # flanneld prints its version to stderr.
        print(__version__, file=sys.stderr)
        return 0

    import structlog
    import trio

    from pyflannel.cli.flags import log_notices
    from pyflannel.daemon import run_daemon
    from pyflannel.log import configure_logging

    configure_logging("json" if opts.log_format == "json" else "console", opts.verbosity)
    log = structlog.get_logger("pyflannel")
    log_notices(opts)
    # The netlink worker thread plans and encodes whole snapshots in Python. With the default
    # 5 ms GIL switch interval every trio scheduler tick (each epoll wait releases the GIL) waited
    # up to 5 ms to get it back, so one /healthz answer took ~50 ms during a 10k-peer snapshot.
    # The switch only happens when the loop asks for the GIL, so an idle loop costs nothing.
    sys.setswitchinterval(0.001)
    try:
        trio.run(run_daemon, opts)
    except FlannelError as exc:
        log.error(
            "daemon.stopped", error=exc.message, hint=exc.hint, kind=type(exc).__name__,
            exc_info=opts.verbosity > 0,
        )  # fmt: skip
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        # Anything that is not a FlannelError is a bug; still one line (the traceback with
        # -v), so that a start-up failure never floods the journal with a stack.
        log.error(
            "daemon.crashed", error=str(exc) or repr(exc), kind=type(exc).__name__,
            hint="this is a bug: rerun with -v for the traceback and report it",
            exc_info=opts.verbosity > 0,
        )  # fmt: skip
        return 1
    return 0


def run(argv: list[str] | None = None) -> NoReturn:
    """Process entry point: :func:`main`, then flush the logs and exit at once, as a Go binary
    does, without the interpreter's teardown.

    When main returns, the daemon has stopped everything it owns (the etcd client is closed,
    the kernel state is deliberately left for the next start). Teardown would only join
    library threads and run their finalizers, and grpc's can hang the exit (grpc/grpc#40620,
    #29560; once in our own suite: ``daemon.exiting`` logged, the process still alive 15 s
    later), which systemd answers with SIGKILL after TimeoutStopSec.
    """
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # main catches the expected ones: anything else is a bug
        # Still one line and a prompt exit: teardown is what this function avoids.
        print(f"pyflanneld: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        # A closed or broken pipe: nothing more can be said there.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    # os._exit is public API despite its name.
    posix._exit(code)  # noqa: SLF001


if __name__ == "__main__":
    run()
