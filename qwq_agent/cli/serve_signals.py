"""The signals that stop the CLI's long commands that must clean up after themselves: `qwq-agent serve`
(with or without `--dp`) and `qwq-agent sandbox build` (its mkrootfs process group and build folder).

The servers (and the build's mkrootfs) run in sessions or groups of their own, so a signal meant for the
CLI never reaches them: the CLI must
catch every signal that would otherwise end it silently (SIGTERM from a supervisor, SIGHUP when the SSH
session or terminal goes away, SIGQUIT from Ctrl-\\) and stop them in its `finally`. Each is turned
into a `KeyboardInterrupt`, like Ctrl-C; a second one during the stop's grace kills the servers at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOPPING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name))


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside the block, SIGTERM, SIGHUP and SIGQUIT raise `KeyboardInterrupt` (as SIGINT does)."""
    previous: dict[int, Any] = {}
    try:
        for signum in STOPPING:
            previous[signum] = signal.signal(signum, _interrupt)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
