"""Fenced code in the reasoning: refining a function is not circling, repeating one is.

A coding model writes its function out again each time it changes a line; read as prose that is a long
verbatim copy and steps visited a third time. Code between fences is compared block by block instead.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType

import pytest

from qwq_agent.agent.loop_detector import LoopDetectorConfig, ReasoningLoopDetector
from qwq_agent.agent.loops.fences import _MAX_OPEN_BLOCK, CodeBlock, FenceSplitter

DATA = Path(__file__).parent / "data" / "reasoning"

FUNCTION = (
    "def has_close_elements(numbers: list[float], threshold: float) -> bool:\n"
    '    """Whether any two numbers are closer to each other than threshold."""\n'
    "    ordered = sorted(numbers)\n"
    "    for left, right in zip(ordered, ordered[1:]):\n"
    "        if right - left < threshold:\n"
    "            return True\n"
    "    return False\n"
)


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_qwq_cases", DATA / "make_qwq_cases.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def feed(text: str, step: int = 16, config: LoopDetectorConfig | None = None) -> ReasoningLoopDetector:
    det = ReasoningLoopDetector(config)
    for i in range(0, len(text), step):
        det.feed(text[i : i + step])
    return det


def outcome(det: ReasoningLoopDetector) -> list[tuple[int, str, int]]:
    return [(s.level, s.kind, s.evidence["chars"]) for s in det.signals]


def test_fences_are_found_however_the_stream_is_cut() -> None:
    text = "Prose first.\n  ```python\nx = 1\n```\nMore prose ``` inline.\n~~~\ny\n~~~\nend"
    for step in (1, 2, 3, 5, 16, len(text)):
        splitter, pieces = FenceSplitter(), []
        for i in range(0, len(text), step):
            pieces += splitter.feed(text[i : i + step])
        code = "".join(t for k, t in pieces if k == "code")
        prose = "".join(t for k, t in pieces if k == "prose")
        assert code == "  ```python\nx = 1\n```\n~~~\ny\n~~~\n", step
        assert prose == "Prose first.\nMore prose ``` inline.\nend", step
        assert [k for k, _ in pieces].count("close") == 2


def test_a_line_of_endless_spaces_is_not_held_back() -> None:
    splitter = FenceSplitter()
    pieces = [p for _ in range(1000) for p in splitter.feed(" " * 64)]
    assert sum(len(t) for _, t in pieces) >= 64 * 1000 - 256  # all but the undecided start went on
    assert {k for k, _ in pieces} == {"prose"}


def test_a_block_fingerprint_ignores_whitespace_but_not_a_changed_line() -> None:
    def fp(code: str) -> str:
        block = CodeBlock()
        for i in range(0, len(code), 7):
            block.add(code[i : i + 7])
        return block.fingerprint()

    assert fp(FUNCTION) == fp(FUNCTION.replace("    ", "\t").replace("(", "( "))
    assert fp(FUNCTION) != fp(FUNCTION.replace("< threshold", "<= threshold"))


@pytest.mark.parametrize("seed", ["healthy_code_refine", 1, 2, 3])
def test_a_function_refined_and_written_out_four_times_is_not_flagged(seed: object) -> None:
    text = generator().CASES["healthy_code_refine"](random.Random(seed))
    assert text.count("```python") == 4
    assert feed(text).signals == []
    # Read as prose (no fences), the unchanged docstring and signature are a verbatim cycle.
    assert feed(text.replace("```python\n", "").replace("```\n", "")).level >= 1


def test_the_same_block_written_again_and_again_is_circling() -> None:
    text = "The task is to find close elements; a sorted scan over neighbours does it.\n\n"
    text += "".join(
        f"```python\n{FUNCTION}```\n\nWait, this is still inefficient. Let me think of a better approach.\n\n"
        for _ in range(12)
    )
    det = feed(text)
    assert det.level >= 2 and det.signals[0].kind in ("steps", "periodic")


def test_a_block_that_repeats_itself_is_caught_inside_it_even_unclosed() -> None:
    text = "Let me write the test table.\n\n```python\ncases = [\n" + "    (1, 2, 3),\n    (4, 5, 6),\n" * 60
    det = feed(text)
    assert det.level >= 1 and det.signals[0].kind == "periodic"


def test_chunking_does_not_change_the_outcome_around_code() -> None:
    refine = (DATA / "healthy_code_refine.txt").read_text(encoding="utf-8")
    looping = "Intro line for the task.\n" + f"```python\n{FUNCTION}```\nHmm, again the same.\n" * 14
    for text in (refine, looping):
        expected = outcome(feed(text, 16))
        for step in (1, 3, 7, 64, len(text)):
            assert outcome(feed(text, step)) == expected, step


def test_a_stray_fence_silences_the_prose_signals_only_for_a_bounded_stretch() -> None:
    # An opening fence never closed (a stray one, or output cut short) made everything after it code.
    loop = (DATA / "qwq_parentheses_loop.txt").read_text(encoding="utf-8")
    plain = feed(loop * 4)
    stray = feed("I will sketch the format first:\n```\n" + loop * 4)
    assert plain.level == 3 and stray.level == 3
    # Read as prose again past `_MAX_OPEN_BLOCK`, the loop is caught as soon after as without the fence.
    delay = stray.signals[0].evidence["chars"] - plain.signals[0].evidence["chars"]
    assert delay <= _MAX_OPEN_BLOCK + 200


def test_a_deeply_indented_fence_is_read_the_same_however_it_is_cut() -> None:
    pad = " " * 254
    text = f"Intro line for the task.\n{pad}```python\n{FUNCTION}{pad}```\nAfter the block, prose again.\n"
    expected = None
    for step in (1, 4, 16, len(text)):
        splitter, kinds = FenceSplitter(), []
        for i in range(0, len(text), step):
            kinds += [k for k, _ in splitter.feed(text[i : i + step])]
        assert kinds.count("close") == 1, step
        det = feed(text, step)
        assert expected is None or outcome(det) == expected
        expected = outcome(det)


def test_a_fence_line_longer_than_the_held_head_is_read_the_same_however_it_is_cut() -> None:
    # A line past 1,280 characters arriving whole had its indent measured on the uncut line (>= 256: "not
    # a fence"), while fed in pieces it was decided at 1,024 characters (a fence).
    for fence, line in (
        ("~~~", "~~~" + "x" * 1400),
        ("```", "```" + "y" * 2000),
        ("~~~~", " " * 99 + "~~~~z" * 300),
    ):
        text = "Let me write it:\n" + line + "\nprint(1)\n" + fence + "\nDone.\n"
        seen = set()
        for step in (1, 16, 1000, len(text)):
            splitter, pieces = FenceSplitter(), []
            for i in range(0, len(text), step):
                pieces += splitter.feed(text[i : i + step])
            code = "".join(t for k, t in pieces if k == "code")
            seen.add((code, [k for k, _ in pieces].count("close")))
        assert len(seen) == 1 and seen.pop()[1] == 1, fence


def test_a_block_past_the_cap_stays_one_block_fingerprinted_whole_and_its_text_reaches_the_prose() -> None:
    shared = "".join(f"    value_{k} = compute({k})\n" for k in range(_MAX_OPEN_BLOCK // 26 + 50))
    one = f"Intro line for the task.\n```python\n{shared}    return 1\n```\nThen prose.\n"
    two = one.replace("return 1", "return 2")
    det = feed(one + two)
    assert sorted(det._blocks.values()) == [1, 1]  # different code past the cap: not a revisit
    # A fence line never ended either: past the cap its text is read as prose (a slip in it is found).
    body = "".join(f"So 17 * 24 = 418 boxes in pile {k}, then more piles follow. " for k in range(700))
    for opening in ("```", "```\n"):
        det = feed(opening + body)
        assert [str(s) for s in det.arithmetic.slips][:1] == ["17*24 = 418"], opening


def split(text: str, step: int) -> list[tuple[str, str]]:
    splitter, pieces = FenceSplitter(), []
    for i in range(0, len(text), step):
        pieces += splitter.feed(text[i : i + step])
    return pieces


@pytest.mark.parametrize("step", [1, 2, 3, 5, 16, 1000])
def test_a_closing_fence_is_the_openers_fence_with_only_whitespace_after(step: int) -> None:
    # CommonMark: a line that merely starts with ``` (the end of an f-string that builds a Markdown
    # fence) does not close the block; nor does a shorter fence or the other fence character.
    lines = [
        "````python",
        "def wrap(body, lang):",
        '    return f"""```{lang}',
        "{body}",
        '```"""',
        "```",
        "~~~",
        "````   ",
    ]
    code = "\n".join(lines) + "\n"
    text = (
        "Let me write it.\n"
        + code
        + "Prose after ``` the block.\n```x``` is inline code, not a fence.\nEnd.\n"
    )
    pieces = split(text, step)
    assert "".join(t for k, t in pieces if k == "code") == code
    assert "".join(t for k, t in pieces if k == "prose") == text.replace(code, "")
    assert [k for k, _ in pieces].count("close") == 1


def test_a_fence_inside_an_fstring_does_not_turn_later_code_into_prose() -> None:
    # The reviewer's trace: before the fix the first block closed at ```""" and every later block
    # was read as prose (and its unchanged lines as an exact cycle: closed at level 2).
    text = (DATA / "healthy_fence_in_string.txt").read_text(encoding="utf-8")
    pieces = split(text, 16)
    assert not any('aliases = {"py": "python"' in t for k, t in pieces if k == "prose")
    assert [k for k, _ in pieces].count("close") == text.count("```python")
    assert feed(text).signals == []


def test_a_line_of_backticks_is_decided_without_holding_everything_back() -> None:
    splitter = FenceSplitter()
    assert splitter.feed("```python\n") == [("code", "```python\n")]
    pieces = [p for _ in range(100) for p in splitter.feed("`" * 64)]
    assert sum(len(t) for _, t in pieces) >= 64 * 100 - 1024  # held back only up to a line start's bound
