"""Runaway counting: the same line again and again with only a counter changing.

A real Qwen3.5-0.8B output on a HumanEval task (`benchmarks/heldout/sources.md`) ends in ~70 lines of
`Level k: next even after Level k-1 (which is n + k-1)`: the digits differ, so no exact cycle, and no
step repeats. With digits masked it is a cycle whose every number counts by a constant step.
"""

from __future__ import annotations

import random
from pathlib import Path

from qwq_agent.agent.loop_detector import LoopDetectorConfig, ReasoningLoopDetector
from qwq_agent.agent.loops.counter import runaway_count
from qwq_agent.agent.loops.texts import nudge_text

DATA = Path(__file__).parent / "data" / "reasoning"
PREAMBLE = (DATA / "healthy_code_refine.txt").read_text(encoding="utf-8")[:3000]


def count_lines(first: int, last: int) -> str:
    return "".join(
        f"# Level {k}: next even after Level {k - 1} (which is n + {k - 1})\n" for k in range(first, last)
    )


def feed(text: str, step: int = 16, config: LoopDetectorConfig | None = None) -> ReasoningLoopDetector:
    det = ReasoningLoopDetector(config)
    i = 0
    rng = random.Random(step)
    while i < len(text):
        n = step if step > 0 else rng.randint(1, 40)
        det.feed(text[i : i + n])
        i += n
    return det


def find(text: str, **kw: int) -> object:
    args = {"anchor": 24, "max_period": 600, "tries": 3, "min_run_bytes": 1000, "min_repeats": 8} | kw
    return runaway_count(text, **args)  # type: ignore[arg-type]


def test_a_runaway_count_nudges_once_naming_the_count() -> None:
    text = PREAMBLE + "\n" + count_lines(4, 74)
    det = feed(text)
    assert [(s.level, s.kind) for s in det.signals] == [(1, "counter")]
    signal = det.signals[0]
    assert "runaway count" in signal.reason and "# Level " in signal.reason
    # The nudge comes ~1,000 bytes into the count, not at its end.
    assert len(PREAMBLE) + 1000 < signal.evidence["chars"] < len(PREAMBLE) + 1600
    assert "counting up" in nudge_text(signal, ["python"]) and "python tool" in nudge_text(signal, ["python"])
    assert "python" not in nudge_text(signal, ["shell"])


def test_the_count_is_found_wherever_the_stream_is_cut() -> None:
    text = PREAMBLE + "\n" + count_lines(4, 74)
    where = {feed(text, step).signals[0].evidence["chars"] for step in (1, 7, 16, 64, 0, len(text))}
    assert len(where) == 1


def test_a_healthy_enumeration_of_results_is_not_a_count() -> None:
    # Same wording on every line and a label counting up, but the results are not a progression.
    rng = random.Random(5)
    lines = []
    for k in range(1, 120):
        a, b, c = rng.randint(2, 90), rng.randint(2, 700), rng.randint(2, 160)
        lines.append(f"Grouping {k}: ({a} + {b}) * {c} = {(a + b) * c}.\n")
    assert find("".join(lines)) is None
    assert [s.kind for s in feed(PREAMBLE + "".join(lines)).signals if s.kind == "counter"] == []
    # The corpus's own enumeration case is untouched by every signal.
    assert feed((DATA / "healthy_enumeration.txt").read_text(encoding="utf-8")).signals == []


def test_a_short_numbered_list_is_not_a_count() -> None:
    text = "".join(f"Step {k}: add 2 to get {2 * k + 1}.\n" for k in range(1, 20))  # ~500 bytes
    assert find(text) is None
    assert find("".join(f"Step {k}: add 2 to get {2 * k + 1}.\n" for k in range(1, 60))) is not None


def test_a_verbatim_cycle_is_left_to_the_exact_cycle_signal() -> None:
    assert find("Level 3: the same line again.\n" * 80) is None
    assert find(",000" * 600) is None
    # Digit runs too long to convert are compared as text, without error.
    assert find(("x " + "9" * 5000 + " y\n") * 3) is None
    assert find("".join(f"row {k} {'7' * 30}\n" for k in range(200))) is not None


def test_a_count_in_chinese_is_weighed_in_bytes() -> None:
    text = "".join(f"第{k}层：比第{k - 1}层多一个偶数，即 n + {k - 1}。\n" for k in range(4, 60))
    preamble = (DATA / "healthy_zh_verify.txt").read_text(encoding="utf-8")
    assert feed(preamble).signals == []
    det = feed(preamble + "\n" + text)
    assert [s.kind for s in det.signals] == ["counter"]
    # 1,000 bytes is ~400 characters of Chinese: the nudge comes before 1,000 characters of count,
    # which is as soon as a count weighed in characters could fire.
    assert det.signals[0].evidence["chars"] < len(preamble) + 1000


def test_the_count_can_be_turned_off() -> None:
    text = PREAMBLE + "\n" + count_lines(4, 74)
    assert feed(text, config=LoopDetectorConfig(counter_enabled=False)).signals == []


def test_a_count_inside_an_unclosed_code_block_is_found() -> None:
    # The real one: the model opened a code block and wrote ~70 comment lines of the count in it.
    text = (
        PREAMBLE
        + "\n```python\ndef make_a_pile(n):\n"
        + count_lines(4, 74).replace("# Level", "    #   Level")
    )
    det = feed(text)
    assert [(s.level, s.kind) for s in det.signals] == [(1, "counter")]
