"""What `Agent.stream()` returns: the run's events, closable with `async with`, and a deadline on the
consumer.

A run's stream is an async generator, and a generator only runs while someone pulls from it: a consumer
that stops pulling (a client gone quiet, a forgotten stream) pauses the run where it stands, holding its
sandbox, its KV room and its open trace with no deadline, since the run's own timers only fire while it
runs. So every time an event is handed out a timer starts, stopped by the next pull. When it fires, the
stream is taken over by a task of its own: a run with work in flight (a model request streaming, tool
calls running) is ended `interrupted` and closed now; a run with nothing in flight is wound up (it
finishes what it holds, an answer that came back whole, a budget stop, but starts nothing new), so no
paid-for answer is thrown away. The consumer coming back waits for that task and gets the run's final
event, never the generator half-closed under it. `async with agent.stream(task) as events:` closes the
stream when the block is left, so its sandbox goes back to the pool there and then; `aclose()` from
another task, while one reads, ends the run at once and the reader gets its final event.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol

from qwq_agent.agent.events import Event, Final

log = logging.getLogger(__name__)

# What a run whose stream was closed before its end is recorded with.
STOPPED = "the run was stopped before it ended"
# How long a run with nothing in flight may take to wind up once its consumer went quiet (its workspace
# patch, its trace closed) before it is ended `interrupted` anyway.
WIND_UP_S = 30.0
# How long a reader or a close waits for the task that took the stream over: the wind-up, then what a
# stopped run takes to unwind (its tool calls' cancellation is bounded by the dispatcher's own wait).
UNWIND_WAIT_S = WIND_UP_S + 30.0

# The take-over tasks, held here: the event loop keeps tasks weakly, and a stream its consumer dropped
# must still be wound up.
_TAKE_OVERS: set[asyncio.Task[None]] = set()


class RunControl(Protocol):
    """What a `RunStream` asks of the agent about its run."""

    def busy(self) -> bool:
        """Whether the run has work in flight: a model request streaming, tool calls running."""
        ...

    def wind_up(self, reason: str) -> None:
        """Let the run finish what it holds but start nothing new: at its next piece of work (a model
        request, a tool call, an approval) it ends `interrupted` with `reason`."""
        ...

    def stop(self, reason: str) -> None:
        """End the run now, `interrupted` with `reason`, as `Agent.end_run` does (nothing if it is over)."""
        ...

    def final(self) -> Final | None:
        """The run's final event, once it has one."""
        ...

    def closing(self) -> asyncio.Task[None] | None:
        """The close of the stream the agent started (`end_run`), if it did."""
        ...


