"""Parallel branches: real scripted HTTP server, real sandboxes restored from the parent's snapshot.

The scripted server routes each request by its sampling seed (one per branch) and by how many tool
results its prompt already holds, so every branch gets its own script.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from qwq_agent.agent.branch_result import BranchOutcome
from qwq_agent.agent.branches import BranchError, branch_trace_path
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import BranchEnded, BranchesStarted, BranchSelected, Final, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.replay import ReplayModel, load_recording
from qwq_agent.agent.selection import SelectionError
from qwq_agent.agent.tokenizer import get_tokenizer
from qwq_agent.agent.trace import read_trace
from qwq_agent.sandbox import SandboxPool
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest, Turn
from qwq_agent.tools.catalog import build_tools

REPO = Path(__file__).resolve().parent.parent / "examples" / "coding_assistant" / "repo"
SEEDS = [101, 202, 303, 404]
OLD = "    mid = len(ordered) // 2\n    return ordered[mid]\n"
GOOD = (
    "    mid = len(ordered) // 2\n"
    "    if len(ordered) % 2:\n"
    "        return ordered[mid]\n"
    "    return (ordered[mid - 1] + ordered[mid]) / 2\n"
)
WRONG = "    mid = len(ordered) // 2\n    return ordered[mid - 1]\n"
TESTS = "tests:cd /workspace && python3 -m unittest -q"


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def per_branch(scripts: dict[int, list[str | Turn]]) -> Callable[[ScriptedRequest], str | Turn]:
    """Answer each request from its branch's script (by seed), at the turn its prompt has reached."""

    def answer(req: ScriptedRequest) -> str | Turn:
        params = req.sampling_params
        if params.get("max_new_tokens") == 1:  # the shared prefix's warm-up
            return "x"
        script = scripts[params.get("sampling_seed", 0)]  # 0: the parent's own run
        step = (req.prompt or "").count("<tool_response>")
        return script[min(step, len(script) - 1)]

    return answer


def config(**kw: object) -> AgentConfig:
    return AgentConfig(check_language=False, model_retries=0, **kw)


def our_containers() -> list[dict]:
    import docker

    from qwq_agent.sandbox.janitor import L_PID, LABEL

    client = docker.from_env()
    return client.api.containers(all=True, filters={"label": [f"{LABEL}=1", f"{L_PID}={os.getpid()}"]})


def fix(new: str) -> list[str | Turn]:
    return [
        "fix it\n</think>\n\n"
        + call(
            "str_replace_editor",
            command="str_replace",
            path="/workspace/textstats/stats.py",
            old_str=OLD,
            new_str=new,
        ),
        "done\n</think>\n\nI fixed the median.",
    ]


