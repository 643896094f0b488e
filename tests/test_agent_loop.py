"""The agent loop against a real HTTP model server (scripted output) and real in-process tools."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from pydantic import ValidationError

from qwq_agent.agent.admission import KVAdmission
from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import Final, ModelCall, ToolResultEvent, Warning_
from qwq_agent.agent.language import LanguageConfig
from qwq_agent.agent.loop import REASONING_CALL_HINT, Agent, AgentConfig
from qwq_agent.agent.loop_detector import LoopDetectorConfig, RepetitionConfig
from qwq_agent.agent.replay import ReplayModel
from qwq_agent.agent.trace import read_trace, recorded_completions
from qwq_agent.protocols import SamplingParams, Sandbox, ToolContext, ToolOutput
from qwq_agent.testing.helpers import add, call
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest, Turn
from qwq_agent.tools.base import tool


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"boom: {reason}")


def make_barrier_tool(parties: int):
    arrived = 0
    all_here = asyncio.Event()

    @tool(timeout=10)
    async def rendezvous(who: str) -> str:
        """Wait until `parties` calls are running at once (proves the calls run concurrently)."""
        nonlocal arrived
        arrived += 1
        if arrived == parties:
            all_here.set()
        await all_here.wait()
        return f"{who} met the others"

    return rendezvous


def config(**kw: object) -> AgentConfig:
    return AgentConfig(check_language=False, **kw)


async def run_agent(server: ScriptedModelServer, tools, task: str = "What is 2 + 3?", **kw):
    async with SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, tools, config=kw.pop("config", None) or config(), **kw)
        return await agent.run(task), agent


async def test_tool_call_then_answer_and_prompts_are_prefix_stable():
    turns = [
        "I should add them with the tool.\n</think>\n\n" + call("add", a=2, b=3),
        "The tool says 5.\n</think>\n\n2 + 3 = **5**.",
    ]
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(server, [add])
    assert result.status == "completed"
    assert result.answer == "2 + 3 = **5**."
    first, second = server.requests[0].prompt, server.requests[1].prompt
    assert "<tool_response>\n5\n</tool_response>" in second
    # The official template drops the reasoning: the second prompt extends the first up to the
    # forced `<think>\n` of the generation prompt, which is where the template changes history.
    assert first.endswith("<|im_start|>assistant\n<think>\n")
    assert second.startswith(first[: -len("<think>\n")])
    assert "I should add them" not in second
    # In tokens (what the radix cache matches) the shared prefix ends one token earlier: for a turn
    # with empty content the template writes `assistant\n\n<tool_call>`, and "\n\n" is one token.
    from qwq_agent.agent.tokenizer import get_tokenizer

    tok = get_tokenizer()
    shared = tok.encode(first[: -len("<think>\n")])
    a, b = tok.encode(first), tok.encode(second)
    common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    assert common == len(shared) - 1
    assert result.totals["steps"] == 2


async def test_parallel_calls_run_concurrently_and_results_keep_call_order():
    rendezvous = make_barrier_tool(3)
    calls = "\n".join(call("rendezvous", who=w) for w in ("ann", "bob", "cy"))
    turns = ["Three at once.\n</think>\n\n" + calls, "done\n</think>\n\nAll met."]
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(server, [rendezvous])
    assert result.status == "completed"
    tool_msgs = [m for m in result.messages if m.role == "tool"]
    assert [m.content for m in tool_msgs] == ["ann met the others", "bob met the others", "cy met the others"]
    prompt = server.requests[1].prompt
    assert prompt.index("ann met") < prompt.index("bob met") < prompt.index("cy met")


async def test_model_mistakes_become_observations():
    turns = [
        "Try things.\n</think>\n\n"
        + call("subtract", a=1, b=2)
        + "\n"
        + call("add", a="two", b=3)
        + "\n"
        + call("explode", reason="test")
        + '\n<tool_call>\n{"name": "add", "arguments": {"a": 1,, }\n</tool_call>',
        "I see the errors.\n</think>\n\nGiving up politely.",
    ]
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(server, [add, explode])
    assert result.status == "completed"
    observations = [m.content for m in result.messages if m.role == "tool"]
    assert len(observations) == 4
    text = "\n".join(observations)
    assert "subtract" in text and "add" in text and "explode" in text  # unknown tool lists available ones
    assert "'two'" in text or '"two"' in text  # the invalid value is named
    assert "boom: test" in text and "RuntimeError" in text
    assert "could not be used" in text
    assert "subtract" in server.requests[1].prompt


async def test_server_errors_end_the_run_with_a_status_and_the_trace_survives(tmp_path):
    trace = tmp_path / "run.jsonl"
    turns = [Turn(http_status=500)] * 3
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(server, [add], trace_path=trace, config=config(model_retries=2))
    assert result.status == "model_error"
    assert "500" in (result.error or "")
    events = read_trace(trace)
    assert isinstance(events[-1], Final) and events[-1].status == "model_error"
    assert sum(isinstance(e, Warning_) and e.kind == "model_error" for e in events) == 3


async def test_dropped_connection_mid_stream_retries_the_turn():
    answer = "Fine.\n</think>\n\nThe answer is 5."
    async with ScriptedModelServer([Turn(text=answer, drop_after=3), answer]) as server:
        result, _ = await run_agent(server, [add])
    assert result.status == "completed"
    assert result.answer == "The answer is 5."
    assert len(server.requests) == 2


async def test_step_budget_ends_the_run_without_raising(tmp_path):
    async with ScriptedModelServer(
        lambda req: "again\n</think>\n\n" + call("add", a=len(req.prompt or ""), b=1)
    ) as server:
        result, _ = await run_agent(
            server, [add], config=config(budget=Budget(max_steps=3)), trace_path=tmp_path / "t.jsonl"
        )
    assert result.status == "budget_exceeded"
    assert "steps" in (result.error or "")
    assert len(server.requests) == 3
    assert len(recorded_completions(read_trace(tmp_path / "t.jsonl"))) == 3


LOOP_SENTENCES = [
    "Let me count the r letters in strawberry again: s, t, r, a, w, b, e, r, r, y, so that gives 3 r's.",
    "Wait, maybe I miscounted the letters of strawberry, let me go through s t r a w b e r r y once more.",
    "Hmm, s-t-r-a-w-b-e-r-r-y, I see r at position 3 and then two more near the end, that is 3 again.",
    "But did I count the double r correctly? Let me recount the letters in strawberry from the start.",
]


NUDGE_MARK = "I'm going in circles"  # every level-1 nudge says so


def looping_reasoning(chars: int) -> str:
    out, i = [], 0
    while sum(len(s) + 1 for s in out) < chars:
        out.append(LOOP_SENTENCES[i % len(LOOP_SENTENCES)])
        i += 1
    return " ".join(out)


async def test_reasoning_loop_gets_a_nudge_and_the_turn_continues():
    def model(req: ScriptedRequest) -> str:
        if NUDGE_MARK in (req.prompt or ""):
            return "So I call the tool.\n</think>\n\nThere are 3 r's."
        return looping_reasoning(20_000)

    async with ScriptedModelServer(model) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [add], config=config())
            events = [ev async for ev in agent.stream("How many r's are in strawberry?")]
    final = events[-1]
    assert isinstance(final, Final) and final.status == "completed"
    assert final.answer == "There are 3 r's."
    warnings = [e for e in events if isinstance(e, Warning_) and e.kind == "reasoning_loop"]
    assert [w.level for w in warnings] == [1]
    # The continuation is the same assistant turn: prompt + what was generated + the nudge.
    cont = server.requests[1].prompt or ""
    assert cont.startswith(server.requests[0].prompt or "")
    nudge = cont[len(server.requests[0].prompt or "") :]
    assert NUDGE_MARK in nudge and cont.endswith("\n\n")
    assert "python" not in nudge  # this agent has no python tool to propose
    assert server.aborted_rids, "the looping request was aborted on the server"


async def test_a_loop_that_never_ends_is_stopped_with_a_loop_status():
    async with ScriptedModelServer(lambda req: looping_reasoning(20_000)) as server:
        result, _ = await run_agent(server, [add], task="How many r's are in strawberry?")
    assert result.status == "reasoning_loop"
    assert result.totals["steps"] == 1


async def test_tool_call_inside_reasoning_is_not_run_and_the_model_is_told():
    turns = [
        "I will call " + call("add", a=1, b=1) + " now.\n</think>\n\nLet me compute.",
        "Right.\n</think>\n\n" + call("add", a=1, b=1),
        "ok\n</think>\n\n2",
    ]
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(server, [add])
    assert result.status == "completed" and result.answer == "2"
    assert REASONING_CALL_HINT in (server.requests[1].prompt or "")
    assert [m.content for m in result.messages if m.role == "tool"] == ["2"]


async def test_each_slip_into_the_reasoning_is_hinted_however_many_the_run_had_before():
    # The hints are counted per streak of such turns: a proper call ends the streak. Counted per run,
    # slips early in a long run used them up, and a later one ended the run `completed` with the text
    # after </think> ("Let me run it.") as its answer, its call never run.
    turns = []
    for i in range(1, 4):
        turns.append(f"I will call {call('add', a=i, b=1)} now.\n</think>\n\nLet me run it.")
        turns.append("Right, outside the reasoning.\n</think>\n\n" + call("add", a=i, b=1))
    turns.append("ok\n</think>\n\n9")
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(server, [add], config=config(max_reasoning_call_hints=1))
    assert (result.status, result.answer) == ("completed", "9")
    hints = [m for m in result.messages if m.role == "user" and m.content == REASONING_CALL_HINT]
    assert len(hints) == 3
    assert [m.content for m in result.messages if m.role == "tool"] == ["2", "3", "4"]


async def test_a_call_still_written_inside_the_reasoning_after_the_hints_never_ends_completed():
    slip = f"I will call {call('add', a=1, b=1)} now.\n</think>\n\nLet me run it."
    async with ScriptedModelServer([slip, slip, slip, "ok\n</think>\n\n2"]) as server:
        result, _ = await run_agent(server, [add], config=config(max_reasoning_call_hints=2))
        assert len(server.requests) == 3  # two hints, then the run ends
    assert result.status == "tool_call_in_reasoning"
    assert result.answer == "Let me run it."  # what was written, as a status that is not `completed`
    assert result.error is not None and "never run" in result.error
    assert not [m for m in result.messages if m.role == "tool"]


async def test_the_tag_only_named_in_the_reasoning_after_the_hints_leaves_the_answer_completed():
    # Thinking about the hint, QwQ names the tag: that is no call left unrun, so the answer stands.
    slip = f"I will call {call('add', a=1, b=1)} now.\n</think>\n\nLet me run it."
    named = "I wrote my <tool_call> in the wrong place; no call is needed now, 1 + 1 is 2.\n</think>\n\n2"
    async with ScriptedModelServer([slip, named]) as server:
        result, _ = await run_agent(server, [add], config=config(max_reasoning_call_hints=1))
    assert (result.status, result.answer, result.error) == ("completed", "2", None)


async def test_a_call_inside_the_reasoning_on_the_last_step_keeps_what_was_written():
    # A hint would need a step the budget does not allow: the run ends budget_exceeded as before, but
    # with the turn's text in `answer` and a warning saying the call was not run (before, answer=None).
    turn = f"I will call {call('add', a=1, b=1)} now.\n</think>\n\nThe sum is 2."
    async with ScriptedModelServer([turn, "ok\n</think>\n\n2"]) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [add], config=config(budget=Budget(max_steps=1)))
            events = [ev async for ev in agent.stream("What is 1 + 1?")]
        assert len(server.requests) == 1
    result = agent.result
    assert result is not None
    assert (result.status, result.answer) == ("budget_exceeded", "The sum is 2.")
    assert result.error == "budget steps used up (1 >= 1)"
    warnings = [e for e in events if isinstance(e, Warning_) and e.kind == "tool_call_in_reasoning"]
    assert len(warnings) == 1 and "not run" in warnings[0].message
    assert result.messages[-1].role == "assistant"  # no hint was written that nobody would read


async def test_answer_in_another_language_is_corrected_once():
    chinese = "答案是五。我们把二和三相加得到五，这是一个很简单的加法问题，结果是五。"
    turns = ["hmm\n</think>\n\n" + chinese, "ok\n</think>\n\nThe answer is five."]
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [add], config=AgentConfig(check_language=True))
            result = await agent.run(
                "Could you tell me what two plus three is, and explain how you got the answer?"
            )
    assert result.status == "completed"
    assert result.answer == "The answer is five."
    assert "English" in (server.requests[1].prompt or "")


async def test_repeated_identical_calls_are_flagged_to_the_model():
    turns = ["x\n</think>\n\n" + call("add", a=1, b=2)] * 3 + ["x\n</think>\n\nStopping."]
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(server, [add])
    assert result.status == "completed"
    last_obs = [m.content for m in result.messages if m.role == "tool"][-1]
    assert "Note:" in last_obs and "add" in last_obs


async def test_trace_replays_deterministically_and_resumes(tmp_path):
    turns = [
        "add\n</think>\n\n" + call("add", a=20, b=22),
        "add more\n</think>\n\n" + call("add", a=42, b=1),
        "done\n</think>\n\n43",
    ]
    trace = tmp_path / "full.jsonl"
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(server, [add], trace_path=trace)
    assert result.answer == "43"

    # Replay: the recorded completions serve as the model; the same prompts are rendered again.
    replay = ReplayModel.from_trace(trace)
    replayed = await Agent(replay, [add], config=config()).run("What is 2 + 3?")
    assert replayed.answer == result.answer
    assert [m.model_dump() for m in replayed.messages] == [m.model_dump() for m in result.messages]
    assert replay.remaining == 0

    # Resume: a run interrupted after one step continues with a live model from where it stopped.
    partial = tmp_path / "partial.jsonl"
    async with ScriptedModelServer(turns[:1]) as server:
        cut, _ = await run_agent(server, [add], trace_path=partial, config=config(budget=Budget(max_steps=1)))
    assert cut.status == "budget_exceeded"
    async with ScriptedModelServer(turns[1:]) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as live:
            resumed = await Agent(ReplayModel.from_trace(partial, then=live), [add], config=config()).run(
                "What is 2 + 3?"
            )
        assert resumed.answer == "43"
        assert len(server.requests) == 2  # only the turns the trace did not hold
        assert "<tool_response>\n42\n</tool_response>" in (server.requests[0].prompt or "")


async def test_many_agents_share_one_client_under_admission_control():
    peak = 0
    active = 0

    @tool
    async def work(ctx: ToolContext, n: int) -> int:
        """Count active runs."""
        nonlocal peak, active
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        active -= 1
        return n * 2

    turns_per_run = ["go\n</think>\n\n" + call("work", n=4), "done\n</think>\n\n8"]

    def model(req: ScriptedRequest) -> str:
        return turns_per_run[1] if "<tool_response>" in (req.prompt or "") else turns_per_run[0]

    admission = KVAdmission(capacity_tokens=3 * 1000, headroom=1.0)
    seen_in_use: list[int] = []

    async with ScriptedModelServer(model) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:

            async def one(i: int):
                agent = Agent(client, [work], config=config(kv_reservation_tokens=1000), admission=admission)
                async for ev in agent.stream(f"task {i}"):
                    if isinstance(ev, ToolResultEvent):
                        seen_in_use.append(admission.in_use)
                return agent.result

            results = await asyncio.gather(*(one(i) for i in range(12)))
    assert all(r.status == "completed" and r.answer == "8" for r in results)
    assert max(seen_in_use) <= 3000
    assert admission.in_use == 0 and admission.waiting == 0


async def test_cancelled_run_reports_cancelled_and_aborts_the_request():
    async with ScriptedModelServer([Turn(text="thinking " * 50, hold_after=5)]) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [add], config=config())
            task = asyncio.create_task(agent.run("hold"))
            await server.wait_for_requests(1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await server.wait_for_abort(server.requests[0].rid or "")
    assert agent.result is not None and agent.result.status == "cancelled"


async def test_trace_stores_prompt_deltas_and_reads_back_whole_prompts(tmp_path):
    turns = [
        "a\n</think>\n\n" + call("add", a=1, b=2),
        "b\n</think>\n\n" + call("add", a=3, b=4),
        "c\n</think>\n\n10",
    ]
    trace = tmp_path / "t.jsonl"
    async with ScriptedModelServer(turns) as server:
        await run_agent(server, [add], trace_path=trace)
    sent = [r.prompt for r in server.requests]
    stored = [json.loads(line) for line in trace.read_text().splitlines()]
    stored_calls = [e for e in stored if e["type"] == "model_call"]
    assert stored_calls[1]["prompt_shared_prefix_chars"] > len(sent[0]) // 2
    assert len(stored_calls[2]["prompt"]) < len(sent[2]) // 2
    assert [c.prompt for c in recorded_completions(read_trace(trace))] == sent


async def test_constrained_tool_calls_are_generated_under_the_grammar_and_replay(tmp_path):
    turns = [
        # The model opens a call; the loop stops the stream right after the tag...
        "I need the sum.\n</think>\n\nComputing.\n<tool_call>\n{'name': garbage that would not parse",
        # ...and generates the call itself under the grammar (the server answers with the JSON only)...
        '{"name": "add", "arguments": {"a": 2, "b": 3}}',
        # ...then the turn continues unconstrained and ends.
        "",
        "It is 5.\n</think>\n\n5",
    ]
    trace = tmp_path / "c.jsonl"
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(
            server, [add], config=config(constrained_tool_calls=True), trace_path=trace
        )
    assert result.status == "completed" and result.answer == "5"
    assert [m.content for m in result.messages if m.role == "tool"] == ["5"]
    first, constrained, continued = server.requests[:3]
    assert first.rid in server.aborted_rids  # the free-running request was stopped at the tag
    assert '\\"add\\"' in constrained.sampling_params["ebnf"]  # the tool's name, as a grammar literal
    assert (constrained.prompt or "").endswith("Computing.\n<tool_call>\n")
    assert (continued.prompt or "").endswith('{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>')
    assert "ebnf" not in continued.sampling_params

    replayed = await Agent(
        ReplayModel.from_trace(trace), [add], config=config(constrained_tool_calls=True)
    ).run("What is 2 + 3?")
    assert replayed.answer == "5"
    assert [m.model_dump() for m in replayed.messages] == [m.model_dump() for m in result.messages]


async def test_generation_budget_caps_each_request():
    turns = ["a b c d e f g h\n</think>\n\n" + call("add", a=1, b=1), "x\n</think>\n\ndone"]
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [add], config=config(budget=Budget(max_generated_tokens=60)))
            calls = [ev async for ev in agent.stream("go") if isinstance(ev, ModelCall)]
    first, second = (r.sampling_params["max_new_tokens"] for r in server.requests)
    assert first == 60
    assert second == 60 - calls[0].usage.completion_tokens


async def test_wall_budget_stops_a_slow_generation_and_aborts_it():
    slow = Turn(text="thinking " * 400, token_delay=0.005)
    async with ScriptedModelServer([slow]) as server:
        result, _ = await run_agent(server, [add], config=config(budget=Budget(max_wall_s=0.2)))
    assert result.status == "budget_exceeded"
    assert "wall_s" in (result.error or "")
    assert server.requests[0].rid in server.aborted_rids


async def test_history_continues_a_conversation():
    turns = ["a\n</think>\n\nParis.", "b\n</think>\n\nAbout 2.1 million."]
    async with ScriptedModelServer(turns) as server:
        first, _ = await run_agent(server, [add], task="Capital of France?")
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            second = await Agent(client, [add], config=config()).run(
                "Its population?", history=first.messages
            )
    assert second.answer == "About 2.1 million."
    prompt = server.requests[1].prompt or ""
    assert prompt.index("Capital of France?") < prompt.index("Paris.") < prompt.index("Its population?")


async def test_the_loop_runs_the_same_over_the_openai_chat_api():
    from qwq_agent.agent.clients.openai_chat import OpenAIChatClient

    turns = [
        "I should add them with the tool.\n</think>\n\n" + call("add", a=2, b=3),
        "The tool says 5.\n</think>\n\n2 + 3 = **5**.",
    ]
    async with ScriptedModelServer(turns) as server:
        async with OpenAIChatClient(
            server.url, model="qwq-32b", api_key="sk-test-secret", retry=NO_RETRY
        ) as client:
            result = await Agent(client, [add], config=config()).run("What is 2 + 3?")
    assert result.status == "completed" and result.answer == "2 + 3 = **5**."
    assert [m.content for m in result.messages if m.role == "tool"] == ["5"]
    second = server.requests[1].body["messages"]
    assert second[-1]["role"] == "tool" and second[-1]["content"] == "5"
    assert any(m.get("tool_calls") for m in second if m["role"] == "assistant")
    assert "tools" in server.requests[0].body


async def test_a_malformed_stream_event_is_retried_and_then_reported():
    good = "ok\n</think>\n\nfine"
    async with ScriptedModelServer([Turn(text=good, malformed_after=2), good]) as server:
        result, _ = await run_agent(server, [add])
    assert result.status == "completed" and result.answer == "fine"
    async with ScriptedModelServer([Turn(text=good, malformed_after=1)] * 3) as server:
        result, _ = await run_agent(server, [add], config=config(model_retries=2))
    assert result.status == "model_error"
    assert "Protocol" in (result.error or "") or "malformed" in (result.error or "").lower()


@tool
async def shared_wait(x: int) -> str:
    """Wait for a result shared with others."""
    shared = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, shared.cancel)  # another waiter gave up on it
    return str(await shared)


async def test_a_tool_ending_in_someone_elses_cancellation_is_observed_and_the_run_goes_on():
    turns = ["Call it.\n</think>\n\n" + call("shared_wait", x=1), "It failed.\n</think>\n\nThe tool failed."]
    async with ScriptedModelServer(turns) as server:
        # before: the dispatcher waited for this call's result for ever, past the run's wall time
        result, _ = await asyncio.wait_for(
            run_agent(server, [shared_wait], config=config(budget=Budget(max_wall_s=30))), 60
        )
    assert result.status == "completed" and result.answer == "The tool failed."
    assert "raised CancelledError" in server.requests[1].prompt


class Abort(BaseException):
    """A library's own BaseException (like pytest's Failed or trio's Cancelled), not an Exception."""


