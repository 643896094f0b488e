"""The terminal view: deltas keep paragraphs apart without piling up blank lines."""

from __future__ import annotations

import io

from rich.console import Console

from qwq_agent.agent.events import ContentDelta, ReasoningDelta, ToolCallEvent
from qwq_agent.agent.messages import ToolCall
from qwq_agent.cli.render import EventRenderer


def screen(*events) -> str:
    out = io.StringIO()
    renderer = EventRenderer(Console(file=out, width=100, color_system=None))
    for ev in events:
        renderer.handle(ev)
    return out.getvalue()


def test_blank_lines_collapse_across_deltas():
    text = screen(
        ReasoningDelta(text="think\n\n"), ReasoningDelta(text="\n\n"), ContentDelta(text="\n\nanswer")
    )
    assert text == "think\n\nanswer"


def test_a_panel_starts_on_its_own_line():
    text = screen(
        ContentDelta(text="Calling."),
        ToolCallEvent(call=ToolCall(id="c", name="python", arguments={"code": "1"})),
    )
    assert text.startswith("Calling.\n╭")