@pytest.mark.docker
async def test_coding_example_picks_the_branch_whose_tests_pass(sandbox_image, tmp_path):
    from qwq_agent.agent.workspace import open_sandbox

    scripts: dict[int, list[str | Turn]] = {
        SEEDS[0]: fix(WRONG),
        SEEDS[1]: fix(GOOD),
        SEEDS[2]: ["nothing to do\n</think>\n\nThe code looks fine to me."],
    }
    tools = build_tools(["python", "shell", "str_replace_editor"])
    trace = tmp_path / "explore.jsonl"
    before = len(our_containers())
    async with open_sandbox(workspace=REPO, image=sandbox_image) as parent_sb:
        # The parent's state is branched: a file the parent wrote is in every branch.
        await parent_sb.shell("echo parent-was-here > /workspace/NOTE")
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(client, tools, sandbox=parent_sb, config=config(), trace_path=trace)
            async with await agent.explore(
                "Fix the failing test.", n=3, select=TESTS, seeds=SEEDS[:3]
            ) as result:
                assert result.winner == 1, result.reason
                [b0, b1, b2] = result.branches
                assert result.answer == "I fixed the median."
                assert "exited 0" in result.reason
                # The winner's sandbox is the caller's until the block ends: it holds the fix.
                kept = await result.sandbox.shell(
                    "cat /workspace/NOTE && python3 -m unittest -q 2>&1 | tail -1", timeout=60
                )
                assert "parent-was-here" in kept.stdout and "OK" in kept.stdout
                assert len(our_containers()) == before + 2  # the parent's and the winner's: losers are gone
            assert (b0.passed, b1.passed, b2.passed) == (False, True, False)
            assert "exited 1" in (b0.verdict or "") and "exited 0" in (b1.verdict or "")
            assert all(b.restore_s is not None and b.sandbox_s >= b.restore_s for b in result.branches)
            assert {b.python_state for b in result.branches} == {"fresh"}
            # The patch of each branch is against the parent's upload (the baseline came with the snapshot).
            assert "+    if len(ordered) % 2:" in (b1.result.patch or "")
            assert "NOTE" in (b2.result.patch or "") and "stats.py" not in (b2.result.patch or "")
            # The shared prefix was prefilled once, so every branch's first turn came from the cache.
            warm = next(r for r in server.requests if r.sampling_params.get("max_new_tokens") == 1)
            firsts = [r for r in server.requests if r is not warm and r.prompt.count("<tool_response>") == 0]
            assert len({r.prompt for r in firsts} | {warm.prompt}) == 1
            for b in result.branches:
                assert b.first_turn_cached_tokens >= 0.95 * b.first_turn_prompt_tokens > 0
            assert sorted(r.sampling_params["sampling_seed"] for r in firsts) == SEEDS[:3]
        # The parent continues from the winner: its own sandbox now holds the winner's fix (and its NOTE).
        mine = await parent_sb.shell("cat /workspace/NOTE && python3 -m unittest -q 2>&1 | tail -1")
        assert "parent-was-here" in mine.stdout and "OK" in mine.stdout and result.adopt_error is None
    assert len(our_containers()) == before
    # The parent trace links one file per branch, each a whole run.
    events = read_trace(result.trace_path)
    started = next(e for e in events if isinstance(e, BranchesStarted))
    assert started.n == 3 and started.seeds == SEEDS[:3] and started.select == TESTS
    ends = [e for e in events if isinstance(e, BranchEnded)]
    assert [e.passed for e in ends] == [False, True, False]
    assert next(e for e in events if isinstance(e, BranchSelected)).winner == 1
    assert isinstance(events[-1], Final) and events[-1].answer == "I fixed the median."
    assert events[-1].totals["steps"] == 2 + 2 + 1  # the branches' steps together
    for e in ends:
        assert e.trace == str(branch_trace_path(trace, e.index))
        assert read_trace(e.trace)[-1].status == "completed"


@pytest.mark.docker
async def test_all_branches_failing_gives_a_clear_result_and_leaks_nothing(sandbox_image, tmp_path):
    from qwq_agent.agent.workspace import open_sandbox

    scripts: dict[int, list[str | Turn]] = {SEEDS[0]: fix(WRONG), SEEDS[1]: ["no\n</think>\n\nGave up."]}
    tools = build_tools(["shell", "str_replace_editor"])
    before = len(our_containers())
    async with open_sandbox(workspace=REPO, image=sandbox_image) as parent_sb:
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(client, tools, sandbox=parent_sb, config=config())
            result = await agent.explore("Fix it.", n=2, select=TESTS, seeds=SEEDS[:2])
        assert result.winner is None and result.sandbox is None and result.status == "no_winner"
        assert "failed in every branch" in result.reason
        assert [b.status for b in result.branches] == ["completed", "completed"]
        assert len(our_containers()) == before + 1
    assert len(our_containers()) == before


