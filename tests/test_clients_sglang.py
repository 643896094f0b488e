"""SGLangClient against the scripted server over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import pytest

from qwq_agent.agent.clients import (
    ModelConnectionError,
    ModelProtocolError,
    ModelServerError,
    ModelTimeoutError,
    RetryPolicy,
    SGLangClient,
    SGLangCompletion,
)
from qwq_agent.protocols import Completion, SamplingParams, TextDelta
from qwq_agent.testing.scripted_server import ScriptedModelServer, Turn

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.0, jitter=0.0)
ANSWER = "Let me add.\n2 + 2 = 4\n</think>\n\nThe answer is 4."


async def collect(agen):
    deltas, completion = [], None
    async for event in agen:
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            assert completion is None, "exactly one completion"
            completion = event
    assert isinstance(completion, Completion)
    return deltas, completion


@pytest.mark.parametrize("incremental_server", [False, True])
@pytest.mark.parametrize("client_mode", [None, "match"])
async def test_streams_text_prompt_in_both_streaming_modes(incremental_server, client_mode):
    async with ScriptedModelServer([ANSWER], incremental=incremental_server) as server:
        mode = incremental_server if client_mode == "match" else None
        async with SGLangClient(server.url, incremental=mode) as client:
            deltas, done = await collect(
                client.generate_stream("<|im_start|>user\nwhat is 2+2?", SamplingParams())
            )
    assert len(deltas) > 5, "streamed token by token"
    assert "".join(deltas) == ANSWER == done.text
    assert isinstance(done, SGLangCompletion)
    assert done.usage.finish_reason == "stop"
    assert done.usage.completion_tokens == len(deltas)
    assert done.usage.prompt_tokens == len(server.requests[0].prompt_ids) > 0
    assert done.usage.ttft_s is not None and done.usage.latency_s is not None
    assert done.prompt == "<|im_start|>user\nwhat is 2+2?"
    sent = server.requests[0]
    assert sent.rid == done.rid and sent.stream
    assert sent.sampling_params["temperature"] == 0.6
    assert sent.sampling_params["top_p"] == 0.95
    assert sent.sampling_params["top_k"] == 40
    assert sent.sampling_params["min_p"] == 0.0


async def test_input_ids_prompt_and_output_ids():
    async with ScriptedModelServer(["a b c"]) as server, SGLangClient(server.url) as client:
        done = await client.generate([1, 2, 3, 4], SamplingParams())
    assert server.requests[0].input_ids == [1, 2, 3, 4]
    assert "text" not in server.requests[0].body
    assert done.usage.prompt_tokens == 4 and done.prompt is None
    assert done.text == "a b c" and len(done.output_ids) == done.usage.completion_tokens


async def test_cached_tokens_grow_with_a_repeated_prefix():
    system = "<|im_start|>system\n" + "You are a careful agent. " * 30 + "<|im_end|>\n"
    async with (
        ScriptedModelServer(["one\n</think>\n\nfirst", "two"]) as server,
        SGLangClient(server.url) as client,
    ):
        first = await client.generate(system + "<|im_start|>user\nhi<|im_end|>\n", SamplingParams())
        second = await client.generate(system + "<|im_start|>user\nhello again<|im_end|>\n", SamplingParams())
    assert first.usage.cached_tokens == 0
    system_tokens = len(server.tokenizer.encode(system))
    assert second.usage.cached_tokens >= system_tokens - 1
    assert second.usage.cached_tokens < second.usage.prompt_tokens


async def test_stop_string_trims_output_and_reports_the_match():
    turn = 'I will call it.\n</think>\n\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>ignored'
    async with ScriptedModelServer([turn]) as server, SGLangClient(server.url) as client:
        done = await client.generate("p", SamplingParams(stop=["</tool_call>"], stop_token_ids=[151645]))
    assert done.text.endswith('{"name": "f", "arguments": {}}\n')
    assert done.matched_stop == "</tool_call>" and done.usage.finish_reason == "stop"
    assert server.requests[0].sampling_params["stop"] == ["</tool_call>"]
    assert server.requests[0].sampling_params["stop_token_ids"] == [151645]


async def test_length_limit_reports_length():
    async with ScriptedModelServer(["a b c d e f g h"]) as server, SGLangClient(server.url) as client:
        done = await client.generate("p", SamplingParams(max_new_tokens=3))
    assert done.usage.finish_reason == "length" and done.usage.completion_tokens == 3


async def test_constraints_are_sent_and_at_most_one_is_allowed():
    schema = json.dumps({"type": "object"})
    async with ScriptedModelServer(["{}"]) as server, SGLangClient(server.url) as client:
        await client.generate("p", SamplingParams(json_schema=schema))
        with pytest.raises(ValueError, match="at most one"):
            await client.generate("p", SamplingParams(json_schema=schema, regex="x"))
    assert server.requests[0].sampling_params["json_schema"] == schema
    assert "regex" not in server.requests[0].sampling_params and len(server.requests) == 1


async def test_5xx_before_output_is_retried():
    async with ScriptedModelServer([Turn(http_status=500), Turn(http_status=503), "fine"]) as server:
        async with SGLangClient(server.url, retry=FAST_RETRY) as client:
            done = await client.generate("p")
    assert done.text == "fine" and len(server.requests) == 3
    assert len({r.rid for r in server.requests}) == 3, "each attempt has its own rid"


async def test_retries_give_up_with_a_typed_error():
    async with ScriptedModelServer([Turn(http_status=500)] * 3) as server:
        async with SGLangClient(server.url, retry=FAST_RETRY) as client:
            with pytest.raises(ModelServerError) as info:
                await client.generate("p")
    assert info.value.status_code == 500 and len(server.requests) == 3


async def test_4xx_is_not_retried():
    async with ScriptedModelServer([Turn(http_status=400), "never"]) as server:
        async with SGLangClient(server.url, retry=FAST_RETRY) as client:
            with pytest.raises(ModelServerError) as info:
                await client.generate("p")
    assert info.value.status_code == 400 and len(server.requests) == 1


async def test_unreachable_server_is_a_connection_error():
    server = ScriptedModelServer()
    await server.start()
    url = server.url
    await server.stop()  # nothing listens on that port any more
    async with SGLangClient(url, retry=FAST_RETRY) as client:
        with pytest.raises(ModelConnectionError):
            await client.generate("p")
        assert await client.health() is False


async def test_drop_before_output_is_retried():
    async with ScriptedModelServer([Turn("lost", drop_after=0), "kept"]) as server:
        async with SGLangClient(server.url, retry=FAST_RETRY) as client:
            done = await client.generate("p")
    assert done.text == "kept" and len(server.requests) == 2


async def test_drop_mid_stream_raises_with_partial_text_and_aborts():
    async with ScriptedModelServer([Turn("alpha beta gamma delta", drop_after=3), "unused"]) as server:
        async with SGLangClient(server.url, retry=FAST_RETRY) as client:
            seen = []
            with pytest.raises(ModelConnectionError) as info:
                async for event in client.generate_stream("p"):
                    if isinstance(event, TextDelta):
                        seen.append(event.text)
    expected = "".join(piece for _, piece in server.tokenizer.pieces("alpha beta gamma delta")[:3])
    assert info.value.partial_text == "".join(seen) == expected and expected
    assert len(server.requests) == 1, "no retry once output arrived"
    assert server.aborted_rids == [server.requests[0].rid]


async def test_malformed_event_is_a_protocol_error_with_partial_text():
    async with ScriptedModelServer([Turn("one two three", malformed_after=2)]) as server:
        async with SGLangClient(server.url, retry=FAST_RETRY) as client:
            with pytest.raises(ModelProtocolError) as info:
                await client.generate("p")
    assert info.value.partial_text == "".join(p for _, p in server.tokenizer.pieces("one two three")[:2])


async def test_error_event_mid_stream_is_a_server_error():
    async with ScriptedModelServer([Turn("one two three", error_event_after=1)]) as server:
        async with SGLangClient(server.url, retry=FAST_RETRY) as client:
            with pytest.raises(ModelServerError, match="mid-stream") as info:
                await client.generate("p")
    assert info.value.partial_text == "one"


async def test_cancellation_aborts_the_request_on_the_server():
    async with ScriptedModelServer([Turn("a b c d e f", hold_after=2)]) as server:
        async with SGLangClient(server.url) as client:
            got_two = asyncio.Event()

            async def consume():
                n = 0
                async for event in client.generate_stream("p", rid="cancel-me"):
                    n += isinstance(event, TextDelta)
                    if n == 2:
                        got_two.set()

            task = asyncio.create_task(consume())
            await got_two.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert server.aborted_rids == ["cancel-me"]


async def test_closing_the_stream_early_aborts_the_request():
    async with ScriptedModelServer([Turn("a b c d e f", hold_after=2)]) as server:
        async with SGLangClient(server.url) as client:
            stream = client.generate_stream("p", rid="stop-early")
            async for _event in stream:
                break
            await stream.aclose()
    assert server.aborted_rids == ["stop-early"]


async def test_silent_server_times_out_cleanly_and_is_aborted():
    async with ScriptedModelServer([Turn("late", hold_after=0)]) as server:
        async with SGLangClient(server.url, read_timeout=0.3, retry=FAST_RETRY) as client:
            with pytest.raises(ModelTimeoutError):
                await client.generate("p")
    assert len(server.requests) == 1, "timeouts are not retried"
    assert server.aborted_rids == [server.requests[0].rid]


async def test_server_info_and_health():
    async with ScriptedModelServer(max_total_num_tokens=12345, ready=False) as server:
        async with SGLangClient(server.url) as client:
            assert await client.health() is False
            server.set_ready()
            assert await client.health() is True
            info = await client.server_info()
    assert info.max_total_num_tokens == 12345 and info.context_length == 16384
    assert info.model_path == "Qwen/QwQ-32B"


async def test_stream_renders_messages_with_the_chat_template():
    chat_format = pytest.importorskip("qwq_agent.agent.chat_format")
    from qwq_agent.agent.messages import Message, ToolSpec

    messages = [Message(role="user", content="What is 2+2?")]
    tools = [ToolSpec(name="add", parameters={"type": "object", "properties": {"a": {"type": "integer"}}})]
    async with ScriptedModelServer([ANSWER]) as server, SGLangClient(server.url) as client:
        _, done = await collect(client.stream(messages, tools, SamplingParams(), prefix="Okay"))
    expected = chat_format.render(messages, tools, add_generation_prompt=True, profile="qwq-32b") + "Okay"
    assert done.prompt == expected == server.requests[0].prompt
    assert done.text == ANSWER


def test_backoff_doubles_is_capped_and_jittered_down():
    import random

    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=5.0, jitter=0.5, rng=random.Random(7))
    delays = list(policy.delays())
    assert len(delays) == 5
    for delay, nominal in zip(delays, [1.0, 2.0, 4.0, 5.0, 5.0], strict=True):
        assert nominal * 0.5 <= delay <= nominal
    assert len(set(delays)) == 5, "jitter spreads clients that fail together"
    assert list(RetryPolicy(attempts=1).delays()) == []
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


async def test_keep_reasoning_renders_earlier_reasoning_into_the_prompt():
    from qwq_agent.agent.messages import Message

    history = [
        Message(role="user", content="Q1"),
        Message(role="assistant", content="A1", reasoning="secret chain of thought"),
        Message(role="user", content="Q2"),
    ]
    async with ScriptedModelServer(["x", "y"]) as server:
        async with (
            SGLangClient(server.url) as dropping,
            SGLangClient(server.url, keep_reasoning=True) as keeping,
        ):
            await collect(dropping.stream(history, [], SamplingParams()))
            await collect(keeping.stream(history, [], SamplingParams()))
    assert "secret chain of thought" not in server.requests[0].prompt
    assert "secret chain of thought" in server.requests[1].prompt
