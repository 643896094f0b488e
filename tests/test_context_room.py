"""A run that nears the model's context: every request fits, or the run ends `context_full` unsent.

The scripted model server (real HTTP on 127.0.0.1) validates each request as SGLang does
(`check_context`): a prompt plus `max_new_tokens` that reaches the context length is refused, in
SGLang's words (an in-stream error event on `/generate`, a 400 on the OpenAI API).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, ModelContextExceeded, OpenAIChatClient, SGLangClient
from qwq_agent.agent.clients.errors import is_context_refusal
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.replay import ReplayModel, load_recording
from qwq_agent.agent.trace import read_trace, recorded_completions
from qwq_agent.protocols import SamplingParams
from qwq_agent.testing.helpers import call
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest
from qwq_agent.tools.base import tool

GUARD_S = 120.0
CONTEXT = 4096
TASK = "Summarise the log, chunk by chunk."


@tool
def read_chunk(i: int) -> str:
    """Read chunk i of a long log.

    Args:
        i: chunk number
    """
    return "\n".join(f"log line {i}.{k}: request served in {k * 7 % 97} ms" for k in range(40))


def reader(request: ScriptedRequest) -> str:
    """Reads the next chunk, turn after turn (the chunk number: the tool results so far, plus one)."""
    n = (request.prompt or "").count("<tool_response>") + 1
    return f"Reading chunk {n}.\n</think>\n\n" + call("read_chunk", i=n)


def config(**kw: object) -> AgentConfig:
    budget = Budget(max_steps=100, max_wall_s=600, max_tool_s=600)
    return AgentConfig(**{"check_language": False, "model_retry_backoff_s": 0.0, "budget": budget, **kw})


def client_for(api: str, server: ScriptedModelServer) -> SGLangClient | OpenAIChatClient:
    if api == "openai":
        return OpenAIChatClient(server.url, model="qwq-32b", retry=NO_RETRY)
    return SGLangClient(server.url, retry=NO_RETRY)


async def run(server: ScriptedModelServer, api: str, cfg: AgentConfig, trace=None):  # type: ignore[no-untyped-def]
    async with client_for(api, server) as client:
        agent = Agent(client, [read_chunk], config=cfg, trace_path=trace)
        return await asyncio.wait_for(agent.run(TASK), GUARD_S)


@pytest.mark.parametrize("api", ["native", "openai"])
async def test_every_request_asks_for_no_more_than_the_context_leaves_and_the_run_ends_context_full(
    tmp_path, api
):
    # max_new_tokens 8192 against a 4096-token context: even the first request must ask for fewer. The
    # OpenAI API reports no context length: it is configured, and its client estimates the prompt.
    trace = tmp_path / "run.jsonl"
    known = {"context_length": CONTEXT} if api == "openai" else {}
    async with ScriptedModelServer(reader, context_length=CONTEXT, check_context=True) as server:
        result = await run(server, api, config(**known), trace)
    assert server.refused == []
    assert result.status == "context_full", result.error
    assert f"context length of {CONTEXT} tokens" in (result.error or "")
    sent = [r.body.get("max_tokens") or r.sampling_params["max_new_tokens"] for r in server.requests]
    sizes = [len(r.prompt_ids) for r in server.requests]
    assert len(sent) > 3 and all(p + m < CONTEXT for p, m in zip(sizes, sent, strict=True))
    assert all(m < 8192 for m in sent) and sent == sorted(sent, reverse=True)
    if api == "native":  # counted exactly: each asks for all the room there is
        assert [p + m for p, m in zip(sizes, sent, strict=True)] == [CONTEXT - 1] * len(sent)
    # The trace records what each request asked for; a replay asks the same and ends the same way.
    calls = recorded_completions(read_trace(trace))
    assert [c.max_new_tokens for c in calls] == sent
    recording = load_recording(trace)
    replay = ReplayModel.from_recording(recording)
    replayed = await Agent(replay, [read_chunk], config=recording.agent_config()).run(TASK)
    assert (replayed.status, replayed.error) == (result.status, result.error)
    assert replay.divergences == 0 and replay.remaining == 0
    tokens = ("prompt_tokens", "generated_tokens", "steps")
    assert [replayed.totals[k] for k in tokens] == [result.totals[k] for k in tokens]


@pytest.mark.parametrize("api", ["native", "openai"])
async def test_a_request_the_server_refuses_for_the_context_ends_the_run_unretried(tmp_path, api):
    # The agent is told a context far larger than the server's: the server refuses the grown prompt.
    trace = tmp_path / "run.jsonl"
    cfg = config(context_length=10**6, model_retries=3, sampling=SamplingParams(max_new_tokens=1024))
    async with ScriptedModelServer(reader, context_length=CONTEXT, check_context=True) as server:
        result = await run(server, api, cfg, trace)
    assert len(server.refused) == 1  # sent once: the same prompt is refused the same way every time
    assert result.status == "context_full"
    assert "Requested token count exceeds the model's maximum context length" in (result.error or "")
    assert "not retried" in (result.error or "")
    failed = recorded_completions(read_trace(trace))[-1]
    assert failed.error is not None and failed.error.startswith("ModelContextExceeded:")
    assert failed.error_outcome == "ended" and failed.max_new_tokens == 1024

    recording = load_recording(trace)
    replay = ReplayModel.from_recording(recording)
    replayed = await Agent(replay, [read_chunk], config=recording.agent_config()).run(TASK)
    assert (replayed.status, replayed.error) == (result.status, result.error)
    assert replay.divergences == 0 and replay.remaining == 0


async def test_a_turn_continued_under_a_grammar_counts_the_text_it_sends():
    # The call finished under the grammar goes as text with a newline added: counted as sent, it fits.
    def answer(request: ScriptedRequest) -> str:
        if request.sampling_params.get("ebnf"):
            return json.dumps({"name": "read_chunk", "arguments": {"i": 1}})
        return "Read it.\n</think>\n\n<tool_call>"

    async with ScriptedModelServer(answer, context_length=CONTEXT, check_context=True) as server:
        cfg = config(constrained_tool_calls=True, min_context_room_tokens=16, max_requests_per_turn=1000)
        result = await run(server, "native", cfg)
    assert server.refused == [] and result.status == "context_full"
    assert any(r.sampling_params.get("ebnf") for r in server.requests)


async def test_the_context_refusals_of_sglang_vllm_and_openai_are_told_apart_from_other_errors():
    refusals = [
        "The input (5000 tokens) is longer than the model's context length (4096 tokens).",
        "Requested token count exceeds the model's maximum context length of 40960 tokens. You requested",
        "Input length (40960 tokens) exceeds the maximum allowed length (40959 tokens). Use a shorter input",
        "This model's maximum context length is 32768 tokens. However, you requested 70000 tokens",
        "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length",
        "The decoder prompt (length 5000) is longer than the maximum model length of 4096.",
        '{"error": {"code": "context_length_exceeded", "message": "too long"}}',
    ]
    assert all(is_context_refusal(text) for text in refusals)
    others = ["scripted server failure", "the server aborted the generation: out of memory", "rate limit"]
    assert not any(is_context_refusal(text) for text in others)


async def test_a_refused_sglang_request_raises_a_typed_error_the_client_does_not_retry():
    async with ScriptedModelServer(["never served"], context_length=64, check_context=True) as server:
        async with SGLangClient(server.url) as client:  # its default policy retries what may succeed
            with pytest.raises(ModelContextExceeded) as caught:
                await client.generate("word " * 100, SamplingParams(max_new_tokens=8))
    assert not caught.value.retryable
    assert "is longer than the model's context length (64 tokens)" in str(caught.value)
    assert len(server.refused) == 1 and server.requests == []
