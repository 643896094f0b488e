"""What `Agent.stream()` returns: the run's events, closable with `async with`, and a deadline on the
consumer.

A run's stream is an async generator, and a generator only runs while someone pulls from it: a consumer
that stops pulling (a client gone quiet, a forgotten stream) pauses the run where it stands, holding its
sandbox, its KV room and its open trace with no deadline, since the run's own timers only fire while it
runs. So every time an event is handed out a timer starts, stopped by the next pull; when it fires, the
agent ends the run (`on_idle`), whose stream is then closed, and the consumer coming back gets that final
event. `async with agent.stream(task) as events:` closes the stream when the block is left, so its sandbox
goes back to the pool there and then.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Any

from qwq_agent.agent.events import Event, Final


class RunStream(AsyncGenerator[Event, None]):
    """The events of one run (see `Agent.stream`): an async generator and an async context manager.

    `idle_s`: how long an event may wait for the consumer's next pull (None: no limit); then `on_idle()`
    ends the run and returns its final event (None: the run had ended anyway), which the consumer gets
    once the stream has stopped.
    """

    def __init__(
        self,
        events: AsyncGenerator[Event, None],
        *,
        idle_s: float | None,
        on_idle: Callable[[], Final | None],
    ) -> None:
        self._events = events
        self._idle_s = idle_s
        self._on_idle = on_idle
        self._timer: asyncio.TimerHandle | None = None
        self._idle_final: Final | None = None

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
        self._idle_final = self._on_idle()

    async def _after(self, step: Any) -> Event:
        """The next event from `step` (a pull of the generator), or the final of a run the timer ended."""
        try:
            event: Event = await step
        except StopAsyncIteration:
            final, self._idle_final = self._idle_final, None
            if final is None:
                raise
            return final
        self._arm(event)
        return event

    # -- the async generator protocol, passed on to the run's generator --

    def __aiter__(self) -> RunStream:
        return self

    async def __anext__(self) -> Event:
        self._disarm()
        return await self._after(self._events.__anext__())

    async def asend(self, value: None) -> Event:
        self._disarm()
        return await self._after(self._events.asend(value))

    async def athrow(self, typ: Any, val: Any = None, tb: TracebackType | None = None) -> Event:
        self._disarm()
        return await self._after(self._events.athrow(typ, val, tb))

    async def aclose(self) -> None:
        """End the run (as `interrupted`, unless it is over) and release what it holds, now."""
        self._disarm()
        self._idle_final = None
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