@tool
def bail_out(x: int) -> str:
    """Raises a BaseException that is not an Exception."""
    raise Abort(f"bailed out on {x}")


async def test_a_tool_raising_a_base_exception_is_an_error_observation_and_the_run_goes_on():
    turns = ["Call it.\n</think>\n\n" + call("bail_out", x=1), "It failed.\n</think>\n\nThe tool failed."]
    async with ScriptedModelServer(turns) as server:
        # before: the call never reported to the dispatcher, which waited for ever past max_wall_s
        result, _ = await asyncio.wait_for(
            run_agent(server, [bail_out], config=config(budget=Budget(max_wall_s=30))), 60
        )
    assert result.status == "completed" and result.answer == "The tool failed."
    assert "raised Abort: bailed out on 1" in server.requests[1].prompt


class Unprintable(Exception):
    def __init__(self, response: dict | None) -> None:
        super().__init__(response)
        self.response = response

    def __str__(self) -> str:
        return f"API said {self.response['message']}"  # type: ignore[index]  # None: TypeError


@tool
def fetch_it(x: int) -> str:
    """Fails with an exception that cannot print itself."""
    raise Unprintable(None)


async def test_a_tool_exception_that_cannot_be_printed_is_an_observation_and_the_run_goes_on():
    turns = [
        "Two calls.\n</think>\n\n" + call("add", a=1, b=2) + "\n" + call("fetch_it", x=1),
        "One failed.\n</think>\n\nDone.",
    ]
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(server, [add, fetch_it])
    assert result.status == "completed", result.error
    observations = [m.content for m in result.messages if m.role == "tool"]
    assert observations[0] == "3" and observations[1].startswith("Tool 'fetch_it' raised Unprintable")


