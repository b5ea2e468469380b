"""The retry policy: delays stay in bounds, double to the cap, reset; logs are bounded."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.retry import Backoff, FailureLog, RetryPolicy


def test_backoff_without_jitter_doubles_to_cap_and_resets() -> None:
    b = Backoff.of(0.1, 5.0, jitter=0)
    assert [b.next() for _ in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert b.failing and b.attempts == 8
    b.reset()
    assert not b.failing
    assert b.next() == 0.1


@given(
    initial=st.floats(0.001, 10),
    extra=st.floats(0, 100),
    jitter=st.floats(0, 0.9),
    n=st.integers(1, 60),
    seed=st.integers(0, 2**32),
)
def test_delays_never_leave_the_policy_bounds(
    initial: float, extra: float, jitter: float, n: int, seed: int
) -> None:
    b = Backoff.of(initial, initial + extra, jitter=jitter, seed=seed)
    for _ in range(n):
        d = b.next()
        assert initial * (1 - jitter) - 1e-9 <= d <= initial + extra + 1e-9
    # A run of failures reaches the cap (minus jitter) and stays there: bounded attempt rate.
    for _ in range(64):
        d = b.next()
    assert d >= (initial + extra) * (1 - jitter) - 1e-9


@pytest.mark.parametrize(
    "kw", [{"initial": 0}, {"initial": 2, "maximum": 1}, {"factor": 0.5}, {"jitter": 1}]
)
def test_invalid_policy_is_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kw)


class _Rec:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append(("warning", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self.lines.append(("debug", event, kw))


@given(st.lists(st.booleans(), max_size=400))
def test_failure_log_is_bounded(outcomes: list[bool]) -> None:
    rec = _Rec()
    flog = FailureLog(rec, "thing.failed", every=30)
    for ok in outcomes:
        if ok:
            flog.resolved()
        else:
            flog.failed(error="x")
    loud = [line for line in rec.lines if line[0] != "debug"]
    runs = sum(1 for i, ok in enumerate(outcomes) if not ok and (i == 0 or outcomes[i - 1]))
    failures = outcomes.count(False)
    # At most: one line per run start, one per 30 failures, one "resolved" per run.
    assert len(loud) <= 2 * runs + failures // 30
    assert all(e == "thing.failed_resolved" for lvl, e, _ in loud if lvl == "info")
