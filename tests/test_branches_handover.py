"""The winner's hand-over to the parent: which branch may be handed over, and what the parent's sandbox
holds when the hand-over succeeds, fails or is cancelled.

Real scripted HTTP server, real sandboxes (the parent's, the branches'), real container deaths.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from test_branches import REPO, SEEDS, call, config, our_containers, per_branch

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


# A cell that leaves a thread writing under /workspace (a logger, a watcher): replayed in the parent's
# sandbox by the hand-over, it keeps writing while the files are put back once more.
WATCHER = """
import os, threading
def spin():
    while True:
        try:
            os.makedirs('/workspace/out', exist_ok=True)
            open('/workspace/out/log.txt', 'a').close()
        except OSError:
            pass
threading.Thread(target=spin, daemon=True).start()
print('watcher started')
"""


@pytest.mark.docker
async def test_a_hand_over_completes_while_a_replayed_thread_keeps_writing(sandbox_image):
    """python_state="replay": the winner's replayed cell starts a thread that writes under /workspace
    while the hand-over puts the files back after the replay. The restore failed midway (a directory
    refilled while it was cleared) and left the parent's sandbox EMPTY while its transcript stayed its
    own; now the interpreter is paused while the files are replaced, and the parent takes the winner."""
    from qwq_agent.agent.workspace import open_sandbox

    scripts = {SEEDS[0]: ["w\n</think>\n\n" + call("python", code=WATCHER), "d\n</think>\n\nStarted it."]}
    before = len(our_containers())
    async with open_sandbox(workspace=REPO, image=sandbox_image) as parent_sb:
        await parent_sb.shell("echo parent-was-here > /workspace/NOTE")
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(client, build_tools(["python", "shell"]), sandbox=parent_sb, config=config())
            async with await agent.branch(
                1, "Start a watcher.", select="first", seeds=SEEDS[:1], python_state="replay"
            ) as result:
                assert result.winner == 0 and result.adopt_error is None, result.adopt_error
                assert agent.messages == result.branches[0].result.messages  # type: ignore[union-attr]
        mine = await parent_sb.shell("cat /workspace/NOTE && ls /workspace/out /workspace/textstats")
        assert mine.stdout.startswith("parent-was-here\n"), mine
        assert "log.txt" in mine.stdout and "stats.py" in mine.stdout, mine
    assert len(our_containers()) == before


@pytest.mark.docker
async def test_a_cancelled_hand_over_puts_the_parents_own_files_back(sandbox_image, tmp_path):
    """Ctrl-C while the hand-over replays the winner's cell in the parent's sandbox (its files are the
    winner's by then): the exploration is cancelled, the parent keeps its own transcript, and its
    sandbox holds its own files again (no WINNER), as the trace says."""
    from qwq_agent.agent.events import Final, Warning_
    from qwq_agent.agent.trace import read_trace
    from qwq_agent.agent.workspace import open_sandbox

    work = "open('/workspace/WINNER', 'w').write('winner')\nimport time\ntime.sleep(3)\nprint('done')"
    scripts = {SEEDS[0]: ["w\n</think>\n\n" + call("python", code=work), "d\n</think>\n\nWrote WINNER."]}
    before = len(our_containers())
    async with open_sandbox(workspace=REPO, image=sandbox_image) as parent_sb:
        await parent_sb.shell("echo parent-was-here > /workspace/NOTE")
        replaying = asyncio.Event()
        python = parent_sb.python

        async def observed(*args: Any, **kwargs: Any) -> Any:
            # Only the hand-over runs cells in the parent's own sandbox: the replay of the winner's.
            replaying.set()
            return await python(*args, **kwargs)

        parent_sb.python = observed  # type: ignore[method-assign]
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(
                client,
                build_tools(["python", "shell"]),
                sandbox=parent_sb,
                config=config(),
                trace_path=tmp_path / "x.jsonl",
            )
            own = list(agent.messages)
            exploring = asyncio.create_task(
                agent.branch(1, "Write WINNER.", select="first", seeds=SEEDS[:1], python_state="replay")
            )
            await replaying.wait()
            mid = await parent_sb.shell("ls /workspace")
            assert "WINNER" in mid.stdout, mid  # the hand-over was under way: the winner's files are in
            exploring.cancel()
            with pytest.raises(asyncio.CancelledError):
                await exploring
        del parent_sb.python
        mine = await parent_sb.shell("ls /workspace; cat /workspace/NOTE")
        assert agent.messages == own
        assert "WINNER" not in mine.stdout and "parent-was-here" in mine.stdout, mine
        assert "textstats" in mine.stdout, mine
        assert not agent._running
    assert len(our_containers()) == before
    events = read_trace(agent.exploration_trace)  # type: ignore[arg-type]
    warned = [e for e in events if isinstance(e, Warning_) and e.kind == "winner_not_adopted"]
    assert warned and "put back" in warned[-1].message, warned
    assert isinstance(events[-1], Final) and events[-1].status == "cancelled"


@pytest.mark.docker
async def test_a_hand_over_given_up_on_never_lands_later(sandbox_image, monkeypatch):
    """The hand-over's restore and its undo both run past their limits (here: held up behind a cell
    the parent's interpreter is running). Both used to stay queued in the sandbox and run once the cell
    ended, wiping what the parent did after the hand-over had returned, while the answer said its
    sandbox held "neither" its files nor the winner's. Now neither starts late, the answer says what
    the sandbox holds is unknown, and the parent's later work stays."""
    import types

    import qwq_agent.agent.branches as br
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig
    from qwq_agent.sandbox.snapshot import RestoreRequest

    config = SandboxConfig(image=sandbox_image)
    async with DockerSandbox.create(config) as psb, DockerSandbox.create(config) as wsb:
        await psb.shell("echo parent > /workspace/PARENT")
        await wsb.shell("echo winner > /workspace/WINNER")
        running = asyncio.Event()
        hold = (
            "import os, time\nheld = 'kept'\nprint('running', flush=True)\n"
            "while not os.path.exists('/tmp/go'):\n    time.sleep(0.01)"
        )
        cell = asyncio.create_task(psb.python(hold, timeout=120, on_output=lambda _: running.set()))
        await running.wait()
        monkeypatch.setattr(br, "UNDO_TIMEOUT_S", 1.0)
        monkeypatch.setattr(br, "UNDO_SLACK_S", 0.3)
        parent = types.SimpleNamespace(sandbox=psb)
        winner = types.SimpleNamespace(sandbox=wsb, lost=False)
        answer = await br._hand_over(parent, winner, "fresh", 1.0, lambda e: e)  # type: ignore[arg-type]
        assert answer is not None and "could not be put in the parent's sandbox" in answer, answer
        assert "holds neither" not in answer and "unknown" in answer, answer
        # The parent keeps its transcript and goes on in its sandbox.
        await psb.shell("echo important > /workspace/AFTER")
        now = await psb.snapshot()
        await psb.shell("touch /tmp/go")
        assert (await cell).ok
        # Waits for any restore still queued ahead of it; one that ran stopped the interpreter.
        await psb._call_raw(RestoreRequest(sha256=now.sha256, keep_python=True), 60, blob=now.data)
        assert (await psb.python("held")).value == "'kept'"
        assert (await psb.shell("cat /workspace/AFTER /workspace/PARENT")).stdout == "important\nparent\n"
