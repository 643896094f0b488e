"""One Agent running several tasks in a row: each run is recorded as its own (id, steps, event count).

Real scripted HTTP server and client, real in-process tools, real trace files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import Final, ModelCall, ToolStarted
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.trace import read_trace
from qwq_agent.testing.helpers import add, call
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest
from qwq_agent.tools.base import FunctionTool, tool

TWO_STEPS = ["a\n</think>\n\n" + call("add", a=1, b=2), "b\n</think>\n\n3"]


def config() -> AgentConfig:
    return AgentConfig(check_language=False, model_retries=0)


async def test_each_run_of_a_reused_agent_has_its_own_id_steps_and_event_count(tmp_path: Path):
    async with (
        ScriptedModelServer(TWO_STEPS * 4) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [add], config=config(), trace_path=tmp_path / "t.jsonl")
        before = agent.run_id  # known before the first run (a routing key, an image folder)
        results = [await agent.run(f"task {i}: add 1 and 2") for i in range(3)]
        assert agent.run_id == results[-1].run_id  # the last run's
        agent.run_id = "mine"  # set by the caller for the next run: used as set
        assert (await agent.run("task 3: add 1 and 2")).run_id == "mine"
    assert [r.status for r in results] == ["completed"] * 3
    ids = [r.run_id for r in results]
    assert ids[0] == before and len(set(ids)) == 3
    for result in results:
        assert result.trace_path is not None
        events = read_trace(result.trace_path)
        # The trace and the result speak of this run alone: its id, its steps from 1.
        assert {e.run_id for e in events} == {result.run_id}
        assert [e.step for e in events if isinstance(e, ModelCall)] == [1, 2]
        assert result.totals["steps"] == 2
    # Each run counts its own events (a later one has a trace_renamed warning more), not earlier runs'.
    assert [r.events for r in results] == [results[0].events, results[0].events + 1, results[0].events + 1]
    # Later runs are traced next to the first, each named by its own id.
    assert [Path(r.trace_path or "").name for r in results] == ["t.jsonl", *(f"t.{i}.jsonl" for i in ids[1:])]


async def test_a_run_id_given_to_the_agent_names_every_run(tmp_path: Path):
    async with (
        ScriptedModelServer(TWO_STEPS * 2) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [add], config=config(), trace_path=tmp_path / "t.jsonl", run_id="fixed")
        results = [await agent.run(f"task {i}: add 1 and 2") for i in range(2)]
    assert [r.run_id for r in results] == ["fixed", "fixed"]
    for result in results:
        assert result.trace_path is not None
        assert {e.run_id for e in read_trace(result.trace_path)} == {"fixed"}
    assert results[1].events == results[0].events + 1  # the trace_renamed warning, not run 1's events


async def test_an_exploration_between_runs_is_recorded_under_its_own_id(tmp_path: Path):
    def model(req: ScriptedRequest) -> str:
        if req.sampling_params.get("max_new_tokens") == 1:  # the shared prefix's warm-up
            return "x"
        return "a\n</think>\n\ndone"

    async with ScriptedModelServer(model) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [], config=config(), trace_path=tmp_path / "t.jsonl")
        first = await agent.run("first")
        explored = await agent.branch(1, "explore", seeds=[7])
        exploration_id = agent.run_id
        last = await agent.run("last", history=agent.messages)
    assert explored.winner == 0 and explored.trace_path is not None
    assert len({first.run_id, exploration_id, last.run_id}) == 3
    assert {e.run_id for e in read_trace(explored.trace_path)} == {exploration_id}
    branch_trace = explored.branches[0].trace_path
    assert branch_trace is not None
    assert {e.run_id for e in read_trace(branch_trace)} == {f"{exploration_id}-b0"}


class Holds:
    """A `hold` tool whose call for run n waits (until released, or forever for run 1) and records how
    it ended; and a model that calls it once per run, then answers."""

    def __init__(self) -> None:
        self.started = {1: asyncio.Event(), 2: asyncio.Event()}
        self.release = asyncio.Event()
        self.outcome: dict[int, str] = {}

    def tool(self) -> FunctionTool:
        holds = self

        @tool(timeout=30)
        async def hold(n: int) -> str:
            """Wait."""
            holds.started[n].set()
            try:
                await (asyncio.Event() if n == 1 else holds.release).wait()
            except asyncio.CancelledError:
                holds.outcome[n] = "cancelled"
                raise
            holds.outcome[n] = "ended"
            return "done"

        return hold

    @staticmethod
    def model(req: ScriptedRequest) -> str:
        prompt = req.prompt or ""
        if "<tool_response>" in prompt:
            return "ok\n</think>\n\ndone"
        return "go\n</think>\n\n" + call("hold", n=1 if "first task" in prompt else 2)


def finals(trace: str | None) -> list[tuple[str, str | None]]:
    assert trace is not None
    return [(e.status, e.error) for e in read_trace(trace) if isinstance(e, Final)]


async def test_a_run_stopped_by_end_run_is_closed_and_leaves_the_next_run_alone(tmp_path: Path):
    """`end_run()` frees the agent while the stopped run's stream is still open. Closing that stream later
    ended the *next* run (a bogus `final: interrupted` in its trace, which was then closed mid-run), and
    until then the stopped run's tool call went on beside the next run's."""
    holds = Holds()
    async with (
        ScriptedModelServer(holds.model) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [holds.tool()], config=config(), trace_path=tmp_path / "t.jsonl")
        old = agent.stream("first task")
        async for ev in old:
            if isinstance(ev, ToolStarted):
                break  # the user pressed "stop"
        await holds.started[1].wait()
        stopped = agent.end_run("interrupted", "stopped by the user")
        assert stopped is not None and stopped.status == "interrupted"
        new = asyncio.create_task(agent.run("second task"))
        await holds.started[2].wait()
        # The stopped run's call ended before the next run began: none runs beside it in its sandbox.
        assert holds.outcome == {1: "cancelled"}
        await old.aclose()  # the caller tidies up: nothing of the next run is touched
        holds.release.set()
        result = await new
    assert result.status == "completed" and result.answer == "done"
    assert finals(stopped.trace_path) == [("interrupted", "stopped by the user")]
    assert finals(result.trace_path) == [("completed", None)]
    assert [e.type for e in read_trace(result.trace_path or "")][-3:] == ["model_call", "usage", "final"]


async def test_a_stream_iterated_after_end_run_yields_nothing_more(tmp_path: Path):
    """The run is over once `end_run()` wrote its `final`: its stream stops (its tool call ended) rather
    than going on with a run whose trace is closed."""
    holds = Holds()
    async with (
        ScriptedModelServer(holds.model) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [holds.tool()], config=config(), trace_path=tmp_path / "t.jsonl")
        stream = agent.stream("first task")
        async for ev in stream:
            if isinstance(ev, ToolStarted):
                break
        await holds.started[1].wait()
        stopped = agent.end_run("interrupted", "stopped by the user")
        assert [ev async for ev in stream] == []
        assert holds.outcome == {1: "cancelled"} and len(server.requests) == 1
    assert stopped is not None and finals(stopped.trace_path) == [("interrupted", "stopped by the user")]


async def test_a_run_refused_for_its_input_leaves_the_agent_usable(tmp_path: Path):
    """A trace path with a NUL byte (a raw ValueError) or a history of the trace's dicts (an
    AttributeError) failed after the agent was marked running: every later run was refused as "already
    running". The path is now a trace path error (the run goes on untraced, as for any bad trace path),
    the history a TypeError saying what to pass, and the agent runs again."""
    async with (
        ScriptedModelServer(["ok\n</think>\n\nhello"], when_exhausted="repeat") as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config(), trace_path=str(tmp_path / "a\0b.jsonl"))
        untraced = await agent.run("hi")
        assert (untraced.status, untraced.trace_path) == ("completed", None)
        assert "NUL" in (untraced.trace_error or "")
        agent.trace_path = tmp_path / "t.jsonl"
        with pytest.raises(TypeError, match=r"history\[0\] is a dict.*history_messages\(\)"):
            await agent.run("hi", history=[{"role": "user", "content": "earlier"}])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="history must be a sequence of Message"):
            await agent.run("hi", history=7)  # type: ignore[arg-type]
        assert (await agent.run("hi")).status == "completed"
