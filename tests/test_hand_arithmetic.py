"""Hand arithmetic checked exactly: the slips found, what is left alone, and the one-time hint end to end.

The scripted model stands in for QwQ's intelligence only; the checker, the turn, the client and the
HTTP server are real.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import Final, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.loop_detector import LoopDetectorConfig, ReasoningLoopDetector
from qwq_agent.agent.loops.arithmetic import HandArithmetic, evaluate, find_slips
from qwq_agent.agent.loops.evaluation import find_corpus
from qwq_agent.agent.replay import ReplayModel, load_recording
from qwq_agent.testing.helpers import add
from qwq_agent.testing.raw_server import RawServer
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest
from qwq_agent.tools.catalog import build_tools

ROOT = Path(__file__).resolve().parent.parent
HEALTHY = (ROOT / "tests/data/reasoning/healthy_enumeration.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "slip", "correct"),
    [
        ("So 17 * 24 = 418. Next", "17*24 = 418", "408"),
        ("x = 3 * 4 = 13.", "3*4 = 13", "12"),
        ("还是 2 * 3 * (4 * 5 + 1) = 125，不对", "2*3*(4*5+1) = 125", "126"),
        ("then 22 / 7 = 3.17 roughly", "22/7 = 3.17", "3.14"),
        ("and 0.25 / 2 = 0.15 each", "0.25/2 = 0.15", "0.13"),  # half up, as written by hand
        ("and 2^10 = 1000 here", "2^10 = 1000", "1024"),
        ("so 7 * 1.5 = 11.", "7*1.5 = 11", "10.5"),
        ("Then 5 - 12 = 7, odd", "5-12 = 7", "-7"),
        ("the total [2 × 3] ÷ 4 = 2.5, so", "(2*3)/4 = 2.5", "1.5"),
    ],
)
def test_a_wrong_hand_computation_is_found_with_its_exact_value(text: str, slip: str, correct: str) -> None:
    [found] = find_slips(text)
    assert (str(found), found.correct) == (slip, correct)


@pytest.mark.parametrize(
    "text",
    [
        "17 * 24 = 408.",
        "2*(3*4)*5+1 = 121 and (2 * 3 * 4 + 1) * 5 = 125",
        "10^6 = 1,000,000.",
        "1/3 = 0.33 and 22/7 = 3.14 and 2/3 = 0.666... and 5/9 = 0.555 (cut)",
        "3/6 = 1/2",
        "0.1 + 0.2 = 0.3",
        "36 * 365.06 = 13142.28 with the rounded payment",  # a rounded operand carried along
        "7/2 = 3 remainder 1",  # integer division
        "-3 * 4 = -12",  # a unary minus the pattern does not take
        "sqrt(12 * 5 * 4 * 3) = 26.83",  # a function
        "3^100 = 1 (mod 7)",
        "6.67 * 5.97 = 39.8 * 10^13",  # the value goes on
        "2*3 = 6 + 4 = 10",
        "50 / 100 = 5%",
        "(2+1)(2+1) = 9",  # implicit multiplication
        "9 + 14/15 = 9 14/15 = 169/15",  # a mixed number
        "\\( -27 \\times 1^2 = -27 \\)",  # LaTeX
        "cases 1-5 and 6-10 = 10 in all",  # a range
        "14/10 ÷ 68/10 = 14/68",  # a fraction of fractions
        "1344*70 = 93,  1344*70: 1344*7=9,408",  # a number cut at its comma
        "2x + 3 = 7",  # algebra
        "第 8 种 2 * (3 * 4) * (5 + 1) = 144，确认。",
        "10:30 - 2 = 8:30",  # a time
        "2^3^2 = 64",  # a tower, read either way by hand
        "101 + 11 = 1000 in binary",
        "Wait, 17 * 24 = 418? Let me redo it.",  # the model doubting its value
        "So 17 * 24 = 418. No wait, that is 408.",  # corrected right after
        # Modular arithmetic, said earlier in the paragraph, each value right modulo 7 or 5.
        "We need 3^100 modulo 7. The powers of 3 modulo 7 cycle: 3^1 = 3, 3^2 = 2, 3^3 = 6, 3^6 = 1.",
        "The powers of 2 modulo 5 are: 2^1 = 2, 2^2 = 4, 2^3 = 3, 2^4 = 1, so the order of 2 is 4.",
        "Work in Z/7, the residues: 4 * 5 = 6 and 6 * 6 = 1, so 6 is its own inverse.",
        # Measured quantities, the result rounded to the significant figures written.
        "so 9.8 * 15.3 = 150 N to three significant figures.",
        "The circle's area is 3.14 * 7.5 * 7.5 = 177 square metres.",
        "and 0.33 * 12.7 = 4.2 in all",
    ],
)
def test_correct_or_ambiguous_computations_are_left_alone(text: str) -> None:
    assert find_slips(text) == []


@pytest.mark.parametrize(
    ("text", "slip"),
    [
        ("so 9.8 * 15.3 = 100 N.", "9.8*15.3 = 100"),  # rounder than the data (two figures)
        ("so 2.5 * 2.5 = 6 here.", "2.5*2.5 = 6"),
        ("so 9.8 * 15.3 = 160 N.", "9.8*15.3 = 160"),  # not a rounding of 149.94 at all
        # The modular paragraph ended: the next one is ordinary arithmetic again.
        ("The powers of 3 modulo 7 cycle: 3^2 = 2.\n\nNext, the boxes: 17 * 24 = 418 in all.", "17*24 = 418"),
        # "model" and "database" are not `mod` or `base`.
        ("The model reads the database, then counts the rows: 17 * 24 = 418 in all.", "17*24 = 418"),
    ],
)
def test_rounding_and_modular_context_do_not_hide_a_real_slip(text: str, slip: str) -> None:
    assert [str(s) for s in find_slips(text)] == [slip]


MODULAR = (
    "Let me set this up. We need 3^100 modulo 7. The powers of 3 modulo 7 cycle: 3^1 = 3, 3^2 = 2, 3^3 = 6, "
    "3^4 = 4, 3^5 = 5, 3^6 = 1. The cycle length is 6 and 100 = 6*16 + 4, so 3^100 leaves remainder 4."
)


@pytest.mark.parametrize("pad", [0, 5, 200, 390])
def test_the_modular_paragraph_is_read_however_the_stream_is_cut(pad: int) -> None:
    # The paragraph before a computation is carried along with it: "modulo" 60+ characters before
    # `3^6 = 1` (the reviewer's case) counts whatever the cuts, as it does for the whole text.
    text = "x" * pad + " " + MODULAR + FILLER + FILLER
    assert find_slips(text) == []
    for step in (1, 7, 16, 64, len(text)):
        det = ReasoningLoopDetector()
        for i in range(0, len(text), step):
            det.feed(text[i : i + step])
        assert det.arithmetic.slips == [], step


FILLER = " Then the boxes go on the shelf, one row per colour, and the labels face out." * 5


def test_a_slip_counts_only_when_the_text_after_it_does_not_fix_it() -> None:
    # Judged once 300 characters follow the value: a model that fixes its slip needs no hint.
    fixed, kept = HandArithmetic(), HandArithmetic()
    assert fixed.add("So 17 * 24 = 418.") == [] and kept.add("So 17 * 24 = 418.") == []
    assert fixed.add(" Hmm, no: it is 408, I dropped a ten." + FILLER) == [] and fixed.slips == []
    [slip] = kept.add(" Then 418 + 5 = 423 boxes in all." + FILLER)
    assert kept.slips == [slip] and (str(slip), slip.correct) == ("17*24 = 418", "408")
    assert kept.checked == 2


ZH_CORRECT = "我们逐一计算每一种：" + "".join(
    f"第{k}种：{a}×{b}={a * b}，"
    for k, (a, b) in enumerate(zip(range(17, 60), range(23, 90, 2), strict=False), 1)
)
EN_RUN_ON = (
    ";".join(
        f"then{k};{a}*{b}={a * b}" for k, (a, b) in enumerate(zip(range(11, 70), range(13, 99), strict=False))
    )
    + "."
)


@pytest.mark.parametrize("pad", range(0, 40, 3))
def test_the_outcome_does_not_depend_on_where_the_stream_is_cut(pad: int) -> None:
    # Text without spaces is consumed in blocks, and a block may end in the middle of a number
    # (`48*85=40` | `80`): the checker sees the text whole, whatever the cuts.
    slipped = "Pad" * pad + " so 17 * 24 = 418 boxes; " + EN_RUN_ON + FILLER + ZH_CORRECT + FILLER
    for text in ("我" * pad + ZH_CORRECT + FILLER, "x" * pad + EN_RUN_ON + FILLER, slipped):
        expected = ["17*24 = 418"] if text is slipped else []
        for step in (1, 3, 4, 7, 16, 64, len(text)):
            det = ReasoningLoopDetector()
            for i in range(0, len(text), step):
                det.feed(text[i : i + step])
            assert [str(s) for s in det.arithmetic.slips] == expected, (step, pad)


def test_one_value_not_to_judge_does_not_drop_the_others() -> None:
    text = "First 17 * 24 = 418 boxes." + FILLER + " Then 3 / 4 = 1.5/2 of the crate." + FILLER + FILLER
    assert [str(s) for s in find_slips(text)] == ["17*24 = 418"]
    for step in (50, 16, len(text)):
        det = ReasoningLoopDetector()
        for i in range(0, len(text), step):
            det.feed(text[i : i + step])
        assert [str(s) for s in det.arithmetic.slips] == ["17*24 = 418"], step


def test_values_out_of_range_are_skipped_not_raised() -> None:
    huge = "So 999^64*" + "9" * 130 + "/7 = 1.5 here. " + FILLER
    long_value = "Ok. So 2 * 3 = " + "1" * 5000 + " then. " + FILLER
    tower = "Then 99^60^60 = 3 and 10^64 * 10^64 * 10^64 = 1. " + FILLER
    for text in (huge, long_value, tower):
        assert find_slips(text) == []
        for step in (16, len(text)):
            det = ReasoningLoopDetector()
            for i in range(0, len(text), step):
                det.feed(text[i : i + step])
            assert det.arithmetic.slips == []


def test_hostile_expressions_are_refused_quickly() -> None:
    t0 = time.process_time()
    assert evaluate("9^9^9^9") is None
    assert evaluate("10^64^64") is None
    assert evaluate("(" * 500 + "1" + ")" * 500) is None  # longer than any hand computation
    assert evaluate("1/0") is None
    assert find_slips("9^9^9 = 5. " * 200 + "2*" * 5000 + "2 = 3") == []
    # Text built to make a backtracking pattern take minutes (one took 36 s on the first of these).
    assert find_slips("(" * 2000 + "1" + " " * 2000 + "= 2") == []
    assert find_slips(("1" + " " * 30 + "+" + " " * 30) * 60 + "=") == []
    assert find_slips("= " * 2000 + "1 +" * 1000) == []
    assert time.process_time() - t0 < 10  # a bound on runaway work (ms expected), not a timing measurement


def test_the_one_slip_judged_in_the_corpus_is_a_real_one() -> None:
    # 1,249 hand computations in 96 traces of other models; one is judged wrong, and it is wrong:
    # "9 + 14/15 = 169/15 ≈ 11.2667" (it is 149/15), in a trace graded wrong. The model says "that's
    # not right" and then writes 169/15 again.
    corpus = find_corpus(ROOT)
    if corpus is None:
        pytest.skip("reasoning corpus not found beside the clone")
    slips = {
        p.name: [(str(s), s.correct) for s in find_slips(p.read_text(encoding="utf-8"))]
        for sub in ("healthy", "looping")
        for p in (corpus / sub).glob("*.txt")
    }
    assert {k: v for k, v in slips.items() if v} == {
        "r1-distill-llama-8b_math500-0011.txt": [("9+14/15 = 169/15", "149/15")]
    }


def _slipping_model(req: ScriptedRequest) -> str:
    """Writes a slip, then (after the hint) fixes it and answers; a second slip later gets no second hint."""
    prompt = req.prompt or ""
    if "but 17*24 is 408" in prompt:
        return "Right, 408. Then 408 + 5 = 413, and 3 * 3 = 10 is another slip.\n</think>\n\n413"
    return (
        "We need 17 boxes of 24 plus 5. So 17 * 24 = 418. Then 418 + 5 = 423, so the answer is 423. " * 6
        + "\n</think>\n\n423"
    )


async def test_a_slip_gets_one_hint_in_the_reasoning_and_the_run_goes_on(tmp_path: Path) -> None:
    trace = tmp_path / "run.jsonl"
    async with ScriptedModelServer(_slipping_model) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(
                client, build_tools(["python"]), config=AgentConfig(check_language=False), trace_path=trace
            )
            events = [ev async for ev in agent.stream("How many items in 17 boxes of 24 and 5 loose?")]
    final = events[-1]
    assert isinstance(final, Final) and final.status == "completed" and final.answer == "413"
    hints = [e for e in events if isinstance(e, Warning_) and e.kind == "hand_arithmetic"]
    assert len(hints) == 1 and hints[0].level == 0  # one per run, not a loop level
    assert "`17*24 = 418`" in hints[0].message and "python tool" in hints[0].message
    # The hint continues the same assistant turn, after the text that held the slip.
    first, second = server.requests[0].prompt or "", server.requests[1].prompt or ""
    assert second.startswith(first) and "17 * 24 = 418" in second[len(first) :]
    assert second.rstrip().endswith("I should check the numbers with the python tool.")
    assert len(server.requests) == 2 and len(server.aborted_rids) == 1
    # Replayed from the trace, the run writes the same hint at the same place.
    rec = load_recording(trace)
    replayed = Agent(ReplayModel.from_recording(rec), build_tools(["python"]), config=rec.agent_config())
    again = [ev async for ev in replayed.stream(rec.task)]
    assert [e.message for e in again if isinstance(e, Warning_) and e.kind == "hand_arithmetic"] == [
        hints[0].message
    ]
    assert isinstance(again[-1], Final) and again[-1].answer == "413"


async def test_the_last_step_the_budget_allows_may_be_hinted_and_finish() -> None:
    # The loop counts a step when it starts: on the last one the step budget reads as used up, but the
    # hint goes on with the same step and spends no other.
    cfg = AgentConfig(check_language=False, budget=Budget(max_steps=1))
    async with ScriptedModelServer(_slipping_model) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            events = [ev async for ev in Agent(client, [add], config=cfg).stream("How many items?")]
    final = events[-1]
    assert isinstance(final, Final) and final.status == "completed" and final.answer == "413", final
    assert [e.kind for e in events if isinstance(e, Warning_)] == ["hand_arithmetic"]
    assert len(server.requests) == 2


async def test_without_a_python_tool_the_hint_only_corrects() -> None:
    async with ScriptedModelServer(_slipping_model) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [add], config=AgentConfig(check_language=False))
            events = [ev async for ev in agent.stream("How many items?")]
    [hint] = [e for e in events if isinstance(e, Warning_) and e.kind == "hand_arithmetic"]
    assert "python" not in hint.message and "redo the steps" in hint.message


async def test_turned_off_no_hint_is_written() -> None:
    cfg = AgentConfig(check_language=False, loop_detector=LoopDetectorConfig(arithmetic_slip_hint=False))
    async with ScriptedModelServer(_slipping_model) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            events = [
                ev async for ev in Agent(client, build_tools(["python"]), config=cfg).stream("How many?")
            ]
    assert not [e for e in events if isinstance(e, Warning_) and e.kind == "hand_arithmetic"]
    assert len(server.requests) == 1


async def test_heavy_hand_computation_earns_the_hint_only_when_asked_for() -> None:
    done = HEALTHY + "\n</think>\n\nThe largest value comes from the last case."

    async def run(config: AgentConfig) -> tuple[list[object], int]:
        async with ScriptedModelServer(
            lambda req: done if "by hand" not in (req.prompt or "") else "ok\n</think>\n\nok"
        ) as server:
            async with SGLangClient(server.url, retry=NO_RETRY) as client:
                events = [
                    ev async for ev in Agent(client, build_tools(["python"]), config=config).stream("Go")
                ]
        return events, len(server.requests)

    events, requests = await run(AgentConfig(check_language=False))
    assert not [e for e in events if isinstance(e, Warning_)] and requests == 1  # default: untouched
    cfg = AgentConfig(check_language=False, loop_detector=LoopDetectorConfig(arithmetic_heavy_hint=20))
    events, requests = await run(cfg)
    [hint] = [e for e in events if isinstance(e, Warning_) and e.kind == "hand_arithmetic"]
    assert "20 computations by hand" in hint.message and requests == 2


def _batched(reasoning: str, answer: str, cut: int = 8) -> Callable[[asyncio.StreamWriter], None]:
    """SGLang's native stream with the whole reasoning and the first `cut` characters of `</think>` in one
    event (a server may batch its output, or split a tag), then the rest and the answer."""

    def write(writer: asyncio.StreamWriter) -> None:
        whole = reasoning + "</think>\n\n" + answer
        texts = [reasoning + "</think>"[:cut], whole]
        for k, text in enumerate(texts):
            finish = {"type": "stop"} if k == len(texts) - 1 else None
            meta = {"id": "x", "finish_reason": finish, "prompt_tokens": 10, "completion_tokens": k + 1}
            event = {"text": text, "output_ids": list(range(k + 1)), "meta_info": meta}
            writer.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        writer.write(b"data: [DONE]\n\n")

    return write


@pytest.mark.parametrize("cut", [8, 4, 2])  # `</think>` whole, or cut as `</th` | `ink>`, `</` | `think>`
async def test_a_slip_in_the_same_piece_as_the_end_of_the_reasoning_writes_nothing_into_the_answer(
    cut: int,
) -> None:
    # Nothing may be written into the reasoning once `</think>` came in the same piece: the hint would land
    # in the answer.
    reasoning = "So 17 * 24 = 418 boxes." + FILLER * 2 + " Done."
    async with RawServer("text/event-stream", _batched(reasoning, "The answer is 418.", cut)) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, build_tools(["python"]), config=AgentConfig(check_language=False))
            events = [ev async for ev in agent.stream("How many boxes?")]
    final = events[-1]
    assert isinstance(final, Final) and final.status == "completed" and final.answer == "The answer is 418."
    assert not [e for e in events if isinstance(e, Warning_) and e.kind == "hand_arithmetic"]
    assert server.requests == 1


TAIL = " Let me continue with the rest of the plan now, step by step, and check the remaining parts." * 5


@pytest.mark.parametrize(
    "text",
    [
        # A word in the paragraph that names no modulus and no base the numbers are written in.
        "I'll count the cells and then use binary search over them. There are 17 rows of 24 cells, so "
        "17 * 24 = 418 cells in total.",
        "The dry residue is spread over 17 trays with 24 grams on each, so 17 * 24 = 418 grams of it.",
        "There are 17 rows of 24 cells, so 17 * 24 = 418 cells. Then I take the base 10 logarithm of that.",
        "The shelf is modular: 17 units of 24 books each, so 17 * 24 = 418 books.",
        # A modulus is named, but the value is wrong under it too (408 - 418 is no multiple of 7).
        "Working modulo 7 later on; first the plain count: 17 * 24 = 418 cells.",
    ],
)
def test_a_word_about_modular_or_other_bases_does_not_hide_a_decimal_slip(text: str) -> None:
    assert [str(s) for s in find_slips(text + TAIL)] == ["17*24 = 418"]
    h = HandArithmetic()
    for i in range(0, len(text + TAIL), 7):
        h.add((text + TAIL)[i : i + 7])
    h.add("\n\n" + "x " * 300)
    assert [str(s) for s in h.slips] == ["17*24 = 418"]


@pytest.mark.parametrize(
    "text",
    [
        "Now work in base 5, carrying by hand: 14 + 13 = 32 and 4 * 4 = 31, as the table shows.",
        "In binary the sum is easy to check: 101 + 11 = 1000, which is eight.",
        "Everything below is modulo 11: 7 * 8 = 1 and 5 * 9 = 1, so 7 and 8 are inverses.",
    ],
)
def test_a_value_right_in_the_named_base_or_modulus_is_left_alone(text: str) -> None:
    assert find_slips(text + TAIL) == []
