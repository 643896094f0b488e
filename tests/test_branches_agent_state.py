"""Branches and the parent agent's state: its transcript, its running flag, its sandbox, its deadlines.

Real scripted HTTP server, real sandboxes (the `docker` tests); the parent's run and the exploration
are real asyncio tasks on one agent.
"""

from __future__ import annotations

import asyncio

import pytest
from test_branches import SEEDS, call, config, our_containers, per_branch

from qwq_agent.agent.branches import BranchError
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loop import Agent
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest, Turn
from qwq_agent.tools.catalog import build_tools


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


async def test_a_run_or_a_second_exploration_during_an_exploration_is_refused():
    def model(req: ScriptedRequest) -> str | Turn:
        params = req.sampling_params
        if params.get("max_new_tokens") == 1:  # the shared prefix's warm-up
            return "x"
        if params.get("sampling_seed") == SEEDS[0]:  # the branch: still generating while the others try
            return Turn(text="b\n</think>\n\nbranch answer", first_token_delay=1.0)
        return "r\n</think>\n\nrun answer"

    async with ScriptedModelServer(model) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [], config=config())
        exploring = asyncio.create_task(agent.branch(1, "branch task", seeds=SEEDS[:1]))
        # The warm-up comes first, then the branch: once it is at the model, the exploration is under way.
        assert (await server.wait_for_requests(2)).sampling_params.get("sampling_seed") == SEEDS[0]
        with pytest.raises(RuntimeError, match="already running"):
            await agent.run("run task")
        with pytest.raises(BranchError, match="running a task"):
            await agent.branch(1, "another", seeds=SEEDS[1:2])
        with pytest.raises(BranchError, match="running a task"):
            await agent.explore("another", n=1, seeds=SEEDS[1:2])
        result = await exploring
        assert result.answer == "branch answer"
        # Nothing that was refused sent a request, and the parent holds the exploration's winner.
        assert [r.sampling_params.get("sampling_seed") for r in server.requests][-1] == SEEDS[0]
        assert [m.content for m in agent.messages][-2:] == ["branch task", "branch answer"]
        # Once the exploration is over, the agent runs again; an exploration that was cancelled too.
        follow = await agent.run("run task", history=agent.messages)
        assert follow.status == "completed" and follow.messages[-2].content == "run task"
        sent = len(server.requests)
        cancelled = asyncio.create_task(agent.branch(1, "branch task", seeds=SEEDS[:1]))
        await server.wait_for_requests(sent + 2)  # its warm-up and its branch
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert (await agent.run("again")).status == "completed"


@pytest.mark.docker
async def test_a_pooled_agent_acquires_again_for_each_run_and_refuses_to_branch_from_released_files(
    sandbox_image,
):
    from qwq_agent.sandbox import SandboxConfig, SandboxPool

    write = "a\n</think>\n\n" + call("shell", command="echo parent > /workspace/f; cat /workspace/f")
    scripts: dict[int, list[str | Turn]] = {
        0: [write, "b\n</think>\n\ndone"],
        SEEDS[0]: [
            "c\n</think>\n\n" + call("shell", command="ls -A /workspace | wc -l"),
            "d\n</think>\n\nok",
        ],
    }
    before = len(our_containers())
    async with (
        SandboxPool(size=1, config=SandboxConfig(image=sandbox_image)) as pool,
        ScriptedModelServer(per_branch(scripts)) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, build_tools(["shell"]), sandbox_pool=pool, config=config())
        first = await agent.run("write f")
        assert first.status == "completed" and "parent" in first.messages[-2].content
        assert agent.sandbox is None  # the pool's sandbox went back (destroyed) with the run's end
        # Its files went with it: branching from the transcript is refused, clearly, before anything starts.
        sent = len(server.requests)
        with pytest.raises(BranchError, match="sandbox_pool"):
            await agent.branch(1, "read f", seeds=SEEDS[:1])
        assert len(server.requests) == sent and agent.messages == first.messages
        # The next run acquires a sandbox of its own again: its tool call runs.
        second = await agent.run("write f again")
        assert second.status == "completed"
        [written] = [m.content for m in second.messages if m.role == "tool"]
        assert "parent" in written and "Sandbox" not in written
        # An exploration starts from nothing, so a pooled agent explores in the pool's sandboxes.
        async with await agent.explore("list", n=1, seeds=SEEDS[:1]) as explored:
            assert explored.winner == 0 and explored.sandbox is not None
            [listed] = [m.content for m in explored.branches[0].result.messages if m.role == "tool"]
            assert "[stdout]\n0\n" in listed  # a fresh sandbox: nothing of the earlier runs
        assert agent.sandbox is None
    assert len(our_containers()) == before


CHECK = "print(open('/workspace/results.csv').read().count('row'), 'data' in globals(), kept)"


