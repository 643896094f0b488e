"""Writes the QwQ-style cases next to this file: `python tests/data/reasoning/make_qwq_cases.py`.

Written from the description of real QwQ-32B circling (issue 12), not copied from any output:
- qwq_parentheses_loop: an arithmetic puzzle where the model recomputes the same three candidate
  expressions again and again, each time with the same wrong values, in varied wording, never answering;
- qwq_zh_loop: the same kind of loop in Chinese, with Chinese revisit markers (等等, 再算一遍, 之前);
- qwq_options_loop: cycling through the same answer options with "we tried that earlier";
- healthy_enumeration: a long enumeration whose labels and numbers all differ (must not be flagged);
- healthy_verify_once: an enumeration followed by one verification pass over every case, then the
  answer (each step is revisited once: must not be flagged).
Seeded, so re-running reproduces the same files.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent

# 2 * 3 * 4 * 5 + 1 = 121; the puzzle asks for 144 (impossible with these wrong evaluations).
CANDIDATES = [
    ("2 * (3 * 4) * 5 + 1", "2*(3*4)*5+1", 121),
    ("2 * 3 * (4 * 5 + 1)", "2*3*(4*5+1)", 126),
    ("(2 * 3 * 4 + 1) * 5", "(2*3*4+1)*5", 125),
]


def _pick(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


def qwq_parentheses_loop(rng: random.Random, chars: int = 7600) -> str:
    out = [
        "The problem says that the expression 2 * 3 * 4 * 5 + 1 equals 121, and asks how many values "
        "we can get by inserting parentheses, in particular whether 144 is one of them. Multiplication is "
        "associative, so only the placement relative to the + 1 matters. Let me try a few groupings.\n\n"
    ]
    while sum(map(len, out)) < chars:
        spaced, tight, value = rng.choice(CANDIDATES)
        expr = rng.choice([spaced, tight])
        out.append(
            _pick(
                rng,
                "Wait, let me check ",
                "Let me recompute ",
                "Hmm, let me try again with ",
                "Let me go back to ",
                "Again, ",
            )
            + expr
            + ". "
            + _pick(
                rng, f"That is {expr} = {value}. ", f"So {expr} = {value}. ", f"Computing: {expr} = {value}. "
            )
            + _pick(rng, "Not 144. ", "That's not 144 either. ", "Still not 144. ", "Hmm, not 144. ")
            + _pick(rng, "We tried that earlier. ", "Maybe I made a mistake. ", "", "Let me double-check. ")
            + ("\n\n" if rng.random() < 0.4 else "")
        )
    return "".join(out)


def qwq_zh_loop(rng: random.Random, chars: int = 5000) -> str:
    out = [
        "题目要求在 2 * 3 * 4 * 5 + 1 中加括号，看看能不能得到 144。乘法满足结合律，所以只需要考虑加一的位置。\n\n"
    ]
    while sum(map(len, out)) < chars:
        spaced, tight, value = rng.choice(CANDIDATES)
        expr = rng.choice([spaced, tight])
        out.append(
            _pick(rng, "等等，再算一遍 ", "我再检查一下 ", "重新计算 ", "回到之前的 ", "还是 ")
            + expr
            + "，"
            + _pick(rng, f"{expr} = {value}。", f"得到 {expr} = {value}。", f"结果是 {expr} = {value}。")
            + _pick(rng, "不是 144。", "还是不对。", "也不是 144。")
            + _pick(rng, "之前已经试过了。", "是不是哪里算错了？", "")
            + ("\n\n" if rng.random() < 0.4 else "")
        )
    return "".join(out)


def qwq_options_loop(rng: random.Random, chars: int = 9000) -> str:
    out = [
        "The question asks which mechanism explains the observed shift; the options are A to E. Option A "
        "is thermal expansion, option B is a phase transition, option C is a change in bonding, option D "
        "is an impurity effect and option E is a measurement artefact. Let me weigh them.\n\n"
    ]
    reasons = {
        "B": "a phase transition would give a sharp jump",
        "C": "bonding changes are gradual",
        "D": "impurities were ruled out by the purity check",
    }
    while sum(map(len, out)) < chars:
        a, b = rng.sample(sorted(reasons), 2)
        out.append(
            _pick(rng, "Wait, ", "Hmm, ", "Alternatively, ", "Let me check again. ", "Going back, ")
            + f"maybe the answer is {a}, since {reasons[a]}. "
            + _pick(
                rng,
                f"But option {b} also fits, because {reasons[b]}. ",
                f"Then again, option {b}: {reasons[b]}. ",
            )
            + _pick(
                rng, "We tried that earlier. ", "I keep going back and forth. ", f"So is it {a} or {b}? ", ""
            )
            + ("\n\n" if rng.random() < 0.5 else "")
        )
    return "".join(out)


def _groupings(rng: random.Random) -> list[tuple[str, int]]:
    nums = [rng.randint(2, 9) for _ in range(6)]
    rows = []
    for i in range(1, 200):
        a, b, c = nums[i % 6] + i, nums[(i + 1) % 6] * i, nums[(i + 2) % 6] + 2 * i
        rows.append((f"({a} + {b}) * {c}", (a + b) * c))
    return rows


def healthy_enumeration(rng: random.Random, chars: int = 9000) -> str:
    out = [
        "We need to list every case and compute its value, then take the largest. Let me go case by case.\n\n"
    ]
    for i, (expr, value) in enumerate(_groupings(rng), 1):
        if sum(map(len, out)) >= chars:
            break
        out.append(
            f"Case {i}: "
            + _pick(rng, "compute ", "evaluate ", "")
            + f"{expr} = {value}. "
            + _pick(rng, "Noted.", "Next case.", f"So case {i} gives {value}.", "")
            + "\n"
        )
    out.append("\nThe largest value is the one from the last case, so that is the answer.\n")
    return "".join(out)


def healthy_verify_once(rng: random.Random) -> str:
    rows = _groupings(rng)[:80]
    out = ["Let me enumerate the groupings and compute each value.\n\n"]
    for i, (expr, value) in enumerate(rows, 1):
        out.append(f"Grouping {i}: {expr} = {value}.\n")
    out.append("\nWait, let me double-check each of these once before answering.\n\n")
    for i, (expr, value) in enumerate(rows, 1):
        out.append(
            f"Check grouping {i}: {expr} = {value}, " + _pick(rng, "correct.", "yes.", "confirmed.") + "\n"
        )
    out.append("\nAll values are confirmed, so there are 80 distinct values and the answer is 80.\n")
    return "".join(out)


CASES: dict[str, Callable[[random.Random], str]] = {
    "qwq_parentheses_loop": qwq_parentheses_loop,
    "qwq_zh_loop": qwq_zh_loop,
    "qwq_options_loop": qwq_options_loop,
    "healthy_enumeration": healthy_enumeration,
    "healthy_verify_once": healthy_verify_once,
}

if __name__ == "__main__":
    for name, make in CASES.items():
        (HERE / f"{name}.txt").write_text(make(random.Random(name)), encoding="utf-8")
