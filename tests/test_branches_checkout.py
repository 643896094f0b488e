"""What a `tests:` check sees: with a baseline, only the user's checkout with the branch's patch applied;
without one, the branch's own sandbox with nothing of the branch running.

Real scripted HTTP server, real sandboxes; each cheat here is one a hostile model can do with its tools.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_branches import GOOD, OLD, REPO, SEEDS, TESTS, WRONG, call, config, fix, our_containers, per_branch

from qwq_agent.agent.branch_result import BranchOutcome
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loop import Agent
from qwq_agent.testing.scripted_server import ScriptedModelServer, Turn
from qwq_agent.tools.catalog import build_tools

# An unchecked-hash .pyc of the test module whose test passes: Python loads it without reading the source.
PLANT_PYC = r"""
cat > /tmp/fake.py <<'PY'
import unittest
class TestStats(unittest.TestCase):
    def test_median(self):
        pass
PY
python3 - <<'PY'
import importlib.util, py_compile
py_compile.compile('/tmp/fake.py', cfile=importlib.util.cache_from_source('/workspace/tests/test_stats.py'),
                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH, doraise=True)
PY
"""


@pytest.mark.docker
async def test_with_a_baseline_a_branch_without_a_patch_fails_its_check(sandbox_image):
    """A branch breaks its own patch computation (`rm -rf ~/.qwq-agent`) after a wrong edit and a planted
    .pyc: with no patch it must not fall back to the in-place check (where the .pyc passes the tests)."""
    from qwq_agent.agent.workspace import open_sandbox

    edit = call(
        "str_replace_editor",
        command="str_replace",
        path="/workspace/textstats/stats.py",
        old_str=OLD,
        new_str=WRONG,
    )
    cheat: list[str | Turn] = [
        "fix\n</think>\n\n" + edit,
        "cheat\n</think>\n\n" + call("shell", command=PLANT_PYC + "rm -rf ~/.qwq-agent\n"),
        "d\n</think>\n\nFixed; the tests pass.",
    ]
    scripts: dict[int, list[str | Turn]] = {SEEDS[0]: cheat, SEEDS[1]: fix(GOOD)}
    before = len(our_containers())
    async with open_sandbox(workspace=REPO, image=sandbox_image) as parent_sb:
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(
                client, build_tools(["shell", "str_replace_editor"]), sandbox=parent_sb, config=config()
            )
            async with await agent.explore("Fix it.", n=2, select=TESTS, seeds=SEEDS[:2]) as result:
                [b0, b1] = result.branches
                assert b0.status == "completed" and b0.result is not None and b0.result.patch is None
                assert result.winner == 1, (result.reason, b0.verdict, b1.verdict)
                assert b0.passed is False and "patch could not be computed" in (b0.verdict or ""), b0.verdict
                assert "own sandbox" not in (b0.verdict or ""), b0.verdict
                assert b1.passed is True and "patch" in (b1.verdict or ""), b1.verdict
    assert len(our_containers()) == before


# What the branch leaves in its HOME: run by any Python that starts with user site-packages on (as the
# sandbox's interpreter does), it marks that the branch's code ran.
PLANT_MARKER = (
    "d=$(python3 -c 'import site;print(site.getusersitepackages())') && mkdir -p \"$d\" && "
    "echo \"open('/tmp/branch-code-ran', 'w').close()\" > \"$d/usercustomize.py\""
)
# Passes when the branch's code runs while the check does (the marker appears within 10 s), else fails.
CHEAT_CHECK = (
    "tests:for i in $(seq 100); do test -e /tmp/branch-code-ran && exit 0; sleep 0.1; done; "
    "echo the branch left nothing running; exit 1"
)


@pytest.mark.docker
async def test_the_in_place_check_runs_no_code_of_the_branch(sandbox_image):
    """No baseline: the check runs in the branch's own sandbox after its interpreter is stopped. The
    branch planted a `usercustomize.py` in its HOME and ran a cell; an interpreter restarted for the check
    (in the branch's HOME, user site-packages on) runs it while the check does."""
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    scripts: dict[int, list[str | Turn]] = {
        SEEDS[0]: [
            "home\n</think>\n\n" + call("shell", command=PLANT_MARKER),
            "py\n</think>\n\n" + call("python", code="print('a cell ran')"),
            "d\n</think>\n\nDone.",
        ]
    }
    before = len(our_containers())
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as parent_sb:
        async with (
            ScriptedModelServer(per_branch(scripts)) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(client, build_tools(["shell", "python"]), sandbox=parent_sb, config=config())
            async with await agent.explore("Go.", n=1, select=CHEAT_CHECK, seeds=SEEDS[:1]) as result:
                [b] = result.branches
                assert b.status == "completed" and "a cell ran" in b.result.messages[-2].content  # type: ignore[union-attr]
                assert result.winner is None, (result.reason, b.verdict)
                assert "exited 1" in (b.verdict or "") and "own sandbox" in (b.verdict or ""), b.verdict
    assert len(our_containers()) == before


@pytest.mark.docker
async def test_a_reset_without_restart_starts_python_at_the_next_call_as_usual(sandbox_image):
    """`reset_python(restart=False)` leaves no interpreter running; the next python call starts one, says
    that earlier state is gone, and sees the user's site-packages as any interpreter does."""
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        await sb.python("x = 1")
        await sb.shell(
            "d=$(python3 -c 'import site;print(site.getusersitepackages())') && mkdir -p \"$d\" && "
            "echo 'VALUE = 42' > \"$d/mine.py\""
        )
        reset = await sb.reset_python(restart=False)
        assert reset.worker_pid is None
        ps = await sb.shell("ps -eo args | grep -c '[b]oot.py --worker' || true")
        assert ps.stdout.strip() == "0", ps.stdout
        out = await sb.python("import mine\nprint(mine.VALUE, 'x' in globals())")
        assert out.stdout.strip() == "42 False" and out.state_lost, out
        assert "stopped" in out.stderr, out.stderr
        again = await sb.python("print(mine.VALUE)")
        assert again.stdout.strip() == "42" and not again.state_lost


# What the parent's own earlier (hostile) run left: in its HOME, a `usercustomize.py` that turns every
# exit status into 0; in an ignored folder, the .pyc of the test module whose test passes.
PLANT_PARENT = (
    PLANT_PYC + "d=$(python3 -c 'import site;print(site.getusersitepackages())') && mkdir -p \"$d\" && "
    "printf 'import atexit, os\\natexit.register(lambda: os._exit(0))\\n' > \"$d/usercustomize.py\"\n"
)


def user_checkout(tmp_path) -> Path:
    """The user's folder: the example repository, ignoring `__pycache__/` and `local/` (which holds a
    file of the user's that its tests need and no upload of git's tracked files would bring)."""
    ws = tmp_path / "repo"
    shutil.copytree(REPO, ws)
    (ws / ".gitignore").write_text("__pycache__/\nlocal/\n")
    (ws / "local").mkdir()
    (ws / "local" / "settings.txt").write_text("the user's own\n")
    return ws


async def explore_wrong_and_good(parent_sb) -> tuple[BranchOutcome, BranchOutcome, int | None]:
    """Branch 0 makes the wrong edit, branch 1 the right one; both are checked, the first passing wins."""
    scripts: dict[int, list[str | Turn]] = {SEEDS[0]: fix(WRONG), SEEDS[1]: fix(GOOD)}
    async with (
        ScriptedModelServer(per_branch(scripts)) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(
            client, build_tools(["shell", "str_replace_editor"]), sandbox=parent_sb, config=config()
        )
        select = "tests:cd /workspace && test -f NOTE && test -f local/settings.txt && python3 -m unittest -q"
        async with await agent.explore("Fix it.", n=2, select=select, seeds=SEEDS[:2]) as result:
            return result.branches[0], result.branches[1], result.winner


@pytest.mark.docker
async def test_a_patch_is_checked_on_the_users_folder_not_on_what_the_parent_left(sandbox_image, tmp_path):
    """The parent's sandbox (opened on the user's folder) holds a planted HOME and an ignored .pyc. The
    check of each branch's patch starts from the user's folder itself: the wrong patch fails, the right
    one passes (with the parent's own change, NOTE, from the patch, and the user's ignored file)."""
    from qwq_agent.agent.workspace import open_sandbox

    before = len(our_containers())
    async with open_sandbox(workspace=user_checkout(tmp_path), image=sandbox_image) as parent_sb:
        planted = await parent_sb.shell(PLANT_PARENT + "echo parent-was-here > /workspace/NOTE")
        assert planted.exit_code == 0, planted
        wrong, good, winner = await explore_wrong_and_good(parent_sb)
    assert winner == 1, (wrong.verdict, good.verdict)
    assert wrong.passed is False and "exited 1" in (wrong.verdict or ""), wrong.verdict
    assert good.passed is True and "exited 0" in (good.verdict or ""), good.verdict
    assert len(our_containers()) == before


@pytest.mark.docker
async def test_without_the_users_folder_the_check_drops_the_start_states_ignored_files(
    sandbox_image, tmp_path
):
    """A baseline recorded on a sandbox not opened by `open_sandbox` (the user's folder is unknown): the
    check starts from the parent's snapshot, without the files the baseline's tree does not hold (the
    planted .pyc) and under a fresh HOME (the planted `usercustomize.py`)."""
    from qwq_agent.agent.patch import record_baseline
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    folder = user_checkout(tmp_path)
    (folder / ".gitignore").write_text("__pycache__/\n")  # local/settings.txt is tracked here
    before = len(our_containers())
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as parent_sb:
        await parent_sb.upload(folder, "/workspace", contents=True)
        await record_baseline(parent_sb)
        planted = await parent_sb.shell(PLANT_PARENT + "echo parent-was-here > /workspace/NOTE")
        assert planted.exit_code == 0, planted
        wrong, good, winner = await explore_wrong_and_good(parent_sb)
    assert winner == 1, (wrong.verdict, good.verdict)
    assert wrong.passed is False and "exited 1" in (wrong.verdict or ""), wrong.verdict
    assert good.passed is True and "exited 0" in (good.verdict or ""), good.verdict
    assert len(our_containers()) == before


@pytest.mark.docker
async def test_a_clean_apply_runs_no_git_setting_of_the_start_state(sandbox_image, tmp_path):
    """`apply_patch(clean=True)` on a start state whose baseline git directory a run rewrote: a clean
    filter (a command git runs on `add`) and a global git config planted in HOME must not run."""
    from qwq_agent.agent.patch import apply_patch, record_baseline, workspace_patch
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        await sb.upload(REPO, "/workspace", contents=True)
        await record_baseline(sb)
        await sb.shell("echo new > /workspace/NEW")
        patch = await workspace_patch(sb)
        planted = await sb.shell(
            "g=~/.qwq-agent/baseline.git && "
            "printf '[filter \"x\"]\\n\\tclean = touch /tmp/ran-local\\n' >> $g/config && "
            "echo 'textstats/* filter=x' > $g/info/attributes && "
            "printf '[filter \"y\"]\\n\\tclean = touch /tmp/ran-global\\n' > ~/.gitconfig && "
            "echo '* filter=y' > /workspace/.gitattributes && mkdir -p /workspace/build && touch /workspace/build/x.pyc"
        )
        assert planted.exit_code == 0, planted
        await apply_patch(sb, patch, clean=True)
        after = await sb.shell("ls /tmp/ran-* 2>&1; ls -A /workspace; cat /workspace/NEW")
        assert "ran-local" not in after.stdout and "ran-global" not in after.stdout, after.stdout
        assert ".gitattributes" not in after.stdout and "build" not in after.stdout, after.stdout
        assert after.stdout.rstrip().endswith("new"), after.stdout
