"""The answer-stability probe end to end: a real HTTP model server, the real client, turn and detector.

The scripted model stands in for QwQ's intelligence only: it circles (or reasons healthily) in its main
stream and answers the side requests that end with the probe suffix with a fixed answer. Streams pause
at scripted points (`hold_after`) until the side requests arrive or an abort comes, so what is
asserted does not depend on how fast either side runs.
"""

from __future__ import annotations

import dataclasses
from itertools import pairwise
from pathlib import Path

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import Final, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.loop_detector import LoopDetectorConfig, ReasoningLoopDetector, close_text
from qwq_agent.agent.loops.probe import ProbeResult, normalise_answer
from qwq_agent.agent.tokenizer import get_tokenizer
from qwq_agent.testing.probes import probe_aware
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest, Turn
from qwq_agent.tools.catalog import build_tools

DATA = Path(__file__).parent / "data" / "reasoning"
CIRCLING = (DATA / "qwq_parentheses_loop.txt").read_text(encoding="utf-8")
HEALTHY = (DATA / "healthy_enumeration.txt").read_text(encoding="utf-8")
NUDGE_MARK = "I'm going in circles"
CLOSE_MARK = "Each time I stopped to state my answer"
PROBING = LoopDetectorConfig(probe_enabled=True, probe_min_reasoning_chars=0, probe_every_chars=500)
SUFFIX = PROBING.probe_suffix


def is_probe(req: ScriptedRequest) -> bool:
    return (req.prompt or "").endswith(SUFFIX)


class CirclesPastTheNudge:
    """The scripted model of the probe tests: it circles, ignores the nudge and circles on, then stalls
    (until aborted) ~1,500 characters in: short of the 2,000 the detector's own close needs, past the two
    probes that may close. Probes answer 126; after the close it answers 126. (`server` is set once the
    server it runs in has started: the hold is counted in that server's tokens.)"""

    server: ScriptedModelServer

    def __call__(self, req: ScriptedRequest) -> str | Turn:
        prompt = req.prompt or ""
        if is_probe(req):
            return " 126\n\nThe expression 2*3*(4*5+1) gives 126."
        if CLOSE_MARK in prompt:
            return "126"
        if NUDGE_MARK in prompt:
            return Turn(text=CIRCLING * 2, hold_after=len(self.server.tokenizer.pieces(CIRCLING[:1500])))
        return CIRCLING * 3


async def run_agent(server: ScriptedModelServer, config: LoopDetectorConfig = PROBING) -> list:
    async with SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(
            client,
            build_tools(["python"]),
            config=AgentConfig(check_language=False, loop_detector=config),
        )
        return [ev async for ev in agent.stream("Insert parentheses in 2*3*4*5+1 to get 144.")]


async def test_stable_probe_answer_closes_a_loop_that_keeps_circling_after_the_nudge():
    model = CirclesPastTheNudge()
    async with ScriptedModelServer(model) as server:
        model.server = server
        events = await run_agent(server)
    final = events[-1]
    assert isinstance(final, Final) and final.status == "completed" and final.answer == "126", final
    warnings = [e for e in events if isinstance(e, Warning_) and e.kind == "reasoning_loop"]
    assert [w.level for w in warnings] == [1, 2]
    assert "answer stayed '126'" in warnings[1].message
    main = [r for r in server.requests if not is_probe(r)]
    probes = [r for r in server.requests if is_probe(r)]
    assert len(main) == 3
    closed = main[2].prompt or ""
    assert closed.startswith(main[1].prompt or "") and CLOSE_MARK in closed and "`126`" in closed
    assert closed.rstrip().endswith("</think>")
    # Probes only after the nudge (at least the two that agreed), each a short greedy request on the
    # turn's own prefix.
    assert len(probes) >= 2 and all(NUDGE_MARK in (p.prompt or "") for p in probes)
    for p in probes:
        assert p.sampling_params["max_new_tokens"] == 16 and p.sampling_params["temperature"] == 0.0
        body = (p.prompt or "")[: -len(SUFFIX)]
        assert body.startswith(main[0].prompt or "")
    # The stalled stream was aborted on the server when the probe closed the reasoning.
    assert main[1].rid in server.aborted_rids


async def test_healthy_long_stream_with_probes_enabled_is_untouched_and_sends_no_probe():
    answer = "The largest value comes from the last case."
    # A turn that is never nudged pays nothing: only answers given after a nudge can count.
    async with ScriptedModelServer(probe_aware([HEALTHY + "\n</think>\n\n" + answer], " 7")) as server:
        events = await run_agent(server)
    final = events[-1]
    assert isinstance(final, Final) and final.status == "completed" and final.answer == answer
    assert not [e for e in events if isinstance(e, Warning_)]
    assert len(server.requests) == 1 and not is_probe(server.requests[0])
    assert not server.aborted_rids


