"""Where sync tools run: daemon threads of their own, not asyncio's default executor.

A sync call that hangs past its limit cannot be stopped. In the default executor it kept one of its
few threads for good: one turn of such calls left none, every later sync tool "timed out" without
running, DNS lookups (`getaddrinfo`) waited too, and `asyncio.run()` waited for the hung threads for
ever at its exit. Here a call given up on is abandoned: its thread runs on, out of the pool's count,
and ends with the call; the pool starts another for the calls after it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from qwq_agent.tools.daemon_threads import DaemonThreads

__all__ = ["RESULT_THREADS", "TOOL_THREADS", "convert_in_thread", "left_a_thread", "run_in_thread"]

T = TypeVar("T")

# Sync calls running at once (not counting abandoned ones); more wait their turn, under their limit.
TOOL_THREADS = 32
# Async tools' return values being serialised at once. A pool of their own: on the sync tools' they
# waited in the queue behind 32 calls within their limits, and a tool that had done its work "timed out".
RESULT_THREADS = 8

_threads = DaemonThreads(TOOL_THREADS, "qwq-tool")
_results = DaemonThreads(RESULT_THREADS, "qwq-tool-result")
# The tasks that were cancelled while a call of theirs ran in a thread: what the registry tells the model.
_abandoned: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


async def run_in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on the tools' threads, with the caller's context variables (as
    `asyncio.to_thread`). Cancelled while `fn` runs, it leaves `fn` running in its thread, abandoned,
    notes that for `left_a_thread`, and raises `CancelledError` at once."""
    return await _run(_threads, functools.partial(contextvars.copy_context().run, fn, *args, **kwargs))


async def convert_in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """As `run_in_thread`, on the threads that serialise async tools' return values."""
    return await _run(_results, functools.partial(contextvars.copy_context().run, fn, *args, **kwargs))


async def _run(pool: DaemonThreads, call: Callable[[], T]) -> T:
    future = pool.submit(call)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if pool.abandon(future) and (task := asyncio.current_task()) is not None:
            _abandoned.add(task)
        raise


def left_a_thread(task: asyncio.Future[Any]) -> bool:
    """Whether `task` ended leaving a call of `run_in_thread` running in its thread."""
    return isinstance(task, asyncio.Task) and task in _abandoned
