"""Ctrl-C and SIGTERM end a run the way its budget would: cleanly, with a summary and a closed trace.

`Interrupts` works like `asyncio.timeout`: inside its block, the first SIGINT or SIGTERM cancels the
current task (the agent loop then writes its `final` event, the sandbox is removed and the model
request aborted as the cancellation unwinds), and the block swallows that cancellation on the way
out, so the caller can print the summary. A second signal while that clean-up runs exits at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from types import TracebackType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """Turn the first SIGINT/SIGTERM inside the block into a cancellation of the running task.

    `signum` is the signal received (None when none came); `exit_code` the conventional 128 + signum.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._task: asyncio.Task[object] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> Interrupts:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        for signum in HANDLED:
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self._loop is not None
        for signum in HANDLED:
            self._loop.remove_signal_handler(signum)
        if self.signum is not None and kind is not None and issubclass(kind, asyncio.CancelledError):
            assert self._task is not None
            # Only our own cancellation is swallowed; one from elsewhere still propagates.
            return self._task.uncancel() == 0
        if self.signum is not None and self._task is not None:
            self._task.uncancel()  # something inside swallowed our cancellation: keep the count right
        return False

    def _on_signal(self, signum: int) -> None:
        if self.signum is not None:
            # The user insists: clean-up is taking too long. Each trace line is already flushed.
            sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting without clean-up\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping the run (again to exit at once)\n")
        sys.stderr.flush()
        assert self._task is not None
        self._task.cancel(f"interrupted by {signal.Signals(signum).name}")