async def test_queued_sandbox_calls_get_their_own_timeout_and_tool_time():
    sleeps = {0: 1.5, 1: 1.0}

    @tool(uses_sandbox=True)
    async def job(n: int) -> str:
        """Work in the sandbox (calls on it run one after another)."""
        await asyncio.sleep(sleeps[n])
        return f"job {n} done"

    turns = ["Two jobs.\n</think>\n\n" + call("job", n=0) + "\n" + call("job", n=1), "ok\n</think>\n\ndone"]
    results: list[ToolResultEvent] = []
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        # Each call needs less than its 2 s; the second can only start once the first is done (1.5 s in),
        # so a timeout counted from before its wait for the sandbox killed it after 0.5 s.
        agent = Agent(client, [job], config=config(tool_timeout_s=2.0))
        async for ev in agent.stream("run the jobs"):
            if isinstance(ev, ToolResultEvent):
                results.append(ev)
    assert agent.result is not None and agent.result.status == "completed"
    assert [(r.is_error, r.text) for r in results] == [(False, "job 0 done"), (False, "job 1 done")]
    # Calls that ran one after another cannot have used more tool time than the run's wall time: the
    # wait for the sandbox was charged as the second call's time too.
    totals = agent.result.totals
    assert sum(r.duration_s for r in results) == pytest.approx(totals["tool_s"], abs=1e-3)
    assert totals["tool_s"] <= totals["wall_s"]


