"""A live status line for the terminal: what is being waited on, for how long, and its latest output.

Shown only while nothing else is printing (waiting for a model's first token, a tool running, a server
starting, an image building), through rich's `Live`, which redraws it a few times a second so the
elapsed time moves without our code; it is transient, so the scrollback keeps only real output.
"""

from __future__ import annotations

import time
from collections import deque

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

TAIL_LINES = 4
LINE_CHARS = 160


class Activity:
    """One status (`label` + elapsed seconds) with the last few lines of output under it.

    `start(label)` shows it (restarting the clock), `output(text)` adds to its tail, `stop()` removes it.
    On a console that is not a terminal it does nothing, so logs and pipes get only the real output.
    """

    def __init__(self, console: Console, *, enabled: bool | None = None) -> None:
        self.console = console
        self.enabled = console.is_terminal if enabled is None else enabled
        self.label: str | None = None
        self.since = 0.0
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = ""  # output after the last newline
        self._spinner = Spinner("dots", style="cyan")
        self._live: Live | None = None

    @property
    def active(self) -> bool:
        return self.label is not None

    def start(self, label: str, *, keep_clock: bool = False) -> None:
        """Show `label`; the elapsed time restarts unless `keep_clock` (e.g. a label that only changes)."""
        if not keep_clock or self.label is None:
            self.since = time.monotonic()
            self.tail.clear()
            self._partial = ""
        self.label = label
        if self.enabled and self._live is None:
            self._live = Live(self, console=self.console, transient=True, refresh_per_second=8)
            self._live.start()
        self._refresh()

    def output(self, text: str) -> None:
        """Add output to the tail shown under the status (the last `TAIL_LINES` lines, each cut short)."""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()[-LINE_CHARS:]
        for line in lines:
            self.tail.append(_printable(line)[:LINE_CHARS])
        self._refresh()

    def stop(self) -> None:
        self.label = None
        if self._live is not None:
            self._live.stop()
            self._live = None

    def elapsed(self) -> float:
        return time.monotonic() - self.since

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def __rich__(self) -> RenderableType:
        if self.label is None:
            return Text("")
        self._spinner.update(
            text=Text.assemble((self.label, "cyan"), (f" · {format_elapsed(self.elapsed())}", "dim"))
        )
        lines = [*self.tail, *([_printable(self._partial)] if self._partial else [])][-TAIL_LINES:]
        return Group(
            self._spinner,
            *(Text("  " + line, style="dim", no_wrap=True, overflow="ellipsis") for line in lines),
        )


def format_elapsed(seconds: float) -> str:
    """`7s`, `1m05s`, `1h02m`: whole seconds, as a clock a user reads at a glance."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _printable(line: str) -> str:
    """A line safe to draw: control characters (a tool's own escape sequences, `\\r` bars) shown as `?`."""
    line = line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
    return "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in line)
