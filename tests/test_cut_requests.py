"""Requests the turn cuts itself (the loop detector) count the tokens they generated.

The turn closes such a stream before the server's last event, so no completion ever reports a count:
what the request cost is what the client counted on the way. A real scripted model server (HTTP on
127.0.0.1) streams a model that circles; the clients, the turn, the detector and the trace are the
project's own.
"""

from __future__ import annotations

import pytest

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, OpenAIChatClient, SGLangClient
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.replay import ReplayModel
from qwq_agent.agent.trace import read_trace, recorded_completions
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest

LOOP_SENTENCES = [
    "Let me count the r letters in strawberry again: s, t, r, a, w, b, e, r, r, y, so that gives 3 r's.",
    "Wait, maybe I miscounted the letters of strawberry, let me go through s t r a w b e r r y once more.",
    "Hmm, s-t-r-a-w-b-e-r-r-y, I see r at position 3 and then two more near the end, that is 3 again.",
    "But did I count the double r correctly? Let me recount the letters in strawberry from the start.",
]
CIRCLING = " ".join(LOOP_SENTENCES[i % 4] for i in range(200))  # ~1,600 tokens: the detector cuts first
QUESTION = "How many r's are in strawberry?"
BUDGET = 1000  # more than two requests generate before the detector cuts them, less than three


def config() -> AgentConfig:
    return AgentConfig(check_language=False, budget=Budget(max_generated_tokens=BUDGET, max_wall_s=120))


def circling(req: ScriptedRequest) -> str:
    """A model that ignores every intervention and keeps circling."""
    return CIRCLING


def client_for(api: str, server: ScriptedModelServer) -> SGLangClient | OpenAIChatClient:
    if api == "openai":
        return OpenAIChatClient(server.url, model="qwq-32b", retry=NO_RETRY)
    return SGLangClient(server.url, retry=NO_RETRY)


def max_new_tokens(api: str, req: ScriptedRequest) -> int | None:
    return req.body.get("max_tokens") if api == "openai" else req.sampling_params.get("max_new_tokens")


def tokens_streamed(server: ScriptedModelServer, text: str) -> int:
    """How many of the server's tokens of `CIRCLING` spell `text` (a prefix of it)."""
    spelt, n = "", 0
    for _, piece in server.tokenizer.pieces(CIRCLING):
        if len(spelt) >= len(text):
            break
        spelt, n = spelt + piece, n + 1
    assert spelt == text, "the cut falls between two of the server's tokens"
    return n


@pytest.mark.parametrize("api", ["native", "openai"])
async def test_requests_the_loop_detector_cuts_count_against_the_generation_budget(tmp_path, api):
    trace = tmp_path / "run.jsonl"
    async with ScriptedModelServer(circling) as server:
        async with client_for(api, server) as client:
            result = await Agent(client, [], config=config(), trace_path=trace).run(QUESTION)
        calls = recorded_completions(read_trace(trace))
        streamed = [tokens_streamed(server, c.completion) for c in calls[:2]]
        sent = [max_new_tokens(api, r) for r in server.requests]

    # The detector cut the first request (a nudge followed) and the second (a forced `</think>`).
    cuts = [c.usage for c in calls[:2]]
    assert [c.intervention is not None for c in calls[:2]] == [True, True]
    assert [u.finish_reason for u in cuts] == ["aborted", "aborted"]
    # Each counts what the server streamed before the cut (the OpenAI client counts one token per chunk
    # with output, and the role-only first chunk is one of them). Before: 0.
    for n, usage in zip(streamed, cuts, strict=True):
        assert 0 < n <= usage.completion_tokens <= n + 1
        if api == "native":
            assert usage.prompt_tokens > 0  # SGLang's running counts carry the prompt's too
    # Each continuation may generate only what the requests before it left of the budget (before: all
    # of it each time, and the run ended on the detector's third intervention); the third runs into
    # that limit, and the run ends on the spent budget.
    first, second = (u.completion_tokens for u in cuts)
    assert sent == [BUDGET, BUDGET - first, BUDGET - first - second]
    assert result.status == "budget_exceeded", result.error
    assert result.totals["generated_tokens"] == BUDGET


async def test_a_replay_counts_a_cut_request_as_recorded(tmp_path):
    # Counted by its replayed pieces instead, the cut request would leave the continuation another
    # token limit than the recorded one, and the run would go on past its recording.
    trace = tmp_path / "run.jsonl"
    async with ScriptedModelServer(circling) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            recorded = await Agent(client, [], config=config(), trace_path=trace).run(QUESTION)
    assert recorded.status == "budget_exceeded"

    replay = ReplayModel.from_trace(trace)
    replayed = await Agent(replay, [], config=config()).run(QUESTION)
    assert replayed.status == recorded.status
    assert replayed.totals["generated_tokens"] == recorded.totals["generated_tokens"] == BUDGET
    assert replay.divergences == 0