MALFORMED = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": }\n</tool_call>'


@pytest.mark.parametrize("keep_reasoning", [False, True])
async def test_observations_follow_the_order_the_calls_were_written(keep_reasoning: bool):
    # QwQ's template gives results no ids: the model pairs the n-th <tool_response> with its n-th call.
    first = (
        "Three calls.\n</think>\n\n" + call("add", a=1, b=2) + "\n" + MALFORMED + "\n" + call("add", a=3, b=4)
    )
    turns = [first, "ok\n</think>\n\ndone"]
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(
            server.url, retry=NO_RETRY, keep_reasoning=keep_reasoning, exact_tokens=False
        ) as c:
            result = await Agent(c, [add], config=config()).run("add")
    assert [m.tool_call_id for m in result.messages if m.role == "tool"] == [
        "call_1_0",
        "call_1_1",
        "call_1_2",
    ]
    prompt = server.requests[1].prompt
    assert prompt is not None
    # Whatever the history policy, the turn shows all three calls in the order written...
    history = prompt[: prompt.index("<|im_start|>user\n<tool_response>")]
    shown = history[history.rindex("<|im_start|>assistant") :]
    assert shown.count("<tool_call>") == 3
    assert shown.index('"a": 1, "b": 2') < shown.index('"b": }') < shown.index('"a": 3, "b": 4')
    # ... and its results in the same order.
    responses = [r.split("\n</tool_response>")[0] for r in prompt.split("<tool_response>\n")[1:]]
    assert responses[0] == "3" and responses[1].startswith("Error: your tool call could not be used.")
    assert responses[2] == "7"


