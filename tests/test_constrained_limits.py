"""`constrained_tool_calls` against servers that misbehave: every turn ends, with a clear error.

Real HTTP against the scripted server. Before these limits, a server that ignored the grammar made one
step send requests without end (over a thousand in the field, and a 164 MB trace).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import ModelCall, UsageEvent, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.replay import ReplayModel, load_recording
from qwq_agent.protocols import SamplingParams
from qwq_agent.testing.helpers import add
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest
from qwq_agent.tools.base import tool

GUARD_S = 60.0
CALL = json.dumps({"name": "add", "arguments": {"a": 2, "b": 3}})
WHOLE_TURN = f"I need the sum.\n</think>\n\nComputing.\n<tool_call>\n{CALL}\n</tool_call>"


async def run(server: ScriptedModelServer, trace=None, **config: object):  # type: ignore[no-untyped-def]
    async with SGLangClient(server.url, retry=NO_RETRY) as client:
        cfg = AgentConfig(check_language=False, constrained_tool_calls=True, **config)
        agent = Agent(client, [add], config=cfg, trace_path=trace)

        async def collect() -> list:  # type: ignore[type-arg]
            return [ev async for ev in agent.stream("What is 2 + 3?")]

        events = await asyncio.wait_for(collect(), GUARD_S)
    return agent.result, events


async def test_a_server_ignoring_the_grammar_ends_the_turn_with_a_clear_error(tmp_path):
    # The server answers every request, constrained or not, with the same whole turn.
    async with ScriptedModelServer([WHOLE_TURN], when_exhausted="repeat") as server:
        result, events = await run(server, trace=tmp_path / "t.jsonl")
    assert result.status == "model_error"
    assert "ignored the tool-call grammar" in (result.error or "") and "--constrained" in (result.error or "")
    assert len(server.requests) == 2  # the streamed request and the one constrained call it betrayed
    assert "ebnf" in server.requests[1].sampling_params
    assert any(isinstance(ev, Warning_) and "grammar" in ev.message for ev in events)
    assert (tmp_path / "t.jsonl").stat().st_size < 200_000


async def test_a_turn_that_keeps_opening_calls_stops_at_the_request_cap():
    # The grammar is honoured, but every continuation opens yet another call.
    def answer(request: ScriptedRequest) -> str:
        if request.sampling_params.get("ebnf"):
            return CALL
        return (
            "thinking\n</think>\n\n<tool_call>\n"
            if "</think>" not in (request.prompt or "")
            else "\n<tool_call>\n"
        )

    async with ScriptedModelServer(answer) as server:
        result, events = await run(server, max_requests_per_turn=7)
    assert result.status == "model_error"
    assert "7 requests" in (result.error or "") and "max_requests_per_turn" in (result.error or "")
    assert len(server.requests) == 7
    assert sum(isinstance(ev, ModelCall) for ev in events) == 7


async def test_a_turn_that_outgrows_the_servers_context_length_stops_before_sending_more():
    def answer(request: ScriptedRequest) -> str:
        if request.sampling_params.get("ebnf"):
            return CALL
        return (
            "thinking\n</think>\n\n<tool_call>\n"
            if "</think>" not in (request.prompt or "")
            else "\n<tool_call>\n"
        )

    # /server_info reports the context length; the prompt starts near 200 tokens and grows each request.
    async with ScriptedModelServer(answer, context_length=400, check_context=True) as server:
        result, _ = await run(
            server, max_requests_per_turn=1000, system_prompt=None, min_context_room_tokens=16
        )
    assert result.status == "context_full"
    assert "context length of 400 tokens" in (result.error or "")
    # Each request asked for no more new tokens than fit: none was refused.
    sent = [(len(r.prompt_ids), r.sampling_params["max_new_tokens"]) for r in server.requests]
    assert server.refused == [] and all(p + m < 400 for p, m in sent)
    assert 1 < len(sent) < 1000


NOTES: list[str] = []


@tool
def note(text: str) -> str:
    """Save a note."""
    NOTES.append(text)
    return "saved"


LONG_NOTE = json.dumps({"name": "note", "arguments": {"text": " ".join(f"word{i}" for i in range(400))}})


def noting_model(request: ScriptedRequest) -> str:
    """Opens a call to `note` with a long argument, generated under the grammar; answers after the call."""
    if request.sampling_params.get("ebnf") or request.sampling_params.get("json_schema"):
        return LONG_NOTE
    prompt = request.prompt or ""
    if "<tool_response>" in prompt:
        return "Saved.\n</think>\n\nDone."
    return "" if prompt.rstrip().endswith("</tool_call>") else "Note it.\n</think>\n\n<tool_call>\n"


async def run_noting(trace: Path, **config: object):  # type: ignore[no-untyped-def]
    NOTES.clear()
    async with ScriptedModelServer(noting_model) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            cfg = AgentConfig(check_language=False, constrained_tool_calls=True, **config)
            agent = Agent(client, [note], config=cfg, trace_path=trace)
            events = await asyncio.wait_for(_collect(agent.stream("Save a note.")), GUARD_S)
    return agent.result, events, server.requests


async def _collect(stream):  # type: ignore[no-untyped-def]
    return [ev async for ev in stream]


def _asked(requests: list[ScriptedRequest]) -> list[tuple[int, bool]]:
    """Each request's (max_new_tokens, under the grammar)."""
    return [(r.sampling_params["max_new_tokens"], bool(r.sampling_params.get("ebnf"))) for r in requests]


