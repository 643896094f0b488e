"""Where the loop switches to grammar-constrained generation: just past a `<tool_call>` after `</think>`."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from qwq_agent.agent.constrained import CallOpenWatcher

OUTPUT = "think <tool_call> not here\n</think>\n\nOk.\n<tool_call>\n{...}"
CUT = OUTPUT.index("<tool_call>\n{") + len("<tool_call>")


def cut_position(chunks: list[str], prior: str = "") -> int | None:
    watcher, seen = CallOpenWatcher(prior), 0
    for chunk in chunks:
        at = watcher.feed(chunk)
        if at is not None:
            return seen + at
        seen += len(chunk)
    return None


def test_a_tag_inside_the_reasoning_is_not_a_call():
    assert cut_position(["think <tool_call> x"]) is None


def test_cut_lands_just_past_the_tag_in_one_piece():
    assert cut_position([OUTPUT]) == CUT


@given(st.lists(st.integers(min_value=1, max_value=len(OUTPUT)), max_size=12))
def test_cut_is_the_same_for_any_chunking(points):
    bounds = sorted({0, len(OUTPUT), *points})
    chunks = [OUTPUT[a:b] for a, b in itertools.pairwise(bounds)]
    assert cut_position(chunks) == CUT


def test_a_continuation_after_a_finished_call_waits_for_the_next_tag():
    prior = "r\n</think>\n\n<tool_call>\n{}\n</tool_call>"
    assert cut_position(["\nand more text"], prior=prior) is None
    assert cut_position(["\n<tool", "_call>"], prior=prior) == len("\n<tool_call>")


def test_a_short_previous_call_in_the_carried_tail_is_not_seen_again():
    prior = "</think><tool_call>"
    assert cut_position(["{}</tool_call>"], prior=prior) is None