# One call whose name (decoded) holds a closing tag and quotes: ech</tool_call>\n<tool_call>\n{"name": "add", ...
ODD_NAME_CALL = (
    '<tool_call>\n{"name": "ech<\\/tool_call>\\n<tool_call>\\n{\\"name\\": \\"add\\", \\"x\\": \\"", '
    '"arguments": {"a": 1, "b": 2}}\n</tool_call>'
)


async def test_an_odd_call_name_reads_back_as_the_one_call_the_model_wrote():
    # The unknown tool is answered with an error, and the next prompt shows the call again: spliced in
    # raw, its name ended the string and the block, and one call read back as two (a phantom `add`).
    from qwq_agent.agent.parser import parse

    turns = ["One call.\n</think>\n\n" + ODD_NAME_CALL, "ok\n</think>\n\ndone"]
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(server, [add])
    (wrote,) = parse(turns[0]).tool_calls
    assert result.status == "completed"
    prompt = server.requests[1].prompt or ""
    history = prompt[: prompt.index("<|im_start|>user\n<tool_response>")]
    shown = history[history.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n") :]
    back = parse("\n</think>\n\n" + shown.removesuffix("<|im_end|>\n"))
    assert not back.errors
    assert [(c.name, c.arguments) for c in back.tool_calls] == [(wrote.name, wrote.arguments)]
    assert prompt.count("<tool_response>") == 1


async def test_a_requested_translation_is_not_taken_for_language_drift():
    task = "Translate this sentence into German: I love reading books in the evening."
    translation = "Ich lese abends gern Bücher."
    turns = [
        "The user wants German.\n</think>\n\n" + translation,
        "Now English.\n</think>\n\nI love reading.",
    ]
    async with ScriptedModelServer(turns) as server:
        result, _ = await run_agent(server, [], task=task, config=AgentConfig())  # the check is on by default
    assert len(server.requests) == 1 and result.answer == translation


async def test_closing_the_stream_ends_a_running_tool_call_before_the_sandbox_goes_back():
    # The consumer stops (a closed stdout, a `break` under aclosing) while a tool call runs: once
    # aclose() returns, the call has ended, and it ended before the sandbox went back to the pool.
    log: list[str] = []
    running = asyncio.Event()

    @tool
    async def hang() -> str:
        """Wait until cancelled."""
        log.append("tool started")
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            log.append("tool ended")
        return "never"

    class NoSandbox(Sandbox):
        id = "none"

    class Pool:
        @contextlib.asynccontextmanager
        async def acquire(self):
            try:
                yield NoSandbox()
            finally:
                log.append("sandbox released")

    turns = ["go\n</think>\n\n" + call("hang"), "ok\n</think>\n\ndone"]
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [hang], sandbox_pool=Pool(), config=AgentConfig(check_language=False))
            async with contextlib.aclosing(agent.stream("t")) as events:
                async for ev in events:
                    if ev.type == "tool_started":
                        await asyncio.wait_for(running.wait(), 30)
                        break
            assert log == ["tool started", "tool ended", "sandbox released"]


