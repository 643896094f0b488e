"""The host's side of streamed output: frames from the supervisor become `OutputChunk`s, bounded again.

The supervisor already coalesces and caps what it streams; the host does not trust that and counts
too: a frame that is malformed is dropped, and no more than `limit` characters of text reach the
callback per call, whatever the container sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qwq_agent.sandbox.protocol import OutputChunk

OnOutput = Callable[[OutputChunk], None]
# Streamed per call by default: enough to watch progress, a fraction of what the result keeps.
DEFAULT_STREAM_LIMIT = 16 * 1024


class OutputRelay:
    """Passes a call's streamed output frames to `on_output`, at most `limit` characters in all."""

    def __init__(self, on_output: OnOutput, limit: int = DEFAULT_STREAM_LIMIT) -> None:
        self.on_output = on_output
        self.left = limit
        self.capped = False

    def __call__(self, frame: dict[str, Any]) -> None:
        if frame.get("event") != "output" or self.capped:
            return
        stream, data = frame.get("stream"), frame.get("data")
        if stream not in ("stdout", "stderr") or not isinstance(data, str):
            return
        text = data[: self.left]
        self.left -= len(text)
        capped = frame.get("capped") is True or self.left <= 0
        if text or capped:
            self.capped = capped
            self.on_output(OutputChunk(stream=stream, text=text, capped=capped))
