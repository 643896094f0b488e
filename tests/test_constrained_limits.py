"""`constrained_tool_calls` against servers that misbehave: every turn ends, with a clear error.

Real HTTP against the scripted server. Before these limits, a server that ignored the grammar made one
step send requests without end (over a thousand in the field, and a 164 MB trace).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import ModelCall, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.testing.helpers import add
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest

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
    async with ScriptedModelServer(answer, context_length=400) as server:
        result, _ = await run(server, max_requests_per_turn=1000, system_prompt=None)
    assert result.status == "model_error"
    assert "context length of 400 tokens" in (result.error or "")
    sizes = [len(r.prompt_ids) for r in server.requests]
    assert max(sizes) <= 400 and len(sizes) < 1000


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