async def test_majority_of_final_answers_wins_and_a_branch_replays_exactly(tmp_path):
    scripts: dict[int, list[str | Turn]] = {
        SEEDS[0]: ["a\n</think>\n\n42"],
        SEEDS[1]: ["b\n</think>\n\n41"],
        SEEDS[2]: ["c\n</think>\n\n 42. "],
        0: ["p\n</think>\n\n42"],
    }
    trace = tmp_path / "m.jsonl"
    async with (
        ScriptedModelServer(per_branch(scripts)) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config(), trace_path=trace)
        agent.messages = []
        first = await agent.run("What is 6*7?")  # a state to branch from: the transcript so far
        result = await agent.branch(3, "Say it again.", select="majority", seeds=SEEDS[:3])
    assert first.status == "completed"
    assert result.winner == 0 and result.answer == "42"
    assert "2 of 3" in result.reason
    # Each branch continued the parent's transcript, and the parent now holds the winner's.
    assert all(
        b.result is not None and b.result.messages[: len(first.messages)] == first.messages
        for b in result.branches
    )
    assert agent.messages == result.branches[0].result.messages
    # A branch's trace replays with the same prompts (no divergence) and the same answer.
    branch_file = result.branches[1].trace_path
    recording = load_recording(branch_file)
    assert recording.history
    replay = Agent(ReplayModel.from_recording(recording), [], config=recording.agent_config())
    events = [ev async for ev in replay.stream(recording.task, history=recording.history_messages())]
    assert not [e for e in events if isinstance(e, Warning_) and e.kind == "replay_divergence"]
    assert replay.result.answer == "41"


async def test_user_function_selects_and_its_mistakes_are_reported():
    scripts: dict[int, list[str | Turn]] = {
        SEEDS[0]: ["a\n</think>\n\nshort"],
        SEEDS[1]: ["b\n</think>\n\nthe longest answer"],
    }

    def longest(outcomes: list[BranchOutcome]) -> int:
        return max(outcomes, key=lambda o: len(o.answer or "")).index

    async with (
        ScriptedModelServer(per_branch(scripts)) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config())
        result = await agent.explore("Say something.", n=2, select=longest, seeds=SEEDS[:2])
        assert result.winner == 1 and result.answer == "the longest answer"
        assert "longest" in result.reason
        bad = await Agent(client, [], config=config()).explore("x", n=2, select=lambda o: 7, seeds=SEEDS[:2])
        assert bad.winner is None and "returned 7" in bad.reason
        assert [b.status for b in bad.branches] == ["completed", "completed"]


async def test_a_select_function_cannot_make_a_failed_branch_or_a_bool_the_winner():
    scripts: dict[int, list[str | Turn]] = {
        SEEDS[0]: [Turn(http_status=500)],
        SEEDS[1]: ["ok\n</think>\n\nfine"],
    }

    def best_score(outcomes: list[BranchOutcome]) -> int:
        # A scorer's NaN for the branch without an answer: max() keeps the first, the failed one.
        scores = [len(o.answer) if o.answer else float("nan") for o in outcomes]
        return max(range(len(outcomes)), key=lambda i: scores[i])

    async with (
        ScriptedModelServer(per_branch(scripts)) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config())
        result = await agent.explore("Go.", n=2, select=best_score, seeds=SEEDS[:2])
        assert [b.status for b in result.branches] == ["model_error", "completed"]
        assert result.winner is None and result.status == "no_winner"
        assert "branch 0 ended model_error" in result.reason
        assert agent.messages == []  # no dead branch's transcript handed to the parent
        yes = await Agent(client, [], config=config()).explore(
            "Go.", n=2, select=lambda o: True, seeds=SEEDS[:2]
        )
        assert yes.winner is None and "returned True" in yes.reason


async def test_crashing_and_timed_out_branches_lose_without_ending_the_exploration():
    scripts: dict[int, list[str | Turn]] = {
        SEEDS[0]: [Turn(http_status=500)],
        SEEDS[1]: [Turn(text="stuck " * 50, hold_after=1, hold_timeout=30)],
        SEEDS[2]: ["ok\n</think>\n\nfine"],
    }
    async with (
        ScriptedModelServer(per_branch(scripts)) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config())
        result = await agent.explore("Go.", n=3, select="majority", seeds=SEEDS[:3], branch_timeout_s=3.0)
    [crashed, timed_out, ok] = result.branches
    assert ok.status == "completed"
    assert crashed.status == "model_error" and "500" in (crashed.error or "")
    assert timed_out.status == "timeout" and "3 s" in (timed_out.error or "")
    assert result.winner == 2 and result.answer == "fine"


async def test_bad_arguments_fail_before_anything_starts():
    async with ScriptedModelServer(["never"]) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [], config=config())
        with pytest.raises(BranchError, match="between 1 and"):
            await agent.explore("x", n=0)
        with pytest.raises(BranchError, match="one per branch"):
            await agent.explore("x", n=2, seeds=[1])
        with pytest.raises(SelectionError, match="tests:COMMAND"):
            await agent.explore("x", n=2, select="best")
        with pytest.raises(SelectionError, match="needs a command"):
            await agent.explore("x", n=2, select="tests:  ")
        assert server.requests == []


