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

__all__ = ["DaemonThreads", "call_abandoned"]

T = TypeVar("T")

_Job = tuple[concurrent.futures.Future[Any], Callable[[], Any]]


class _Worker:
    """One thread's state: `abandoned` once its call was given up on (it then ends with that call)."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


# The worker of the pool thread this is (none on other threads): what `call_abandoned` reads.
_current = threading.local()


def call_abandoned() -> bool:
    """Whether the call running on this thread (a pool's) was given up on: work it may still choose to
    do (pulling a tool's iterator for its output) is then wasted, and its thread ends sooner without it."""
    worker: _Worker | None = getattr(_current, "worker", None)
    return worker is not None and worker.abandoned


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
        job = (future, fn)
        with self._lock:
            self._jobs.append(job)
            try:
                self._wake()
            except RuntimeError as exc:  # the OS refused a thread: this call fails, now and for good
                self._jobs.remove(job)  # still queued: the lock was held since it was added
                future.set_exception(exc)
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
                try:
                    self._wake()
                except RuntimeError:  # no thread to be had: the queued calls wait for the next one
                    pass
            return True

    def _wake(self) -> None:
        """With the lock held: a thread for the queued jobs, an idle one or a new one within the size.

        Raises `RuntimeError` when the OS refuses a new thread (a pids limit, memory), with the count
        as it was: a thread that never started must not hold a place in the pool for good.
        """
        if self._free > 0:
            self._free -= 1
            self._lock.notify()
        elif self._counted < self._size:
            self._started += 1
            name = f"{self._name}-{self._started}"
            threading.Thread(target=self._work, name=name, daemon=True).start()
            self._counted += 1  # counted once it exists (it waits for the lock to take a job)

    def _work(self) -> None:
        worker = _Worker()
        _current.worker = worker
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