@pytest.mark.docker
async def test_a_replayed_branch_has_the_parents_files_and_hears_which_cells_failed(sandbox_image, tmp_path):
    from qwq_agent.agent.events import BranchEnded, RunStarted
    from qwq_agent.agent.trace import read_trace
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    scripts: dict[int, list[str | Turn]] = {
        SEEDS[0]: ["x\n</think>\n\n" + call("python", code=CHECK), "y\n</think>\n\nchecked"]
    }
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as parent:
        await parent.shell("echo hello > /workspace/scratch.txt")
        assert (
            await parent.python("with open('/workspace/results.csv', 'a') as f:\n    f.write('row\\n')")
        ).ok
        consume = (
            "import os\ndata = open('/workspace/scratch.txt').read()\nos.remove('/workspace/scratch.txt')"
        )
        assert (await parent.python(consume)).ok
        assert (await parent.python("kept = 7")).ok
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(
                client,
                build_tools(["python"]),
                sandbox=parent,
                config=config(),
                trace_path=tmp_path / "e.jsonl",
            )
            async with await agent.explore("check", n=1, seeds=SEEDS[:1], python_state="replay") as result:
                pass
    [b] = result.branches
    assert b.result is not None
    # The row was written once (the parent's file, not the replay's second append); `kept` came back.
    [seen] = [m.content for m in b.result.messages if m.role == "tool"]
    assert "1 False 7" in seen
    # The cell that could not run again is reported: in the outcome, the exploration's trace, and to the
    # branch's model, in its first prompt.
    assert b.python_state == "partly_replayed"
    assert len(b.replay_failures) == 1 and "cell 1" in b.replay_failures[0]
    assert "FileNotFoundError" in b.replay_failures[0]
    [ended] = [e for e in read_trace(result.trace_path) if isinstance(e, BranchEnded)]
    assert ended.python_state == "partly_replayed" and ended.replay_failures == b.replay_failures
    first = next(r for r in server.requests if r.sampling_params.get("sampling_seed") == SEEDS[0])
    assert "FileNotFoundError" in first.prompt and "data = open('/workspace/scratch.txt')" in first.prompt
    assert "FileNotFoundError" in b.result.messages[1].content  # the task, with the note, as the model saw it
    started = read_trace(b.trace_path)[0]
    assert isinstance(started, RunStarted) and "FileNotFoundError" in started.task


@pytest.mark.docker
async def test_a_branchs_time_limit_bounds_its_sandbox_setup_and_replay(sandbox_image):
    import time

    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    scripts: dict[int, list[str | Turn]] = {SEEDS[0]: ["x\n</think>\n\nok"]}
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as parent:
        assert (await parent.python("import time\ntime.sleep(6)\nx = 1", timeout=30)).ok
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(client, [], sandbox=parent, config=config())
            started = time.monotonic()
            result = await agent.explore(
                "go", n=1, seeds=SEEDS[:1], python_state="replay", branch_timeout_s=5
            )
            took = time.monotonic() - started
            await result.aclose()
    # The 6 s cell does not fit in what the sandbox's start left of the branch's 5 s: it is cut short or
    # not run again, and the branch is told; the old replay took the whole 6 s on top of the limit.
    assert took < 5.5
    [b] = result.branches
    assert b.sandbox_s is not None and b.sandbox_s < 5
    assert b.python_state == "partly_replayed"
    [failure] = b.replay_failures
    assert "cell 0" in failure and "s limit" in failure and ("not run" in failure or "timed out" in failure)


@pytest.mark.docker
async def test_after_branch_the_parents_sandbox_holds_the_winners_files_and_interpreter(sandbox_image):
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    def writes(name: str, value: int) -> list[str | Turn]:
        code = f"open('/workspace/{name}', 'w').write('print({value})\\n')\nanswer = {value}"
        return ["w\n</think>\n\n" + call("python", code=code), f"d\n</think>\n\nI wrote /workspace/{name}."]

    scripts: dict[int, list[str | Turn]] = {
        SEEDS[0]: writes("loser.py", 1),
        SEEDS[1]: writes("solution.py", 42),
        # The parent's follow-up run, continuing the winner's transcript.
        0: [
            "-",
            "r\n</think>\n\n" + call("shell", command="python3 /workspace/solution.py"),
            "e\n</think>\n\n42",
        ],
    }
    tools = build_tools(["python", "shell"])
    before = len(our_containers())
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as parent:
        await parent.shell("echo parent > /workspace/NOTE")
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(client, tools, sandbox=parent, config=config())
            result = await agent.branch(
                2, "Write solution.py", select=lambda outcomes: 1, seeds=SEEDS[:2], python_state="replay"
            )
            async with result:
                assert result.winner == 1
                assert agent.messages[-1].content == "I wrote /workspace/solution.py."
            # The winner's sandbox is gone with the result; its files and Python state are the parent's.
            assert agent.sandbox is parent and len(our_containers()) == before + 1
            listed = (await parent.shell("ls /workspace")).stdout.split()
            assert listed == ["NOTE", "solution.py"]  # the winner's file, not the loser's
            assert (await parent.python("answer")).value == "42"
            follow = await agent.run("Now run it", history=agent.messages)
        assert follow.status == "completed" and follow.answer == "42"
        ran = [m.content for m in follow.messages if m.role == "tool"][-1]
        assert "42" in ran and "No such file" not in ran
    assert len(our_containers()) == before
    assert result.adopt_error is None
