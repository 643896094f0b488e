"""What `run` shows and keeps when a signal (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT) stopped it: the summary, the
trace path, a final event."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from qwq_agent.agent.events import Final
from qwq_agent.cli.stdio import json_for_stdout, write_line

if TYPE_CHECKING:
    from qwq_agent.agent.loop import Agent


@dataclass
class Started:
    """What `run` had started when it was stopped: the agent and its trace, once they exist."""

    agent: Agent | None = None
    trace_path: Path | None = None
    ended: bool = False  # the run's own `final` was shown (the signal came during the copy-back)


def print_interrupted(console: Console, started: Started, signal_name: str, *, as_json: bool) -> None:
    """The run's summary and trace path after an interruption (or why there is none)."""
    from qwq_agent.cli.render import EventRenderer

    agent = started.agent
    if started.ended:  # its summary (or, with --json, its `final` line) is out already: not a second one
        console.print(f"[yellow]{signal_name}: stopped after the run had ended[/yellow]")
        console.print(f"trace: {started.trace_path}", markup=False, highlight=False, soft_wrap=True)
        return
    result = None
    if agent is not None and (agent.result is not None or getattr(agent, "_running", False)):
        # The loop usually wrote `final` when its task was cancelled; if not, this writes it (once) and
        # closes the trace, so the file always ends with one.
        result = agent.end_run("interrupted", f"interrupted by {signal_name}") or agent.result
    exploration = agent.exploration_trace if agent is not None else None
    if result is None and exploration is not None:
        _print_exploration_interrupted(console, exploration, signal_name, as_json=as_json)
        return
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
    trace_path = result.trace_path or started.trace_path
    if as_json:
        write_line(json_for_stdout(final.model_dump_json()))
    console.print(f"[yellow]{signal_name}: the run was stopped[/yellow]")
    EventRenderer(console).handle(final)
    console.print(f"trace: {trace_path}", markup=False, highlight=False, soft_wrap=True)


def _print_exploration_interrupted(console: Console, trace: Path, signal_name: str, *, as_json: bool) -> None:
    """`run --branches` stopped: the exploration's summary (its trace's `final`) and where it is traced.

    The agent's own run never started (the branches run as child agents), but the exploration wrote
    its trace and one per branch; the cancellation, as it unwound, ended each with `final`.
    """
    from qwq_agent.agent.trace import TraceError, read_trace
    from qwq_agent.cli.render import EventRenderer

    try:
        events = read_trace(trace, prompts="stored")
    except (TraceError, OSError, ValueError):  # unreadable now: the path is still worth printing
        events = []
    final = events[-1] if events and isinstance(events[-1], Final) else None
    if as_json and final is not None:
        write_line(json_for_stdout(final.model_dump_json()))
    console.print(f"[yellow]{signal_name}: the exploration was stopped[/yellow]")
    if final is not None:
        EventRenderer(console).handle(final)
    console.print(
        f"trace: {trace} (one file per branch beside it)", markup=False, highlight=False, soft_wrap=True
    )
