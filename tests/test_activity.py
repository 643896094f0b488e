"""Issue 13: the terminal shows what is being waited on, for how long, and a running tool's latest
output; logs and pipes (not a terminal) get none of it."""

from __future__ import annotations

import io
import time

from rich.console import Console

from qwq_agent.agent.events import (
    Final,
    ReasoningDelta,
    RunStarted,
    ToolCallEvent,
    ToolOutputDelta,
    ToolResultEvent,
    ToolStarted,
)
from qwq_agent.agent.messages import ToolCall
from qwq_agent.cli.activity import LINE_CHARS, TAIL_LINES, Activity, format_elapsed
from qwq_agent.cli.render import EventRenderer


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, force_terminal=True, color_system=None), out


def drawn(activity: Activity) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    with console.capture() as cap:
        console.print(activity)
    return cap.get()


def test_the_status_follows_the_run_on_a_terminal():
    console, out = terminal()
    r = EventRenderer(console)
    try:
        r.handle(RunStarted(task="t", model="m", tools=["shell"]))
        assert r.activity.active and "waiting for the model's first token · 0s" in out.getvalue()
        r.handle(ReasoningDelta(text="thinking"))
        assert not r.activity.active  # text streams: no status inside a line
        r.handle(ToolCallEvent(call=ToolCall(id="c1", name="shell", arguments={"command": "make"})))
        r.handle(ToolStarted(call_id="c1", name="shell"))
        assert r.activity.label == "running shell"
        r.handle(ToolOutputDelta(call_id="c1", name="shell", text="compiling a.c\ncompiling b"))
        assert "compiling a.c" in out.getvalue() and "compiling b" in out.getvalue()  # drawn as it arrives
        r.handle(ToolResultEvent(call_id="c1", name="shell", text="done"))
        assert r.activity.label == "waiting for the model's first token"
        r.handle(Final(status="completed", answer="ok"))
        assert not r.activity.active
    finally:
        r.close()


def test_concurrent_tools_are_all_named_until_the_last_ends():
    r = EventRenderer(Console(file=io.StringIO(), force_terminal=True))
    try:
        r.handle(ToolStarted(call_id="a", name="shell"))
        r.handle(ToolStarted(call_id="b", name="fetch_url"))
        assert r.activity.label == "running shell, fetch_url"
        r.handle(ToolResultEvent(call_id="a", name="shell", text=""))
        assert r.activity.label == "running fetch_url"
    finally:
        r.close()


def test_nothing_of_the_status_reaches_a_log():
    out = io.StringIO()
    r = EventRenderer(Console(file=out, width=100, color_system=None))  # not a terminal
    r.handle(RunStarted(task="t", model="m", tools=[]))
    r.handle(ToolStarted(call_id="c", name="shell"))
    r.handle(ToolOutputDelta(call_id="c", name="shell", text="secret progress\n"))
    r.close()
    assert "waiting" not in out.getvalue() and "running" not in out.getvalue()
    assert "secret progress" not in out.getvalue()  # the result panel shows the output, once


def test_elapsed_time_is_shown_as_a_clock():
    a = Activity(Console(file=io.StringIO()), enabled=False)
    a.start("building the sandbox image")
    a.since = time.monotonic() - 75.5
    assert "building the sandbox image · 1m15s" in drawn(a)
    assert [format_elapsed(s) for s in (0.4, 59.9, 3600, 3725)] == ["0s", "59s", "1h00m", "1h02m"]


def test_hostile_output_keeps_the_status_small_and_inert():
    a = Activity(Console(file=io.StringIO()), enabled=False)
    a.start("running shell")
    a.output("x" * 1_000_000)  # a megabyte without a newline
    a.output("\x1b[2J\x1b]0;pwned\x07\r\n" * 50 + "\x00\x01binary\xff\n")
    lines = drawn(a).splitlines()
    assert len(lines) <= 1 + TAIL_LINES
    assert all(len(line) <= LINE_CHARS + 4 for line in lines)
    assert not any("\x1b" in line or "\x07" in line or "\x00" in line for line in lines)
    assert "binary" in lines[-1]
