"""What the viewer shows of a trace file: a one-row summary, and its events from a line on.

Read as plain JSON lines rather than typed events: the viewer must show traces written by newer or
older versions (unknown event types pass through) and a run still being written (a torn last line
is left for the next poll).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from qwq_agent.agent.trace import open_regular

__all__ = ["RunSummary", "read_events", "summarize", "unreadable"]

# Prompts are the bulk of a trace and the page does not show them; it gets their length instead.
_DROPPED = ("prompt",)


class RunSummary(BaseModel):
    """One row of the run list."""

    file: str
    run_id: str = ""
    task: str = ""
    model: str = ""
    status: str = "running"  # the final event's status; "running" until there is one
    steps: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    cached_share: float | None = None
    wall_s: float | None = None
    started: float | None = None
    warnings: int = 0
    modified: float = 0.0


def read_events(path: Path, start: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events from line `start` on (prompts dropped), and the line to continue from.

    A last line without its newline is still being written: it is not returned, and the next call
    starts at it. A line that is not JSON (a crash mid-write, long ago) is skipped. A path that is no
    regular file (a FIFO, a device, a link to one) raises `NotATraceFileError` instead of being opened:
    a FIFO would block the open forever, /dev/zero would be read until memory runs out.
    """
    events: list[dict[str, Any]] = []
    with open(open_regular(path, os.O_RDONLY), "rb") as f:
        lines = f.read().split(b"\n")
    complete = lines[:-1]  # the piece after the last newline is empty or still being written
    for raw in complete[start:]:
        try:
            ev = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
            continue
        if not isinstance(ev, dict):
            continue
        for key in _DROPPED:
            if isinstance(ev.get(key), str):
                ev[f"{key}_chars"] = len(ev.pop(key))
        events.append(ev)
    return events, max(start, len(complete))


def _number(value: Any) -> float | None:
    """`value` as a finite number; None for anything else (a string, a list, a bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int:
    """`value` as a count of tokens or steps; 0 for anything that is not a number."""
    number = _number(value)
    return int(number) if number is not None else 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else json.dumps(value)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def summarize(path: Path, root: Path) -> RunSummary:
    """The run list's row for the trace at `path` (named relative to `root`).

    Fields are read defensively: a trace written by another version or tool, or edited by hand, may
    hold any JSON in any field; what is not of the expected type counts as absent.
    """
    events, _ = read_events(path)
    row = RunSummary(file=path.relative_to(root).as_posix(), modified=path.stat().st_mtime)
    last_ts: float | None = None
    for ev in events:
        kind = ev.get("type")
        ts = _number(ev.get("ts"))
        last_ts = ts if ts is not None else last_ts
        if kind == "run_started":
            row.run_id, row.task, row.model = (_text(ev.get(k)) for k in ("run_id", "task", "model"))
            row.started = _number(ev.get("ts"))
        elif kind == "model_call":
            usage = _mapping(ev.get("usage"))
            row.prompt_tokens += _count(usage.get("prompt_tokens"))
            row.cached_tokens += _count(usage.get("cached_tokens"))
            row.generated_tokens += _count(usage.get("completion_tokens"))
        elif kind == "warning":
            row.warnings += 1
        elif kind == "final":
            row.status = _text(ev.get("status")) or "?"
            row.wall_s = _number(_mapping(ev.get("totals")).get("wall_s"))
        row.steps = max(row.steps, _count(ev.get("step")))
    if row.wall_s is None and row.started is not None and last_ts is not None:
        row.wall_s = round(last_ts - row.started, 3)
    if row.prompt_tokens:
        row.cached_share = round(row.cached_tokens / row.prompt_tokens, 4)
    return row


def unreadable(path: Path, root: Path, error: Exception) -> RunSummary:
    """The run list's row for a trace `summarize` could not read: listed, saying why."""
    try:
        modified = path.stat().st_mtime
    except OSError:
        modified = 0.0
    return RunSummary(
        file=path.relative_to(root).as_posix(),
        status="unreadable",
        task=f"cannot read this trace: {type(error).__name__}: {error}"[:300],
        modified=modified,
    )
