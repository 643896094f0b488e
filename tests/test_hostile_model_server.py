"""Model servers that answer with something other than an event stream get one clear, typed error.

Before: a proxy's HTML error page sent with status 200 was reported as "stream ended before the server
reported a finish reason" (and retried as a dropped connection); an event or a tool call's arguments
nested 100k deep raised a bare RecursionError out of the client; a body without a newline was buffered
whole, however large, and so was one event spread over many data lines. Each server here is real HTTP on
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwq_agent.agent.clients import NO_RETRY, OpenAIChatClient, SGLangClient, _sse
from qwq_agent.agent.clients.errors import ModelProtocolError
from qwq_agent.agent.messages import Message
from qwq_agent.agent.parser import parse
from qwq_agent.protocols import Completion, SamplingParams
from qwq_agent.testing.raw_server import RawServer


def _html(writer: asyncio.StreamWriter) -> None:
    writer.write(b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body>\n</html>\n")


def _deep(writer: asyncio.StreamWriter) -> None:
    writer.write(b"data: " + b"[" * 200_000 + b"\n\n")


async def _endless_line(writer: asyncio.StreamWriter) -> None:
    chunk = b"data: " + b"x" * (1 << 20)
    for _ in range(_sse.MAX_LINE_CHARS // (1 << 20) + 8):  # a little past the limit, then it would go on
        writer.write(chunk)
        await writer.drain()
        chunk = b"x" * (1 << 20)


async def _native(url: str) -> Completion:
    async with SGLangClient(url, retry=NO_RETRY) as client:
        return await asyncio.wait_for(client.generate("hi", SamplingParams(max_new_tokens=8)), timeout=120)


async def _openai(url: str) -> list[object]:
    async with OpenAIChatClient(url, model="m", retry=NO_RETRY) as client:
        stream = client.stream([Message(role="user", content="hi")], [], SamplingParams(max_new_tokens=8))
        return await asyncio.wait_for(_all(stream), timeout=120)


async def _all(events: AsyncIterator[object]) -> list[object]:
    return [ev async for ev in events]


@pytest.mark.parametrize("call", [_native, _openai], ids=["native", "openai"])
async def test_an_html_page_with_status_200_is_named_for_what_it_is(call) -> None:
    async with RawServer("text/html", _html) as server:
        with pytest.raises(ModelProtocolError) as err:
            await call(server.url)
    message = str(err.value)
    assert "text/html" in message and "not an event stream" in message and "502 Bad Gateway" in message


@pytest.mark.parametrize("call", [_native, _openai], ids=["native", "openai"])
async def test_an_event_nested_too_deeply_is_a_protocol_error(call) -> None:
    async with RawServer("text/event-stream", _deep) as server:
        with pytest.raises(ModelProtocolError, match="nested too deeply"):
            await call(server.url)


async def test_a_line_without_end_is_refused_at_the_limit_not_buffered_whole() -> None:
    async with RawServer("text/event-stream", _endless_line) as server:
        with pytest.raises(ModelProtocolError, match="a line of more than"):
            await _native(server.url)


async def _endless_event(writer: asyncio.StreamWriter) -> None:
    # Each line is far under the line limit; together they pass the event limit, and no blank line ends it.
    line = b"data: " + b"x" * (1 << 20) + b"\n"
    for _ in range(_sse.MAX_EVENT_CHARS // (1 << 20) + 8):
        writer.write(line)
        await writer.drain()
    writer.write(b"\n")


async def test_an_event_over_many_data_lines_is_refused_at_the_limit_not_buffered_whole() -> None:
    # Before, only a line was bounded: the data lines of one event were buffered until a blank line came.
    async with RawServer("text/event-stream", _endless_event) as server:
        with pytest.raises(ModelProtocolError, match="an event of more than"):
            await _native(server.url)


async def test_an_event_over_several_data_lines_is_joined() -> None:
    def write(writer: asyncio.StreamWriter) -> None:
        meta = {"id": "x", "finish_reason": {"type": "stop"}, "prompt_tokens": 1, "completion_tokens": 1}
        event = json.dumps({"text": "fine", "output_ids": [1], "meta_info": meta}, indent=1)
        writer.write(b"".join(b"data: " + line.encode() + b"\n" for line in event.splitlines()))
        writer.write(b"\ndata: [DONE]\n\n")

    async with RawServer("text/event-stream", write) as server:
        completion = await _native(server.url)
    assert completion.text == "fine"


def test_tool_call_arguments_nested_too_deeply_become_a_parse_error_not_a_crash() -> None:
    from qwq_agent.agent.clients.openai_chat import format_tool_call

    result = parse("ok\n</think>\n\n" + format_tool_call("shell", "[" * 100_000))
    assert not result.tool_calls and "nested too deeply" in result.errors[0].message


def _huge_int(writer: asyncio.StreamWriter) -> None:
    writer.write(b'data: {"text": "x", "n": ' + b"1" * 5000 + b"}\n\n")


@pytest.mark.parametrize("call", [_native, _openai], ids=["native", "openai"])
async def test_an_integer_past_pythons_digit_limit_is_a_protocol_error(call) -> None:
    # json.loads raises a plain ValueError (not JSONDecodeError) past 4300 digits; it escaped the client.
    async with RawServer("text/event-stream", _huge_int) as server:
        with pytest.raises(ModelProtocolError, match="malformed stream event"):
            await call(server.url)


def test_tool_call_arguments_with_a_huge_integer_become_a_parse_error_not_a_crash() -> None:
    from qwq_agent.agent.clients.openai_chat import format_tool_call

    text = format_tool_call("shell", '{"n": ' + "1" * 5000 + "}")  # raised ValueError before
    result = parse("ok\n</think>\n\n" + text)
    assert not result.tool_calls and "4300" in result.errors[0].message


def test_the_chat_delta_writer_stays_linear_on_a_long_stream() -> None:
    from qwq_agent.agent.clients.openai_chat import _RawWriter

    # 1 MB of reasoning and of call arguments in 16-character deltas took 5 s (strings regrown per delta).
    writer, piece, out = _RawWriter(), "x" * 16, []
    t0 = time.process_time()
    for _ in range(1 << 16):
        out.append(writer.feed({"reasoning_content": piece}))
    out.append(writer.feed({"content": "done"}))
    for i in range(1 << 16):
        writer.feed(
            {"tool_calls": [{"index": 0, "function": {"name": "f" if i == 0 else "", "arguments": piece}}]}
        )
    out.append(writer.finish())
    assert time.process_time() - t0 < 10  # a bound on runaway work (well under 1 s expected), not a timing
    text = "".join(out)
    assert text.startswith("x" * (1 << 20) + "\n</think>\n\ndone\n<tool_call>\n")
    assert text.endswith('"arguments": ' + "x" * (1 << 20) + "}\n</tool_call>")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="ab\r\n\u2028 :", min_size=1, max_size=8), max_size=8))
def test_lines_are_split_at_sse_line_ends_only(chunks: list[str]) -> None:
    # The SSE spec's line ends are CRLF, LF and CR; U+2028 (and U+0085, U+2029...), which str.splitlines
    # and httpx's aiter_lines also break at, stay inside the line (JSON writers leave them raw).
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk.encode()

    async def lines() -> list[str]:
        return [line async for line in _sse._bounded_lines(httpx.Response(200, content=body()))]

    expected = re.split("\r\n|\r|\n", "".join(chunks))
    if expected[-1] == "":  # the text after the last line end, when there is any
        expected.pop()
    assert asyncio.run(lines()) == expected


async def test_a_normal_stream_still_reads() -> None:
    def ok(writer: asyncio.StreamWriter) -> None:
        meta = {"id": "x", "finish_reason": {"type": "stop"}, "prompt_tokens": 1, "completion_tokens": 1}
        writer.write(b"data: " + json.dumps({"text": "fine", "output_ids": [1], "meta_info": meta}).encode())
        writer.write(b"\r\n\r\ndata: [DONE]\r\n\r\n")

    async with RawServer("text/event-stream", ok) as server:
        completion = await _native(server.url)
    assert completion.text == "fine"


def _lying_native(writer: asyncio.StreamWriter) -> None:
    # Five tokens streamed (cumulative ids), then counts that would give back budget or crash a client.
    for i in range(1, 6):
        meta = {"id": "x", "finish_reason": None, "prompt_tokens": "many", "completion_tokens": i}
        if i == 5:
            meta = {**meta, "finish_reason": {"type": "length"}, "completion_tokens": -(10**9)}
            meta["cached_tokens"] = float("inf")
        event = {"text": "tok " * i, "output_ids": list(range(i)), "meta_info": meta}
        writer.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    writer.write(b"data: [DONE]\n\n")


def _lying_openai(writer: asyncio.StreamWriter) -> None:
    chunk = {"choices": [{"delta": {"content": "tok "}, "finish_reason": None}]}
    writer.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    usage = {"prompt_tokens": 12, "completion_tokens": -500, "prompt_tokens_details": {"cached_tokens": 99}}
    end = {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": usage}
    writer.write(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")


async def test_lying_token_counts_cannot_give_back_budget_or_crash_the_client() -> None:
    from qwq_agent.agent.budgets import Budget, BudgetTracker

    async with RawServer("text/event-stream", _lying_native) as server:
        native = await _native(server.url)
    # The five ids received are a floor the server cannot talk the count below; text and inf read as 0.
    assert native.usage.completion_tokens == 5
    assert native.usage.prompt_tokens == 0 and native.usage.cached_tokens == 0

    async with RawServer("text/event-stream", _lying_openai) as server:
        events = await _openai(server.url)
    openai = next(ev for ev in events if isinstance(ev, Completion))
    assert openai.usage.completion_tokens == 0 and openai.usage.prompt_tokens == 12
    assert openai.usage.cached_tokens == 12  # never more cached than the prompt holds

    from qwq_agent.agent.clients.counts import MAX_COUNT, server_count

    # A JSON integer too long for a float, and other shapes a count can take in JSON.
    assert server_count(10**400) == MAX_COUNT and server_count("1e400") == 0
    assert server_count(True) == 0 and server_count([3]) == 0 and server_count("7") == 7

    tracker = BudgetTracker(budget=Budget(max_generated_tokens=10))
    for usage in (native.usage, openai.usage, native.usage):
        tracker.account(usage)
    assert tracker.generated_tokens == 10 and tracker.exceeded() == ("generated_tokens", 10.0, 10.0)


def _sglang_abort(writer: asyncio.StreamWriter, reason: dict) -> None:
    meta = {"id": "x", "finish_reason": None, "prompt_tokens": 5, "completion_tokens": 1}
    writer.write(
        b"data: " + json.dumps({"text": "The answer is 3", "output_ids": [0], "meta_info": meta}).encode()
    )
    meta = {**meta, "completion_tokens": 1, "finish_reason": reason}
    writer.write(
        b"\n\ndata: " + json.dumps({"text": "The answer is 3", "output_ids": [0], "meta_info": meta}).encode()
    )
    writer.write(b"\n\ndata: [DONE]\n\n")


def _openai_abort(writer: asyncio.StreamWriter) -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "The answer is 3"}, "finish_reason": None}]}
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "abort"}]}
    writer.write(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: " + json.dumps(end).encode())
    writer.write(b"\n\ndata: [DONE]\n\n")


async def test_a_generation_the_server_aborted_is_a_retryable_error_with_its_partial_text() -> None:
    from qwq_agent.agent.clients import ModelServerError

    kv = {"type": "abort", "message": "out of KV cache memory"}
    async with RawServer("text/event-stream", lambda w: _sglang_abort(w, kv)) as server:
        with pytest.raises(ModelServerError, match="aborted the generation: out of KV") as info:
            await _native(server.url)
    assert info.value.retryable and info.value.partial_text == "The answer is 3"

    # a request that can never succeed keeps the server's own status: not retried
    too_long = {"type": "abort", "message": "input is longer than the context", "status_code": 400}
    async with RawServer("text/event-stream", lambda w: _sglang_abort(w, too_long)) as server:
        with pytest.raises(ModelServerError) as info:
            await _native(server.url)
    assert not info.value.retryable

    async with RawServer("text/event-stream", _openai_abort) as server:
        with pytest.raises(ModelServerError, match="aborted the generation") as info:
            await _openai(server.url + "/v1")
    assert info.value.retryable and info.value.partial_text == "The answer is 3"


async def test_a_line_separator_inside_an_event_does_not_cut_it() -> None:
    # SGLang writes events with orjson, which leaves U+2028, U+2029 and U+0085 raw inside JSON strings.
    text = "Lines: a\u2028b, c\u2029d and e\x85f\n</think>\n\nok"

    def write(writer: asyncio.StreamWriter) -> None:
        meta = {"id": "x", "prompt_tokens": 3, "completion_tokens": 1, "cached_tokens": 0,
                "finish_reason": {"type": "stop", "matched": 151645}}  # fmt: skip
        event = {"text": text, "output_ids": [1], "meta_info": meta}
        writer.write(b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\ndata: [DONE]\n\n")

    async with RawServer("text/event-stream", write) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            done = await client.generate("hi")
    assert done.text == text


def _events(*events: dict):
    def write(writer: asyncio.StreamWriter) -> None:
        for event in events:
            writer.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        writer.write(b"data: [DONE]\n\n")

    return write


def _call(**fields: object) -> dict:
    call = {"index": 0, "id": "c0", "function": {"name": "f", "arguments": "{}"}, **fields}
    return {"choices": [{"delta": {"tool_calls": [call]}, "finish_reason": None}]}


_CALLS_END = {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}
_STOP = {"type": "stop", "matched": 151645}


def _native_event(meta: dict | None = None, **fields: object) -> dict:
    return {"text": "x", "output_ids": [1], "meta_info": {"finish_reason": _STOP, **(meta or {})}, **fields}


# Each escaped the client as an AttributeError, a TypeError or a pydantic ValidationError (from `Usage` or
# `SGLangCompletion`): not a ModelError, so the loop did not retry the turn, and the CLI printed pydantic's dump.
_WRONG_TYPES = [
    (_openai, "choices", [{"choices": "abc"}]),
    (_openai, "choices[]", [{"choices": [None]}]),
    (_openai, "choices[].delta", [{"choices": [{"delta": "hi"}]}]),
    (_openai, "choices[].finish_reason", [{"choices": [{"delta": {"content": "x"}, "finish_reason": {"type": "stop"}}]}]),
    (_openai, "delta.tool_calls", [{"choices": [{"delta": {"tool_calls": {"index": 0}}}]}, _CALLS_END]),
    (_openai, "delta.tool_calls[]", [{"choices": [{"delta": {"tool_calls": [None]}}]}, _CALLS_END]),
    (_openai, "delta.tool_calls[].index", [_call(index="a"), _CALLS_END]),
    (_openai, "delta.tool_calls[].id", [_call(id=7), _CALLS_END]),
    (_openai, "delta.tool_calls[].function", [_call(function="f"), _CALLS_END]),
    (_openai, "delta.tool_calls[].function.name", [_call(function={"name": ["f"]}), _CALLS_END]),
    (_openai, "delta.tool_calls[].function.arguments", [_call(function={"name": "f", "arguments": {"a": 1}}), _CALLS_END]),
    (_native, "output_ids", [_native_event(output_ids=5)]),
    (_native, "output_ids[]", [_native_event(output_ids=[1, "2"])]),
    (_native, "meta_info.finish_reason", [_native_event({"finish_reason": ["stop"]})]),
    (_native, "meta_info.finish_reason.type", [_native_event({"finish_reason": {"type": 1}})]),
]  # fmt: skip


@pytest.mark.parametrize(("call", "field", "events"), _WRONG_TYPES, ids=[f for _, f, _ in _WRONG_TYPES])
async def test_an_event_field_of_the_wrong_type_is_a_protocol_error_naming_it(call, field, events) -> None:
    async with RawServer("text/event-stream", _events(*events)) as server:
        with pytest.raises(ModelProtocolError, match=re.escape(f"the server's {field} is not ")) as err:
            await call(server.url)
    assert "\n" not in str(err.value)


async def test_fields_only_for_the_record_or_null_are_read_as_absent() -> None:
    # A null tool call index is a call of its own (as a missing one is); a latency or a matched stop of
    # the wrong type is unknown. Before: a TypeError and pydantic errors.
    async with RawServer("text/event-stream", _events(_call(index=None), _CALLS_END)) as server:
        events = await _openai(server.url)
    done = next(ev for ev in events if isinstance(ev, Completion))
    assert done.text == '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'

    odd = _native_event({"e2e_latency": "n/a", "finish_reason": {"type": "stop", "matched": ["</s>"]}})
    async with RawServer("text/event-stream", _events(odd)) as server:
        native = await _native(server.url)
    assert native.text == "x" and native.usage.finish_reason == "stop"
    assert native.server_latency_s is None and native.matched_stop is None


async def test_a_run_against_a_server_sending_odd_events_ends_with_one_line_naming_the_field() -> None:
    from qwq_agent.agent.loop import Agent, AgentConfig

    odd = _events({"choices": [{"delta": {"content": "x"}, "finish_reason": {"type": "stop"}}]})
    async with RawServer("text/event-stream", odd) as server:
        async with OpenAIChatClient(server.url, model="m", retry=NO_RETRY) as client:
            config = AgentConfig(check_language=False, model_retries=1, model_retry_backoff_s=0.0)
            result = await asyncio.wait_for(Agent(client, [], config=config).run("hi"), timeout=60)
    assert result.status == "model_error" and server.requests == 2  # retried as a model failure
    assert result.error is not None and "\n" not in result.error
    assert result.error.startswith("ModelProtocolError: the server's choices[].finish_reason is not a string")
