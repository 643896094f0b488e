"""The terminal view: deltas keep paragraphs apart without piling up blank lines."""

from __future__ import annotations

import io

from rich.console import Console

from qwq_agent.agent.events import (
    BudgetExceeded,
    ContentDelta,
    Final,
    ReasoningDelta,
    ToolCallEvent,
    ToolResultEvent,
)
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


def test_an_image_whose_data_is_not_base64_is_dropped_with_a_note_and_the_next_one_saved(tmp_path):
    # An MCP server may send any text as an image's data; it used to raise binascii.Error out of the live view.
    out = io.StringIO()
    renderer = EventRenderer(Console(file=out, width=100, color_system=None), image_dir=tmp_path)
    png = "iVBORw0KGgo=\n"  # the PNG signature, with a line break as some encoders write
    images = ["not base64 at all!", "iVBO\u00e9Rw0K", png]
    renderer.handle(ToolResultEvent(call_id="c", name="shot", text="see", images=images, duration_s=0.1))
    text = out.getvalue()
    assert text.count("not saved: its data is not valid base64") == 2
    assert [p.name for p in renderer.saved_images] == ["image-3.png"]
    assert renderer.saved_images[0].read_bytes() == b"\x89PNG\r\n\x1a\n"


def test_an_unfinished_answer_is_not_shown_as_the_answer():
    cut = screen(Final(status="truncated_answer", answer="The answer is 42 and the", error="cut off"))
    assert "answer, unfinished (truncated_answer)" in cut and "The answer is 42 and the" in cut
    assert "answer, unfinished" not in screen(Final(status="completed", answer="42"))


def test_a_long_runs_token_counts_show_every_digit():
    # `:g` kept six significant digits: 5,504,887 prompt tokens showed as 5.50489e+06.
    totals = {
        "steps": 1234.0,
        "prompt_tokens": 5504887.0,
        "cached_tokens": 0.0,
        "generated_tokens": 1000000.0,
    }
    text = screen(
        BudgetExceeded(budget="generated_tokens", limit=1000000, used=1000123),
        Final(status="budget_exceeded", totals={**totals, "wall_s": 3600.5}),
    )
    assert "5,504,887" in text and "1,000,000" in text and "1,234" in text and "e+0" not in text
    assert "used up: 1,000,123 of 1,000,000" in text
