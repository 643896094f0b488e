"""The clients, the constrained tool call and `serve`'s readiness check against a real SGLang server.

Skipped unless QWQ_SGLANG_URL points at one (started with --enable-cache-report, --reasoning-parser
deepseek-r1 and --tool-call-parser qwen25). With QWQ_GPU_OBSERVATIONS set, what the server returned is
written there as JSON (benchmarks/results/gpu_* records it). Random weights (--load-format dummy) write
random text, so these tests assert the protocol, usage and control flow, never the text's meaning.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from qwq_agent.agent.clients import OpenAIChatClient, SGLangClient
from qwq_agent.agent.constrained import constrained_tool_call, validate_tool_call
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.protocols import Completion, SamplingParams, TextDelta
from qwq_agent.serve import PortTaken, ServerProcess, ServerStartTimeout, probe

URL = os.environ.get("QWQ_SGLANG_URL", "")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not URL, reason="QWQ_SGLANG_URL is not set")]

OBSERVED: dict[str, Any] = {}
TOOLS = [
    ToolSpec(
        name="read_file",
        description="Read a text file",
        parameters={
            "type": "object",
            "required": ["path"],
            "properties": {
                "path": {"type": "string", "maxLength": 32},
                "offset": {"type": "integer", "minimum": 0, "maximum": 50},
            },
        },
    ),
    ToolSpec(
        name="add",
        description="Add two integers",
        parameters={
            "type": "object",
            "required": ["a", "b"],
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        },
    ),
]
SYSTEM = "You are a careful assistant that uses tools. " * 20
SHORT = SamplingParams(max_new_tokens=24)


@pytest.fixture(scope="module", autouse=True)
def dump_observations():
    yield
    path = os.environ.get("QWQ_GPU_OBSERVATIONS")
    if path:
        with open(path, "w") as f:
            json.dump(OBSERVED, f, indent=2, default=str)


def prompt(user: str) -> str:
    from qwq_agent.agent.chat_format import render

    return render([Message(role="system", content=SYSTEM), Message(role="user", content=user)], TOOLS)


async def collect(agen) -> tuple[list[str], Completion]:
    deltas, done = [], None
    async for event in agen:
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            done = event
    assert done is not None
    return deltas, done


async def test_server_info_and_health():
    async with SGLangClient(URL) as client:
        assert await client.health()
        info = await client.server_info()
    assert info.max_total_num_tokens and info.max_total_num_tokens > 0
    OBSERVED["server_info"] = {
        "max_total_num_tokens": info.max_total_num_tokens,
        "context_length": info.context_length,
        "version": info.version,
        "model_path": info.model_path,
        "schedule_policy": info.raw.get("schedule_policy"),
        "incremental_streaming_output": info.raw.get("incremental_streaming_output"),
    }


async def test_native_streaming_text_prompt():
    text = prompt("What is 2+2?")
    async with SGLangClient(URL) as client:
        deltas, done = await collect(client.generate_stream(text, SHORT))
    assert "".join(deltas) == done.text and len(deltas) > 1
    assert 0 < done.usage.completion_tokens <= 24 and done.usage.finish_reason in ("length", "stop")
    assert done.usage.finish_reason == "stop" or done.usage.completion_tokens == 24
    assert done.usage.prompt_tokens > 100 and done.usage.ttft_s is not None
    OBSERVED["native_text"] = {
        "deltas": len(deltas),
        "usage": done.usage.model_dump(),
        "text_head": done.text[:80],
    }


async def test_native_streaming_model_protocol_matches_render():
    from qwq_agent.agent.chat_format import render

    messages = [Message(role="user", content="Say hi")]
    async with SGLangClient(URL) as client:
        deltas, done = await collect(client.stream(messages, TOOLS, SHORT))
    assert done.prompt == render(messages, TOOLS) and "".join(deltas) == done.text


async def test_native_input_ids_prompt():
    ids = list(range(1000, 1100))
    async with SGLangClient(URL) as client:
        deltas, done = await collect(client.generate_stream(ids, SHORT))
    assert done.usage.prompt_tokens == 100 and "".join(deltas) == done.text
    assert len(done.output_ids) == done.usage.completion_tokens
    OBSERVED["native_input_ids"] = done.usage.model_dump()


async def test_cached_tokens_on_a_repeated_prefix():
    async with SGLangClient(URL) as client:
        first = await client.generate(prompt("First question: name a prime."), SHORT)
        second = await client.generate(prompt("Second question: name a colour."), SHORT)
        again = await client.generate(prompt("First question: name a prime."), SHORT)
    assert second.usage.cached_tokens > 0.8 * first.usage.prompt_tokens - 20
    assert again.usage.cached_tokens >= again.usage.prompt_tokens - 1
    OBSERVED["cache"] = {
        "first": first.usage.model_dump(),
        "second_shared_prefix": second.usage.model_dump(),
        "repeat": again.usage.model_dump(),
    }


async def test_stop_strings_cut_at_the_earliest_match_in_the_text():
    # Random weights write random tokens; single letters are stop strings they hit within a few tokens.
    # SGLang itself may trim at a later stop string when one token holds several (seen: `ologi`, matched
    # `a`); the client promises the cut at the earliest. Greedy, so the raw request sees the same tokens.
    stops = ["e", "a", "o"]
    params = SamplingParams(max_new_tokens=64, stop=stops, temperature=0.0)
    async with SGLangClient(URL) as client:
        done = await client.generate(prompt("stop test"), params)
    async with httpx.AsyncClient(base_url=URL, timeout=60) as http:
        raw = (
            await http.post(
                "/generate",
                json={
                    "text": prompt("stop test"),
                    "sampling_params": {"max_new_tokens": 64, "stop": stops, "temperature": 0.0},
                },
            )
        ).json()
    OBSERVED["stop_string"] = {
        "text": done.text,
        "matched": done.matched_stop,
        "usage": done.usage.model_dump(),
        "server_text": raw.get("text"),
        "server_matched": (raw.get("meta_info") or {}).get("finish_reason"),
    }
    assert done.usage.finish_reason == "stop" and done.matched_stop in stops
    assert not any(stop in done.text for stop in stops)


async def test_stop_strings_are_not_applied_inside_a_grammar():
    # Seen on SGLang 0.5.17 (benchmarks/results/gpu_clients.json): with a regex active, a stop string
    # inside the forced text did not end generation; the grammar's end (EOS) did. constrained_tool_call
    # relies on the grammar ending, not on the stop string.
    params = SamplingParams(max_new_tokens=32, regex=r"abc</tool_call>def", stop=["</tool_call>"])
    async with SGLangClient(URL) as client:
        done = await client.generate(prompt("grammar stop test"), params)
    OBSERVED["stop_string_in_grammar"] = {"text": done.text, "matched": done.matched_stop}
    assert done.text in ("abc", "abc</tool_call>def") and done.usage.finish_reason == "stop"


async def test_cancel_aborts_on_the_server():
    aborted: list[str] = []
    async with SGLangClient(URL) as client:
        real_abort = client.abort

        async def spy(rid: str) -> None:
            await real_abort(rid)  # raises if the server refused
            aborted.append(rid)

        client.abort = spy  # type: ignore[method-assign]
        got = asyncio.Event()

        async def consume() -> None:
            n = 0
            async for event in client.generate_stream(
                prompt("long"), SamplingParams(max_new_tokens=4000), rid="gpu-cancel-1"
            ):
                n += isinstance(event, TextDelta)
                if n >= 3:
                    got.set()

        task = asyncio.create_task(consume())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        running = await _running_requests()
    assert aborted == ["gpu-cancel-1"]
    OBSERVED["abort"] = {"aborted": aborted, "running_after_abort": running}


async def _running_requests() -> float | None:
    """sglang:num_running_reqs from /metrics, once it drops to 0 (the abort is processed asynchronously)."""
    async with httpx.AsyncClient(base_url=URL, timeout=5) as http:
        value = None
        for _ in range(50):
            text = (await http.get("/metrics")).text
            values = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("sglang:num_running_reqs")
            ]
            value = sum(values) if values else None
            if value == 0:
                break
            await asyncio.sleep(0.1)  # polling an external server's gauge; there is nothing to wait on
        return value


async def test_openai_client_with_tools_and_cached_tokens():
    messages = [Message(role="system", content=SYSTEM), Message(role="user", content="Add 2 and 2.")]
    async with OpenAIChatClient(URL) as client:
        models = await client.list_models()
        client.model = models[0]  # SGLang serves the model under its path unless --served-model-name
        _, first = await collect(client.stream(messages, TOOLS, SHORT))
        deltas, second = await collect(client.stream(messages, TOOLS, SHORT))
    assert "".join(deltas) == second.text
    assert first.usage.prompt_tokens > 100 and second.usage.completion_tokens > 0
    assert second.usage.cached_tokens > 0
    OBSERVED["openai"] = {
        "models": models,
        "first": first.usage.model_dump(),
        "second": second.usage.model_dump(),
        "text_head": second.text[:80],
    }


async def test_constrained_tool_calls_validate():
    so_far = prompt("Read notes.md") + "I will read it.\n</think>\n\n<tool_call>"
    async with SGLangClient(URL) as client:
        calls = await asyncio.gather(
            *[
                constrained_tool_call(client, so_far, TOOLS, SamplingParams(max_new_tokens=256))
                for _ in range(8)
            ]
        )
    problems = [validate_tool_call(c, TOOLS) for c in calls]
    OBSERVED["constrained_sample"] = calls[:3]
    assert problems == [None] * 8


def test_serve_readiness_against_the_running_server(tmp_path):
    info = probe(URL)
    assert info is not None and info.max_total_num_tokens
    # A process that does not hold the server's listener is not made ready by its answer (a stranger on
    # the port of a server still loading); a server on another machine is no listener here at all.
    holder = ServerProcess([sys.executable, "-c", "import time; time.sleep(120)"], URL, tmp_path / "log")
    holder.start()
    try:
        with pytest.raises((PortTaken, ServerStartTimeout)):
            holder.wait_ready(timeout=10, poll_interval=0.5)
    finally:
        holder.stop(grace=5)
    out = subprocess.run(
        [sys.executable, "-m", "qwq_agent.cli.main", "serve", "--model-url", URL],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and f"KV capacity: {info.max_total_num_tokens} tokens" in out.stdout
    OBSERVED["serve_model_url"] = out.stdout
