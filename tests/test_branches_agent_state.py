"""Branches and the parent agent's state: its transcript, its running flag, its sandbox, its deadlines.

Real scripted HTTP server, real sandboxes (the `docker` tests); the parent's run and the exploration
are real asyncio tasks on one agent.
"""

from __future__ import annotations

import asyncio

import pytest
from test_branches import SEEDS, config

from qwq_agent.agent.branches import BranchError
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loop import Agent
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest, Turn


async def test_a_refused_explore_leaves_the_running_runs_transcript_alone():
    # The run's one turn is slow, so the run is still waiting on it when explore() is called.
    def model(req: ScriptedRequest) -> str | Turn:
        return Turn(text="thinking\n</think>\n\nthe answer", first_token_delay=1.0)

    async with ScriptedModelServer(model) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [], config=config())
        run = asyncio.create_task(agent.run("What is the answer?"))
        await server.wait_for_requests(1)  # the run is under way: its request is at the model
        with pytest.raises(BranchError, match="running a task"):
            await agent.explore("something else", n=2, seeds=SEEDS[:2])
        result = await run
    assert result.status == "completed"
    assert [m.role for m in result.messages] == ["system", "user", "assistant"]
    assert result.messages[1].content == "What is the answer?"
    assert agent.messages == result.messages
    assert len(server.requests) == 1  # the refused exploration sent nothing
