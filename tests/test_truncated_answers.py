"""An answer the token limit cuts off is continued, or reported cut off; never a finished answer (real HTTP).

Also a turn that ends inside its reasoning (no `</think>`, so no answer): the reasoning is closed for the
model, which then answers.
"""

from __future__ import annotations

from pathlib import Path

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import BudgetExceeded, Final, ModelCall, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.replay import ReplayModel
from qwq_agent.agent.trace import read_trace
from qwq_agent.protocols import SamplingParams
from qwq_agent.testing.scripted_server import ScriptedModelServer

TASK = "What is the answer, with proof?"
# 12 tokens of the scripted server end it at "The answer is 42 and the".
HEAD = "Short.\n</think>\n\n"
CUT = "The answer is 42 and the"
LONG = HEAD + CUT + " proof goes as follows: first we note that the thing"


def config(max_new_tokens: int = 12, **kw: object) -> AgentConfig:
    return AgentConfig(check_language=False, sampling=SamplingParams(max_new_tokens=max_new_tokens), **kw)


async def run(turns: list[str], cfg: AgentConfig, trace: Path | None = None):
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [], config=cfg, trace_path=trace)
            events = [ev async for ev in agent.stream(TASK)]
    assert agent.result is not None and isinstance(events[-1], Final)
    warnings = [(e.kind, e.message) for e in events if isinstance(e, Warning_)]
    return agent.result, warnings, server.requests


async def test_an_answer_cut_off_by_the_token_limit_is_continued_to_its_end(tmp_path: Path) -> None:
    # The continuation is the same step: the last step the budget allows may still finish its answer.
    cfg = config(budget=Budget(max_steps=1))
    trace = tmp_path / "t.jsonl"
    turns = [LONG, " proof: we note that one and one make two, and two and two make four", " So: 42."]
    result, warnings, requests = await run(turns, cfg, trace)
    assert result.status == "completed", result.error
    calls = [e for e in read_trace(trace) if isinstance(e, ModelCall)]
    assert [c.usage.finish_reason for c in calls] == ["length", "length", "stop"]
    assert result.answer == CUT + calls[1].completion + " So: 42."
    assert [kind for kind, _ in warnings] == ["answer_continued", "answer_continued"]
    assert "max_new_tokens=12" in warnings[0][1]
    # Each continuation carries on from the text so far, as the model's own, with nothing written into it.
    assert [c.prefix for c in calls] == ["", HEAD + CUT, HEAD + CUT + calls[1].completion]
    assert (requests[2].prompt or "").endswith(calls[1].completion)
    assert [m.role for m in result.messages] == ["system", "user", "assistant"]

    replayed = await Agent(ReplayModel.from_trace(trace), [], config=cfg).run(TASK)
    assert replayed.status == "completed" and replayed.answer == result.answer


async def test_an_answer_still_cut_off_when_its_continuations_are_spent_ends_truncated_answer() -> None:
    result, warnings, requests = await run([LONG, LONG], config(max_answer_continuations=1))
    assert len(requests) == 2
    assert result.status == "truncated_answer"
    assert result.answer and result.answer.startswith(CUT)  # what was written, under a status that says so
    assert "max_answer_continuations=1" in (result.error or "")
    assert [kind for kind, _ in warnings] == ["answer_continued", "truncated_answer"]

    # None allowed: the first cut ends the run
    result, warnings, requests = await run([LONG], config(max_answer_continuations=0))
    assert (result.status, result.answer, len(requests)) == ("truncated_answer", CUT, 1)
    assert [kind for kind, _ in warnings] == ["truncated_answer"]


async def test_an_answer_whose_continuation_would_not_fit_the_context_ends_truncated_answer() -> None:
    # The context holds the first request's prompt and its 12 new tokens, and not one token more: no
    # room to continue.
    _, _, alone = await run([LONG], config(max_answer_continuations=0))
    result, warnings, requests = await run([LONG], config(context_length=len(alone[0].prompt_ids) + 12 + 1))
    assert len(requests) == 1 and requests[0].sampling_params["max_new_tokens"] == 12
    assert result.status == "truncated_answer" and result.answer == CUT
    assert "could not be continued" in (result.error or "") and "context length" in (result.error or "")
    assert [kind for kind, _ in warnings] == ["answer_continued", "truncated_answer"]


async def test_an_answer_cut_off_by_the_generation_budget_ends_budget_exceeded() -> None:
    cfg = AgentConfig(check_language=False, budget=Budget(max_generated_tokens=12))
    result, warnings, requests = await run([LONG, " never asked for."], cfg)
    assert len(requests) == 1 and requests[0].sampling_params["max_new_tokens"] == 12
    assert result.status == "budget_exceeded"
    assert result.error == "budget generated_tokens used up (12 >= 12)"
    assert [kind for kind, _ in warnings] == ["truncated_answer"]
    assert "generated_tokens budget is used up" in warnings[0][1]


async def test_a_turn_that_ends_inside_its_reasoning_is_closed_for_the_model_to_answer(
    tmp_path: Path,
) -> None:
    trace = tmp_path / "t.jsonl"
    turns = ["So the capital of France is Paris. The answer is Paris.", "The capital of France is Paris."]
    result, warnings, requests = await run(turns, config(max_new_tokens=8192), trace)
    assert result.status == "completed"
    assert result.answer == "The capital of France is Paris."
    assert [kind for kind, _ in warnings] == ["unclosed_reasoning"]
    assert (requests[1].prompt or "").endswith("The answer is Paris.\n</think>\n\n")
    assert result.messages[-1].reasoning == "So the capital of France is Paris. The answer is Paris."
    calls = [e for e in read_trace(trace) if isinstance(e, ModelCall)]
    assert [c.prefix for c in calls] == ["", turns[0] + "\n</think>\n\n"]


async def test_a_turn_that_ends_inside_its_reasoning_with_the_budget_spent_says_so_and_asks_nothing() -> None:
    # Before: the warning said `</think>` was written and the model asked to answer, though the spent
    # budget stopped it first; and no budget_exceeded event said which budget ended the run.
    turns = ["So the capital of France is Paris. The answer is Paris.", "never asked for."]
    cfg = config(max_new_tokens=8192, budget=Budget(max_generated_tokens=13))
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [], config=cfg)
            events = [ev async for ev in agent.stream(TASK)]
    assert len(server.requests) == 1 and agent.result is not None
    assert agent.result.status == "budget_exceeded"
    (warning,) = [e for e in events if isinstance(e, Warning_)]
    assert warning.kind == "unclosed_reasoning" and "not asked to answer" in warning.message
    assert [(e.budget, e.limit) for e in events if isinstance(e, BudgetExceeded)] == [
        ("generated_tokens", 13.0)
    ]