async def test_more_branches_than_the_pool_s_max_live_is_refused_before_anything_starts():
    """Each branch holds its sandbox until the selection, so on a pool with `max_live` below `n` the
    branches past the cap waited for a release only the exploration itself would make: it sat idle
    for the pool's whole acquire timeout and then lost those branches. It is refused up front now."""
    async with ScriptedModelServer(["never"]) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        pool = SandboxPool(size=0, max_live=2)
        agent = Agent(client, [], sandbox_pool=pool, config=config())
        with pytest.raises(BranchError, match=r"3 branches.*max_live=2"):
            await agent.explore("x", n=3)
        assert server.requests == [] and pool.live == 0
        assert agent.exploration_trace is None


async def test_a_tests_selection_without_a_sandbox_is_refused_before_anything_starts():
    """`tests:` can only be checked in a sandbox: without one, nothing is sent to the model (all branches
    ran before and the verdict then said the command "failed in every branch", which never ran)."""
    async with ScriptedModelServer(["never"]) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [], config=config())
        for select in (TESTS, "verify:true"):
            with pytest.raises(SelectionError, match="needs a sandbox"):
                await agent.explore("x", n=2, select=select)
        assert server.requests == []


async def test_a_verdict_that_could_not_run_says_so_not_that_the_command_failed():
    from qwq_agent.agent.selection import Verifier

    outcomes = [BranchOutcome(index=i, seed=i, status="completed") for i in range(2)]
    choice = await Verifier("python3 -m unittest").select(outcomes, {0: None, 1: None})
    assert choice.winner is None
    assert [o.passed for o in outcomes] == [False, False]
    assert [o.verdict for o in outcomes] == ["`python3 -m unittest` could not be run: no sandbox"] * 2
    assert "could not be run" in choice.reason and "failed" not in choice.reason, choice.reason


def kill_container(cid: str) -> None:
    import docker

    docker.from_env().api.kill(cid)


@pytest.mark.docker
async def test_a_branch_whose_sandbox_died_is_not_verified_in_its_empty_replacement(sandbox_image):
    """The branch's container dies while the model answers (as one outliving its lifetime does). The
    check must not run in the fresh, empty container `auto_replace` would start: there `python3 -m
    unittest` runs no test and exits 0, and the branch that changed nothing (its tests fail) won."""
    from qwq_agent.agent.workspace import open_sandbox

    before = len(our_containers())
    async with open_sandbox(workspace=REPO, image=sandbox_image) as parent_sb:
        parents = {c["Id"] for c in our_containers()}
        killed: list[str] = []

        def answer(req: ScriptedRequest) -> str:
            if req.sampling_params.get("max_new_tokens") == 1:
                return "x"
            for c in our_containers():  # the branch's sandbox: the one container that is not the parent's
                if c["Id"] not in parents:
                    kill_container(c["Id"])
                    killed.append(c["Id"])
            return "nothing\n</think>\n\nThe code looks fine."

        async with ScriptedModelServer(answer) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, build_tools(["shell"]), sandbox=parent_sb, config=config())
            result = await agent.explore("Fix the failing test.", n=1, select=TESTS, seeds=SEEDS[:1])
        async with result:
            [b] = result.branches
            assert len(killed) == 1 and b.status == "completed"
            assert result.winner is None and result.sandbox is None, (result.reason, b.verdict)
            assert b.passed is False and "the branch's sandbox was lost" in (b.verdict or ""), b.verdict
            assert "could not be run" in result.reason
        assert len(our_containers()) == before + 1
    assert len(our_containers()) == before


@pytest.mark.docker
async def test_the_verifier_never_replaces_a_dead_sandbox_to_run_its_check(sandbox_image):
    """A sandbox that died after its branch ended: the check fails ("lost"), no replacement is started."""
    from qwq_agent.agent.selection import Verifier
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        kill_container(sb.id)
        await sb.wait_closed()
        outcome = BranchOutcome(index=0, seed=0, status="completed")
        choice = await Verifier("true").select([outcome], {0: sb})
        assert choice.winner is None and outcome.passed is False
        assert "the branch's sandbox was lost" in (outcome.verdict or ""), outcome.verdict
        assert sb.replacements == 0 and not sb.alive


