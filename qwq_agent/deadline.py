"""`Deadline`: the one point in time a piece of work must be done by.

The agent loop computes it once from the run's wall-time budget and passes it down; every layer below
(turn, dispatch, registry, tool, sandbox, supervisor) takes the smaller of its own limit and what the
deadline has left, instead of each deciding a timeout of its own. Stdlib and pydantic only, so the
sandbox layer can use it without depending on the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar

from pydantic import BaseModel, ConfigDict


class Deadline(BaseModel):
    """A point on the monotonic clock by which work must be done; `at=None` means no deadline.

    Immutable: a layer that wants a tighter limit derives a new one with `sooner()`.
    """

    model_config = ConfigDict(frozen=True)

    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """The deadline `seconds` from now (None: never)."""
        return cls(at=None if seconds is None else time.monotonic() + max(0.0, seconds))

    @classmethod
    def never(cls) -> Deadline:
        return cls(at=None)

    def left(self, reserve: float = 0.0) -> float | None:
        """Seconds left, less `reserve` kept back for cleanup, never below 0; None without a deadline."""
        if self.at is None:
            return None
        return max(0.0, self.at - time.monotonic() - reserve)

    @property
    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def clamp(self, timeout: float | None, *, reserve: float = 0.0) -> float | None:
        """The smaller of `timeout` and what is left (less `reserve`); None only when both are unlimited."""
        left = self.left(reserve)
        if left is None:
            return timeout
        return left if timeout is None else min(timeout, left)

    def sooner(self, seconds: float | None) -> Deadline:
        """This deadline, or `seconds` from now when that comes first."""
        if seconds is None:
            return self
        other = time.monotonic() + max(0.0, seconds)
        return self if self.at is not None and self.at <= other else Deadline(at=other)

    def allows(self, seconds: float) -> bool:
        """Whether waiting `seconds` still ends before the deadline (e.g. a retry's backoff)."""
        left = self.left()
        return left is None or seconds < left

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Make this the ambient deadline (`current_deadline()`) of the enclosed code.

        Model clients read it to stop retrying and to bound their abort calls, so those count against
        the run's wall time without the `Model` protocol having to carry a deadline argument.
        """
        token = _CURRENT.set(self)
        try:
            yield
        finally:
            _CURRENT.reset(token)

    @contextlib.asynccontextmanager
    async def timer(self, *, reserve: float = 0.0) -> AsyncIterator[None]:
        """Cancel the enclosed awaits `reserve` seconds before the deadline, raising `TimeoutError`.

        The enclosed code also sees this deadline as `current_deadline()`, so cleanup it does on the way
        out (an abort request) fits in the reserve. Never wrap a `yield` of an async generator in it:
        the timer would cancel whoever iterates the generator.
        """
        with self.scope():
            if self.at is None:
                yield
                return
            async with asyncio.timeout(self.left(reserve)):
                yield


_CURRENT: ContextVar[Deadline | None] = ContextVar("qwq_agent_deadline", default=None)


def current_deadline() -> Deadline:
    """The ambient deadline set by `Deadline.scope()`/`timer()`, or one that never comes."""
    return _CURRENT.get() or Deadline.never()
