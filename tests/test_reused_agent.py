"""One Agent running several tasks in a row: each run is recorded as its own (id, steps, event count).

Real scripted HTTP server and client, real in-process tools, real trace files.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from qwq_agent.agent import loop
from qwq_agent.agent.admission import KVAdmission
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import Final, ModelCall, RunStarted, ToolStarted
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.trace import read_trace
from qwq_agent.sandbox import SandboxConfig, SandboxPool
from qwq_agent.testing.helpers import add, call
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest, Turn
from qwq_agent.tools.base import FunctionTool, tool
from qwq_agent.tools.catalog import build_tools

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


async def until(condition: Callable[[], bool]) -> None:
    """Wait until another task's state (a queue joined, the agent taken) holds: reached through awaits
    of ours that offer no event to wait on, so looked at every few milliseconds."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.005)


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


async def test_a_run_stopped_before_it_started_gets_a_result_of_its_own(tmp_path: Path):
    """Stop, send the next message, stop again while it waits for the first run to unwind: the second run
    returned the FIRST run's result (its id, its trace), as did the second `end_run()`, and left no final
    anywhere. It now ends at once with its own result: cancelled, "ended before it started", no trace."""
    a_started, a_may_stop = asyncio.Event(), asyncio.Event()

    @tool(timeout=30)
    async def slow_stop(n: int) -> str:
        """A call that tidies up for a while when cancelled."""
        a_started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await a_may_stop.wait()
        return "done"

    def model(req: ScriptedRequest) -> str:
        return "go\n</think>\n\n" + call("slow_stop", n=1)

    async with ScriptedModelServer(model) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [slow_stop], config=config(), trace_path=tmp_path / "t.jsonl")
        a_run = asyncio.create_task(agent.run("first task"))
        await a_started.wait()
        a = agent.end_run("interrupted", "stopped by the user")
        b_run = asyncio.create_task(agent.run("second task", history=a.messages if a else []))
        await until(lambda: agent._run is not None)  # B holds the agent (and waits for A: no await between)
        b_stop = agent.end_run("interrupted", "stopped again")
        done, _ = await asyncio.wait({b_run}, timeout=10)  # B does not wait for A's call to tidy up
        a_may_stop.set()
        a_result = await a_run
        assert b_run in done
        b = b_run.result()
    assert a is not None and a_result is a
    assert b_stop is b and b.run_id not in (a.run_id, None) and agent.run_id == b.run_id
    assert (b.status, b.error) == ("cancelled", "ended before it started: stopped again")
    assert b.trace_path is None and b.events == 0 and b.messages == a.messages
    assert finals(a.trace_path) == [("interrupted", "stopped by the user")]
    assert len(server.requests) == 1


async def test_a_stopped_run_outlived_by_the_next_returns_its_own_result(monkeypatch: pytest.MonkeyPatch):
    """A run stopped while its model stream stalls unwinds only after the next run has finished: its
    `run()` returned `self.result`, the NEXT run's answer, id and trace."""
    monkeypatch.setattr(loop, "PREVIOUS_RUN_WAIT_S", 0.2)  # the next run goes ahead past the stall

    def model(req: ScriptedRequest) -> str | Turn:
        if "first task" in (req.prompt or ""):  # stalls until the third request (after B has ended)
            return Turn(text="thinking " * 20 + "\n</think>\n\nanswer A", hold_after=0, hold_until_requests=3)
        return "ok\n</think>\n\nanswer B"

    async with ScriptedModelServer(model) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [], config=config())
        a_run = asyncio.create_task(agent.run("first task"))
        await server.wait_for_requests(1)
        a = agent.end_run("interrupted", "stopped by the user")
        b = await agent.run("second task")
        assert not a_run.done()
        await Agent(client, [], config=config()).run("third task")  # request 3: A's stream goes on
        a_result = await a_run
    assert a is not None and a_result is a and (a.status, a.answer) == ("interrupted", None)
    assert (b.status, b.answer) == ("completed", "answer B") and b.run_id != a.run_id


