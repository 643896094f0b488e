"""Loop interventions end to end: a real HTTP model server streams scripted reasoning to the real loop.

The scripted model stands in for QwQ's intelligence only: it circles (recomputing the same three
candidate expressions) until the prompt shows the intervention it is waiting for. The detector, the
turn, the client, the server and (in the last test) the python tool in a Docker sandbox are real.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import Final, ToolResultEvent, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.protocols import SamplingParams
from qwq_agent.sandbox import DockerSandbox, SandboxConfig
from qwq_agent.testing.helpers import add, call
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest
from qwq_agent.tools.catalog import build_tools

DATA = Path(__file__).parent / "data" / "reasoning"
CIRCLING = (DATA / "qwq_parentheses_loop.txt").read_text(encoding="utf-8")
HEALTHY = (DATA / "healthy_enumeration.txt").read_text(encoding="utf-8")
CANDIDATES = ["2*(3*4)*5+1", "2*3*(4*5+1)", "(2*3*4+1)*5"]
NUDGE_MARK = "I'm going in circles"


def loop_reasoning_and_continuations(req: ScriptedRequest) -> str:
    """A model that ignores every intervention: it keeps circling, in its reasoning or its answer."""
    return CIRCLING * 3


async def stream(server: ScriptedModelServer, tools, sandbox=None):
    async with SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, tools, sandbox=sandbox, config=AgentConfig(check_language=False))
        return [ev async for ev in agent.stream("Insert parentheses in 2*3*4*5+1 to get 144.")]


async def test_circling_stream_gets_a_nudge_naming_the_candidates_then_a_close_then_a_stop():
    tools = build_tools(["python"])
    async with ScriptedModelServer(loop_reasoning_and_continuations) as server:
        events = await stream(server, tools)
    final = events[-1]
    assert isinstance(final, Final) and final.status == "reasoning_loop"
    warnings = [e for e in events if isinstance(e, Warning_) and e.kind == "reasoning_loop"]
    assert [w.level for w in warnings] == [1, 2, 3]
    # Each intervention continues the same assistant turn from what was generated so far.
    nudged, closed = server.requests[1].prompt or "", server.requests[2].prompt or ""
    assert nudged.startswith(server.requests[0].prompt or "") and closed.startswith(nudged)
    nudge = nudged[nudged.rindex("\n\nWait") :]
    assert NUDGE_MARK in nudge and "python tool" in nudge
    assert all(c in nudge for c in CANDIDATES), nudge  # it names what is being recomputed
    close = closed[len(nudged) :]
    assert close.rstrip().endswith("</think>") and any(c in close for c in CANDIDATES)
    assert len(server.requests) == 3 and len(server.aborted_rids) == 3


async def test_without_a_python_tool_the_nudge_names_the_candidates_but_no_tool():
    async with ScriptedModelServer(loop_reasoning_and_continuations) as server:
        await stream(server, [add])
    nudged = server.requests[1].prompt or ""
    nudge = nudged[nudged.rindex("\n\nWait") :]
    assert all(c in nudge for c in CANDIDATES) and "python" not in nudge


async def test_healthy_long_stream_is_untouched():
    answer = "The largest value comes from the last case."
    async with ScriptedModelServer([HEALTHY + "\n</think>\n\n" + answer]) as server:
        events = await stream(server, build_tools(["python"]))
    final = events[-1]
    assert isinstance(final, Final) and final.status == "completed" and final.answer == answer
    assert not [e for e in events if isinstance(e, Warning_)]
    assert len(server.requests) == 1 and not server.aborted_rids


async def test_nudged_model_checks_all_candidates_in_the_python_sandbox(sandbox_image):
    cell = "for e in " + repr(CANDIDATES) + ":\n    print(e, '=', eval(e))"

    def model(req: ScriptedRequest) -> str:
        prompt = req.prompt or ""
        if "<tool_response>" in prompt:
            return (
                "The tool settles it.\n</think>\n\nNone of them gives 144: the values are 121, 126 and 125."
            )
        if NUDGE_MARK in prompt:  # the model takes the nudge
            return "Right, one cell checks them all.\n</think>\n\n" + call("python", code=cell)
        return CIRCLING * 3

    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        async with ScriptedModelServer(model) as server:
            events = await stream(server, build_tools(["python"]), sandbox=sb)
    final = events[-1]
    assert isinstance(final, Final) and final.status == "completed", final
    warnings = [e for e in events if isinstance(e, Warning_) and e.kind == "reasoning_loop"]
    assert [w.level for w in warnings] == [1]
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert len(results) == 1
    # The sandbox really evaluated every candidate (2*(3*4)*5+1 = 121, ...).
    assert all(v in results[0].text for v in ("121", "126", "125")), results[0].text


async def _answer_after_a_host_close(first: str, max_new_tokens: int = 8192) -> tuple[list, list]:
    """The turn writes `</think>` for the model after `first`; then the model's answer circles, and
    whatever follows it (were it nudged) is a clean conclusion."""
    turns = [first, CIRCLING * 3, " Final: no placement gives 144.", "spare"]
    cfg = AgentConfig(check_language=False, sampling=SamplingParams(max_new_tokens=max_new_tokens))
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [], config=cfg)
            events = [ev async for ev in agent.stream("Insert parentheses in 2*3*4*5+1 to get 144.")]
    return events, server.requests


async def test_an_answer_circling_after_the_turn_closed_an_unclosed_reasoning_is_stopped_not_nudged():
    # The model ended its turn inside its reasoning: `</think>` is written for it. A loop in the answer
    # that follows may only stop the run: a nudge written there would be handed back as the answer.
    events, requests = await _answer_after_a_host_close("Let me think. The answer should be 144 somehow.")
    final = events[-1]
    assert isinstance(final, Final) and final.status == "reasoning_loop", final
    warnings = [(e.kind, e.level) for e in events if isinstance(e, Warning_)]
    assert warnings == [("unclosed_reasoning", 2), ("reasoning_loop", 3)]
    assert len(requests) == 2 and NUDGE_MARK not in (requests[-1].prompt or "")
    assert NUDGE_MARK not in (final.answer or "") and "</think>" not in (final.answer or "")


async def test_an_answer_circling_after_reasoning_cut_by_the_token_limit_is_stopped_not_nudged():
    # The reasoning hit the token limit: the turn closes it (level 2) and the answer is watched, as
    # after the detector's own close, for a stop only.
    events, requests = await _answer_after_a_host_close(HEALTHY, max_new_tokens=1500)
    final = events[-1]
    assert isinstance(final, Final) and final.status == "reasoning_loop", final
    levels = [e.level for e in events if isinstance(e, Warning_) and e.kind == "reasoning_loop"]
    assert levels == [2, 3]
    assert len(requests) == 2 and (requests[1].prompt or "").rstrip().endswith("</think>")
    assert NUDGE_MARK not in (final.answer or "") and "</think>" not in (final.answer or "")


@pytest.mark.parametrize(
    ("first", "then", "max_new_tokens", "level"),
    [
        # a loop: nudged, the model concludes
        (CIRCLING * 3, " So none of them works.\n</think>\n\nNo placement gives 144.", 8192, 1),
        # reasoning cut off by the token limit: closed, the model answers
        (HEALTHY, "No placement gives 144.", 1500, 2),
    ],
    ids=["nudge", "close"],
)
async def test_the_last_step_the_budget_allows_may_be_nudged_or_closed_and_finish(
    first, then, max_new_tokens, level
):
    # The loop counts a step when it starts: on the last one, the step budget reads as used up, but an
    # intervention goes on with the same step and spends no other.
    turns = [first, then, "spare"]
    cfg = AgentConfig(
        check_language=False,
        budget=Budget(max_steps=1),
        sampling=SamplingParams(max_new_tokens=max_new_tokens),
    )
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [], config=cfg)
            events = [ev async for ev in agent.stream("Insert parentheses in 2*3*4*5+1 to get 144.")]
    final = events[-1]
    assert isinstance(final, Final) and final.status == "completed", final
    assert final.answer == "No placement gives 144."
    assert [(e.kind, e.level) for e in events if isinstance(e, Warning_)] == [("reasoning_loop", level)]
    assert len(server.requests) == 2