async def test_probes_are_off_by_default():
    async with ScriptedModelServer(probe_aware([HEALTHY + "\n</think>\n\nok"], " 1")) as server:
        events = await run_agent(server, LoopDetectorConfig())
    assert isinstance(events[-1], Final) and events[-1].status == "completed"
    assert len(server.requests) == 1 and not is_probe(server.requests[0])


async def test_failing_probes_are_no_answer_and_the_detector_closes_on_its_own():
    server: ScriptedModelServer

    def model(req: ScriptedRequest) -> str | Turn:
        prompt = req.prompt or ""
        if is_probe(req):
            return Turn(http_status=500)
        if "</think>" in prompt:  # closed by the detector's own signal
            return "126"
        if NUDGE_MARK in prompt:
            # Circling on after the nudge; it pauses until a probe has arrived (and failed).
            hold = len(server.tokenizer.pieces(CIRCLING[:300]))
            return Turn(text=CIRCLING * 3, hold_after=hold, hold_until_requests=3)
        return CIRCLING * 3

    async with ScriptedModelServer(model) as server:
        events = await run_agent(server)
    final = events[-1]
    assert isinstance(final, Final) and final.status == "completed" and final.answer == "126", final
    warnings = [e for e in events if isinstance(e, Warning_) and e.kind == "reasoning_loop"]
    assert [w.level for w in warnings] == [1, 2] and "answer stayed" not in warnings[1].message
    assert any(is_probe(r) for r in server.requests)


async def test_a_probe_sends_the_tokens_of_the_request_it_rides_on_with_kept_turns_spliced_in():
    # With kept reasoning sent token-exact, the turn's request goes as ids holding what the server sampled
    # for the kept turn (not what its text tokenizes to). A probe sent as text would share the server's
    # cache only up to that turn: it sends the request's ids, then its own text tokenized after them.
    tok = get_tokenizer()
    circling = CirclesPastTheNudge()
    reasoning = "Adding two and two."  # one token a character: not the tokenizer's choice

    def model(req: ScriptedRequest) -> str | Turn:
        text = req.prompt if req.prompt is not None else tok.decode(req.prompt_ids)
        if "parentheses" not in text:  # the earlier run, whose turn the later prompts keep
            return Turn(ids=[i for ch in reasoning for i in tok.encode(ch)] + tok.encode("\n</think>\n\n4"))
        return circling(dataclasses.replace(req, prompt=text))

    async with (
        ScriptedModelServer(model) as server,
        SGLangClient(server.url, retry=NO_RETRY, keep_reasoning=True) as client,
    ):
        circling.server = server
        agent = Agent(client, [], config=AgentConfig(check_language=False, loop_detector=PROBING))
        assert (await agent.run("What is 2 + 2?")).answer == "4"
        result = await agent.run("Insert parentheses in 2*3*4*5+1 to get 144.", history=agent.messages)
    assert result.status == "completed" and result.answer == "126", result.error
    sent = server.requests[1:]
    probes = [r for r in sent if r.sampling_params["max_new_tokens"] == PROBING.probe_max_new_tokens]
    nudged = [r for r in sent if r not in probes and NUDGE_MARK in tok.decode(r.prompt_ids)]
    assert len(probes) >= 2 and len(nudged) >= 1 and all(r.input_ids is not None for r in sent)
    for probe in probes:
        assert tok.decode(probe.prompt_ids).endswith(SUFFIX)
        # each rides on the nudged request: its prompt, then the reasoning streamed since
        assert probe.prompt_ids[: len(nudged[0].prompt_ids)] == nudged[0].prompt_ids


# ---- the detector's side of the probe ---------------------------------------------------------


def _feed(det: ReasoningLoopDetector, text: str, *, until_level: int | None = None) -> int:
    """Feed in 16-character deltas (up to the delta that reaches `until_level`); return chars fed."""
    for i in range(0, len(text), 16):
        det.feed(text[i : i + 16])
        if until_level is not None and det.level >= until_level:
            return i + 16
    return len(text)


