"""Where tools' argument checks run: a few threads of their own, under the call's time limit, on
arguments of a bounded size.

A check can be slow (a schema's pattern, a long array), and on the event loop it stopped every other
task and the call's timer. In asyncio's default executor (`to_thread`), the checks a call gave up on
kept running there, and a few of them (one model turn of hostile calls) left no thread for DNS
(`getaddrinfo`), page parsing or the next call's check. Here they have `CHECK_THREADS` threads to
themselves, a check that is given up on is told to stop (`schema_patterns.check_budget`: at its next
keyword, step of a walk, pattern match or every so many array items), and a queued one never starts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from qwq_agent.tools.daemon_threads import DaemonThreads
from qwq_agent.tools.schema_patterns import CheckStopped, check_budget

__all__ = ["CHECK_THREADS", "MAX_ARGUMENT_CHARS", "oversized", "run_check"]

T = TypeVar("T")

# Arguments longer than this (about, as JSON) are refused before they are checked: a model's turn is
# far shorter, and every keyword's work grows with them.
MAX_ARGUMENT_CHARS = 4_000_000
CHECK_THREADS = 4


def oversized(arguments: Any) -> str | None:
    """Why `arguments` are too large to be checked, or None. Counts string lengths and one character
    per other value, and stops at the cap: the count costs no more than the cap, whatever the size."""
    size = 0
    stack = [arguments]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            size += len(value) + 3
        elif isinstance(value, dict):
            size += 2
            for key, item in value.items():
                size += len(key) + 4 if isinstance(key, str) else 4
                stack.append(item)
        elif isinstance(value, list | tuple):
            size += 2
            stack.extend(value)
        else:
            size += 2
        if size > MAX_ARGUMENT_CHARS:
            return (
                f"the arguments are longer than {MAX_ARGUMENT_CHARS:,} characters, more than a call can "
                "be checked with; send less at once"
            )
    return None


# Not abandoned when given up on: a check is told to stop, and these threads bound hostile checks' CPU.
_threads = DaemonThreads(CHECK_THREADS, "qwq-arg-check")


async def run_check(check: Callable[[], T], *, limit: float | None) -> T:
    """`check()` on the argument checks' threads; raises `TimeoutError` once `limit` seconds pass.

    A thread cannot be killed: the check is told to stop (`CheckStopped` at its next step) and left to
    end. Cancelling the caller does the same.
    """
    stop = threading.Event()
    deadline = None if limit is None else time.monotonic() + limit

    def budgeted() -> T:
        with check_budget(deadline, stop):
            return check()

    future = asyncio.wrap_future(_threads.submit(budgeted))
    try:
        done, _ = await asyncio.wait({future}, timeout=limit)
    except asyncio.CancelledError:
        stop.set()
        future.cancel()
        raise
    if not done:
        stop.set()
        future.cancel()
        raise TimeoutError
    try:
        return future.result()
    except CheckStopped:  # its own deadline came a moment before the wait's: the same event
        raise TimeoutError from None
