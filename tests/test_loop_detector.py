"""Reasoning-loop and tool-call repetition detectors, on long synthetic reasoning samples."""

from __future__ import annotations

import cProfile
import importlib.util
import pstats
import random
import time
from pathlib import Path

import pytest

from qwq_agent.agent.loop_detector import (
    LoopDetectorConfig,
    LoopSignal,
    ReasoningLoopDetector,
    RepetitionConfig,
    ToolCallRepetitionDetector,
    canonical_call,
    close_text,
    nudge_text,
)
from qwq_agent.agent.loops.duplicates import NearDuplicates, number_overlap
from qwq_agent.agent.loops.ledger import extract_mentions, normalise_expression
from qwq_agent.agent.messages import ToolCall

DATA = Path(__file__).parent / "data" / "reasoning"
LOOPS = ["loop_strawberry", "loop_parentheses", "loop_pi"]
HEALTHY = ["healthy_multiplication", "healthy_subproblems", "healthy_proof", "healthy_code"]


def sample(name: str) -> str:
    return (DATA / f"{name}.txt").read_text(encoding="utf-8")


def _generator():
    spec = importlib.util.spec_from_file_location("make_samples", DATA / "make_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chunks(text: str, seed: int) -> list[str]:
    """Random chunking, from single characters to long pieces, as a stream would deliver."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        n = rng.choice([1, 2, 3, rng.randint(4, 40), rng.randint(40, 400)])
        out.append(text[i : i + n])
        i += n
    return out


def run(text: str, seed: int, config: LoopDetectorConfig | None = None):
    det = ReasoningLoopDetector(config)
    returned = [s for piece in chunks(text, seed) if (s := det.feed(piece)) is not None]
    return det, returned


# ---- reasoning loops ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOOPS)
def test_loops_escalate_1_2_3_whatever_the_chunking(name: str) -> None:
    text = sample(name)
    outcomes = []
    for seed in range(3):
        det, returned = run(text, seed)
        assert [s.level for s in returned] == [1, 2, 3]
        outcomes.append([s.model_dump() for s in det.signals])
    # Same levels at the same positions with the same evidence, however the stream was cut.
    assert outcomes[0] == outcomes[1] == outcomes[2]


@pytest.mark.parametrize("name", LOOPS)
def test_whole_text_in_one_delta_gives_same_signals(name: str) -> None:
    text = sample(name)
    det_one = ReasoningLoopDetector()
    last = det_one.feed(text)
    det_chunked, _ = run(text, 7)
    assert last is not None and last.level == 3  # the strongest level crossed in that delta
    assert [s.model_dump() for s in det_one.signals] == [s.model_dump() for s in det_chunked.signals]


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_long_reasoning_is_never_flagged(name: str) -> None:
    text = sample(name)
    assert len(text.split()) >= 3500
    for seed in range(2):
        det, returned = run(text, seed)
        assert returned == [] and det.signals == []


@pytest.mark.parametrize("seed", [101, 202])
def test_freshly_generated_samples_keep_their_outcome(seed: int) -> None:
    gen = _generator()
    for name in LOOPS + HEALTHY:
        det, _ = run(gen.SAMPLES[name](random.Random(seed)), seed)
        expected = [1, 2, 3] if name.startswith("loop") else []
        assert [s.level for s in det.signals] == expected, name


def test_committed_samples_match_the_generator() -> None:
    gen = _generator()
    for name in LOOPS + HEALTHY:
        assert gen.SAMPLES[name](random.Random(name)) == sample(name), name


def test_signals_respect_minimum_reasoning_and_gaps() -> None:
    cfg = LoopDetectorConfig(min_reasoning_chars=5000, level2_gap_chars=3000, level3_gap_chars=4000)
    det, _ = run(sample("loop_strawberry"), 0, cfg)
    first, second, third = det.signals
    assert first.evidence["chars"] >= 5000
    assert second.evidence["chars"] - first.evidence["chars"] >= 3000
    assert third.evidence["chars"] - second.evidence["chars"] >= 4000
    default_det, _ = run(sample("loop_strawberry"), 0)
    assert default_det.signals[0].evidence["chars"] < first.evidence["chars"]


def test_no_signal_before_min_reasoning_even_if_looping() -> None:
    loop = sample("loop_strawberry")
    _, returned = run(loop, 1, LoopDetectorConfig(min_reasoning_chars=len(loop) + 1))
    assert returned == []


def test_no_escalation_once_the_loop_stops() -> None:
    loop = sample("loop_pi")
    first_signal_at = run(loop, 0)[0].signals[0].evidence["chars"]
    text = loop[: first_signal_at + 300] + "\n\n" + sample("healthy_subproblems")
    _, returned = run(text, 0)
    assert [s.level for s in returned] == [1]


def test_nothing_after_level_3_and_reset_starts_over() -> None:
    text = sample("loop_parentheses")
    det, _ = run(text, 0)
    assert det.level == 3
    assert all(det.feed(piece) is None for piece in chunks(text, 5))
    det.reset()
    assert det.signals == [] and det.level == 0
    assert [s.level for s in (det.feed(p) for p in chunks(text, 6)) if s] == [1, 2, 3]


def test_signal_reason_and_evidence_name_the_loop() -> None:
    det, _ = run(sample("loop_strawberry"), 0)
    signal = det.signals[0]
    assert signal.reason.startswith("circular reasoning")
    assert signal.kind in ("periodic", "steps", "candidates", "echo")
    assert signal.evidence["attempt_share"] >= det.config.attempt_share_threshold or (signal.kind != "steps")
    assert signal.evidence["revisits"] > 0


def test_identical_lines_are_not_required_numbers_and_case_are_normalised() -> None:
    # No two lines are identical (case and numbers vary), but the same attempt keeps coming back.
    rng = random.Random(3)
    parts = []
    while sum(map(len, parts)) < 12000:
        x = rng.choice([12, 15, 18])
        parts.append(
            rng.choice(["Let me", "LET ME", "let me"])
            + f" try splitting the {x} apples into groups of {x // 3}, that gives 3 groups. "
            + rng.choice(["But", "but", "BUT"])
            + " the question wants 4 groups, so that cannot be right; maybe I misread it, let me try again.\n"
        )
    det, _ = run("".join(parts), 0)
    assert [s.level for s in det.signals] == [1, 2, 3]


def test_texts_for_the_loop() -> None:
    signal = LoopSignal(level=1, reason="r")
    assert "python" in nudge_text(signal) and "</think>" not in nudge_text(signal)
    assert close_text().rstrip().endswith("</think>")


def test_empty_delta() -> None:
    assert ReasoningLoopDetector().feed("") is None


# ---- tool-call repetition ----------------------------------------------------------------------


def call(name: str = "python", **args) -> ToolCall:
    return ToolCall(name=name, arguments=args)


def test_canonical_call_ignores_key_order_and_whitespace() -> None:
    a = ToolCall(name="search", arguments={"q": " pi digits ", "n": 3})
    b = ToolCall(name="search", arguments={"n": 3, "q": "pi digits"})
    assert canonical_call(a) == canonical_call(b)
    assert canonical_call(a) != canonical_call(call("search", q="pi digits", n=4))


def test_three_identical_calls_in_a_row() -> None:
    det = ToolCallRepetitionDetector()
    assert det.record_call(call(code="print(1)")) is None
    assert det.record_call(call(code=" print(1) ")) is None
    signal = det.record_call(call(code="print(1)"))
    assert signal is not None and signal.kind == "identical_calls" and signal.count == 3
    assert "python" in signal.message and "3 times" in signal.message


def test_a_different_call_breaks_the_run() -> None:
    det = ToolCallRepetitionDetector()
    for args in ({"code": "a"}, {"code": "a"}, {"code": "b"}, {"code": "a"}, {"code": "a"}):
        assert det.record_call(call(**args)) is None


def test_same_call_same_result_within_window() -> None:
    det = ToolCallRepetitionDetector()
    same, other = call("search", q="x"), call("search", q="y")
    signals = [
        det.record_result(c, obs)
        for c, obs in [
            (same, "no results"),
            (other, "1 hit"),
            (same, "no  results"),
            (other, "2 hits"),
            (same, "no results\n"),
        ]
    ]
    assert signals[:4] == [None] * 4
    last = signals[4]
    assert last is not None and last.kind == "same_call_same_result" and last.count == 3
    assert last.message == (
        "You have called search with the same arguments 3 times and got the same result; "
        "try something different."
    )


def test_same_call_with_changing_results_is_fine() -> None:
    det = ToolCallRepetitionDetector()
    for i in range(6):
        assert det.record_result(call("clock"), f"12:00:0{i}") is None


def test_pairs_outside_the_window_do_not_count() -> None:
    det = ToolCallRepetitionDetector(RepetitionConfig(window_steps=4))
    for step in range(9):
        c, obs = (call("f", a=1), "same") if step % 4 == 0 else (call("g", i=step), f"r{step}")
        assert det.record_result(c, obs) is None


def test_identical_observations_from_different_calls() -> None:
    det = ToolCallRepetitionDetector()
    results = [det.record_result(call(code=f"x = {i}"), "Error: sandbox timed out") for i in range(4)]
    assert results[:3] == [None] * 3
    assert results[3] is not None and results[3].kind == "identical_observations" and results[3].count == 4


@pytest.mark.parametrize("silent", ["(no output)", "[exit code: 0]", "", "  (no output)\n"])
def test_different_calls_that_succeed_silently_are_no_repetition(silent: str) -> None:
    # Defining, importing, assigning: a stretch of silent cells in any coding run. Their results say
    # nothing, so their sameness is no sign of a loop (it was flagged: "changing the call slightly will
    # not help").
    det = ToolCallRepetitionDetector()
    cells = ["import math", "def area(r):\n    return math.pi * r * r", "radii = [1, 2, 3]", "areas = []"]
    for _ in range(2):
        assert [det.record(call(code=c), silent) for c in cells] == [None] * 4


def test_a_silent_success_breaks_a_run_of_identical_observations() -> None:
    det = ToolCallRepetitionDetector()
    # Not skipped over either: the silent step between is something done, not the same failure again.
    results = ["Error: no such file"] * 3 + ["[exit code: 0]", "Error: no such file"]
    assert [det.record_result(call(code=f"x = {i}"), r) for i, r in enumerate(results)] == [None] * 5


def test_the_same_silent_call_again_and_again_is_still_flagged() -> None:
    det = ToolCallRepetitionDetector()
    signals = [det.record_result(call(code="import math"), "(no output)") for _ in range(3)]
    assert signals[:2] == [None, None]
    assert signals[2] is not None and signals[2].kind == "same_call_same_result"


def test_thresholds_are_configuration() -> None:
    det = ToolCallRepetitionDetector(RepetitionConfig(identical_calls_in_a_row=2))
    assert det.record(call(code="1"), "1") is None
    signal = det.record(call(code="1"), "1")
    assert signal is not None and signal.kind == "identical_calls" and signal.count == 2


# ---- the signals of issue 12 -------------------------------------------------------------------

QWQ_LOOPS = ["qwq_parentheses_loop", "qwq_zh_loop", "qwq_options_loop", "qwq_rederive_loop"]
QWQ_HEALTHY = [
    "healthy_enumeration",
    "healthy_verify_once",
    "healthy_many_waits",
    "healthy_options_weighed",
]


def feed16(text: str, config: LoopDetectorConfig | None = None) -> ReasoningLoopDetector:
    """Feed the way the agent does: 16-character deltas."""
    det = ReasoningLoopDetector(config)
    for i in range(0, len(text), 16):
        det.feed(text[i : i + 16])
    return det


def _qwq_generator():
    spec = importlib.util.spec_from_file_location("make_qwq_cases", DATA / "make_qwq_cases.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_qwq_cases_match_their_generator() -> None:
    gen = _qwq_generator()
    for name in QWQ_LOOPS + QWQ_HEALTHY:
        assert gen.CASES[name](random.Random(name)) == sample(name), name


@pytest.mark.parametrize("name", QWQ_LOOPS)
def test_qwq_style_semantic_loops_are_flagged_and_name_their_candidates(name: str) -> None:
    det = feed16(sample(name))
    assert det.level >= 1, name
    first = det.signals[0]
    assert first.evidence["chars"] < len(sample(name)) * 0.5  # well before the text ends
    # Quantities with units ("80 km/h") are not ledger candidates; their one sum is named.
    assert len(first.candidates) >= (1 if name == "qwq_rederive_loop" else 2)


def test_parentheses_loop_names_the_recomputed_expressions_with_their_values() -> None:
    first = feed16(sample("qwq_parentheses_loop")).signals[0]
    assert first.kind == "candidates"
    assert {"2*(3*4)*5+1 = 121", "2*3*(4*5+1) = 126", "(2*3*4+1)*5 = 125"} == set(first.candidates[:3])


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("name", QWQ_HEALTHY)
def test_enumerations_and_one_verification_pass_are_not_flagged(name: str, seed: int) -> None:
    text = _qwq_generator().CASES[name](random.Random(seed))
    assert len(text) > 5000  # well past the floors: every signal could have fired
    assert feed16(text).signals == []


def test_verbatim_digits_without_spaces_are_caught_by_the_character_cycle() -> None:
    # A real failure: a number that degenerates into ',000' repeated, one "word" of 1,500 characters.
    text = "The largest number with three 3s is 333, but with exponents it could be 3^33 = 5" + ",000" * 400
    det = feed16(text)
    assert det.level >= 1 and det.signals[0].kind == "periodic"
    assert det.signals[0].evidence["cycle_period"] == 4
    assert det.signals[0].evidence["chars"] < 1200


def test_chinese_verbatim_block_is_caught_by_the_character_cycle() -> None:
    block = "".join(
        f"第{i}步：检查缓存命中率，发现第{i}个请求的延迟偏高，需要重新分析日志。\n" for i in range(12)
    )
    det = feed16("我们先看性能问题。\n" + block * 3)
    assert det.level >= 1 and det.signals[0].kind == "periodic"


def test_lengths_are_weighed_in_bytes_so_a_chinese_copy_counts_like_an_english_one() -> None:
    # A Chinese character is about a token, an English one a quarter: the same ~64 tokens copied
    # verbatim is 256 characters of English but ~90 of Chinese. Weighed in UTF-8 bytes, both are a
    # cycle; weighed in characters the Chinese copy would need three times as many tokens.
    cfg = LoopDetectorConfig()
    opening = "先看性能问题的整体情况，整理一下已经确认的数据，再决定下一步。\n" * 1
    rng_text = "".join(f"第{i}个指标记录为{i * 37 % 101}，和基线相比变化不大。" for i in range(40))
    block = (
        "等等，我重新算一下。单次查询耗时零点零五微秒，八个分片是四点三二微秒，但纯树结构在一个和八个分片时"
        "一样快。这说明问题出在插值缓存上，缓存命中时应该同样很快，所以要看每个分片的网格是否被重复构建。\n"
    )
    assert len(block) < cfg.periodic_min_run <= len(block.encode("utf-8"))
    det = feed16(opening + rng_text + block + block[: len(block) - 8])
    assert det.signals == []  # not yet a whole block copied
    det = feed16(opening + rng_text + block + block + "再看下一项。")
    assert [s.kind for s in det.signals] == ["periodic"]
    # The same length in characters of English is far from a cycle (a quarter of the tokens).
    english = ("Wait, let me recompute the query time once more. " * 3)[: len(block)]
    det = feed16(sample("healthy_subproblems")[:3000] + english + english)
    assert det.signals == []


def test_lone_surrogates_from_a_broken_stream_do_not_crash_the_byte_weighing() -> None:
    # A server's JSON may carry "\\ud800" escapes: Python decodes them to lone surrogates, which
    # str.encode("utf-8") refuses. The detector weighs them (3 bytes each) instead of raising.
    block = "\ud800 wait, the same step \udfff again with \ud83d the value 121. " * 2
    det = feed16("Let me start. " * 40 + block * 40)
    assert det.level >= 1 and det.signals[0].kind == "periodic"


def test_exact_copy_counts_as_a_cycle_only_past_the_minimum_run() -> None:
    # Healthy text that repeats a phrase just after writing it (shorter than the minimum run) is not
    # a cycle; the same text repeating a longer span is.
    base = sample("healthy_subproblems")[:4000]
    cfg = LoopDetectorConfig()
    short = base[-(cfg.periodic_min_run - 40) :]
    long = base[-(cfg.periodic_min_run + 80) :]
    assert [s.kind for s in feed16(base + short).signals] == []
    assert [s.kind for s in feed16(base + long).signals] == ["periodic"]


def test_separate_long_copies_nudge_once_fewer_do_not() -> None:
    # One or two long verbatim copies of earlier reasoning are restatements; a third separate one soon
    # after is the model writing out the same paragraphs again: a nudge (level 1), never more on its
    # own. Each copy is shorter than the exact-cycle signal's minimum run, so only the copy signal sees it.
    base = sample("healthy_subproblems")[:4000]
    cfg = LoopDetectorConfig()
    n = cfg.copy_min_chars + 30
    assert n < cfg.periodic_min_run
    copies = [
        base[at : at + n] + f"\nHmm, so part {k} comes out in metres per second, fine. "
        for k, at in enumerate(range(2250, 4000 - n, 350))
    ][-cfg.copy_count :]  # the latest sources: every copy stays within `periodic_max_period`
    assert len(copies) == cfg.copy_count
    fewer = base + "".join(copies[:-1])
    assert feed16(fewer).signals == []
    det = feed16(fewer + copies[-1])
    assert [(s.level, s.kind) for s in det.signals] == [(1, "copies")]
    assert "copied verbatim" in det.signals[0].reason
    assert feed16(fewer + copies[-1], LoopDetectorConfig(copy_enabled=False)).signals == []
    # Copies further apart than the window are restatements scattered over a long answer.
    filler = " ".join(f"Side note {k}: {k * k} is the square of {k}." for k in range(40))
    far = fewer + filler + copies[-1]
    assert [s.kind for s in feed16(far).signals] == ["copies"]
    assert feed16(far, LoopDetectorConfig(copy_window_chars=len(filler))).signals == []


def _quiet_second_pass(every: int, copy: bool) -> str:
    """Distinct steps, then a reworded pass over them with 'Wait,' on every `every`-th step, and
    optionally a 230-character verbatim copy of the first pass in the middle of it."""
    steps = [
        f"Step {k}: the remainder of {k * 37} divided by 11 is {k * 37 % 11}, which I note down carefully."
        for k in range(1, 40)
    ]
    first = "\n".join(steps)
    again = [("Wait, " if k % every == 0 else "So, ") + s for k, s in enumerate(steps[:24])]
    at = first.index("Step 30")
    middle = [first[at : at + 230]] if copy else []
    return first + "\n" + "\n".join([*again[:12], *middle, *again[12:]])


def test_a_long_copy_lets_the_echo_nudge_with_fewer_markers() -> None:
    # Two weak signals together: steps restated with a few "Wait," (fewer than the echo needs alone)
    # and one long verbatim copy. Either alone is common in healthy reasoning and is left alone.
    cfg = LoopDetectorConfig()
    assert cfg.copy_echo_markers < cfg.echo_min_markers
    assert feed16(_quiet_second_pass(every=4, copy=False)).signals == []
    assert feed16(_quiet_second_pass(every=100, copy=True)).signals == []
    det = feed16(_quiet_second_pass(every=4, copy=True))
    assert [(s.level, s.kind) for s in det.signals] == [(1, "echo")]
    assert "copied verbatim" in det.signals[0].reason
    stricter = LoopDetectorConfig(copy_echo_markers=cfg.echo_min_markers)
    assert feed16(_quiet_second_pass(every=4, copy=True), stricter).signals == []


def test_second_visit_is_not_circling_third_is() -> None:
    steps = [
        f"Step {k}: the remainder of {k * 37} divided by 11 is {k * 37 % 11}, which I note down carefully."
        for k in range(1, 40)
    ]
    two_passes = "\n".join(steps) + "\nLet me verify each step once.\n" + "\n".join(steps)
    assert feed16(two_passes).signals == []
    assert feed16(two_passes + "\nAgain.\n" + "\n".join(steps)).level >= 1


def _announced_second_pass() -> str:
    """Forty distinct steps, then one pass over them that keeps announcing it goes back."""
    steps = [
        f"Step {k}: the remainder of {k * 37} divided by 11 is {k * 37 % 11}, which I note down carefully."
        for k in range(1, 40)
    ]
    again = [f"Wait, let me check this again. {s}" for s in steps]
    return "\n".join(steps) + "\n" + "\n".join(again)


def test_echo_nudges_on_an_announced_second_visit_but_never_closes() -> None:
    # Second visits announced with "wait ... again" earn a nudge (level 1) and nothing more: closing
    # needs third visits, which this text never makes.
    text = _announced_second_pass()
    det = feed16(text)
    assert [(s.level, s.kind) for s in det.signals] == [(1, "echo")]
    assert "restate earlier ones" in det.signals[0].reason
    assert det.signals[0].evidence["echo_share"] >= det.config.echo_share_threshold
    # The same text without the announcements, or with the echo switched off, is left alone.
    assert feed16(text.replace("Wait, let me check this again. ", "")).signals == []
    assert feed16(text, LoopDetectorConfig(echo_enabled=False)).signals == []


def test_echo_comes_before_the_third_visit_signals_and_does_not_block_them() -> None:
    loop = sample("loop_strawberry")
    with_echo = feed16(loop)
    without = feed16(loop, LoopDetectorConfig(echo_enabled=False))
    assert with_echo.signals[0].kind == "echo"
    assert with_echo.signals[0].evidence["chars"] < without.signals[0].evidence["chars"]
    # Levels 2 and 3 still come, from the third-visit signals, not from the echo.
    assert [s.level for s in with_echo.signals] == [1, 2, 3]
    assert all(s.kind != "echo" for s in with_echo.signals[1:])


def test_echo_nudges_a_rederivation_loop_earlier_than_the_third_visit_signals() -> None:
    # A case outside the corpus: the same three quantities re-derived with the same values, each
    # return announced. Without the echo the first signal waits for third visits to fill the window.
    make = _qwq_generator().CASES["qwq_rederive_loop"]
    earlier = 0
    for seed in range(8):
        text = make(random.Random(seed))
        with_echo = feed16(text)
        without = feed16(text, LoopDetectorConfig(echo_enabled=False))
        first, first_off = with_echo.signals[0], without.signals[0]
        assert first.evidence["chars"] <= first_off.evidence["chars"]  # never later
        earlier += first.kind == "echo" and first.evidence["chars"] < 0.8 * first_off.evidence["chars"]
        assert with_echo.level >= 2  # and the close still comes, from the third-visit signals
    assert earlier >= 6


def test_normalised_expressions() -> None:
    assert normalise_expression("( 2 × 3 ) + 4") == "(2*3)+4"
    assert normalise_expression("(2 * 3 + 4)") == "2*3+4"  # one redundant outer pair dropped
    assert normalise_expression("2*(3+4)*5)") == "2*(3+4)*5"  # a stray bracket from the sentence
    assert normalise_expression("(2+3)*(4+5)") == "(2+3)*(4+5)"  # not a pair around the whole


def test_ledger_mentions_expressions_options_claims() -> None:
    text = "Try 2 × (3 + 4) = 14. Maybe option C, or (D). So the answer is 42. Also k^2 - 9 is algebra."
    got = extract_mentions(text)
    assert ("expr", "2*(3+4)=14") in got
    assert ("option", "C") in got and ("option", "D") in got
    assert ("claim", "42") in got
    assert not any(m[1].startswith("2-9") for m in got)


def test_amounts_with_thousands_separators_are_read_whole() -> None:
    # `1,250 + 3,400` was read as `250+3`: the nudge then named sums the model never wrote.
    assert extract_mentions("1,250 + 3,400 = 4,650") == [("expr", "1250+3400=4,650")]
    assert extract_mentions("So (1,250 + 3,400) * 2 = 9,300.") == [("expr", "(1250+3400)*2=9,300")]
    assert extract_mentions("Then 12,000.5 - 0.5 = 12,000") == [("expr", "12000.5-0.5=12,000")]
    # Never a piece of a number: not `2345+1` out of `1,2345`, nor `3 + 4` out of a decimal comma.
    assert extract_mentions("x 1,2345 + 1 and 5,3 + 4") == []
    assert normalise_expression("1,250 + 3,400") == "1250+3400"


@pytest.mark.parametrize(
    "text", ["failed on 2024-01-15", "call 555-123-4567", "due 01/15/2024", "in 2024-01", "1-800-555-0199"]
)
def test_dates_and_phone_numbers_are_not_arithmetic(text: str) -> None:
    assert extract_mentions(text) == []


def test_subtractions_and_fractions_written_tight_are_still_arithmetic() -> None:
    assert extract_mentions("8-3 = 5, and 3/4 + 1/2 = 5/4") == [
        ("expr", "8-3=5"),
        ("expr", "3/4+1/2"),
        ("expr", "5/4"),
    ]


def test_a_loop_over_amounts_names_the_sums_it_recomputes() -> None:
    paras = [
        "The invoice lists three items. First, 1,250 + 3,400 = 4,650. Then 4,650 + 2,175 = 6,825.",
        "Wait, let me double-check that again. 1,250 + 3,400 = 4,650, yes. And 4,650 + 2,175 = 6,825.",
        "But wait, was it 3,400? Going back: it says 3,400. So again 1,250 + 3,400 = 4,650 and "
        "4,650 + 2,175 = 6,825.",
        "Let me recompute once more: 1,250 + 3,400 = 4,650. Then 4,650 + 2,175 = 6,825. Same as previously.",
    ]
    det = feed16("\n\n".join(paras[i % len(paras)] for i in range(40)))
    named = {c for s in det.signals for c in s.candidates}
    assert det.level >= 1 and named
    assert named <= {"1250+3400 = 4,650", "4650+2175 = 6,825"}


def _calls_per_char(text: str) -> float:
    """Python-level function calls the detector makes per character (a count of work, not a timing)."""
    det, profile = ReasoningLoopDetector(), cProfile.Profile()
    profile.enable()
    for i in range(0, len(text), 16):
        det.feed(text[i : i + 16])
    profile.disable()
    return pstats.Stats(profile).total_calls / len(text)


def test_a_long_list_of_small_numbers_costs_what_prose_costs() -> None:
    # Every 120-number segment is the shingles `# # #`, so it matched all 300 lookback segments on
    # wording and had its numbers compared with each (two Counters built per comparison): ~180 calls
    # and 15-25 us a character, ~15x prose. The number pairs are indexed now.
    rng = random.Random(7)
    numbers = " ".join(str(rng.choice([rng.randint(0, 9), rng.randint(10, 99)])) for _ in range(24000))
    listing = f"The failing test's input array is:\n\n{numbers}\n\nSo n is 24000, values 0 to 99."
    prose = (DATA / "healthy_many_waits.txt").read_text(encoding="utf-8")
    assert _calls_per_char(listing) < 3 * _calls_per_char(prose)


def test_indexed_number_comparison_finds_the_visits_pairwise_comparison_finds() -> None:
    # The index must not change what counts as a visit: check against `number_overlap` pair by pair.
    cfg = LoopDetectorConfig(lookback_segments=40)
    rng = random.Random(3)
    dups, stored = NearDuplicates(cfg), []
    visits = 0
    for _ in range(3000):
        words = [
            rng.choice(["the", "sum", str(rng.choice([1, 2, 3, 12, 25]))]) for _ in range(rng.randint(3, 8))
        ]
        numbers = [w for w in words if w[0].isdigit()]
        labels = frozenset(rng.sample(["A", "B"], rng.randint(0, 1)))
        got = dups.add(words, numbers, labels)
        norm = ["#" if w[0].isdigit() else w for w in words]
        k = min(cfg.shingle_size, len(norm))
        shingles = {tuple(norm[i : i + k]) for i in range(len(norm) - k + 1)}
        expected = sum(
            len(shingles & sh) / len(shingles | sh) >= cfg.similarity_threshold
            and labels == lab
            and number_overlap(numbers, nums) >= cfg.number_reuse_threshold
            for sh, nums, lab in stored[-cfg.lookback_segments :]
        )
        assert got == min(expected, cfg.revisit_visits - 1)
        visits += got > 0
        stored.append((shingles, numbers, labels))
    assert visits > 100  # the check compared real visits, not only misses


def test_hostile_text_is_read_in_linear_time() -> None:
    # Each of these took 11 s to 43 s on 64 KB (the ledger's pattern retried every bracket of a run;
    # normalising recounted brackets per bracket dropped; the sentence split retried every dot).
    t0 = time.process_time()
    n = 1 << 16
    assert extract_mentions("(" * n) == []
    assert extract_mentions("(" * (n // 2) + "1" + " " * (n // 2)) == []
    assert extract_mentions("f" + "(" * n) == []
    assert extract_mentions("(" * n + "1+1)") == [("expr", "1+1")]
    assert extract_mentions("f((1 + 2) = 3") == [("expr", "1+2=3")]  # a run after a letter still starts
    assert normalise_expression("(" * n + "1+1)") == "1+1"
    assert normalise_expression("1+1" + ")" * n) == "1+1"
    for text in ("." * n, "!?" * (n // 2), "f" + "(" * n):
        one, chunked = ReasoningLoopDetector(), feed16(text)
        one.feed(text)
        # The same outcome in one piece as in deltas (an exact cycle of period 1 or 2, or nothing).
        assert [x.kind for x in one.signals] == [x.kind for x in chunked.signals]
    assert time.process_time() - t0 < 10  # a bound on runaway work (ms expected), not a timing measurement


def test_nudge_names_candidates_and_proposes_python_only_when_the_agent_has_it() -> None:
    signal = LoopSignal(
        level=1, reason="r", kind="candidates", candidates=["2*(3+4)*5 = 70", "(2*3+4)*5 = 50"]
    )
    with_python = nudge_text(signal, ["python", "shell"])
    assert "`2*(3+4)*5 = 70`" in with_python and "python tool" in with_python
    without = nudge_text(signal, ["web_search"])
    assert "`2*(3+4)*5 = 70`" in without and "python" not in without
    assert "python" in nudge_text(signal)  # tools unknown: the old behaviour
    closing = close_text(signal)
    assert "2*(3+4)*5 = 70" in closing and closing.rstrip().endswith("</think>")


def test_escalation_needs_circling_after_the_nudge() -> None:
    loop = sample("qwq_parentheses_loop")
    first_at = feed16(loop).signals[0].evidence["chars"]
    # The model takes the nudge: what follows is healthy work, so it is never closed.
    det = feed16(loop[: first_at + 16] + "\n\n" + sample("healthy_enumeration"))
    assert det.level == 1


@pytest.mark.parametrize("name", QWQ_LOOPS)
def test_new_signals_do_not_depend_on_the_chunking(name: str) -> None:
    text = sample(name)
    reference = [s.model_dump() for s in feed16(text).signals]
    for seed in range(3):
        det, _ = run(text, seed)
        assert [s.model_dump() for s in det.signals] == reference
    digits = "It is 5" + ",000" * 300
    assert [s.model_dump() for s in run(digits, 4)[0].signals] == [
        s.model_dump() for s in feed16(digits).signals
    ]


def test_a_value_is_the_number_that_ends_an_equals_chain() -> None:
    # `2*(3*(4*5))+1 = 2*60+1 = 121`: the `2` right after the first `=` starts the next step; the
    # nudge once named `2*(3*(4*5))+1 = 2`, a false sum in the model's own voice.
    from qwq_agent.agent.loops.ledger import extract_mentions

    assert extract_mentions("so 2 * (3 * (4 * 5)) + 1 = 2 * 60 + 1 = 121.") == [
        ("expr", "2*(3*(4*5))+1=121"),
        ("expr", "2*60+1=121"),
    ]
    # A running total is not a chain of equal things: 3*4 is not 17.
    assert extract_mentions("3 * 4 = 12 + 5 = 17") == [("expr", "3*4"), ("expr", "12+5=17")]
    # A value followed by a dash or words is a value; a huge one is kept as written, never converted.
    assert extract_mentions("3 + 4 = 7 - wait") == [("expr", "3+4=7")]
    big = "9" * 5000
    assert extract_mentions(f"1 + 2 = 3 + 0 = {big}")[-1] == ("expr", f"3+0={big}")
    # A number is read whole or not at all: `1,000` is not 1, `1.5e3` not 1.5, `6x` not 6.
    assert extract_mentions("so 5 * 200 = 500 + 500 = 1,000.") == [
        ("expr", "5*200=1,000"),
        ("expr", "500+500=1,000"),
    ]
    assert extract_mentions("3 * 500 = 1.5e3 ok") == [("expr", "3*500")]
    assert extract_mentions("2 * 3 = 6x and 50 * 2 = 100%") == [("expr", "2*3"), ("expr", "50*2")]
