"""The three tasks QwQ is famous for looping on, each solved with one Python call.

python examples/math_puzzles/run.py [strawberry|parentheses|pi|all]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Example, main_each, tool_outputs
from recordings import PARENS, PARENS_TASK, PI, PI_TASK, STRAWBERRY, STRAWBERRY_TASK


def expecting(observation: str, answer: str):
    async def check(result, sandbox) -> list[str]:
        problems = []
        outputs = tool_outputs(result)
        if not any(observation in o for o in outputs):
            problems.append(f"no Python output contains {observation!r}: {outputs}")
        if answer not in (result.answer or ""):
            problems.append(f"the answer does not contain {answer!r}")
        return problems

    return check


EXAMPLES = {
    "strawberry": Example(
        "strawberry", STRAWBERRY_TASK, ["python"], STRAWBERRY, expecting("3 [3, 8, 9]", "**3**")
    ),
    "parentheses": Example(
        "parentheses",
        PARENS_TASK,
        ["python"],
        PARENS,
        expecting("['1 + 2 * (3 + 4 * 5 + 6) * 7 + 8 * 9']", "(3 + 4 * 5 + 6)"),
    ),
    "pi": Example("pi", PI_TASK, ["python"], PI, expecting("3.10582854", "3.05")),
}

if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "all"
    rest = sys.argv[2:] if which != "all" or (len(sys.argv) > 1 and sys.argv[1] == "all") else sys.argv[1:]
    names = list(EXAMPLES) if which == "all" else [which]
    # Several puzzles: each its own trace (`--trace FILE` gives FILE-NAME.jsonl), none replaces another;
    # a Ctrl-C (or SIGTERM) stops the one running and starts no other.
    sys.exit(main_each([EXAMPLES[n] for n in names], rest))
