"""What `run` shows and keeps when Ctrl-C or SIGTERM stopped it: the summary, the trace path, a final event."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from qwq_agent.agent.events import EVENT_ADAPTER, Final


def last_event_type(path: Path) -> str | None:
    """The `type` of the trace's last complete line, or None when there is none."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    except (OSError, UnicodeDecodeError):
        return None
    for line in reversed(lines):
        try:
            return EVENT_ADAPTER.validate_json(line).type
        except ValueError:
            continue  # a torn last line: the one before it counts
    return None


def ensure_final(path: Path | None, final: Final) -> None:
    """Make the trace end with `final` when the interruption came before the loop could write one."""
    if path is None or not path.exists() or last_event_type(path) == "final":
        return
    from qwq_agent.agent.trace import TraceWriter

    _drop_torn_tail(path)
    writer = TraceWriter(path)
    try:
        writer.write(final)
    finally:
        writer.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line the interruption left half-written: appended to, it would spoil the next line too."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(end)


@dataclass
class Started:
    """What `run` had started when it was stopped: the agent and its trace, once they exist."""

    agent: Any = None
    trace_path: Path | None = None


def print_interrupted(console: Console, started: Started, signal_name: str, *, as_json: bool) -> None:
    """The run's summary and trace path after an interruption (or why there is none)."""
    from qwq_agent.cli.render import EventRenderer

    trace_path = started.trace_path
    result = getattr(started.agent, "result", None)
    if result is None:
        console.print(f"[yellow]{signal_name}: stopped before the run started; no trace was written[/yellow]")
        return
    final = Final(
        run_id=result.run_id,
        status=result.status,
        answer=result.answer,
        error=result.error or f"interrupted by {signal_name}",
        totals=result.totals,
    )
    ensure_final(trace_path, final)
    if as_json:
        sys.stdout.write(final.model_dump_json() + "\n")
        sys.stdout.flush()
    console.print(f"[yellow]{signal_name}: the run was stopped[/yellow]")
    EventRenderer(console).handle(final)
    console.print(f"trace: {trace_path}", markup=False, highlight=False, soft_wrap=True)