# A branch's HOME (snapshotted, never in the patch nor copied back) turning every exit status into 0.
PLANT_EXIT_0 = (
    "d=$(python3 -c 'import site;print(site.getusersitepackages())') && mkdir -p \"$d\" && "
    "printf 'import atexit, os\\natexit.register(lambda: os._exit(0))\\n' > \"$d/usercustomize.py\""
)


@pytest.mark.docker
async def test_the_tests_verdict_is_about_the_delivered_patch_not_the_branchs_sandbox(
    sandbox_image, tmp_path
):
    """A branch makes a wrong edit and plants a `usercustomize.py` in its HOME that turns every failing
    exit into 0. Its sandbox passes the command; what it delivers (the patch) fails it. The check runs
    in a fresh sandbox holding the user's folder with the branch's patch applied."""
    from qwq_agent.agent.workspace import open_sandbox

    cheat = [
        *fix(WRONG)[:1],
        "env\n</think>\n\n" + call("shell", command=PLANT_EXIT_0),
        "done\n</think>\n\nFixed the median; the tests pass.",
    ]
    scripts: dict[int, list[str | Turn]] = {SEEDS[0]: cheat, SEEDS[1]: fix(GOOD)}
    before = len(our_containers())
    async with open_sandbox(workspace=REPO, image=sandbox_image) as parent_sb:
        await parent_sb.shell("echo parent-was-here > /workspace/NOTE")  # the start state, not the upload
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(
                client, build_tools(["shell", "str_replace_editor"]), sandbox=parent_sb, config=config()
            )
            select = "tests:cd /workspace && test -f NOTE && python3 -m unittest -q"
            async with await agent.explore("Fix it.", n=2, select=select, seeds=SEEDS[:2]) as result:
                [b0, b1] = result.branches
                # The cheat worked in its own sandbox: the planted file turned the failure into 0 there.
                assert result.winner == 1, (result.reason, b0.verdict, b1.verdict)
                assert b0.passed is False and "exited 1" in (b0.verdict or ""), b0.verdict
                assert "patch" in (b0.verdict or "") and "fresh sandbox" in (b0.verdict or ""), b0.verdict
                assert b1.passed is True and "exited 0" in (b1.verdict or "")
                assert "exited 0" in result.reason and "patch" in result.reason, result.reason
                assert len(our_containers()) == before + 2  # the checks' sandboxes are closed already
        assert len(our_containers()) == before + 1
    assert len(our_containers()) == before
    # What was checked is what is delivered: the winner's patch on the user's checkout passes.
    patch = b1.result.patch if b1.result else None
    assert patch
    ran = await asyncio.to_thread(apply_and_test, patch, tmp_path / "checkout")
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "checkout" / "NOTE").read_text() == "parent-was-here\n"


def apply_and_test(patch: str, work: Path) -> subprocess.CompletedProcess[str]:
    """`patch` applied to a copy of the user's checkout, and its tests run there."""
    shutil.copytree(REPO, work)
    subprocess.run(["patch", "-p1", "-s"], input=patch, text=True, cwd=work, check=True)
    return subprocess.run([sys.executable, "-m", "unittest", "-q"], cwd=work, capture_output=True, text=True)


