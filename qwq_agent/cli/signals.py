"""Ctrl-C, SIGTERM, SIGHUP and SIGQUIT end a run the way its budget would: cleanly, with a summary and a
closed trace.

SIGHUP (the SSH session or terminal went away) and SIGQUIT (Ctrl-\\) would otherwise kill the process on
the spot, leaving the trace without its `final` and the model request running; they are the signals
`serve` and `sandbox build` stop on too (`serve_signals.STOPPING`).

`Interrupts` works like `asyncio.timeout`: inside its block, the first of these signals cancels the
current task (the agent loop then writes its `final` event, the sandbox is removed and the model
request aborted as the cancellation unwinds), and the block swallows that cancellation on the way
out, so the caller can print the summary. A second signal while that clean-up runs exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from types import TracebackType

from qwq_agent.cli.serve_signals import STOPPING

HANDLED = (signal.SIGINT, *STOPPING)


class Interrupts:
    """Turn the first SIGINT, SIGTERM, SIGHUP or SIGQUIT inside the block into a cancellation of the task.

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
        name = signal.Signals(signum).name
        if self.signum is not None:
            # The user insists: clean-up is taking too long. Each trace line is already flushed.
            _notice(f"\n{name} again: exiting without clean-up\n")
            os._exit(128 + signum)
        self.signum = signum
        assert self._task is not None
        # Cancelled before anything is written: after a hang-up (SIGHUP) the terminal fails every write.
        self._task.cancel(f"interrupted by {name}")
        _notice(f"\n{name}: stopping the run (again to exit at once)\n")


def _notice(text: str) -> None:
    """`text` on stderr, if there is still one to write to (a terminal that went away is not)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(text)
        sys.stderr.flush()
