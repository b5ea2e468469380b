"""The one retry policy: exponential backoff with jitter and a cap, and rate-limited failure logs.

Every loop that retries something (the etcd watch, lease renewal, peer repair, device repair, the
udp backend, ...) uses :class:`Backoff` for *when* to try again and :class:`FailureLog` for *what
to say* about it, so that a failure that lasts an hour costs a bounded number of attempts and log
lines, and its end is reported once. Pure: no I/O, no clock; the caller sleeps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Backoff", "FailureLog", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a retry loop backs off: ``initial`` doubling (``factor``) up to ``maximum`` seconds.

    ``jitter`` spreads each delay over ``[d * (1 - jitter), d]`` so that many nodes that failed
    together (an etcd restart) do not retry in lock-step; the delay never exceeds ``maximum``.
    """

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum) or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"invalid retry policy {self!r}")


@dataclass
class Backoff:
    """The state of one retry loop: :meth:`next` is the delay to wait before the next attempt."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = 0
    _base: float = 0.0

    @classmethod
    def of(
        cls, initial: float, maximum: float, *, jitter: float = 0.2, seed: int | None = None
    ) -> Backoff:
        """A backoff from ``initial`` to ``maximum`` seconds (``seed`` makes jitter repeatable)."""
        return cls(RetryPolicy(initial, maximum, jitter=jitter), random.Random(seed))

    @property
    def failing(self) -> bool:
        """True after a failure and until :meth:`reset`."""
        return self.attempts > 0

    def next(self) -> float:
        """Count one failed attempt and return the delay (with jitter) to wait before the next."""
        p = self.policy
        self.attempts += 1
        self._base = p.initial if self._base == 0.0 else min(self._base * p.factor, p.maximum)
        if p.jitter == 0:
            return self._base
        return self._base * (1.0 - p.jitter * self.rng.random())

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self.attempts = 0
        self._base = 0.0


class _Logger(Protocol):
    def warning(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def debug(self, event: str, **kw: Any) -> Any: ...


@dataclass
class FailureLog:
    """Rate-limited logging of one persistent failure: first, every ``every``-th, then resolved.

    ``failed`` logs a warning for the first consecutive failure and for every ``every``-th one
    after it (the others at debug level, with the same fields); ``resolved`` logs one info line
    after a run of failures and nothing otherwise.
    """

    log: _Logger
    event: str
    every: int = 30
    failures: int = 0

    def failed(self, **kw: Any) -> bool:
        """Record one failure; returns True when it was logged at warning level."""
        self.failures += 1
        loud = self.failures == 1 or self.failures % self.every == 0
        (self.log.warning if loud else self.log.debug)(self.event, attempts=self.failures, **kw)
        return loud

    def resolved(self, **kw: Any) -> bool:
        """Record a success; logs ``<event>_resolved`` once if failures preceded it."""
        if not self.failures:
            return False
        self.log.info(f"{self.event}_resolved", attempts=self.failures, **kw)
        self.failures = 0
        return True
