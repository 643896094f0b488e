"""Requests that fail after output arrived: their tokens are counted, they are traced, and replayed.

A real scripted model server (HTTP on 127.0.0.1) drops connections mid-stream; the agent loop, the
clients, the trace and the replay are the project's own.
"""

from __future__ import annotations

import pytest

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, OpenAIChatClient, SGLangClient
from qwq_agent.agent.clients.retry import RetryPolicy
from qwq_agent.agent.events import ModelCall, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.replay import ReplayModel
from qwq_agent.agent.trace import read_trace, recorded_completions
from qwq_agent.testing.helpers import add, call
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest, Turn

DROP_AFTER = 40
LONG = "Let me think about this carefully. " * 60
ANSWER = "Easy.\n</think>\n\nFive."
LOOP_SENTENCES = [
    "Let me count the r letters in strawberry again: s, t, r, a, w, b, e, r, r, y, so that gives 3 r's.",
    "Wait, maybe I miscounted the letters of strawberry, let me go through s t r a w b e r r y once more.",
    "Hmm, s-t-r-a-w-b-e-r-r-y, I see r at position 3 and then two more near the end, that is 3 again.",
    "But did I count the double r correctly? Let me recount the letters in strawberry from the start.",
]
NUDGE_MARK = "I'm going in circles"  # every level-1 nudge says so


def config(**kw: object) -> AgentConfig:
    return AgentConfig(**{"check_language": False, "model_retry_backoff_s": 0.0, **kw})


def client_for(api: str, server: ScriptedModelServer) -> SGLangClient | OpenAIChatClient:
    if api == "openai":
        return OpenAIChatClient(server.url, model="qwq-32b", retry=NO_RETRY)
    return SGLangClient(server.url, retry=NO_RETRY)


def cut_turn() -> Turn:
    return Turn(text=LONG, drop_after=DROP_AFTER)


@pytest.mark.parametrize(
    ("budget", "sent"),
    [
        (50, [50, 10]),  # the retry may generate only what the cut attempt left of the budget
        (DROP_AFTER, [DROP_AFTER]),  # the cut attempt spent it all: no retry is sent
    ],
)
async def test_a_cut_attempts_tokens_count_against_the_generation_budget(tmp_path, budget, sent):
    trace = tmp_path / "run.jsonl"
    async with ScriptedModelServer([cut_turn(), cut_turn(), ANSWER]) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            cfg = config(model_retries=2, budget=Budget(max_generated_tokens=budget, max_wall_s=120))
            result = await Agent(client, [], config=cfg, trace_path=trace).run("What is 2 + 3?")
        max_new = [r.sampling_params.get("max_new_tokens") for r in server.requests]
    assert max_new == sent
    assert result.status == "budget_exceeded"
    assert "generated_tokens" in (result.error or "")
    # What the server generated: 40 tokens before the drop, then what the retry was allowed.
    assert result.totals["generated_tokens"] == sum(min(DROP_AFTER, n) for n in sent)
    failed = recorded_completions(read_trace(trace))[0]
    assert failed.error is not None and failed.error.startswith("ModelConnectionError")
    assert failed.usage.completion_tokens == DROP_AFTER and failed.usage.finish_reason == "error"
    assert failed.completion and LONG.startswith(failed.completion)


@pytest.mark.parametrize("api", ["native", "openai"])
async def test_failed_attempts_are_traced_and_in_the_totals(tmp_path, api):
    trace = tmp_path / "run.jsonl"
    async with ScriptedModelServer([cut_turn(), cut_turn(), ANSWER]) as server:
        async with client_for(api, server) as client:
            agent = Agent(client, [], config=config(model_retries=2), trace_path=trace)
            events = [ev async for ev in agent.stream("What is 2 + 3?")]
    final = events[-1]
    assert final.type == "final" and final.status == "completed" and final.answer == "Five."
    calls = recorded_completions(read_trace(trace))
    assert [c.error is not None for c in calls] == [True, True, False]
    # The operator saw each cut attempt's output stream: the trace has it.
    streamed = "".join(e.text for e in events if e.type in ("reasoning", "content"))
    assert all(c.completion and c.completion in streamed for c in calls[:2])
    # The scripted OpenAI stream's first chunk of the 40 sent carries only the role: no token.
    sent = DROP_AFTER - 1 if api == "openai" else DROP_AFTER
    assert [c.usage.completion_tokens for c in calls[:2]] == [sent, sent]
    assert final.totals["generated_tokens"] == sum(c.usage.completion_tokens for c in calls)
    assert final.totals["generated_tokens"] > 2 * DROP_AFTER


def nudge_then_cut(answer: str):
    """A model whose reasoning loops (nudged), whose continuation after the nudge is cut mid-stream,
    and which answers when the turn is retried from its start."""
    fresh = 0

    def model(req: ScriptedRequest) -> str | Turn:
        nonlocal fresh
        if NUDGE_MARK in (req.prompt or ""):
            return Turn(text="Fine, I stop counting and", drop_after=3)
        fresh += 1
        if fresh == 1:
            return " ".join(LOOP_SENTENCES[i % 4] for i in range(200))
        return answer

    return model


