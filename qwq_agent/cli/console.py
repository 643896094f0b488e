"""The rich `Console` the commands print with: a closed pipe or a full disk is an error like any other
write's, a terminal that went away is not."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

from rich.console import Console

from qwq_agent.cli.stdio import to_devnull


class PipeConsole(Console):
    """A `Console` whose write to a closed pipe (`qwq-agent run | head -1`) raises `BrokenPipeError`.

    rich's own reaction is `SystemExit(1)`: the command then stopped with status 1 and not a word, the
    run's trace unfinished. Raised as the error it is, it unwinds like any failure (the run's stream is
    closed, its trace ends) and `qwq_agent.cli.errors` says that stdout was closed.

    A terminal that was hung up (the SSH session dropped) fails every write with EIO. That is no failure
    of the run: the SIGHUP the hang-up sends stops it cleanly (`signals.Interrupts`), and until then,
    as for the summary after it, there is nobody left to show anything to. The console goes quiet and
    its file is pointed at /dev/null, so that what is still buffered cannot fail the exit's flush
    (which would turn the exit status into 120). Only on a terminal: a file or pipe that fails with EIO
    (a disk's I/O error) has lost output, which is said like any other failed write.

    Any failed write (a full disk: `stdio.StreamWriteError`) also makes the console quiet before it is
    raised: the clean-up code that prints on the way out must not fail again, over the first error.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Known now: once a terminal is hung up, isatty() on it fails (EIO) like everything else.
        self._on_terminal = _isatty(self.file)

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more is written through this console (e.g. by clean-up code)
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    def _check_buffer(self) -> None:
        # rich's one place where the rendered text is written (and where it calls on_broken_pipe).
        try:
            super()._check_buffer()
        except OSError as exc:
            self.quiet = True
            del self._buffer[:]
            if exc.errno != errno.EIO or not self._on_terminal:
                raise
            with contextlib.suppress(OSError, ValueError, AttributeError):
                to_devnull(self.file)


def _isatty(file: Any) -> bool:
    try:
        return os.isatty(file.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's StringIO)
        return False