async def test_the_grammar_request_asks_for_no_more_than_the_generation_budget_has_left(tmp_path):
    budget = 50
    trace = tmp_path / "t.jsonl"
    result, events, requests = await run_noting(trace, budget=Budget(max_generated_tokens=budget))
    calls = [e for e in events if isinstance(e, ModelCall)]
    streamed = calls[0].usage.completion_tokens
    # The call gets what the stream left, and nothing is asked once the budget is spent.
    assert _asked(requests) == [(budget, False), (budget - streamed, True)]
    assert calls[1].usage.finish_reason == "length"
    assert result.status == "budget_exceeded" and "generated_tokens" in (result.error or "")
    assert result.totals["generated_tokens"] == budget
    # The call the budget cut off is reported cut off, never run with its argument cut short.
    assert NOTES == []
    assert [e.kind for e in events if isinstance(e, Warning_)] == ["truncated_tool_call"]

    replay_cfg = load_recording(trace).agent_config()
    replayed = await Agent(ReplayModel.from_trace(trace), [note], config=replay_cfg).run("Save a note.")
    assert replayed.status == "budget_exceeded" and NOTES == []


async def test_a_call_the_token_limit_cuts_under_the_grammar_is_reported_cut_off_and_not_run(tmp_path):
    # Not closed for the parser and continued after: the turn ends on the cut-off call, as a streamed one
    # does, and the model is asked to write it again in the next turn.
    result, events, requests = await run_noting(
        tmp_path / "t.jsonl", sampling=SamplingParams(max_new_tokens=30)
    )
    assert _asked(requests)[:2] == [(30, False), (30, True)]
    assert "<tool_response>" in (requests[2].prompt or "")  # the next request is the next turn's
    assert NOTES == []
    assert [e.kind for e in events if isinstance(e, Warning_)][:1] == ["truncated_tool_call"]
    assistant, observation = result.messages[2], result.messages[3]
    assert assistant.raw.startswith("Note it.") and not assistant.raw.rstrip().endswith("</tool_call>")
    assert observation.role == "tool" and "cut off" in observation.content


async def test_a_constrained_call_gets_its_usage_event_like_every_other_request():
    def answer(request: ScriptedRequest) -> str:
        prompt = request.prompt or ""
        if request.sampling_params.get("ebnf"):
            return CALL
        if "<tool_response>" in prompt:
            return "It is 5.\n</think>\n\n5"
        return "" if prompt.rstrip().endswith("</tool_call>") else "I will add.\n</think>\n\n<tool_call>\n"

    async with ScriptedModelServer(answer) as server:
        result, events = await run(server)
    assert result.status == "completed" and result.answer == "5"
    assert any(r.sampling_params.get("ebnf") for r in server.requests)
    # Each model_call is followed by its usage event, and the usage events add up to the run's totals.
    kinds = [type(e).__name__ for e in events if isinstance(e, ModelCall | UsageEvent)]
    assert kinds == ["ModelCall", "UsageEvent"] * len(server.requests)
    usages = [e.usage for e in events if isinstance(e, UsageEvent)]
    assert sum(u.completion_tokens for u in usages) == result.totals["generated_tokens"]
    assert sum(u.prompt_tokens for u in usages) == result.totals["prompt_tokens"]


@pytest.mark.docker
def test_cli_constrained_run_against_a_server_ignoring_the_grammar_exits_with_the_reason(
    sandbox_image, tmp_path
):
    import subprocess
    import sys

    with ScriptedModelServer([WHOLE_TURN.replace('"add"', '"python"')], when_exhausted="repeat") as server:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "qwq_agent.cli.main",
                "run",
                "What is 2 + 3?",
                "--model-url",
                server.url,
                "--tools",
                "python",
                "--constrained",
                "--json",
                "--trace",
                str(tmp_path / "t.jsonl"),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        requests = len(server.requests)
    assert proc.returncode != 0
    final = json.loads(proc.stdout.splitlines()[-1])
    assert final["type"] == "final" and final["status"] == "model_error"
    assert "ignored the tool-call grammar" in final["error"]
    assert requests == 2 and "Traceback" not in proc.stderr
