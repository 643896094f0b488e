"""Exponential backoff with jitter for calls that have not produced any output yet."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from qwq_agent.agent.clients.errors import (
    ModelClientClosed,
    ModelConnectionError,
    ModelDeadlineExceeded,
    ModelError,
    ModelServerError,
    ModelTimeoutError,
)
from qwq_agent.deadline import current_deadline


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a request that failed before any output arrived.

    The n-th retry waits `min(max_delay, base_delay * 2**n)`, scaled by a random factor in
    `[1 - jitter, 1]` so that many clients failing together do not come back in lock-step.
    `attempts` counts the first try: `attempts=1` disables retries.
    """

    attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 8.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be within [0, 1]")

    def delays(self) -> Iterator[float]:
        """The waits before each retry (`attempts - 1` of them)."""
        for n in range(self.attempts - 1):
            delay = min(self.max_delay, self.base_delay * (2**n))
            yield delay * (1.0 - self.jitter * self.rng.random())


NO_RETRY = RetryPolicy(attempts=1)

# A Retry-After longer than this is taken for a misconfigured server, not a plan: ignored.
MAX_RETRY_AFTER_S = 3600.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delay-seconds or an HTTP date); None when absent,
    unreadable, negative or absurd (past `MAX_RETRY_AFTER_S`). A date already past means 0.
    """
    if value is None or not (value := value.strip()):
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # only GMT dates are valid; a naive one is read as UTC
            return None
        seconds = max(0.0, when.timestamp() - (time.time() if now is None else now))
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_RETRY_AFTER_S:
        return None
    return seconds


def retry_delay(delay: float, error: ModelError) -> float:
    """The wait before the next try: the backoff's `delay`, or longer when the server asked for it."""
    asked = error.retry_after if isinstance(error, ModelServerError) else None
    return delay if asked is None else max(delay, asked)


def check_deadline(delay: float, error: ModelError) -> None:
    """Raise `ModelDeadlineExceeded` when waiting `delay` before the next try would pass the deadline.

    Retries count against the caller's wall time: a backoff that cannot end before the ambient
    deadline (`qwq_agent.deadline.current_deadline()`) ends the request now, naming the last failure.
    """
    if not current_deadline().allows(delay):
        raise ModelDeadlineExceeded(
            f"no time left before the deadline for another try (next backoff {delay:.2f} s); last failure: {error}",
            partial_text=error.partial_text,
            partial_usage=error.partial_usage,
        ) from error


def retryable(exc: ModelError) -> bool:
    """Whether a request that failed with `exc` before any output may be sent again: a server error
    that says so, or a broken connection (not a timeout, which already spent the wait, and not a
    client closed by its owner)."""
    if isinstance(exc, ModelServerError):
        return exc.retryable
    return isinstance(exc, ModelConnectionError) and not isinstance(
        exc, ModelTimeoutError | ModelClientClosed
    )
