"""Ctrl-C during `agent.run()` on an event loop that does not turn SIGINT into a cancellation.

`asyncio.run` does (its own SIGINT handler cancels the main task), but `loop.run_until_complete` and
Jupyter leave Python's default handler, which raises `KeyboardInterrupt` wherever the main thread
stands: nearly always in the event loop's `select()`, waiting on the model, not in the run's code. The
exception then leaves the loop with the run's task pending for good: its trace never ended and the
agent refused every later run as "already running". So while a run is awaited on the main thread
under Python's default handler, a handler of this module's stands in: the first Ctrl-C cancels the
awaiting task, the run ends `interrupted` (its trace closed, the agent free) and `KeyboardInterrupt`
is raised to the caller once it has; a second Ctrl-C during that unwinding raises at once, as Python's.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["ctrl_c_cancels"]

# The tasks awaiting a run under this module's handler, each with what to do before it is cancelled.
_AWAITING: dict[asyncio.Task[Any], Callable[[], None]] = {}
_HIT: set[asyncio.Task[Any]] = set()  # those the handler cancelled (a second Ctrl-C raises)
_previous: Any = None  # the handler ours stands in for (Python's default), put back after the last run


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    tasks = [t for t in _AWAITING if t not in _HIT and not t.done() and not t.get_loop().is_closed()]
    if not tasks:  # a second Ctrl-C, or nothing left to stop: as Python's own handler
        raise KeyboardInterrupt
    for task in tasks:
        _HIT.add(task)
        _AWAITING[task]()
        task.cancel()  # on the main thread, the loop's own (as asyncio.Runner's handler does)
        task.get_loop().call_soon_threadsafe(lambda: None)  # wake its select() to act on it


@contextlib.contextmanager
def ctrl_c_cancels(on_interrupt: Callable[[], None]) -> Iterator[Callable[[], bool]]:
    """Within: a Ctrl-C calls `on_interrupt`, then cancels the current task (see the module doc); yields
    whether it did. Does nothing off the main thread or where SIGINT has a handler other than Python's
    default (`asyncio.run`'s, an application's own)."""
    global _previous
    task = asyncio.current_task()
    ours = (
        task is not None
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _on_sigint)
    )
    if not ours or task is None or task in _AWAITING:  # (a run within a run: the outer one says)
        yield lambda: False
        return
    if signal.getsignal(signal.SIGINT) is not _on_sigint:
        _previous = signal.signal(signal.SIGINT, _on_sigint)
    _AWAITING[task] = on_interrupt
    try:
        yield lambda: task in _HIT
    finally:
        _AWAITING.pop(task, None)
        _HIT.discard(task)
        if not _AWAITING and signal.getsignal(signal.SIGINT) is _on_sigint:
            signal.signal(signal.SIGINT, _previous)
            _previous = None
