"""The run's wall-time budget is a deadline enforced by a timer, whatever the model server does.

Each fault is injected by the scripted server over real HTTP: a stream that sends only keep-alives, a
stream that stalls mid-way, a server that fails every request (so the client keeps retrying), and an
`/abort_request` that takes a minute to answer. The client's own timeouts are left long, so only the
run's deadline can end these runs; every run is guarded by a `wait_for` far beyond the deadline, so a
regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import json

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import SGLangClient
from qwq_agent.agent.clients.errors import ModelDeadlineExceeded
from qwq_agent.agent.clients.retry import RetryPolicy
from qwq_agent.agent.events import BudgetExceeded, Final
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.deadline import Deadline
from qwq_agent.protocols import SamplingParams, ToolContext
from qwq_agent.testing.helpers import add
from qwq_agent.testing.scripted_server import ScriptedModelServer, Turn
from qwq_agent.tools.base import tool

GUARD_S = 30.0
WALL_S = 1.0
LONG_TEXT = "thinking about it " * 200


def config(wall: float = WALL_S) -> AgentConfig:
    return AgentConfig(check_language=False, budget=Budget(max_wall_s=wall))


async def run(server: ScriptedModelServer, client: SGLangClient, wall: float = WALL_S):  # type: ignore[no-untyped-def]
    agent = Agent(client, [add], config=config(wall))
    events = await asyncio.wait_for(_collect(agent), GUARD_S)
    return agent.result, events


async def _collect(agent: Agent) -> list:  # type: ignore[type-arg]
    return [ev async for ev in agent.stream("What is 2 + 3?")]


def assert_wall_budget_ended(result, events) -> None:  # type: ignore[no-untyped-def]
    assert result is not None and result.status == "budget_exceeded", result
    assert "wall_s" in (result.error or "")
    assert any(isinstance(ev, BudgetExceeded) and ev.budget == "wall_s" for ev in events)
    assert isinstance(events[-1], Final) and events[-1].status == "budget_exceeded"


async def test_keepalives_only_do_not_outlast_the_deadline():
    turn = Turn(text=LONG_TEXT, keepalive_after=3, hold_timeout=120)
    async with ScriptedModelServer([turn]) as server:
        async with SGLangClient(server.url, read_timeout=600) as client:
            result, events = await run(server, client)
    assert_wall_budget_ended(result, events)
    assert server.requests[0].rid in server.aborted_rids  # the server was told to stop generating


async def test_a_stream_stalled_mid_way_ends_at_the_deadline():
    turn = Turn(text=LONG_TEXT, hold_after=5, hold_timeout=120)
    async with ScriptedModelServer([turn]) as server:
        async with SGLangClient(server.url, read_timeout=600) as client:
            result, events = await run(server, client)
    assert_wall_budget_ended(result, events)
    assert server.requests[0].rid in server.aborted_rids


async def test_retries_count_against_the_deadline():
    # Every request fails with a 503; the client would retry 200 times, 0.2 s apart, per turn attempt.
    patient = RetryPolicy(attempts=200, base_delay=0.2, max_delay=0.2, jitter=0.0)
    async with ScriptedModelServer([Turn(http_status=503)], when_exhausted="repeat") as server:
        async with SGLangClient(server.url, retry=patient) as client:
            result, events = await run(server, client)
    assert_wall_budget_ended(result, events)
    assert 1 < len(server.requests) < 200


async def test_a_slow_abort_counts_against_the_deadline():
    # The abort would be allowed a minute by the client's own setting; the run's deadline cuts it short.
    turn = Turn(text=LONG_TEXT, hold_after=5, hold_timeout=120)
    async with ScriptedModelServer([turn], abort_delay=60) as server:
        async with SGLangClient(server.url, read_timeout=600, abort_timeout=60) as client:
            # 3 s: the abort's reserve (a tenth) is then long enough to reach the server on a busy machine.
            result, events = await run(server, client, wall=3.0)
    assert_wall_budget_ended(result, events)
    assert server.abort_requests == [server.requests[0].rid]  # it was sent, not waited out


async def test_the_openai_client_is_held_to_the_deadline_too():
    from qwq_agent.agent.clients.openai_chat import OpenAIChatClient

    turn = Turn(text=LONG_TEXT, keepalive_after=3, hold_timeout=120)
    async with ScriptedModelServer([turn]) as server:
        async with OpenAIChatClient(base_url=server.url + "/v1", read_timeout=600) as client:
            agent = Agent(client, [add], config=config())
            events = await asyncio.wait_for(_collect(agent), GUARD_S)
    assert_wall_budget_ended(agent.result, events)


async def test_client_retries_stop_when_the_backoff_would_pass_the_ambient_deadline():
    patient = RetryPolicy(attempts=200, base_delay=0.2, max_delay=0.2, jitter=0.0)
    async with ScriptedModelServer([Turn(http_status=503)], when_exhausted="repeat") as server:
        async with SGLangClient(server.url, retry=patient) as client:
            with Deadline.after(0.5).scope():
                try:
                    await asyncio.wait_for(client.generate("hi", SamplingParams(max_new_tokens=4)), GUARD_S)
                except ModelDeadlineExceeded as exc:
                    error = exc
    assert "503" in str(error) and "deadline" in str(error)
    assert 1 <= len(server.requests) < 200


async def test_the_deadline_reaches_the_tools_through_their_context():
    seen: list[float | None] = []

    @tool
    async def left(ctx: ToolContext) -> str:
        """How long the call may still run."""
        seen.append(ctx.deadline.left() if ctx.deadline else None)
        return "ok"

    call = "<tool_call>\n" + json.dumps({"name": "left", "arguments": {}}) + "\n</tool_call>"
    turns = ["x\n</think>\n\n" + call, "y\n</think>\n\ndone"]
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url) as client:
            cfg = AgentConfig(check_language=False, budget=Budget(max_wall_s=100.0), tool_timeout_s=30.0)
            result = await asyncio.wait_for(Agent(client, [left], config=cfg).run("go"), GUARD_S)
    assert result.status == "completed"
    assert seen and seen[0] is not None and 0 < seen[0] <= 30.0  # the per-call limit, not the run's 100 s


async def test_the_loops_per_call_limit_still_overrides_the_registrys_default():
    from qwq_agent.tools.registry import ToolRegistry

    @tool
    async def slowish() -> str:
        """Takes a second."""
        await asyncio.sleep(1.0)
        return "finished"

    call = "<tool_call>\n" + json.dumps({"name": "slowish", "arguments": {}}) + "\n</tool_call>"
    async with ScriptedModelServer(["x\n</think>\n\n" + call, "y\n</think>\n\ndone"]) as server:
        async with SGLangClient(server.url) as client:
            cfg = AgentConfig(check_language=False, tool_timeout_s=30.0)
            agent = Agent(client, ToolRegistry([slowish], timeout=0.5), config=cfg)
            result = await asyncio.wait_for(agent.run("go"), GUARD_S)
    assert [m.content for m in result.messages if m.role == "tool"] == ["finished"]
