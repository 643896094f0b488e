"""Reading a model's stream so that a stream that will not stop when told to is abandoned, not waited for.

A `Model` may be user code. Awaited as it was, its stream held the run for as long as it liked: one that
swallowed its cancellation (a wrapper retrying on every error) outlived any wall-time budget, since the
deadline's cancellation went into the stream and never came out. `StreamReader` steps each read (and the
close) itself, in the run's own task, as `await` would, forwarding what the task receives: the stream
runs exactly as before, at no cost per event. Once the stream has been told to stop (the run's
cancellation, the deadline's included, or a close that outlasted its time) and goes on anyway for
`MODEL_STOP_GRACE_S`, it is never resumed again: left suspended where it was, it holds nothing up, not
even the event loop's shutdown, where a task left running in the background would be waited for.

It also checks what the stream yields: a `TextDelta` or a `Completion`, else a `TypeError` naming the
model and what it yielded (a `str` or a dict was read as an empty piece of output, and None as the end).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from qwq_agent.protocols import Completion, ModelEvent, TextDelta

__all__ = ["MODEL_STOP_GRACE_S", "StreamReader"]

# How long a stream gets to stop once told to before it is abandoned: the tool registry's grace for a
# tool that ignores its cancellation.
MODEL_STOP_GRACE_S = 5.0

_T = TypeVar("_T")

# Abandoned streams, held for good: asyncio finalises an async generator that is collected (and the
# loop's shutdown closes every one still alive) with `aclose()`, which on a generator suspended mid-read
# fails "asynchronous generator is already running" and is printed as an unretrieved task exception.
# Held here and unknown to the loop, an abandoned stream is never finalised: never resumed, as promised.
_ABANDONED: list[object] = []


class StreamReader:
    """Reads the stream of the model named `owner`: `next()` for each event, `close()` at the end."""

    def __init__(self, stream: AsyncIterator[Any], owner: str) -> None:
        self._stream = stream
        self._events = aiter(stream)
        self._owner = owner
        # Why the stream was abandoned (it went on for MODEL_STOP_GRACE_S after it was told to stop);
        # None while it was not.
        self.abandoned: str | None = None

    async def next(self) -> ModelEvent | None:
        """The stream's next event, or None at its end; what the stream raises, this raises. Cancelled,
        the stream is told so; one that goes on is abandoned after the grace and the cancellation
        raised here all the same."""
        if self.abandoned is not None:  # it is suspended mid-read for good: nothing more comes
            return None
        try:
            event = await self._drive(anext(self._events), stop_at=None)
        except StopAsyncIteration:
            return None
        if isinstance(event, TextDelta | Completion):
            return event
        raise TypeError(
            f"{self._owner}.stream yielded a {type(event).__name__}: a Model's stream yields TextDelta "
            "and Completion events (see qwq_agent.protocols.Model)"
        )

    async def close(self, wait: float = MODEL_STOP_GRACE_S) -> bool:
        """Close the stream (its `aclose`: a client aborts the request there, bounded by the ambient
        deadline and its own abort timeout). One still closing after `wait` seconds is told to stop
        (a CancelledError thrown in), and abandoned after the grace. False: it was abandoned."""
        aclose = getattr(self._stream, "aclose", None)
        if self.abandoned is not None or aclose is None:
            return self.abandoned is None
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            await self._drive(aclose(), stop_at=time.monotonic() + max(0.0, wait))
        except asyncio.CancelledError:
            if task is not None and task.cancelling() > cancelling:  # the run's own: it goes on
                raise
            # else the stream obeyed the stop `_drive` gave it: closed
        except Exception:  # a stream that fails to close is closed all the same
            pass
        return self.abandoned is None

    async def _drive(self, step: Awaitable[_T], *, stop_at: float | None) -> _T:
        """Await `step` as `await` would (each future it waits on is waited on here, and a cancellation
        of this task goes into it), but give up on it once told to stop: it is told (a CancelledError
        thrown in) when this task is cancelled, or at `stop_at`, and abandoned, never resumed, when it
        goes on for `MODEL_STOP_GRACE_S` after that."""
        steps = step.__await__()
        if not hasattr(steps, "throw"):  # an awaitable of its own making: awaited as it is
            return await step
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        told: asyncio.CancelledError | None = None  # the stop it was told of (and goes on after)
        ours = False  # `told` is this task's cancellation, not a stop of `_drive`'s own
        give_up_at: float | None = None
        throw: BaseException | None = None
        while True:
            try:
                yielded = steps.throw(throw) if throw is not None else steps.send(None)
            except StopIteration as stop:
                return stop.value
            throw = None
            if told is not None and give_up_at is None:
                if ours and task.cancelling() <= cancelling:
                    told = None  # a cancellation it asked for itself (its own timeout), and took
                else:
                    give_up_at = time.monotonic() + MODEL_STOP_GRACE_S
            if yielded is not None and not asyncio.isfuture(yielded):
                throw = RuntimeError(f"Task got bad yield: {yielded!r}")  # as asyncio's Task says
                continue
            limit = give_up_at if give_up_at is not None else stop_at
            try:
                settled = await _settled(yielded, None if limit is None else limit - time.monotonic())
            except asyncio.CancelledError as exc:
                throw = told = exc
                ours = True
                continue
            if settled:
                continue
            if give_up_at is None:  # `stop_at` passed: it is told to stop
                throw = told = asyncio.CancelledError()
                ours = False
                continue
            self.abandoned = (
                f"the model's stream ({self._owner}) went on for {MODEL_STOP_GRACE_S:g} s after it was "
                "told to stop; it was abandoned where it stood, never to be resumed"
            )
            _keep(self._stream, self._events)
            assert told is not None  # a grace is only given after a stop
            raise told


def _keep(*streams: object) -> None:
    """Hold abandoned `streams` for good, out of the running loop's shutdown (see `_ABANDONED`)."""
    loop = asyncio.get_running_loop()
    for stream in streams:
        if not any(kept is stream for kept in _ABANDONED):
            _ABANDONED.append(stream)
        known = getattr(loop, "_asyncgens", None)  # (private: the set `shutdown_asyncgens` closes)
        if known is not None:
            known.discard(stream)


async def _settled(yielded: asyncio.Future[Any] | None, within: float | None) -> bool:
    """Wait for what the stream waits on (None: a bare yield to the loop); False if `within` passed.
    Its outcome is the stream's to read (from the future, as it resumes), not raised here; a
    CancelledError raised here (this task's, or the future's own) goes into the stream as it would."""
    if yielded is None:
        await asyncio.sleep(0)
        return True
    if within is None:
        # As asyncio's Task does with a future its coroutine yields: else awaiting it again here
        # raises "await wasn't used with future" (the stream's own await marked it so).
        yielded._asyncio_future_blocking = False
        try:
            await yielded  # this task's cancellation cancels it, as when the stream awaited it alone
        except asyncio.CancelledError:
            raise
        except Exception:
            pass
        return True
    if within <= 0:
        return yielded.done()
    done, _ = await asyncio.wait({yielded}, timeout=within)
    return bool(done)
