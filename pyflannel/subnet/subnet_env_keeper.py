"""Keeps subnet.env true while the daemon runs.

flanneld writes the file once. If it is deleted or rewritten afterwards (a cleanup of /run, an
operator's edit, a tmpfs remount), every new pod fails in the CNI plugin with "subnet.env: no
such file" or gets the wrong subnet until the daemon restarts. The file is tiny, so it is
simply compared with what we wrote every ``period`` seconds and rewritten (atomically) when it
differs. Separate from :mod:`pyflannel.subnet.subnet_env`, which must stay standard-library
only for the CNI plugin.
"""

from __future__ import annotations

import os
from typing import NoReturn

import structlog
import trio

from pyflannel.errors import ConfigError
from pyflannel.retry import Backoff, FailureLog
from pyflannel.subnet.subnet_env import SubnetEnv, render_subnet_env, write_subnet_env

__all__ = ["SUBNET_ENV_CHECK_SECONDS", "keep_subnet_env"]

log = structlog.get_logger(__name__)

SUBNET_ENV_CHECK_SECONDS = 10.0


def _current(path: str | os.PathLike[str]) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


async def keep_subnet_env(
    path: str | os.PathLike[str], env: SubnetEnv, period: float = SUBNET_ENV_CHECK_SECONDS
) -> NoReturn:
    """Every ``period`` s, rewrite ``path`` when it is missing or differs from ``env``.

    A failed write is retried on the common backoff (``period`` doubling to 8×) and logged
    rate-limited; it never stops the daemon (pods that already run keep working).
    """
    wanted = render_subnet_env(env)
    backoff = Backoff.of(period, 8 * period)
    failures = FailureLog(log, "subnet_env.write_failed")
    while True:
        await trio.sleep(period if not backoff.failing else backoff.next())
        have = _current(path)
        if have == wanted:
            backoff.reset()
            failures.resolved(path=str(path))
            continue
        try:
            write_subnet_env(path, env)
        except ConfigError as exc:
            if not backoff.failing:
                backoff.next()
            failures.failed(path=str(path), error=str(exc))
            continue
        backoff.reset()
        failures.resolved(path=str(path))
        log.warning(
            "subnet_env.restored",
            path=str(path),
            reason="missing" if have is None else "changed by someone else",
        )
