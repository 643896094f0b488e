"""The rich `Console` the commands print with: a closed pipe is an error like any other write's."""

from __future__ import annotations

import errno
import os

from rich.console import Console


class PipeConsole(Console):
    """A `Console` whose write to a closed pipe (`qwq-agent run | head -1`) raises `BrokenPipeError`.

    rich's own reaction is `SystemExit(1)`: the command then stopped with status 1 and not a word, the
    run's trace unfinished. Raised as the error it is, it unwinds like any failure (the run's stream is
    closed, its trace ends) and `qwq_agent.cli.errors` says that stdout was closed.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more is written through this console (e.g. by clean-up code)
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
