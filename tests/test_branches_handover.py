"""The winner's hand-over to the parent: which branch may be handed over, and what the parent's sandbox
holds when the hand-over succeeds, fails or is cancelled.

Real scripted HTTP server, real sandboxes (the parent's, the branches'), real container deaths.
"""

from __future__ import annotations

import re

import pytest
from test_branches import REPO, SEEDS, call, config, our_containers

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loop import Agent
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest
from qwq_agent.tools.catalog import build_tools


def kill_container_of(hostname: str) -> None:
    """Kill our container whose id starts with `hostname` (what `hostname` prints inside it)."""
    import docker

    [c] = [c for c in our_containers() if c["Id"].startswith(hostname)]
    docker.from_env().api.kill(c["Id"])


@pytest.mark.docker
async def test_a_branch_whose_container_died_cannot_win_with_any_selector(sandbox_image):
    """Branch 0's container dies mid-run and is replaced by an empty one; its run still completes. It
    must not win under 'first' (the next completed branch does) nor when a select function names it:
    handing it over would restore its EMPTY replacement over the parent's files."""
    from qwq_agent.agent.workspace import open_sandbox

    def answer(req: ScriptedRequest) -> str:
        params = req.sampling_params
        if params.get("max_new_tokens") == 1:
            return "x"
        # Tool results since this exploration's task: the parent's history holds earlier ones.
        now = (req.prompt or "").rsplit("Round ", 1)[-1]
        step = now.count("<tool_response>")
        if params.get("sampling_seed") == SEEDS[1]:
            if step == 0:
                return "w\n</think>\n\n" + call("shell", command="echo b1 > /workspace/B1")
            return "d\n</think>\n\nWrote B1."
        if step == 0:
            return "who\n</think>\n\n" + call("shell", command="hostname")
        if step == 1:  # the branch's container dies (OOM, its lifetime, a docker restart)
            kill_container_of(re.findall(r"\b[0-9a-f]{12}\b", now)[-1])
            return "look\n</think>\n\n" + call("shell", command="ls /workspace")
        return "d\n</think>\n\nLooked around."

    before = len(our_containers())
    async with open_sandbox(workspace=REPO, image=sandbox_image) as parent_sb:
        await parent_sb.shell("echo parent-was-here > /workspace/NOTE")
        async with ScriptedModelServer(answer) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, build_tools(["shell"]), sandbox=parent_sb, config=config())
            async with await agent.branch(2, "Round one.", select="first", seeds=SEEDS[:2]) as result:
                [b0, b1] = result.branches
                assert result.winner == 1 and result.adopt_error is None, result.reason
                assert b0.status == "completed" and b0.lost and not b1.lost
                assert "lost" in (b0.verdict or ""), b0.verdict
            mine = await parent_sb.shell("cat /workspace/NOTE /workspace/B1 && ls /workspace/textstats")
            assert mine.stdout.startswith("parent-was-here\nb1\n") and "stats.py" in mine.stdout, mine
            assert agent.messages == b1.result.messages  # type: ignore[union-attr]

            # A select function that names the lost branch: refused, and nothing is handed over.
            kept = list(agent.messages)
            async with await agent.branch(
                2, "Round two.", select=lambda outcomes: 0, seeds=SEEDS[:2]
            ) as chosen:
                assert chosen.branches[0].lost and chosen.winner is None and chosen.sandbox is None
                assert "branch 0" in chosen.reason and "lost" in chosen.reason, chosen.reason
            assert agent.messages == kept
            mine = await parent_sb.shell("cat /workspace/NOTE && ls /workspace/textstats")
            assert mine.stdout.startswith("parent-was-here\n") and "stats.py" in mine.stdout, mine
    assert len(our_containers()) == before
