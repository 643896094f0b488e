"""Automated debugging: reproduce a reported crash, locate it, patch it, verify the fix."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import Example, main, tool_outputs
from recording import call, turn

HERE = Path(__file__).resolve().parent
TASK = (
    "Users report that `python3 orders.py orders.csv` in /workspace crashes (see BUG.md). Reproduce the "
    "crash, find its cause, fix it as the bug report asks, and verify the fix."
)
OLD = '        quantity = int(row["quantity"])\n'
NEW = '        # An empty quantity marks a cancelled line (BUG.md): it counts as zero.\n        quantity = int(row["quantity"] or 0)\n'

TURNS = [
    turn(
        "First reproduce: read the bug report and run the failing command.",
        "Reproducing the crash.",
        call("shell", command="cd /workspace && cat BUG.md && python3 orders.py orders.csv"),
    ),
    turn(
        "The traceback ends in revenue_by_customer: int('') raises ValueError because globex's line has an "
        "empty quantity. Let me look at that function.",
        "",
        call("str_replace_editor", command="view", path="/workspace/orders.py", view_range=[13, 18]),
    ),
    turn(
        "Line 16 converts the quantity with int() directly. The report says an empty quantity is a cancelled "
        "line that counts as 0, so `int(row['quantity'] or 0)` is the fix.",
        "Patching the conversion.",
        call(
            "str_replace_editor", command="str_replace", path="/workspace/orders.py", old_str=OLD, new_str=NEW
        ),
    ),
    turn(
        "Now verify: the command must run and globex must total 0.",
        "",
        call("shell", command="cd /workspace && python3 orders.py orders.csv"),
    ),
    turn(
        "It prints acme 48.50, globex 0.00 and initech 14.50, which matches the data.",
        "The crash was `ValueError: invalid literal for int() with base 10: ''` in `revenue_by_customer`: "
        "cancelled lines have an empty quantity. The quantity is now read as `int(row['quantity'] or 0)`, "
        "and `python3 orders.py orders.csv` prints acme: 48.50, globex: 0.00, initech: 14.50.",
    ),
]


async def check(result, sandbox) -> list[str]:
    problems = []
    outputs = tool_outputs(result)
    if not outputs or "ValueError" not in outputs[0]:
        problems.append("the first run should reproduce the ValueError")
    run = await sandbox.shell("cd /workspace && python3 orders.py orders.csv")
    if run.exit_code != 0 or "globex: 0.00" not in run.stdout:
        problems.append(f"the command still fails or gives wrong totals:\n{run.stdout}{run.stderr}")
    return problems


EXAMPLE = Example(
    name="debugging",
    task=TASK,
    tools=["shell", "str_replace_editor", "python"],
    turns=TURNS,
    check=check,
    workspace=HERE / "project",
)

if __name__ == "__main__":
    sys.exit(main(EXAMPLE))