def test_probe_answers_never_nudge_and_close_only_after_the_nudge_while_circling() -> None:
    det = ReasoningLoopDetector(PROBING)
    _feed(det, CIRCLING[:1500])
    # Before any signal, stable answers do nothing: converging is not circling.
    assert det.observe_probe(ProbeResult(at_chars=1000, answer="126", text="126")) is None
    assert det.observe_probe(ProbeResult(at_chars=1400, answer="126", text="126")) is None
    assert det.level == 0
    _feed(det, CIRCLING[1500:], until_level=1)
    assert det.level == 1
    at = det.chars
    # One answer after the nudge, or two that differ, or an empty one: no close.
    assert det.observe_probe(ProbeResult(at_chars=at - 10, answer="126", text="126")) is None
    assert det.observe_probe(ProbeResult(at_chars=at + 1, answer="126", text="126")) is None
    assert det.observe_probe(ProbeResult(at_chars=at + 2, answer="125", text="125")) is None
    assert det.observe_probe(ProbeResult(at_chars=at + 3, answer="", text="")) is None
    assert det.observe_probe(ProbeResult(at_chars=at + 4, answer="", text="")) is None
    # The reasoning has not moved since the nudge: nothing new circled, so no close either.
    assert det.revisits == det.signals[-1].evidence["revisits"]
    # It keeps circling, and two probes agree: close, naming the answer.
    _feed(det, CIRCLING[:600])
    assert det.observe_probe(ProbeResult(at_chars=det.chars, answer="126", text="126")) is None
    signal = det.observe_probe(ProbeResult(at_chars=det.chars + 1, answer="126", text="126"))
    assert signal is not None and signal.level == 2 and signal.kind == "probe"
    assert signal.evidence["probe_answer"] == "126"
    assert "126" in close_text(signal) and close_text(signal).rstrip().endswith("</think>")


def test_probe_answers_are_compared_without_markup() -> None:
    assert normalise_answer(" **126**\n\nbecause ...") == "126"
    assert normalise_answer(r" $\boxed{126}$") == "126"
    assert normalise_answer(" (B) Down, Involvement") == "B"
    assert normalise_answer(" B. Down") == "B"
    assert normalise_answer(" The answer is 126.") == "the answer is 126"
    assert normalise_answer("\n\n") == ""


# ---- the cost benchmark runs against the scripted server ----------------------------------------


async def test_probe_cost_benchmark_measures_probes_beside_the_same_greedy_reasoning() -> None:
    import argparse
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / "probe_cost.py"
    spec = importlib.util.spec_from_file_location("probe_cost", path)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(url=None, scripted=True, max_new_tokens=4096, min_chars=1000, every_chars=2000)
    summary = await bench.amain(args)
    # The scripted reasoning is ~7,600 characters: probes at >= 1,000 and then every >= 2,000.
    assert 2 <= summary["probes"] <= 4 and summary["probe_errors"] == 0
    assert summary["answers"] == ["126"] * summary["probes"]
    assert summary["with_probes"]["same_output_as_baseline"]
    assert summary["probe_decoded_tokens"] <= 16 * summary["probes"]
    assert 0 < summary["probe_cached_tokens"] <= summary["probe_prompt_tokens"]
    ats = [p["at_chars"] for p in summary["per_probe"]]
    assert ats[0] >= 1000 and all(b - a >= 2000 for a, b in pairwise(ats))


async def test_a_probing_run_replays_from_its_trace_without_asking_the_replay_model(tmp_path):
    from qwq_agent.agent.replay import ReplayModel
    from qwq_agent.testing.helpers import add, call

    def model(req: ScriptedRequest) -> str | Turn:
        prompt = req.prompt or ""
        if is_probe(req):
            return f" {len(server.requests)}"  # a different answer each time: probes never close
        if "<tool_response>" in prompt:
            return "The sum is known.\n</think>\n\n5"
        if NUDGE_MARK in prompt:
            # It takes the nudge, after a pause until a probe has arrived.
            text = CIRCLING[:400] + "Right, a tool settles it.\n</think>\n\n" + call("add", a=2, b=3)
            hold = len(server.tokenizer.pieces(CIRCLING[:300]))
            return Turn(text=text, hold_after=hold, hold_until_requests=3)
        return CIRCLING * 3

    trace = tmp_path / "t.jsonl"
    config = AgentConfig(check_language=False, loop_detector=PROBING)
    async with ScriptedModelServer(model) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        recorded = await Agent(client, [add], config=config, trace_path=trace).run("Add 2 and 3.")
    assert recorded.status == "completed" and recorded.answer == "5"
    assert any(is_probe(r) for r in server.requests)
    # The trace holds the three streamed completions; a probe sent to the replay model would take a
    # later turn's completion and leave that turn without one.
    replay = Agent(ReplayModel.from_trace(trace), [add], config=config)
    events = [ev async for ev in replay.stream("Add 2 and 3.")]
    final = events[-1]
    assert isinstance(final, Final) and final.status == "completed" and final.answer == "5", final
    assert not [e for e in events if isinstance(e, Warning_) and e.kind != "reasoning_loop"]