class RunStream(AsyncGenerator[Event, None]):
    """The events of one run (see `Agent.stream`): an async generator and an async context manager.

    `idle_s`: how long an event may wait for the consumer's next pull (None: no limit); then the run
    is wound up or stopped through `control` (see the module doc), and the consumer reading again gets
    its final event, then the end.
    """

    def __init__(
        self, events: AsyncGenerator[Event, None], *, idle_s: float | None, control: RunControl
    ) -> None:
        self._events = events
        self._idle_s = idle_s
        self._control = control
        self._timer: asyncio.TimerHandle | None = None
        self._taken: asyncio.Task[None] | None = None  # the idle timer's take-over of the stream
        self._reader: asyncio.Task[Any] | None = None  # the task inside a pull of `events` now
        self._left: asyncio.Future[None] | None = None  # done when that pull is over
        self._stopped = False  # `aclose()` from another task cancelled that pull
        self._over = False  # the end was handed out (or the stream closed): nothing more is read

    # -- the timer: armed while an event waits for the consumer, stopped by the next pull or a close --

    def _arm(self, event: Event) -> None:
        if self._idle_s is None or isinstance(event, Final):
            return
        # Weak: a stream its consumer dropped is finalised (and its run ended) now, not at the timer.
        self._timer = asyncio.get_running_loop().call_later(self._idle_s, _fire, weakref.ref(self))

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fired(self) -> None:
        self._timer = None
        if self._control.closing() is not None:  # `end_run()` ended it meanwhile: its close is under way
            return
        reason = (
            f"the consumer of the run's events read none for {self._idle_s:g} s (consumer_idle_timeout_s)"
        )
        work: Coroutine[Any, Any, None]
        try:
            if self._control.busy():
                self._control.stop(reason)
                work = self._close()
            else:
                self._control.wind_up(reason)
                work = self._wind_up(reason)
        except Exception:  # whatever went wrong, the stream is closed: a paused run held its sandbox for good
            log.exception("ending a run whose consumer went quiet failed; closing its stream")
            work = self._close()
        self._taken = asyncio.get_running_loop().create_task(work)
        _TAKE_OVERS.add(self._taken)
        self._taken.add_done_callback(_TAKE_OVERS.discard)

    async def _close(self) -> None:
        try:
            await self._events.aclose()
        except Exception:  # the run's own clean-up failed: nothing here can do better than say so
            log.exception("closing the stream of a run whose consumer went quiet failed")

    async def _wind_up(self, reason: str) -> None:
        """Pull the run to its end in the consumer's place; past `WIND_UP_S` it is stopped and cancelled."""
        task = asyncio.current_task()
        assert task is not None
        overdue = False

        def stop() -> None:
            nonlocal overdue
            overdue = True
            try:
                self._control.stop(reason)
            except Exception:  # the cancellation below still ends the run's stream
                log.exception("ending a run whose wind-up ran past %s s failed", WIND_UP_S)
            task.cancel()

        timer = asyncio.get_running_loop().call_later(WIND_UP_S, stop)
        try:
            async for _ in self._events:  # traced as they come; the consumer gets the final alone
                pass
        except asyncio.CancelledError:
            if not overdue:
                raise
        except Exception:
            log.exception("winding up a run whose consumer went quiet failed")
        finally:
            timer.cancel()

    async def _taken_over(self) -> bool:
        """Whether another task took the stream over (the idle timer's, `end_run`'s close): once it is
        done (waited for, bounded), the stream only hands out what it left."""
        task = self._taken or self._control.closing()
        if task is None:
            return False
        if not task.done():
            await asyncio.wait({task}, timeout=UNWIND_WAIT_S)
        return True

    def _end(self) -> Event:
        """The run's final for a reader whose stream was taken over or stopped, then nothing more."""
        self._over = True
        final = self._control.final()
        if final is None:
            raise StopAsyncIteration
        return final

    async def _next(self, pull: Callable[[], Awaitable[Event]]) -> Event:
        self._disarm()
        if not self._over and await self._taken_over():
            if self._taken is None:  # a run stopped with `end_run()` yields nothing more
                self._over = True
            else:
                return self._end()
        if self._over:
            raise StopAsyncIteration
        return await self._pull(pull())

    async def _pull(self, step: Awaitable[Event]) -> Event:
        """The next event from `step` (a pull of the generator), or the final of a run `aclose()` stopped
        from another task while this one waited in it."""
        task = asyncio.current_task()
        assert task is not None
        left = asyncio.get_running_loop().create_future()
        self._reader, self._left = task, left
        cancelling = task.cancelling()
        try:
            event = await step
        except StopAsyncIteration:
            self._over = True
            raise
        except asyncio.CancelledError:
            # Ours (as `asyncio.timeout` tells its own): the reader gets the final, not a cancellation.
            if not self._stopped or task.uncancel() > cancelling:
                raise
            return self._end()
        finally:
            self._reader = None
            left.set_result(None)
        if self._stopped:  # the run caught the cancellation and went on: it is over all the same
            task.uncancel()
            await self._close()
            return self._end()
        self._arm(event)
        return event

    # -- the async generator protocol, passed on to the run's generator --

    def __aiter__(self) -> RunStream:
        return self

    async def __anext__(self) -> Event:
        return await self._next(lambda: self._events.__anext__())

    async def asend(self, value: None) -> Event:
        return await self._next(lambda: self._events.asend(value))

    async def athrow(self, typ: Any, val: Any = None, tb: TracebackType | None = None) -> Event:
        return await self._next(lambda: self._events.athrow(typ, val, tb))

    async def aclose(self) -> None:
        """End the run (as `interrupted`, unless it is over) and release what it holds, now.

        From another task while one reads: the run is ended and the reader's wait cancelled (it gets the
        run's final, then the end), and this returns once its pull is over (bounded). After the idle
        timer took the stream over, or `end_run()` closed it: waits (bounded) for that to finish.
        """
        self._disarm()
        if await self._taken_over():
            self._over = True
            return
        reader, left = self._reader, self._left
        if reader is not None and left is not None:
            if reader is asyncio.current_task():  # from inside the pull (a callback of the run's)
                self._control.stop(STOPPED)
                return  # it stops at its next event
            # Once: a second close (a disconnect handler and a shutdown hook) waits for the first. Its
            # second cancel of the reader was taken, after the first was uncancelled, for one from outside.
            if not self._stopped:
                self._control.stop(STOPPED)
                self._stopped = True
                reader.cancel()
            await asyncio.wait({left}, timeout=UNWIND_WAIT_S)
            return
        self._over = True
        await self._events.aclose()

    async def __aenter__(self) -> RunStream:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _fire(stream: weakref.ref[RunStream]) -> None:
    s = stream()
    if s is not None:
        s._fired()