def reporting(error: object):
    @tool
    def fetch(url: str) -> ToolOutput:
        """An HTTP wrapper that reports a failure's status in its metadata."""
        return ToolOutput(text=f"GET {url}: 404 Not Found", is_error=True, metadata={"error": error})

    return fetch


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        ({"status": 404}, None),
        (404, None),
        (True, None),
        ("not_found", "not_found"),
        ("x" * 5000, "x" * 99 + "…"),
    ],
    ids=["object", "int", "bool", "label", "long_label"],
)
async def test_error_metadata_a_tool_reports_is_no_reason_to_end_the_run(tmp_path, error, error_type):
    turns = [
        "Fetch and add.\n</think>\n\n"
        + call("fetch", url="http://x.invalid/")
        + "\n"
        + call("add", a=2, b=3),
        "Missing; 5.\n</think>\n\n5",
    ]
    async with ScriptedModelServer(turns) as server:
        # before: a metadata["error"] that is not a string failed ToolResultEvent's validation in the
        # dispatcher, and the run ended with status "error", the add's result lost
        result, _ = await run_agent(server, [reporting(error), add], trace_path=tmp_path / "t.jsonl")
    assert result.status == "completed", result.error
    assert [m.content for m in result.messages if m.role == "tool"] == [
        "GET http://x.invalid/: 404 Not Found",
        "5",
    ]
    results = [e for e in read_trace(tmp_path / "t.jsonl") if isinstance(e, ToolResultEvent)]
    assert [(e.name, e.is_error, e.error_type) for e in results] == [
        ("fetch", True, error_type),
        ("add", False, None),
    ]