@pytest.mark.docker
async def test_without_a_patch_the_check_runs_in_place_with_no_branch_process_and_a_clean_home(sandbox_image):
    """No baseline (a sandbox not opened on a workspace), so no patch: the check runs in the branch's own
    sandbox, but after its processes are stopped (a server the branch left running in the interpreter)
    and with a fresh HOME without user site-packages (a planted `usercustomize.py`)."""
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    check = "import sys, urllib.request\nurllib.request.urlopen('http://127.0.0.1:8765', timeout=5)\n"
    serve = (
        "import http.server, threading\n"
        "srv = http.server.HTTPServer(('127.0.0.1', 8765), http.server.SimpleHTTPRequestHandler)\n"
        "threading.Thread(target=srv.serve_forever, daemon=True).start()"
    )
    scripts: dict[int, list[str | Turn]] = {
        SEEDS[0]: ["home\n</think>\n\n" + call("shell", command=PLANT_EXIT_0), "d\n</think>\n\nDone."],
        SEEDS[1]: ["serve\n</think>\n\n" + call("python", code=serve), "d\n</think>\n\nDone."],
        SEEDS[2]: [
            "fix\n</think>\n\n" + call("shell", command="echo pass > /workspace/check.py"),
            "d\n</think>\n\nDone.",
        ],
    }
    before = len(our_containers())
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as parent_sb:
        await parent_sb.create_file("/workspace/check.py", check)
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(client, build_tools(["shell", "python"]), sandbox=parent_sb, config=config())
            select = "tests:python3 /workspace/check.py"
            async with await agent.explore(
                "Make check.py pass.", n=3, select=select, seeds=SEEDS[:3]
            ) as result:
                [b0, b1, b2] = result.branches
                assert [b.status for b in result.branches] == ["completed"] * 3
                assert result.winner == 2, (result.reason, b0.verdict, b1.verdict)
                assert (b0.passed, b1.passed, b2.passed) == (False, False, True)
                for b in result.branches:
                    assert "in the branch's own sandbox" in (b.verdict or ""), b.verdict
                assert "exited 1" in (b0.verdict or "") and "exited 1" in (b1.verdict or "")
                assert len(our_containers()) == before + 2
    assert len(our_containers()) == before


@pytest.mark.docker
async def test_a_check_is_bounded_by_the_branch_timeout_and_leaves_no_sandbox(sandbox_image):
    from qwq_agent.agent.workspace import open_sandbox

    scripts: dict[int, list[str | Turn]] = {SEEDS[0]: ["ok\n</think>\n\nDone."]}
    before = len(our_containers())
    async with open_sandbox(workspace=REPO, image=sandbox_image) as parent_sb:
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(client, build_tools(["shell"]), sandbox=parent_sb, config=config())
            started = asyncio.get_running_loop().time()
            result = await agent.explore(
                "Go.", n=1, select="tests:sleep 40", seeds=SEEDS[:1], branch_timeout_s=8.0
            )
            took = asyncio.get_running_loop().time() - started
        [b] = result.branches
        assert b.status == "completed" and result.winner is None
        assert "8 s" in (b.verdict or "") and "could not be run" in (b.verdict or ""), b.verdict
        assert took < 60
        assert len(our_containers()) == before + 1
    assert len(our_containers()) == before


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-x", "-q"]))


@pytest.mark.docker
async def test_branches_can_rebuild_the_parents_python_state(sandbox_image):
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    script: list[str | Turn] = ["x\n</think>\n\n" + call("python", code="print(x + 1)"), "y\n</think>\n\nok"]
    scripts = {SEEDS[0]: script, SEEDS[1]: script}
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as parent_sb:
        await parent_sb.python("x = 41")
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(client, build_tools(["python"]), sandbox=parent_sb, config=config())
            result = await agent.explore("x+1?", n=2, seeds=SEEDS[:2], python_state="replay")
            await result.aclose()
    assert result.winner == 0
    for b in result.branches:
        assert b.python_state == "replayed"
        assert b.result is not None and "42" in b.result.messages[-2].content


