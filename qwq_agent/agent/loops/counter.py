"""Runaway counting: the same line written again and again with only a counter changing.

Small models sometimes fall into writing `Level 4: next even after Level 3 (which is n + 3)`,
`Level 5: ...`, up to the token cap. Digits differ, so the exact-cycle check never sees a cycle, and no
step is revisited. With every run of digits masked the text *is* an exact cycle; it is runaway counting
when, in addition, every number of the repeated line moves by the same step from one repetition to the
next, so the lines carry nothing the first two did not. A healthy enumeration (`Grouping 7: (12 + 63) *
16 = 1200`) repeats its wording too, but its results are not a progression: it is left alone.
"""

from __future__ import annotations

import itertools
import re

from qwq_agent.agent.loops.periodic import longest_cycle

__all__ = ["CountRun", "runaway_count"]

_DIGITS = re.compile(r"\d+")
_QUICK_CHARS = 1280
_MAX_INT_DIGITS = 18  # longer digit runs are compared as text (equal or not), never converted


class CountRun:
    """A runaway count found at the tail: its line period, repetitions and last line."""

    __slots__ = ("line", "period", "repeats", "run_bytes")

    def __init__(self, period: int, repeats: int, run_bytes: int, line: str) -> None:
        self.period = period
        self.repeats = repeats
        self.run_bytes = run_bytes
        self.line = line


def runaway_count(
    text: str, *, anchor: int, max_period: int, tries: int, min_run_bytes: int, min_repeats: int
) -> CountRun | None:
    """The runaway count that ends at the tail of `text`, if there is one."""
    # Masking is the cost (a regex pass over the text): first only a stretch a little longer than the
    # run needed, and the whole text only when that stretch is periodic throughout.
    quick = _DIGITS.sub("0", text[-_QUICK_CHARS:])
    run, period = longest_cycle(quick, anchor, max_period, tries)
    if not period:
        return None
    saturated = run >= len(quick) - period - anchor  # the cycle may reach further back than this stretch
    if not saturated and len(quick[len(quick) - run :].encode("utf-8", "surrogatepass")) < min_run_bytes:
        return None
    masked = _DIGITS.sub("0", text)
    run, period = longest_cycle(masked, anchor, max_period, tries)
    if not period or run < min_repeats * period:
        return None
    region = masked[-run:]
    run_bytes = len(region.encode("utf-8", "surrogatepass"))
    if run_bytes < min_run_bytes:
        return None
    slots = masked[-period:].count("0")
    if slots == 0:
        return None  # a verbatim cycle: the exact-cycle signal's, not a count
    numbers = _DIGITS.findall(text)[-region.count("0") :]
    # The first number may be cut by the region's start, the last may still be growing.
    numbers = numbers[1:-1]
    counting = False
    for j in range(slots):
        column = numbers[j::slots]
        if len(column) < 3:
            return None
        if any(len(n) > _MAX_INT_DIGITS for n in column):
            if len(set(column)) != 1:
                return None
            continue
        values = [int(n) for n in column]
        step = values[1] - values[0]
        if any(b - a != step for a, b in itertools.pairwise(values)):
            return None
        counting = counting or step != 0
    if not counting:
        return None
    last = text.rstrip("\n").rsplit("\n", 1)[-1][-160:]
    return CountRun(period, run // period, run_bytes, last)
