"""Coding assistant: a small repository with a failing test is copied into the sandbox; the agent
reads it, runs the tests, fixes the bug with `str_replace`, and runs the tests until they pass."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import Example, main, tool_outputs
from recording import call, turn

HERE = Path(__file__).resolve().parent
TASK = (
    "The repository in /workspace has a failing unit test. Find the bug, fix it in the code (not in the "
    "tests), and make sure the whole test suite passes. Run the tests with `python3 -m unittest`."
)
OLD = "    mid = len(ordered) // 2\n    return ordered[mid]\n"
NEW = (
    "    if not ordered:\n"
    '        raise ValueError("median of no values")\n'
    "    mid = len(ordered) // 2\n"
    "    if len(ordered) % 2:\n"
    "        return ordered[mid]\n"
    "    return (ordered[mid - 1] + ordered[mid]) / 2\n"
)

TURNS = [
    turn(
        "I need to see the repository and the failing test first. Running the test suite tells me which "
        "test fails and why.",
        "Let me run the test suite first.",
        call("shell", command="cd /workspace && python3 -m unittest -v 2>&1 | tail -n 20"),
    ),
    turn(
        "test_median_even fails: median([4, 1, 3, 2]) returned 3 instead of 2.5. For an even count the "
        "median is the mean of the two middle values. Let me look at the implementation.",
        "",
        call("str_replace_editor", command="view", path="/workspace/textstats/stats.py"),
    ),
    turn(
        "median returns ordered[len // 2], which is the upper middle value for even lengths. I'll average "
        "the two middle values when the count is even, and raise a clear error for no values.",
        "The even case takes the upper middle value; I'll fix it.",
        call(
            "str_replace_editor",
            command="str_replace",
            path="/workspace/textstats/stats.py",
            old_str=OLD,
            new_str=NEW,
        ),
    ),
    turn(
        "The edit is in place. Now I run the whole suite again to confirm.",
        "",
        call("shell", command="cd /workspace && python3 -m unittest -v 2>&1 | tail -n 20"),
    ),
    turn(
        "All 4 tests pass now.",
        "Fixed `median` in `textstats/stats.py`: for an even number of values it now returns the mean of the "
        "two middle values (it returned the upper one), and it raises `ValueError` for an empty list. "
        "All 4 tests pass.",
    ),
]


async def check(result, sandbox) -> list[str]:
    problems = []
    outputs = tool_outputs(result)
    if not outputs or "FAILED" not in outputs[0]:
        problems.append("the first test run should show the failing test")
    tests = await sandbox.shell("cd /workspace && python3 -m unittest 2>&1")
    if tests.exit_code != 0:
        problems.append(f"the test suite still fails in the sandbox:\n{tests.stdout}{tests.stderr}")
    return problems


EXAMPLE = Example(
    name="coding_assistant",
    task=TASK,
    tools=["shell", "str_replace_editor", "python"],
    turns=TURNS,
    check=check,
    workspace=HERE / "repo",
)

if __name__ == "__main__":
    sys.exit(main(EXAMPLE))
