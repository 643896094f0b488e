"""Progress lines with the time elapsed since the build started."""

from __future__ import annotations

import time
from collections.abc import Callable

ProgressFn = Callable[[str], object]


class Stopwatch:
    """Prefixes each message with seconds since creation and hands it to `sink`."""

    def __init__(self, sink: ProgressFn) -> None:
        self.sink = sink
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since the stopwatch was created."""
        return time.monotonic() - self.start

    def __call__(self, message: str) -> None:
        self.sink(f"[{self.elapsed:6.1f}s] {message}")
