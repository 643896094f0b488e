"""A pool of daemon threads that can give up on a call without losing a thread.

Not a ThreadPoolExecutor (nor asyncio's default executor, which is one): its threads are joined at
interpreter exit and by `asyncio.run()`, so one call still running (a check that cannot be stopped, a
tool hung on a socket) held the process open after the run ended, and the calls given up on kept the
pool's few threads for good.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["DaemonThreads"]

T = TypeVar("T")

_Job = tuple[concurrent.futures.Future[Any], Callable[[], Any]]


class _Worker:
    """One thread's state: `abandoned` once its call was given up on (it then ends with that call)."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


class DaemonThreads:
    """At most `size` daemon threads working on calls not given up on; calls beyond wait their turn.

    `abandon(future)` takes the thread running that call out of the count: the call runs on (a thread
    cannot be killed) and its thread ends with it, while a new thread takes the queued calls.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._lock = threading.Condition()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._counted = 0  # live threads not abandoned
        self._free = 0  # threads waiting for a job that no `submit` has woken yet
        self._running: dict[concurrent.futures.Future[Any], _Worker] = {}
        self._started = 0

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `fn()` on a thread of the pool; its future is cancelled only while it waits its turn."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            self._jobs.append((future, fn))
            self._wake()
        return future

    def abandon(self, future: concurrent.futures.Future[Any]) -> bool:
        """Give up on the call of `future`: cancelled if it has not started; if it runs, its thread no
        longer counts against the size. True when the call is left running in its thread."""
        if future.cancel():  # it was waiting its turn: it never starts
            return False
        with self._lock:
            worker = self._running.get(future)
            if worker is None or future.done():
                return False
            if worker.abandoned:
                return True
            worker.abandoned = True
            self._counted -= 1
            if self._jobs:
                self._wake()
            return True

    def _wake(self) -> None:
        """With the lock held: a thread for the queued jobs, an idle one or a new one within the size."""
        if self._free > 0:
            self._free -= 1
            self._lock.notify()
        elif self._counted < self._size:
            self._counted += 1
            self._started += 1
            name = f"{self._name}-{self._started}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        worker = _Worker()
        while True:
            with self._lock:
                while not self._jobs:
                    self._free += 1
                    self._lock.wait()  # `_wake` took this thread out of `_free` before waking it
                future, fn = self._jobs.popleft()
                self._running[future] = worker
            if future.set_running_or_notify_cancel():  # False: given up on while queued
                try:
                    result = fn()
                except BaseException as exc:  # the call's outcome, whatever it is; the thread goes on
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                del self._running[future]
                if worker.abandoned:
                    return  # out of the count since `abandon`; the pool went on without it
