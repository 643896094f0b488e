"""`qwq-agent run --branches N --select ...` and `trace show` of an exploration, as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
REPO = Path(__file__).resolve().parent.parent / "examples" / "coding_assistant" / "repo"
OLD = "    mid = len(ordered) // 2\n    return ordered[mid]\n"
GOOD = (
    "    mid = len(ordered) // 2\n"
    "    if len(ordered) % 2:\n"
    "        return ordered[mid]\n"
    "    return (ordered[mid - 1] + ordered[mid]) / 2\n"
)
WRONG = "    mid = len(ordered) // 2\n    return ordered[mid + 1]\n"


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def fix(new: str) -> list[str]:
    path = "/workspace/textstats/stats.py"
    return [
        "fix\n</think>\n\n"
        + call("str_replace_editor", command="str_replace", path=path, old_str=OLD, new_str=new),
        "done\n</think>\n\nFixed.",
    ]


class ByArrival:
    """The CLI picks random seeds: the first seed seen gets the first script, and so on."""

    def __init__(self, scripts: list[list[str]]) -> None:
        self.scripts = scripts
        self.seeds: list[int] = []

    def __call__(self, req: ScriptedRequest) -> str:
        params = req.sampling_params
        if params.get("max_new_tokens") == 1:
            return "x"
        seed = params["sampling_seed"]
        if seed not in self.seeds:
            self.seeds.append(seed)
        script = self.scripts[self.seeds.index(seed)]
        return script[min((req.prompt or "").count("<tool_response>"), len(script) - 1)]


@pytest.mark.docker
def test_run_branches_selects_by_tests_and_says_why_one_line_per_branch(sandbox_image, tmp_path):
    route = ByArrival([fix(WRONG), fix(GOOD), fix(WRONG)])
    trace = tmp_path / "x.jsonl"
    with ScriptedModelServer(route) as server:
        proc = subprocess.run(
            [
                *CLI, "run", "Fix the failing test.", "--model-url", server.url,
                "--tools", "shell,str_replace_editor", "--workspace", str(REPO),
                "--branches", "3", "--select", "tests:cd /workspace && python3 -m unittest -q",
                "--trace", str(trace), "--patch", str(tmp_path / "fix.diff"),
            ],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    good_seed = route.seeds[1]
    lines = [ln for ln in out.splitlines() if re.match(r"branch \d \(seed \d+\)", ln)]
    assert len(lines) == 3, out
    [won] = [ln for ln in lines if f"(seed {good_seed})" in ln]
    assert "exited 0" in won and "won" in won
    assert sum("exited 1" in ln for ln in lines) == 2
    winner = int(won.split()[1])
    assert f"branch {winner} won: `cd /workspace && python3 -m unittest -q` exited 0" in out
    assert "Traceback" not in out
    assert len(re.findall(r"^branch \d ended: completed after 2 steps$", proc.stdout, re.M)) == 3
    assert "+        return ordered[mid]" in (tmp_path / "fix.diff").read_text()

    shown = subprocess.run(
        [*CLI, "trace", "show", str(trace), "--branches"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "3 branches" in shown.stdout and f"branch {winner} won" in shown.stdout
    assert shown.stdout.count("first turn") == 3 and "x.branch-2.jsonl" in shown.stdout

    # The winning branch replays from its own trace (its workspace and history are recorded).
    replayed = subprocess.run(
        [*CLI, "run", "--replay", str(tmp_path / f"x.branch-{winner}.jsonl"), "--json", "--trace", str(tmp_path / "r.jsonl")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    final = json.loads(replayed.stdout.strip().splitlines()[-1])
    assert final["type"] == "final" and final["answer"] == "Fixed."
    assert "replay_divergence" not in replayed.stdout


TEST_FILE = "/workspace/tests/test_stats.py"
EVEN = "        self.assertEqual(median([4, 1, 3, 2]), 2.5)\n"


def cheat() -> list[str]:
    """Makes the failing test pass by changing what it expects, not the code."""
    wrong = EVEN.replace("2.5", "3")
    edit = call("str_replace_editor", command="str_replace", path=TEST_FILE, old_str=EVEN, new_str=wrong)
    return ["the expected value looks wrong\n</think>\n\n" + edit, "done\n</think>\n\nThe tests pass now."]


def fix_and_add_a_test() -> list[str]:
    """Fixes the code, and adds a test of its own."""
    more = EVEN + "        self.assertEqual(median([1, 2]), 1.5)\n"
    return [
        fix(GOOD)[0],
        "and a test\n</think>\n\n"
        + call("str_replace_editor", command="str_replace", path=TEST_FILE, old_str=EVEN, new_str=more),
        "done\n</think>\n\nFixed, with a test.",
    ]


@pytest.mark.docker
def test_a_branch_cannot_pass_the_tests_by_editing_them(sandbox_image, tmp_path):
    """`tests:` ran COMMAND with the branch's whole patch applied, its edits to the tests included: a
    branch that rewrote the failing assertion passed and won, and nothing said the tests had changed.
    The tests are now as in the user's folder when COMMAND runs; a winner's edits to them are named."""
    route = ByArrival([cheat(), fix_and_add_a_test()])
    patch = tmp_path / "fix.diff"
    with ScriptedModelServer(route) as server:
        proc = subprocess.run(
            [
                *CLI, "run", "The test suite fails. Fix the code (not the tests).", "--model-url", server.url,
                "--tools", "shell,str_replace_editor", "--workspace", str(REPO),
                "--branches", "2", "--select", "tests:cd /workspace && python3 -m unittest -q",
                "--trace", str(tmp_path / "x.jsonl"), "--patch", str(patch),
            ],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    screen = " ".join(out.split())
    [cheater] = [ln for ln in out.splitlines() if f"(seed {route.seeds[0]})" in ln]
    [honest] = [ln for ln in out.splitlines() if f"(seed {route.seeds[1]})" in ln]
    assert "exited 1" in cheater and "protected" in cheater and "tests/test_stats.py" in cheater, cheater
    assert ": won" in honest, out
    assert "warning: the winner's patch also changes protected files" in screen
    assert "tests/test_stats.py" in screen.split("warning: the winner's patch")[1]
    written = patch.read_text()  # the winner's patch as it made it, its new test included
    assert "+        self.assertEqual(median([1, 2]), 1.5)" in written
    assert "+        return ordered[mid]" in written


def test_bad_branch_flags_get_one_clear_line(tmp_path):
    for flags, expected in [
        (["--select", "majority"], "--select needs --branches"),
        (["--branches", "0"], "--branches must be between 1 and"),
        (["--branches", "2", "--select", "best"], "unknown select 'best'"),
        (["--branches", "2", "--protect", "spec/**"], "--protect needs --select tests:COMMAND"),
        (["--branches", "2", "--select", "first", "--no-protect"], "--no-protect needs --select tests:"),
        (["--branches", "2", "--select", "tests:true", "--protect", "a/[b"], "--protect 'a/[b':"),
    ]:
        proc = subprocess.run([*CLI, "run", "x", *flags], capture_output=True, text=True, timeout=60)
        err = proc.stdout + proc.stderr
        assert proc.returncode == 2 and expected in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_tests_selection_without_a_sandbox_tool_is_refused_before_any_model_request(tmp_path):
    """`--select tests:` with tools that start no sandbox cannot be checked: refused up front, like
    --workspace without a sandbox tool, rather than every branch run and "failed in every branch"."""
    with ScriptedModelServer(
        lambda req: "x" if req.sampling_params.get("max_new_tokens") == 1 else "t\n</think>\n\n42"
    ) as server:
        for select in ("tests:python3 -m unittest", "verify:true"):
            proc = subprocess.run(
                [
                    *CLI, "run", "Go.", "--model-url", server.url, "--tools", "fetch_url",
                    "--branches", "3", "--select", select, "--trace", str(tmp_path / "t.jsonl"),
                ],
                capture_output=True, text=True, timeout=60, cwd=tmp_path,
            )  # fmt: skip
            err = proc.stdout + proc.stderr
            assert proc.returncode == 2, err
            assert "needs a tool that works in the sandbox" in err and "--tools" in err, err
            assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
        assert server.requests == []
    assert not (tmp_path / "t.jsonl").exists()


@pytest.mark.docker
def test_the_winners_answer_is_printed_literally_and_copy_back_still_happens(sandbox_image, tmp_path):
    """An answer naming `[/workspace/out.txt]` is not Rich markup (a MarkupError lost it and skipped
    --copy-back), and its escape sequence (ESC c resets the terminal) is shown, not sent."""
    answer = "Done: the output is in [/workspace/out.txt].\x1bc all tests pass"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "kept.txt").write_text("kept")

    def route(req: ScriptedRequest) -> str:  # every branch, every request: the same answer
        return "x" if req.sampling_params.get("max_new_tokens") == 1 else f"done\n</think>\n\n{answer}"

    with ScriptedModelServer(route) as server:
        proc = subprocess.run(
            [
                *CLI, "run", "Say where the output is.", "--model-url", server.url,
                "--tools", "shell", "--workspace", str(workspace),
                "--branches", "2", "--select", "first",
                "--trace", str(tmp_path / "x.jsonl"), "--copy-back", str(tmp_path / "back"),
            ],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "MarkupError" not in out
    assert "\x1b" + "c" not in proc.stdout
    assert "Done: the output is in [/workspace/out.txt].\\x1bc all tests pass" in proc.stdout
    assert "workspace copied back to" in proc.stdout
    assert (tmp_path / "back" / "workspace" / "kept.txt").read_text() == "kept"


@pytest.mark.docker
def test_a_winner_without_a_patch_says_so_and_exits_1(sandbox_image, tmp_path):
    """--patch FILE when the winner's patch could not be collected (here its agent removed the baseline
    git directory): FILE was not written, nothing said so, and the run exited 0."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "kept.txt").write_text("kept")
    work = "echo new > new.txt && rm -rf ~/.qwq-agent"

    def route(req: ScriptedRequest) -> str:  # every branch: the work, then the answer
        if req.sampling_params.get("max_new_tokens") == 1:
            return "x"
        if "<tool_response>" in (req.prompt or ""):
            return "done\n</think>\n\nDone."
        return "work\n</think>\n\n" + call("shell", command=work)

    patch = tmp_path / "fix.diff"
    with ScriptedModelServer(route) as server:
        proc = subprocess.run(
            [
                *CLI, "run", "Work.", "--model-url", server.url, "--tools", "shell",
                "--workspace", str(workspace), "--branches", "2", "--select", "first",
                "--trace", str(tmp_path / "x.jsonl"), "--patch", str(patch),
            ],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1, out
    assert "Traceback" not in out and re.search(r"branch \d won", out)
    assert re.search(rf"no patch: diffing /workspace with git failed .*; {patch} not written", out), out
    assert not patch.exists()


def test_only_the_selected_branch_is_marked_won_others_that_passed_say_passed():
    """Two branches pass `tests:`; only the selected one is "won" (an operator greps for `: won`)."""
    from rich.console import Console

    from qwq_agent.agent.branch_result import BranchOutcome, BranchResult
    from qwq_agent.cli.branch_cmd import print_result

    outcomes = [
        BranchOutcome(index=i, seed=i, status="completed", passed=True, verdict="`true` exited 0")
        for i in range(3)
    ]
    outcomes[2].passed, outcomes[2].verdict = False, "`true` exited 1"
    result = BranchResult(
        winner=1, reason="`true` exited 0 in its sandbox", select="tests:true", branches=outcomes
    )
    console = Console(record=True, width=200)
    print_result(console, result)
    lines = [ln for ln in console.export_text().splitlines() if ln.startswith("branch ")]
    assert lines[:3] == [
        "branch 0 (seed 0): passed - `true` exited 0",
        "branch 1 (seed 1): won - `true` exited 0",
        "branch 2 (seed 2): completed - `true` exited 1",
    ]
    assert lines[3] == "branch 1 won: `true` exited 0 in its sandbox"


def test_branches_that_all_wait_for_an_approval_exit_5_with_a_resume_line_each(tmp_path):
    """`--approve ask` without a terminal: every branch stops awaiting approval. The CLI said "no
    branch won" and exited 1 (a failure), naming no trace to resume."""
    from qwq_agent.agent.approval import pending_approval

    turn = "x\n</think>\n\n" + call("fetch_url", url="http://example.invalid/")
    trace = tmp_path / "t.jsonl"
    with ScriptedModelServer([turn] * 4) as server:
        proc = subprocess.run(
            [*CLI, "run", "Fetch.", "--model-url", server.url, "--tools", "fetch_url", "--approve", "ask",
             "--branches", "2", "--trace", str(trace)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 5, out
    lines = [line for line in out.splitlines() if "waits for approval; resume with:" in line]
    assert len(lines) == 2, out
    for line in lines:
        resumed = line.split("--resume ", 1)[1].split(" --decide", 1)[0]
        assert pending_approval(resumed) is not None