async def test_branching_a_run_that_stopped_mid_way_continues_its_transcript(tmp_path):
    from qwq_agent.agent.budgets import Budget
    from qwq_agent.tools.base import tool

    @tool
    def lookup(key: str) -> str:
        """Look a key up.

        Args:
            key: the key
        """
        return f"value-of-{key}"

    scripts: dict[int, list[str | Turn]] = {
        0: ["look\n</think>\n\n" + call("lookup", key="k")],  # the parent: stopped by its step budget
        SEEDS[0]: ["-", "a\n</think>\n\nvalue-of-k"],
        SEEDS[1]: ["-", "b\n</think>\n\nvalue-of-k"],
    }
    async with (
        ScriptedModelServer(per_branch(scripts)) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(
            client, [lookup], config=config(budget=Budget(max_steps=1)), trace_path=tmp_path / "p.jsonl"
        )
        stopped = await agent.run("What is k?")
        assert stopped.status == "budget_exceeded" and stopped.messages[-1].role == "tool"
        agent.config = config()  # the branches get the usual budget
        result = await agent.branch(2, select="majority", seeds=SEEDS[:2])
        firsts = [r for r in server.requests if r.sampling_params.get("sampling_seed") in SEEDS]
    assert result.winner == 0 and result.answer == "value-of-k"
    # No user turn was added: each branch answered the tool result the parent stopped at.
    for b in result.branches:
        assert b.result is not None and b.result.messages[: len(stopped.messages)] == stopped.messages
        assert [m.role for m in b.result.messages[len(stopped.messages) :]] == ["assistant"]
    assert all(r.prompt.count("<tool_response>") == 1 and r.prompt.endswith("<think>\n") for r in firsts)
    # The branch's trace records that it continued, and replays exactly.
    recording = load_recording(result.branches[1].trace_path)
    assert recording.continues and recording.task == "What is k?"
    replay = Agent(ReplayModel.from_recording(recording), [lookup], config=recording.agent_config())
    events = [
        ev async for ev in replay.stream(recording.task, history=recording.history_messages(), continues=True)
    ]
    assert not [e for e in events if isinstance(e, Warning_) and e.kind == "replay_divergence"]
    assert replay.result is not None and replay.result.answer == "value-of-k"
    with pytest.raises(BranchError, match="nothing to continue"):
        await agent.branch(2)  # the transcript now ends with the winner's answer


async def test_a_slow_warm_up_leaves_the_branches_their_time(tmp_path):
    """The shared prefix's warm-up is an optimisation: one the server is slow to answer gives up within
    `branch_timeout_s`, and the branches then get their whole limit (it used to run inside their time,
    bounded by its own 120 s: every branch lost "timeout" before sending a request)."""

    def answer(req: ScriptedRequest) -> str | Turn:
        if req.sampling_params.get("max_new_tokens") == 1:  # the warm-up
            return Turn(text="x", first_token_delay=8.0)
        return "easy\n</think>\n\n42"

    async with (
        ScriptedModelServer(answer) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config(), trace_path=tmp_path / "t.jsonl")
        result = await agent.explore("What is 6*7?", n=2, seeds=SEEDS[:2], branch_timeout_s=2.0)
        sent = [r for r in server.requests if r.sampling_params.get("sampling_seed") in SEEDS]
    assert [b.status for b in result.branches] == ["completed", "completed"]
    assert result.winner is not None and result.answer == "42" and len(sent) == 2
    assert result.warmup is None  # it gave up: no usage to report


async def test_the_warm_up_prefills_the_tokens_the_branches_send_with_kept_turns_spliced_in():
    """With kept reasoning sent token-exact, the branches' first requests go as ids holding what the
    server sampled for the kept turn (not what its text tokenizes to): the warm-up sends those ids too,
    or the prefill it pays for is not the prefix the branches send."""
    tok = get_tokenizer()

    def answer(req: ScriptedRequest) -> str | Turn:
        if req.sampling_params.get("max_new_tokens") == 1:  # the warm-up
            return "x"
        reasoning = "Thinking about the numbers carefully."  # one token a character: no tokenizer's choice
        return Turn(ids=[i for ch in reasoning for i in tok.encode(ch)] + tok.encode("\n</think>\n\nFour."))

    async with (
        ScriptedModelServer(answer, when_exhausted="repeat") as server,
        SGLangClient(server.url, retry=NO_RETRY, keep_reasoning=True) as client,
    ):
        agent = Agent(client, [], config=config())
        assert (await agent.run("What is 2 + 2?")).status == "completed"
        result = await agent.branch(2, "And 3 + 3?", select="first", seeds=SEEDS[:2])
        assert result.winner is not None, result.reason
        warm = next(r for r in server.requests if r.sampling_params.get("max_new_tokens") == 1)
        firsts = [r for r in server.requests if r.sampling_params.get("sampling_seed") in SEEDS]
    assert warm.input_ids is not None and len(firsts) == 2
    assert all(r.prompt_ids == warm.prompt_ids for r in firsts)
    assert result.warmup is not None and result.warmup.prompt_tokens == len(warm.prompt_ids)


def _final_raises(exc: BaseException) -> Callable[[int, object], None]:
    def on_event(index: int, ev: object) -> None:
        if isinstance(ev, Final):
            raise exc

    return on_event


@pytest.mark.parametrize(
    "exc",
    [BrokenPipeError(32, "Broken pipe"), TimeoutError("timed out")],  # socket.timeout is TimeoutError
    ids=["broken-pipe", "timeout"],
)
async def test_an_on_event_callback_that_raises_is_reported_not_taken_for_the_branchs_failure(
    tmp_path, exc: BaseException
):
    """A display callback failing at a branch's `final` (a closed stdout) made the completed branch an
    "error" one that could not win; a TimeoutError from it (no `branch_timeout_s`) crashed explore()
    with a TypeError formatting the limit."""
    async with (
        ScriptedModelServer(per_branch({s: ["easy\n</think>\n\n42"] for s in SEEDS[:2]})) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config(), trace_path=tmp_path / "t.jsonl")
        result = await agent.explore("What is 6*7?", n=2, seeds=SEEDS[:2], on_event=_final_raises(exc))
    assert [b.status for b in result.branches] == ["completed", "completed"]
    assert result.winner == 0 and result.answer == "42"
    assert result.trace_path is not None
    warnings = [e for e in read_trace(result.trace_path) if isinstance(e, Warning_)]
    # Said once for the exploration, naming what the callback raised.
    assert [w.kind for w in warnings] == ["on_event_failed"]
    assert type(exc).__name__ in warnings[0].message


async def test_every_branchs_tool_calls_have_ended_when_explore_returns(tmp_path):
    """A callback raising while a branch's calls run left the branch's stream suspended, its slow call
    still running after explore() returned."""
    from qwq_agent.agent.events import ToolResultEvent
    from qwq_agent.tools.base import tool

    running: list[int] = []
    ended: list[int] = []

    @tool(timeout=30)
    async def slow(n: int) -> str:
        """Take a while."""
        running.append(n)
        try:
            await asyncio.sleep(1.5)
            return "slept"
        finally:
            running.remove(n)
            ended.append(n)

    @tool
    def fast(n: int) -> str:
        """Return at once."""
        return "fast"

    def on_event(index: int, ev: object) -> None:
        if isinstance(ev, ToolResultEvent) and ev.name == "fast":
            raise RuntimeError("viewer crashed")

    turns = ["go\n</think>\n\n" + call("slow", n=1) + "\n" + call("fast", n=2), "ok\n</think>\n\ndone"]
    async with (
        ScriptedModelServer(per_branch({s: turns for s in SEEDS[:2]})) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [slow, fast], config=config(), trace_path=tmp_path / "t.jsonl")
        result = await agent.explore("do it", n=2, seeds=SEEDS[:2], on_event=on_event)
        still_running = list(running)
    assert still_running == [] and ended == [1, 1]
    assert [b.status for b in result.branches] == ["completed", "completed"]


async def test_a_timed_out_branchs_own_trace_and_result_say_timeout(tmp_path):
    """The branch's trace is a whole run (replayable, `trace show`): it said "cancelled" ("the run was
    cancelled") for a branch nobody cancelled, which ran past `branch_timeout_s`."""
    scripts: dict[int, list[str | Turn]] = {
        SEEDS[0]: [Turn(text="thinking " * 50, hold_after=2, hold_timeout=30)]
    }
    async with (
        ScriptedModelServer(per_branch(scripts)) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config(), trace_path=tmp_path / "t.jsonl")
        result = await agent.explore("Go.", n=1, seeds=SEEDS[:1], branch_timeout_s=1.0)
    [branch] = result.branches
    assert (branch.status, branch.error) == ("timeout", "the branch ran past its 1 s limit")
    assert branch.result is not None and branch.trace_path is not None
    assert (branch.result.status, branch.result.error) == (branch.status, branch.error)
    final = read_trace(branch.trace_path)[-1]
    assert isinstance(final, Final) and (final.status, final.error) == (branch.status, branch.error)
