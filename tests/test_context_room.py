"""A run that nears the model's context: every request fits, or the run ends `context_full` unsent.

The scripted model server (real HTTP on 127.0.0.1) validates each request as SGLang does
(`check_context`): a prompt plus `max_new_tokens` that reaches the context length is refused, in
SGLang's words (an in-stream error event on `/generate`, a 400 on the OpenAI API).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, ModelContextExceeded, OpenAIChatClient, SGLangClient
from qwq_agent.agent.clients.errors import is_context_refusal
from qwq_agent.agent.events import Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.replay import ReplayModel, load_recording
from qwq_agent.agent.tokenizer import get_tokenizer
from qwq_agent.agent.trace import read_trace, recorded_completions
from qwq_agent.protocols import SamplingParams
from qwq_agent.testing.helpers import call
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest, Turn
from qwq_agent.tools.base import tool

GUARD_S = 120.0
CONTEXT = 4096
TASK = "Summarise the log, chunk by chunk."
TOK = get_tokenizer()
# Recorded before `exact_tokens` was (its run_started.prompt_options lack it).
OLD_TRACE = Path(__file__).parent / "data" / "old-traces" / "context_refused_at_6929519.jsonl"


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


async def replayed_run(replay: ReplayModel):  # type: ignore[no-untyped-def]
    """The run `replay` replays, and the divergences it reported."""
    agent = Agent(replay, [read_chunk], config=config())
    events = [ev async for ev in agent.stream(TASK)]
    assert agent.result is not None
    return agent.result, [e for e in events if isinstance(e, Warning_) and e.kind == "replay_divergence"]


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


async def test_a_run_whose_first_request_does_not_fit_replays_to_the_same_context_full(tmp_path):
    # The context length comes from the server, and not even the first request fits: nothing is sent, so
    # no model call records the context length; the refusal itself must, or a replay sends the request.
    trace = tmp_path / "run.jsonl"
    async with ScriptedModelServer(reader, context_length=600, check_context=True) as server:
        result = await run(server, "native", config(), trace)
    assert server.requests == [] and server.refused == []
    assert result.status == "context_full" and "context length of 600 tokens" in (result.error or "")
    assert recorded_completions(read_trace(trace)) == []
    refused = load_recording(trace).refused
    assert refused is not None and refused.context_length == 600 and refused.prompt_tokens > 0
    for replay in (ReplayModel.from_trace(trace), ReplayModel.from_recording(load_recording(trace))):
        replayed, diverged = await replayed_run(replay)
        assert (replayed.status, replayed.error) == (result.status, result.error) and not diverged


@pytest.mark.parametrize("refused_at", ["first request", "later request"])
async def test_a_run_ended_context_full_resumes_against_the_live_servers_context(tmp_path, refused_at):
    # Resuming on a server with a larger context is how a run that filled its context goes on: past the
    # recording the requests are checked against the live server's context length, not the recorded one.
    trace = tmp_path / "run.jsonl"
    small = 600 if refused_at == "first request" else CONTEXT
    async with ScriptedModelServer(reader, context_length=small, check_context=True) as server:
        result = await run(server, "native", config(), trace)
    assert result.status == "context_full" and f"context length of {small} tokens" in (result.error or "")
    recording = load_recording(trace)
    assert recording.refused is not None and (len(recording.completions) == 0) == (small == 600)
    big = 32768
    done = "Read enough.\n</think>\n\nEvery request was served in under 100 ms."
    async with (
        ScriptedModelServer([done], context_length=big, check_context=True) as live_server,
        SGLangClient(live_server.url, retry=NO_RETRY) as live,
    ):
        replay = ReplayModel.from_recording(recording, then=live)
        agent = Agent(replay, [read_chunk], config=recording.agent_config())
        resumed = await asyncio.wait_for(agent.run(TASK), GUARD_S)
    assert (resumed.status, resumed.answer) == ("completed", "Every request was served in under 100 ms.")
    assert len(live_server.requests) == 1 and live_server.refused == []
    sent = live_server.requests[0]
    # The request the run refused, sent now, with room to write that the recorded context did not have.
    assert len(sent.prompt_ids) == recording.refused.prompt_tokens
    assert len(sent.prompt_ids) + sent.sampling_params["max_new_tokens"] > small


@pytest.mark.parametrize(
    ("refused", "field"),
    [
        ({"prompt_tokens": -5, "context_length": -1}, "prompt_tokens"),
        ({"prompt_tokens": 0, "context_length": 0}, "context_length"),
    ],
)
async def test_a_trace_whose_refusal_holds_no_token_counts_is_not_a_valid_trace(tmp_path, refused, field):
    # A hand-edited or corrupted refusal is refused as a trace, as a missing key is: never reported as
    # the model's context (`the prompt holds -5 tokens ... context length of -1 tokens`).
    trace = tmp_path / "run.jsonl"
    async with ScriptedModelServer(reader, context_length=600, check_context=True) as server:
        result = await run(server, "native", config(), trace)
    assert result.status == "context_full"
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert sum(1 for e in events if e.get("refused")) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "".join(json.dumps({**e, "refused": refused} if e.get("refused") else e) + "\n" for e in events)
    )
    for read in (load_recording, ReplayModel.from_trace):
        with pytest.raises(ValidationError, match=rf"refused\.{field}\n  Input should be greater than"):
            read(bad)


def sampled_reader(request: ScriptedRequest) -> Turn:
    """`reader`, its reasoning generated one character per token (ids the tokenizer would not choose):
    the prompt holds more tokens sent as those ids than sent as text."""
    text = reader(request)
    reasoning, rest = text.split("\n</think>", 1)
    return Turn(ids=[i for ch in reasoning for i in TOK.encode(ch)] + TOK.encode("\n</think>" + rest))


async def test_a_replay_counts_prompts_as_the_recorded_client_sent_them_as_text_or_ids(tmp_path):
    # Kept reasoning sent as text (`exact_tokens=False`): the request the run refused is counted as
    # text on replay too, not with the kept turns' ids spliced in (a count of other tokens).
    trace = tmp_path / "run.jsonl"
    async with ScriptedModelServer(sampled_reader, context_length=CONTEXT, check_context=True) as server:
        async with SGLangClient(
            server.url, retry=NO_RETRY, keep_reasoning=True, exact_tokens=False
        ) as client:
            result = await Agent(client, [read_chunk], config=config(), trace_path=trace).run(TASK)
    assert result.status == "context_full" and server.refused == []
    assert all(r.input_ids is None for r in server.requests) and len(server.requests) > 2
    recording = load_recording(trace)
    assert recording.prompt().exact_tokens is False
    replay = ReplayModel.from_recording(recording)
    replayed, diverged = await replayed_run(replay)
    assert (replayed.status, replayed.error) == (result.status, result.error) and not diverged
    assert replay.remaining == 0
    # A trace recorded before the setting was: its client sent ids, the default.
    assert load_recording(OLD_TRACE).prompt().exact_tokens is True


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