async def test_a_run_stopped_while_queued_for_kv_room_leaves_the_queue(tmp_path: Path):
    """A run stopped while queued for KV room stayed queued: admitted later, it went on inside the next
    run of the agent (its run_started in that run's trace, under that run's id, so the trace could not be
    read back). It now leaves the queue at once and the next run is admitted alone."""
    admission = KVAdmission(1000, headroom=1.0)
    blocker = await admission.acquire(1000)  # other sessions hold the whole KV room
    async with (
        ScriptedModelServer(["ok\n</think>\n\nanswer"], when_exhausted="repeat") as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config(), admission=admission, trace_path=tmp_path / "t.jsonl")
        a_run = asyncio.create_task(agent.run("first task"))
        await until(lambda: admission.waiting == 1)
        a = agent.end_run("interrupted", "stopped by the user")
        async with asyncio.timeout(10):  # a bound no loaded machine reaches: it waited for room forever
            a_result = await a_run
        assert admission.waiting == 0 and admission.in_use == 1000
        c_run = asyncio.create_task(agent.run("second task"))
        await until(lambda: admission.waiting == 1)
        admission.release(blocker)
        c = await c_run
    assert (
        a is not None and a_result is a and finals(a.trace_path) == [("interrupted", "stopped by the user")]
    )
    assert c.status == "completed" and len(server.requests) == 1 and admission.in_use == 0
    events = read_trace(c.trace_path or "")
    assert [e.task for e in events if isinstance(e, RunStarted)] == ["second task"]
    assert {e.run_id for e in events} == {c.run_id}


def _writes_then_reads(req: ScriptedRequest) -> str:
    done = (req.prompt or "").count("<tool_response>")
    if done == 0:
        return "w\n</think>\n\n" + call("python", code="open('/workspace/mine.txt', 'w').write('C')")
    if done == 1:
        return "r\n</think>\n\n" + call("python", code="print('READ', open('/workspace/mine.txt').read())")
    return "ok\n</think>\n\nanswer"


@pytest.mark.docker
async def test_a_run_stopped_while_its_pool_sandbox_starts_takes_no_sandbox(
    sandbox_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A run stopped while it waits for a pool sandbox went on waiting; once the next run had stopped
    waiting for it (`PREVIOUS_RUN_WAIT_S`, shortened here) and opened its trace, the stopped run got its
    sandbox, made it the agent's and wrote its run_started into the next run's trace. It now stops
    waiting at once; the next run works in one sandbox of its own, and the agent holds none after."""
    monkeypatch.setattr(loop, "PREVIOUS_RUN_WAIT_S", 0.05)  # well within a sandbox's start
    async with (
        ScriptedModelServer(_writes_then_reads, when_exhausted="repeat") as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
        SandboxPool(size=0, config=SandboxConfig(image=sandbox_image)) as pool,
    ):
        agent = Agent(
            client,
            build_tools(["python"]),
            sandbox_pool=pool,
            config=config(),
            trace_path=tmp_path / "t.jsonl",
        )
        a_run = asyncio.create_task(agent.run("first task"))
        await until(lambda: bool(pool._waiting))  # A waits for the sandbox its acquire started
        a = agent.end_run("interrupted", "stopped by the user")
        c = await agent.run("second task")
        a_result = await a_run
        assert agent.sandbox is None and not pool._waiting
    assert (
        a is not None and a_result is a and finals(a.trace_path) == [("interrupted", "stopped by the user")]
    )
    assert [e.type for e in read_trace(a.trace_path or "")] == ["final"]  # it never started
    assert c.status == "completed"
    outputs = [m.content for m in c.messages if m.role == "tool"]
    assert len(outputs) == 2 and "READ C" in outputs[1]
    # Read as lines: `read_trace` refuses a trace that holds two runs' events (as it did here).
    lines = [json.loads(x) for x in Path(c.trace_path or "").read_text().splitlines() if x.strip()]  # noqa: ASYNC240
    assert [(e["task"], e["run_id"]) for e in lines if e["type"] == "run_started"] == [
        ("second task", c.run_id)
    ]
