"""A large output with many tags costs the parser the same whether it is fed whole or in chunks.

`StreamParser` used to re-slice its whole buffer after every tag, so one `feed()` of a big text (`parse`,
`qwq-agent parse`, the trace viewer's replay, a large delta) cost tags x length: 790 KB holding 10,000
tool calls took 28.5 s whole and 2.3 s in 16-character chunks. `merge_deltas` likewise re-joined a growing
string for every delta. Both are compared in CPU time of this process against work that is linear for
sure, so a loaded machine slows both sides alike; the margins are wide both ways.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from qwq_agent.agent.parser import ContentDelta, ReasoningDelta, StreamParser, merge_deltas

# A looping model writing the same call in its reasoning, never closing </think>: the case the loop
# detector exists for, and the worst for a search for </think> that starts over after every tag.
BLOCK = '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>\n'
TEXT = "Let me try again.\n" + BLOCK * 5000


def _cpu(work: Callable[[], object]) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def _parse(text: str, chunk: int) -> StreamParser:
    parser = StreamParser()
    for i in range(0, len(text), chunk):
        parser.feed(text[i : i + chunk])
    parser.close()
    return parser


def test_whole_text_costs_no_more_than_16_character_chunks() -> None:
    whole, chunked = _parse(TEXT, len(TEXT)), _parse(TEXT, 16)
    assert whole.result() == chunked.result()
    assert len(whole.result().reasoning_tool_calls) == 5000
    # 400 KB, 5,000 calls: whole was ~6x the chunked time before (and grew with the size); now it is less.
    # Bounded at 3x: CPU time on a loaded machine (CI's other workers, cache and frequency) once put the
    # linear whole parse at 1.2x the chunked one.
    assert _cpu(lambda: _parse(TEXT, len(TEXT))) < 3 * _cpu(lambda: _parse(TEXT, 16))


def test_merging_many_deltas_is_linear() -> None:
    start = time.process_time()
    pieces = [ReasoningDelta(text="x" * 100) for _ in range(10_000)] + [ContentDelta(text="c")]
    building = time.process_time() - start
    merged: list[object] = []
    merging = _cpu(lambda: merged.extend(merge_deltas(pieces)))
    assert merged == [ReasoningDelta(text="x" * 1_000_000), ContentDelta(text="c")]
    # Re-joining a growing string per delta copied 5 GB here (~2 s, 70x the building); one join copies 1 MB.
    assert merging < 5 * building + 0.05
