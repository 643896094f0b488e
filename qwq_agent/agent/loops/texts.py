"""What the agent writes into the model's reasoning when it circles, built from the signal.

The texts are appended inside `<think>`, so they are in the model's own voice: it names what it keeps
recomputing (the candidates of the signal) and talks itself into the tool that settles it (one python
cell checking all candidates is how an agent solves the parentheses puzzle) when the agent has that
tool; without one, it talks itself into deciding.
"""

from __future__ import annotations

from collections.abc import Iterable

from qwq_agent.agent.loops.arithmetic import Slip
from qwq_agent.agent.loops.detector import LoopSignal

__all__ = ["CLOSE_REASONING_TEXT", "NUDGE_TEXT", "arithmetic_text", "close_text", "nudge_text"]

NUDGE_TEXT = (
    "\n\nWait — I'm going in circles. I should stop re-deriving this by hand and call the python tool "
    "to compute it.\n\n"
)
CLOSE_REASONING_TEXT = "\n\nI've considered this enough; time to answer.\n</think>\n\n"

_PYTHON_TOOLS = ("python", "python_exec", "run_python", "code_interpreter")


def _named(candidates: list[str]) -> str:
    quoted = [f"`{c}`" if any(ch.isdigit() for ch in c) else c for c in candidates]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _python_tool(tools: Iterable[str] | None) -> str | None:
    names = None if tools is None else list(tools)
    return "python" if names is None else next((n for n in names if n in _PYTHON_TOOLS), None)


def arithmetic_text(slip: Slip | None, computations: int, tools: Iterable[str] | None = None) -> str:
    """The one-time hand-arithmetic hint: the slip corrected (exactly), or the count of hand computations.

    Written in the model's voice inside `<think>`; it proposes the python tool only when the agent has one.
    """
    python = _python_tool(tools)
    if slip is not None:
        fix = f"\n\nWait — I wrote `{slip}`, but {slip.expression} is {slip.correct}."
        if python is None:
            return fix + " I should redo the steps that used the wrong value.\n\n"
        return fix + f" Hand arithmetic is slipping; I should check the numbers with the {python} tool.\n\n"
    if python is None:
        return ""
    return (
        f"\n\nI have worked out {computations} computations by hand; the {python} tool would compute them "
        "exactly and faster.\n\n"
    )


def nudge_text(signal: LoopSignal | None = None, tools: Iterable[str] | None = None) -> str:
    """Level-1 text: name what is being recomputed and propose the tool.

    `tools` are the names of the tools the agent has; `None` (unknown) keeps the old behaviour of
    proposing python. With no python tool the model is told to settle on one candidate instead.
    """
    python = _python_tool(tools)
    if signal is not None and signal.kind == "counter":
        # Counting by hand, line after line: the rule is known, so state it (or compute it) once.
        if python is None:
            return (
                "\n\nWait — I keep writing the same line with only a number counting up. The pattern is "
                "clear; I should state the rule once and move on.\n\n"
            )
        return (
            "\n\nWait — I keep writing the same line with only a number counting up. The pattern is clear; "
            f"I should state the rule once, or compute what I need with the {python} tool, and move on.\n\n"
        )
    candidates = signal.candidates if signal is not None else []
    if not candidates:
        if python is None:
            return "\n\nWait — I'm going in circles. I should stop re-checking the same steps and decide.\n\n"
        if python == "python":
            return NUDGE_TEXT
        return NUDGE_TEXT.replace("the python tool", f"the {python} tool")
    what = _named(candidates)
    has_expr = any(any(ch.isdigit() for ch in c) and not c.startswith("option") for c in candidates)
    if python is None:
        return (
            f"\n\nWait — I'm going in circles: I keep coming back to {what} and getting nowhere new. "
            "I have checked them enough; I should pick the best one and commit.\n\n"
        )
    if has_expr:
        action = (
            f"call the {python} tool with one cell that evaluates all of them (and any other candidates) "
            "and prints each value, instead of recomputing them by hand"
        )
    else:
        action = f"call the {python} tool to check the facts that decide between them, or pick one and commit"
    return f"\n\nWait — I'm going in circles: I keep recomputing {what}. I should {action}.\n\n"


def close_text(signal: LoopSignal | None = None) -> str:
    """Level-2 text: end the reasoning and force an answer, naming what was being circled."""
    answer = signal.evidence.get("probe_answer") if signal is not None else None
    if isinstance(answer, str) and answer:
        # The probe heard the same answer each time it asked: the model is told its own answer held.
        return (
            f"\n\nEach time I stopped to state my answer it was {_named([answer])}, and going over it "
            "again will not change it. Time to answer.\n</think>\n\n"
        )
    if signal is None or not signal.candidates:
        return CLOSE_REASONING_TEXT
    return (
        f"\n\nI've gone over {_named(signal.candidates)} enough times; more checking will not change it. "
        "Time to answer with the best one.\n</think>\n\n"
    )
