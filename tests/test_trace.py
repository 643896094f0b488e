"""Trace file details: the prompt-delta encoding and torn last lines."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qwq_agent.agent.events import Final, ModelCall
from qwq_agent.agent.trace import TraceWriter, common_prefix_len, read_trace
from qwq_agent.protocols import Usage


@given(st.text(alphabet="ab<>\n", max_size=40), st.text(alphabet="ab<>\n", max_size=40))
def test_common_prefix_len_matches_the_definition(a, b):
    expected = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    assert common_prefix_len(a, b) == expected


@given(st.lists(st.text(max_size=30), min_size=1, max_size=6))
def test_prompts_survive_the_delta_encoding(tmp_path_factory, prompts):
    path = tmp_path_factory.mktemp("t") / "trace.jsonl"
    writer = TraceWriter(path)
    for p in prompts:
        writer.write(ModelCall(prompt=p, completion="x", usage=Usage()))
    writer.close()
    assert [e.prompt for e in read_trace(path)] == prompts


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "trace.jsonl"
    writer = TraceWriter(path)
    writer.write(ModelCall(prompt="abc", completion="x", usage=Usage()))
    writer.write(Final(status="completed", answer="ok"))
    writer.close()
    with path.open("a") as fh:
        fh.write('{"type": "model_call", "prompt": "ab')
    events = read_trace(path)
    assert [e.type for e in events] == ["model_call", "final"]