async def test_a_replay_fails_a_request_again_where_it_failed_after_a_nudge(tmp_path):
    trace = tmp_path / "run.jsonl"
    answer = "Counted.\n</think>\n\nThere are 3 r's."
    async with ScriptedModelServer(nudge_then_cut(answer)) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [add], config=config(), trace_path=trace)
            recorded = await agent.run("How many r's are in strawberry?")
        assert len(server.requests) == 3
    assert recorded.status == "completed" and recorded.answer == "There are 3 r's."

    # The replay takes the nudge, fails the continuation where it failed, and retries the turn from its
    # start as the run did: every recorded request is answered at its own prompt. (Without the failed
    # request in the trace, the retry's completion was served to the continuation: a divergence.)
    replay = ReplayModel.from_trace(trace)
    events = [
        ev async for ev in Agent(replay, [add], config=config()).stream("How many r's are in strawberry?")
    ]
    assert [e.message for e in events if isinstance(e, Warning_) and e.kind == "replay_divergence"] == []
    final = events[-1]
    assert final.type == "final" and final.status == "completed" and final.answer == recorded.answer
    assert replay.remaining == 0

    calls = recorded_completions(read_trace(trace))
    assert [(c.intervention is not None, c.error is not None) for c in calls] == [
        (True, False),
        (False, True),
        (False, False),
    ]
    assert NUDGE_MARK in calls[1].prefix and calls[2].prefix == ""
    again = [e for e in events if isinstance(e, ModelCall)]
    assert [(c.prefix, c.completion, c.error) for c in again] == [
        (c.prefix, c.completion, c.error) for c in calls
    ]
    assert final.totals["generated_tokens"] == recorded.totals["generated_tokens"]


async def test_a_resume_asks_the_live_model_where_the_recording_ended_on_failures(tmp_path):
    trace = tmp_path / "run.jsonl"
    first = "add\n</think>\n\n" + call("add", a=2, b=3)
    async with ScriptedModelServer(
        [first, Turn(text=LONG, drop_after=3), Turn(text=LONG, drop_after=3)]
    ) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [add], config=config(model_retries=1), trace_path=trace)
            recorded = await agent.run("What is 2 + 3?")
    assert recorded.status == "model_error"
    assert [c.error is not None for c in recorded_completions(read_trace(trace))] == [False, True, True]

    async with ScriptedModelServer(["The tool says 5.\n</think>\n\n5"]) as live_server:
        async with SGLangClient(live_server.url, retry=NO_RETRY) as live:
            replay = ReplayModel.from_trace(trace, then=live)
            resumed = await Agent(replay, [add], config=config(model_retries=1)).run("What is 2 + 3?")
        assert len(live_server.requests) == 1
    assert resumed.status == "completed" and resumed.answer == "5"


@pytest.mark.parametrize(
    ("policy", "backoff_s", "outcome", "status"),
    [
        # The client's next try (1000 s away) would pass the 60 s deadline: the run ends on wall time.
        (
            RetryPolicy(attempts=2, base_delay=1000.0, max_delay=1000.0, jitter=0.0),
            0.0,
            "wall_out",
            "budget_exceeded",
        ),
        # The turn's own retry (30 s away) would: the run ends model_error, saying so.
        (NO_RETRY, 1000.0, "no_time_to_retry", "model_error"),
    ],
)
async def test_a_replay_ends_where_the_recorded_runs_clock_ended_it(
    tmp_path, policy, backoff_s, outcome, status
):
    trace = tmp_path / "run.jsonl"
    cfg = config(model_retries=2, model_retry_backoff_s=backoff_s, budget=Budget(max_wall_s=25))
    async with ScriptedModelServer([Turn(http_status=503)] * 3) as server:
        async with SGLangClient(server.url, retry=policy) as client:
            recorded = await Agent(client, [], config=cfg, trace_path=trace).run("What is 2 + 3?")
    assert recorded.status == status

    # The replay's clock is fresh and its failure a ReplayedModelError: only the recording can say the
    # run's clock stopped it (before, the replay retried at once and ran out of recorded completions).
    replay = ReplayModel.from_trace(trace)
    events = [ev async for ev in Agent(replay, [], config=cfg).stream("What is 2 + 3?")]
    final = events[-1]
    assert final.type == "final" and final.status == recorded.status
    assert "ReplayExhausted" not in repr(events)
    assert replay.remaining == 0
    # The trace says what the turn did after the failure, and the replay's trace says the same.
    assert [c.error_outcome for c in recorded_completions(read_trace(trace))] == [outcome]
    assert [e.error_outcome for e in events if isinstance(e, ModelCall)] == [outcome]