async def test_a_run_closed_by_a_probe_replays_the_close_from_its_trace(tmp_path):
    """The replay sends no probes, so it cannot decide the close itself: the trace records it
    (`model_call.intervention`) and the replay steps in where the recorded run did."""
    from qwq_agent.agent.events import ModelCall
    from qwq_agent.agent.replay import ReplayModel
    from qwq_agent.agent.trace import read_trace

    model = CirclesPastTheNudge()

    def summary(events: list) -> tuple:
        warnings = [(w.kind, w.level) for w in events if isinstance(w, Warning_)]
        return warnings, events[-1].status, events[-1].answer

    trace = tmp_path / "t.jsonl"
    config = AgentConfig(check_language=False, loop_detector=PROBING)
    task = "Insert parentheses in 2*3*4*5+1 to get 144."
    async with ScriptedModelServer(model) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        model.server = server
        agent = Agent(client, build_tools(["python"]), config=config, trace_path=trace)
        live = [ev async for ev in agent.stream(task)]
    assert summary(live) == ([("reasoning_loop", 1), ("reasoning_loop", 2)], "completed", "126")

    replay = Agent(ReplayModel.from_trace(trace), build_tools(["python"]), config=config)
    replayed = [ev async for ev in replay.stream(task)]
    assert summary(replayed) == summary(live)  # no replay_divergence, the same close and answer
    assert replay.messages == agent.messages
    calls = [e for e in read_trace(trace) if isinstance(e, ModelCall) and not e.probe]
    assert [c.intervention.kind if c.intervention else None for c in calls][1:] == ["probe", None]
    assert calls[1].intervention.evidence["probe_answer"] == "126"


async def test_probe_costs_are_traced_and_counted_again_by_the_replay(tmp_path):
    """Each probe's cost, counted in the totals, has its `usage` event and a `model_call` marked as the
    probe's, so both add up to the totals; a replay (which sends no probes) counts it where the run did,
    and so ends on the prompt budget the probes spent, as the run did (it asked for a completion the run
    never made, and failed on ReplayExhausted, before)."""
    from qwq_agent.agent.budgets import Budget
    from qwq_agent.agent.events import ModelCall, UsageEvent
    from qwq_agent.agent.replay import ReplayModel
    from qwq_agent.agent.trace import read_trace

    def spent(events: list) -> tuple[int, int]:
        usage = [e.usage for e in events if isinstance(e, UsageEvent)]
        return sum(u.prompt_tokens for u in usage), sum(u.completion_tokens for u in usage)

    task = "Insert parentheses in 2*3*4*5+1 to get 144."
    for budget in (Budget(), Budget(max_prompt_tokens=7000)):
        trace = tmp_path / f"{budget.max_prompt_tokens}.jsonl"
        config = AgentConfig(check_language=False, loop_detector=PROBING, budget=budget)
        model = CirclesPastTheNudge()
        async with ScriptedModelServer(model) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
            model.server = server
            agent = Agent(client, build_tools(["python"]), config=config, trace_path=trace)
            live = [ev async for ev in agent.stream(task)]
            probes_sent = sum(is_probe(r) for r in server.requests)
        totals = (int(live[-1].totals["prompt_tokens"]), int(live[-1].totals["generated_tokens"]))
        assert spent(live) == totals
        calls = [e for e in read_trace(trace) if isinstance(e, ModelCall)]
        probes = [c for c in calls if c.probe]
        assert probes_sent >= 1 and 1 <= len(probes) <= probes_sent  # one cancelled in flight costs nothing
        assert all(p.usage.prompt_tokens > 0 for p in probes)
        assert sum(c.usage.prompt_tokens for c in calls) == totals[0]

        replay = Agent(ReplayModel.from_trace(trace), build_tools(["python"]), config=config)
        replayed = [ev async for ev in replay.stream(task)]
        ends = [(e[-1].status, e[-1].error) for e in (live, replayed)]
        assert ends[0] == ends[1]
        assert spent(replayed) == totals
        assert [ev.probe for ev in replayed if isinstance(ev, ModelCall)] == [c.probe for c in calls]
    assert ends[0][0] == "budget_exceeded"  # the probes spent the prompt budget of the second run


async def test_scripted_server_process_answers_probes_with_probe_answer() -> None:
    import asyncio
    import sys

    from qwq_agent.protocols import SamplingParams

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qwq_agent.testing.scripted_server",
        "--text",
        "main turn",
        "--probe-answer",
        " 7",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        url = line.strip().rsplit(" ", 1)[-1]
        async with SGLangClient(url, retry=NO_RETRY) as client:
            params = SamplingParams(max_new_tokens=16)
            assert (await client.generate("question" + SUFFIX, params)).text == " 7"
            assert (await client.generate("question", params)).text == "main turn"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