def spoiled(change: str):
    @tool
    def render(x: int) -> ToolOutput:
        """Returns a ToolOutput whose field was set, after it was built, to a value of the wrong type."""
        out = ToolOutput(text="rendered")
        if change == "text":
            out.text = None  # type: ignore[assignment]
        elif change == "images":
            out.images.append(b"\x89PNG\r\n\x1a\n")  # type: ignore[arg-type]
        elif change == "metadata":
            out.metadata = None  # type: ignore[assignment]
        else:
            out = ToolOutput.model_construct(images=[])
        return out

    return render


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("text", "text: Input should be a valid string"),
        ("images", "images.0: Input should be a valid string"),
        ("metadata", "metadata: Input should be a valid dictionary"),
        ("constructed", "text: Field required"),
    ],
)
async def test_a_tool_output_with_a_field_of_the_wrong_type_is_an_error_observation(change, problem):
    turns = [
        "Render and add.\n</think>\n\n" + call("render", x=1) + "\n" + call("add", a=2, b=3),
        "It failed; 5.\n</think>\n\n5",
    ]
    async with ScriptedModelServer(turns) as server:
        # before: pydantic does not check fields set after a model is built, and the wrong type failed
        # in the registry's cap or in the result event: the run ended with status "error"
        result, _ = await run_agent(server, [spoiled(change), add])
    assert result.status == "completed", result.error
    observations = [m.content for m in result.messages if m.role == "tool"]
    assert observations[0].startswith("Tool 'render' returned an invalid ToolOutput (")
    assert problem in observations[0] and observations[1] == "5"


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ({"sampling": {"max_new_tokens": 0}}, "max_new_tokens"),
        ({"sampling": {"max_new_tokens": -1}}, "max_new_tokens"),
        ({"tool_timeout_s": 0}, "tool_timeout_s"),
        ({"tool_timeout_s": -1.0}, "tool_timeout_s"),
        ({"tool_timeout_s": float("nan")}, "tool_timeout_s"),
    ],
    ids=["no_tokens", "negative_tokens", "no_tool_time", "negative_tool_time", "nan_tool_time"],
)
def test_a_config_no_run_could_use_is_refused(setting, field):
    # before: accepted; 0 tokens "completed" a run with an empty answer, and a tool timeout of 0 failed
    # every call with "its arguments could not be checked against its schema within 0 s"
    with pytest.raises(ValidationError, match=field):
        AgentConfig(**setting)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("make", "field"),
    [
        # misspelt (or misplaced) settings: before, ignored, and the run went with the default
        (lambda: AgentConfig(max_steps=3), "max_steps"),  # it is budget.max_steps
        (lambda: Budget(max_wall=60), "max_wall"),
        (lambda: SamplingParams(temprature=0.0), "temprature"),
        (lambda: LoopDetectorConfig(min_reasoning_char=10), "min_reasoning_char"),
        (lambda: RepetitionConfig(window=3), "window"),
        (lambda: LanguageConfig(foreign_threshold=0.1), "foreign_threshold"),
        (lambda: AgentConfig(budget={"max_stesp": 3}), "max_stesp"),
        # NaN, infinite or negative limits: before, `max_wall_s=nan` ended the run "TimeoutError: " and
        # `max_tool_s=nan` refused every tool call while the run completed
        (lambda: Budget(max_wall_s=NAN), "max_wall_s"),
        (lambda: Budget(max_wall_s=INF), "max_wall_s"),  # None is "no limit"
        (lambda: Budget(max_tool_s=NAN), "max_tool_s"),
        (lambda: Budget(max_tool_s=-1.0), "max_tool_s"),
        (lambda: Budget(max_steps=-1), "max_steps"),
        (lambda: Budget(max_generated_tokens=-5), "max_generated_tokens"),
        (lambda: SamplingParams(temperature=NAN), "temperature"),
        (lambda: SamplingParams(top_p=NAN), "top_p"),
        (lambda: SamplingParams(top_k=-2), "top_k"),
        (lambda: AgentConfig(model_retries=-1), "model_retries"),
        (lambda: AgentConfig(model_retry_backoff_s=NAN), "model_retry_backoff_s"),
        (lambda: AgentConfig(tool_timeout_s=INF), "tool_timeout_s"),
        (lambda: AgentConfig(max_requests_per_turn=0), "max_requests_per_turn"),
        (lambda: AgentConfig(consumer_idle_timeout_s=INF), "consumer_idle_timeout_s"),  # None: no limit
        (lambda: LanguageConfig(min_run_weight=INF), "min_run_weight"),
        (lambda: LanguageConfig(cjk_weight=INF), "cjk_weight"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_misspelt_or_meaningless_setting_is_refused_when_it_is_made(make, field):
    with pytest.raises(ValidationError, match=field):
        make()


def test_the_settings_that_mean_no_limit_or_no_sampling_cut_off_are_still_taken():
    budget = Budget(max_steps=None, max_wall_s=None, max_tool_s=None, max_generated_tokens=None)
    assert budget.max_wall_s is None and Budget(max_wall_s=0.0).max_wall_s == 0.0
    assert SamplingParams(top_k=-1, temperature=0.0, top_p=1.0).top_k == -1