@pytest.mark.parametrize(
    "text",
    [
        "Easy.\n</think>\n\nThe answer: " + LONG,  # cut in the answer: a replay would end completed
        LONG + "\n</think>\n\nFive.",  # cut in the reasoning: a replay would close it, asking for more
    ],
    ids=["answer", "reasoning"],
)
async def test_a_stream_the_wall_time_deadline_cut_replays_and_resumes_from_there(tmp_path, text):
    trace = tmp_path / "run.jsonl"
    cfg = config(budget=Budget(max_wall_s=1.0))
    # The stream stalls after 20 tokens until aborted: only the run's deadline ends it.
    async with ScriptedModelServer([Turn(text=text, hold_after=20), "spare"]) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            recorded = await Agent(client, [], config=cfg, trace_path=trace).run("What is 2 + 3?")
    assert recorded.status == "budget_exceeded" and "wall_s" in (recorded.error or "")
    calls = recorded_completions(read_trace(trace))
    assert [(c.error, c.error_outcome) for c in calls] == [(None, "wall_out")]

    # The replay's clock is fresh: the recording says where the run's clock ended the stream.
    replay = ReplayModel.from_trace(trace)
    events = [ev async for ev in Agent(replay, [], config=cfg).stream("What is 2 + 3?")]
    final = events[-1]
    assert final.type == "final" and final.status == "budget_exceeded", final
    assert "ReplayExhausted" not in repr(events) and replay.remaining == 0 and not final.answer
    replayed = [e for e in events if isinstance(e, ModelCall)]
    assert [(c.completion, c.error_outcome, c.usage) for c in replayed] == [
        (calls[0].completion, "wall_out", calls[0].usage)
    ]
    assert final.totals["generated_tokens"] == recorded.totals["generated_tokens"]

    # A resume asks the live model for the request the deadline cut, as for a trailing failure.
    async with ScriptedModelServer([ANSWER]) as live_server:
        async with SGLangClient(live_server.url, retry=NO_RETRY) as live:
            resumed = await Agent(
                ReplayModel.from_trace(trace, then=live), [], config=config(budget=Budget(max_wall_s=120))
            ).run("What is 2 + 3?")
        assert len(live_server.requests) == 1
    assert resumed.status == "completed" and resumed.answer == "Five."


async def test_a_failed_request_that_spent_the_prompt_budget_is_not_retried(tmp_path):
    trace = tmp_path / "run.jsonl"
    async with ScriptedModelServer([cut_turn(), cut_turn(), cut_turn(), ANSWER]) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            cfg = config(model_retries=2, budget=Budget(max_prompt_tokens=10, max_wall_s=120))
            result = await Agent(client, [], config=cfg, trace_path=trace).run("What is 2 + 3?")
        sent = len(server.requests)
    # A retry sends the whole prompt again: with the prompt-token budget spent, none is sent (before,
    # all `model_retries` were, each past the budget, and the run ended model_error).
    assert sent == 1
    assert result.status == "budget_exceeded" and "prompt_tokens" in (result.error or "")
    failed = recorded_completions(read_trace(trace))
    assert [(c.error is not None, c.error_outcome) for c in failed] == [(True, "ended")]
    assert result.totals["prompt_tokens"] == failed[0].usage.prompt_tokens > 10


@pytest.mark.parametrize(
    "failure",
    [
        Turn(http_status=500),
        Turn(text='{"name": "add", "arguments": {"a": 2, "b": 3}}', drop_after=DROP_AFTER // 4),
    ],
    ids=["server-error", "dropped-mid-call"],
)
async def test_a_failed_constrained_call_is_traced_counted_and_replayed(tmp_path, failure):
    trace = tmp_path / "run.jsonl"
    opens = "I will add them.\n</think>\n\n<tool_call>\n" + call("add", a=2, b=3).split("<tool_call>\n", 1)[1]
    cfg = config(constrained_tool_calls=True)
    async with ScriptedModelServer([opens, failure, failure]) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            recorded = await Agent(client, [add], config=cfg, trace_path=trace).run("What is 2 + 3?")
        assert len(server.requests) == 2  # the free-running turn, cut at the tag; the call under the grammar
    assert recorded.status == "model_error"

    # The replay fails the constrained request again, as the run did (before, the recording held no
    # such request: the replay ran out of completions and ended "error" with ReplayExhausted).
    replayed = await Agent(ReplayModel.from_trace(trace), [add], config=cfg).run("What is 2 + 3?")
    assert (replayed.status, replayed.error) == (recorded.status, recorded.error)

    calls = recorded_completions(read_trace(trace))
    assert [(c.error is not None, c.error_outcome) for c in calls] == [(False, None), (True, "ended")]
    assert calls[1].error == recorded.error and calls[1].prefix.endswith("<tool_call>")
    # What the failed request cost is in the totals (the prompt it was sent, the tokens it generated).
    if failure.drop_after is not None:
        assert calls[1].usage.prompt_tokens > 0 and calls[1].usage.completion_tokens > 0
    assert recorded.totals["prompt_tokens"] == sum(c.usage.prompt_tokens for c in calls)
    assert recorded.totals["generated_tokens"] == sum(c.usage.completion_tokens for c in calls)
    assert replayed.totals["generated_tokens"] == recorded.totals["generated_tokens"]
