"""Several stop strings: both clients cut at the earliest match in the text, whatever the server did.

SGLang 0.5.17 was seen (on an H200) to trim at a later stop string and leave an earlier one in the text; the
scripted server reproduces that (`stop_order="listed"`) and also a server that ignores stop strings.
"""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import example, given, settings
from hypothesis import strategies as st

from qwq_agent.agent.clients import OpenAIChatClient, SGLangClient
from qwq_agent.agent.clients.stops import StopScanner
from qwq_agent.protocols import SamplingParams, TextDelta
from qwq_agent.testing.scripted_server import ScriptedModelServer, Turn

STOPS = ["e", "a", "o"]


def reference_cut(text: str, stops: list[str]) -> tuple[str, str | None]:
    hits = [(text.find(s), len(s), s) for s in stops if s and s in text]
    if not hits:
        return text, None
    at, _, stop = min(hits)
    return text[:at], stop


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc<>/x", max_size=60),
    stops=st.lists(st.text(alphabet="abc<>/", min_size=1, max_size=4), max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
)
# A complete `<` at 1 must wait while `><<` may still begin at 0 (found by hypothesis in CI).
@example(text="><<", stops=["<", "><<"], cuts=[2])
def test_scanner_streams_exactly_the_cut_of_the_whole_text(text, stops, cuts):
    scanner = StopScanner(stops)
    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    out = "".join(scanner.feed(text[a:b]) for a, b in itertools.pairwise(bounds))
    out += "" if scanner.matched else scanner.flush()
    assert (out, scanner.matched) == reference_cut(text, stops)
    assert not any(s in out for s in stops if s)


def test_scanner_holds_back_only_a_possible_stop_prefix():
    scanner = StopScanner(["</tool_call>"])
    assert scanner.feed("call done </to") == "call done "
    assert scanner.feed("p and on") == "</top and on"
    assert scanner.feed(" </tool_") == " "
    assert scanner.feed("call> tail") == "" and scanner.matched == "</tool_call>"


async def test_native_client_cuts_at_the_earliest_stop_when_the_server_trims_a_later_one():
    # The server trims at "a" (first listed that occurs) and leaves the earlier "o": the GPU's `ologi`.
    turn = Turn(text="xylologia and more", stop_order="listed")
    async with ScriptedModelServer([turn]) as server, SGLangClient(server.url) as client:
        deltas, done = [], None
        async for event in client.generate_stream("prompt", SamplingParams(stop=STOPS)):
            if isinstance(event, TextDelta):
                deltas.append(event.text)
            else:
                done = event
    assert done is not None
    assert done.text == "xyl" == "".join(deltas)
    assert done.matched_stop == "o" and done.usage.finish_reason == "stop"


async def test_native_client_cuts_and_aborts_when_the_server_ignores_stop_strings():
    turn = Turn(text="abc</tool_call>" + " filler" * 200, stop_order="ignore", token_delay=0.005)
    async with ScriptedModelServer([turn]) as server, SGLangClient(server.url) as client:
        done = await client.generate("prompt", SamplingParams(stop=["</tool_call>"]))
        await asyncio.wait_for(server.wait_for_abort(done.rid), timeout=10)
    assert done.text == "abc" and done.matched_stop == "</tool_call>"
    assert done.usage.finish_reason == "stop"


async def test_native_client_leaves_text_without_stop_strings_whole():
    async with (
        ScriptedModelServer(["no stop strings in here, just text"]) as server,
        SGLangClient(server.url) as c,
    ):
        done = await c.generate("prompt", SamplingParams(stop=["</tool_call>", "zz"]))
    assert done.text == "no stop strings in here, just text" and done.matched_stop != "zz"


async def test_openai_client_cuts_at_the_earliest_stop_too():
    turn = Turn(text="xylologia and more", stop_order="listed")
    async with ScriptedModelServer([turn]) as server, OpenAIChatClient(server.url, model="m") as client:
        from qwq_agent.agent.messages import Message

        pieces, done = [], None
        async for event in client.stream(
            [Message(role="user", content="hi")], [], SamplingParams(stop=STOPS)
        ):
            if isinstance(event, TextDelta):
                pieces.append(event.text)
            else:
                done = event
    assert done is not None and done.text == "xyl" == "".join(pieces)
    assert done.usage.finish_reason == "stop"
