"""A run's stream and the consumer reading it: closed by `async with`, ended when the consumer stops
reading, and a stopped run's late model answer leaves the next run's transcript alone.

Real scripted HTTP model server and client, a real sandbox pool (Docker), real trace files.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import pytest

from qwq_agent.agent import loop
from qwq_agent.agent.admission import KVAdmission
from qwq_agent.agent.approval import ApprovalDecision
from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import (
    ApprovalDecided,
    BudgetExceeded,
    Event,
    Final,
    RunStarted,
    ToolStarted,
    UsageEvent,
)
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.run_stream import RunStream
from qwq_agent.agent.trace import read_trace
from qwq_agent.sandbox import SandboxConfig, SandboxPool
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import DockerAPIError
from qwq_agent.testing.helpers import call
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest, Turn
from qwq_agent.tools.base import tool
from qwq_agent.tools.catalog import build_tools

GUARD_S = 120.0  # far beyond any bound under test: only a hang reaches it


def config(**kw: object) -> AgentConfig:
    return AgentConfig(check_language=False, model_retries=0, **kw)  # type: ignore[arg-type]


def _python_then_answer(req: ScriptedRequest) -> str:
    if "<tool_response>" in (req.prompt or ""):
        return "ok\n</think>\n\nanswer"
    return "w\n</think>\n\n" + call("python", code="print(6 * 7)")


async def until(condition: Callable[[], bool]) -> None:
    """Until another task's state holds (a run ended, the pool settled): looked at every few ms."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def settled(pool: SandboxPool) -> None:
    """Until the pool's background starts and removals are over."""
    while pool._tasks:
        await asyncio.gather(*list(pool._tasks), return_exceptions=True)


async def gone(cid: str) -> bool:
    try:
        await DockerEngine().inspect(cid)
    except DockerAPIError as exc:
        return exc.status == 404
    return False


def finals(trace: str | None) -> list[tuple[str, str | None]]:
    assert trace is not None
    return [(e.status, e.error) for e in read_trace(trace) if isinstance(e, Final)]


@pytest.mark.docker
async def test_a_stream_used_as_a_context_manager_releases_its_sandbox_on_exit(
    sandbox_image: str, tmp_path: Path
) -> None:
    """`async with agent.stream(task) as events:` ends the run when the block is left, however it is left:
    its pool sandbox is released there and then, not when the generator is garbage-collected."""
    async with (
        ScriptedModelServer(_python_then_answer, when_exhausted="repeat") as server,
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
        async with agent.stream("first task") as events:
            async for ev in events:
                if isinstance(ev, RunStarted):
                    sandbox_id = ev.sandbox_id
                    break
            assert pool.live == 1
        first = agent.result
        assert first is not None and first.status == "interrupted"
        await asyncio.wait_for(settled(pool), GUARD_S)
        assert pool.live == 0 and sandbox_id is not None and await gone(sandbox_id)
        second = await agent.run("second task")  # the agent is free
    assert finals(first.trace_path) == [("interrupted", "the run was stopped before it ended")]
    assert second.status == "completed" and finals(second.trace_path) == [("completed", None)]


@pytest.mark.docker
async def test_a_consumer_that_stops_reading_ends_the_run_after_the_idle_timeout(
    sandbox_image: str, tmp_path: Path
) -> None:
    """A consumer that took an event and read no more paused the run for good: its sandbox stayed taken
    and its trace open with no final. After `consumer_idle_timeout_s` the run now ends `interrupted`,
    saying why, its sandbox is released and its trace ends; the consumer reading again gets that final."""
    async with (
        ScriptedModelServer(_python_then_answer, when_exhausted="repeat") as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
        SandboxPool(size=0, config=SandboxConfig(image=sandbox_image)) as pool,
    ):
        agent = Agent(
            client,
            build_tools(["python"]),
            sandbox_pool=pool,
            config=config(consumer_idle_timeout_s=0.5),
            trace_path=tmp_path / "t.jsonl",
        )
        stream = agent.stream("first task")
        async for ev in stream:
            if isinstance(ev, RunStarted):
                sandbox_id = ev.sandbox_id
                break  # ... and the consumer reads nothing more (a client gone quiet)
        await asyncio.wait_for(until(lambda: agent.result is not None), GUARD_S)
        await asyncio.wait_for(settled(pool), GUARD_S)
        assert pool.live == 0 and sandbox_id is not None and await gone(sandbox_id)
        result = agent.result
        assert result is not None and result.status == "interrupted"
        assert "consumer_idle_timeout_s" in (result.error or "")
        rest = [ev async for ev in stream]
        assert [(type(ev), ev.status, ev.error) for ev in rest if isinstance(ev, Final)] == [
            (Final, "interrupted", result.error)
        ]
        assert len(rest) == 1
        assert (await agent.run("second task")).status == "completed"
    assert finals(result.trace_path) == [("interrupted", result.error)]
    assert len(server.requests) == 2  # the idle run made no request after its consumer went quiet


async def test_a_stopped_run_whose_model_answer_comes_late_leaves_the_next_runs_messages_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run stopped with `end_run()` while its model request stalls gets its answer only once the next
    run is under way: whatever it does then, `agent.messages` stays the next run's."""
    monkeypatch.setattr(loop, "PREVIOUS_RUN_WAIT_S", 0.05)  # the next run goes ahead past the stall
    released = asyncio.Event()
    b_waits = asyncio.Event()

    from qwq_agent.tools.base import tool

    @tool(timeout=30)
    async def hold() -> str:
        """Wait until the test lets the call end."""
        b_waits.set()
        await released.wait()
        return "held"

    def model(req: ScriptedRequest) -> str | Turn:
        prompt = req.prompt or ""
        if "first task" in prompt:  # stalls until `released` is set
            return Turn(text="A thinks\n</think>\n\n" + call("hold"), hold_after=0, hold_until=released)
        if "<tool_response>" in prompt:
            return "b\n</think>\n\nanswer B"
        return "b\n</think>\n\n" + call("hold")

    async with ScriptedModelServer(model) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [hold], config=config())
        a_run = asyncio.create_task(agent.run("first task"))
        await server.wait_for_requests(1)
        a = agent.end_run("interrupted", "stopped by the user")
        b_run = asyncio.create_task(agent.run("second task"))
        await asyncio.wait_for(b_waits.wait(), GUARD_S)  # B is in its tool call
        during = list(agent.messages)
        released.set()  # A's answer arrives now, and B's call ends
        a_result = await asyncio.wait_for(a_run, GUARD_S)
        b = await asyncio.wait_for(b_run, GUARD_S)
    assert a is not None and a_result is a and a.status == "interrupted"
    assert [m.content for m in during if m.role == "user"] == ["second task"]
    assert b.status == "completed" and b.answer == "answer B"
    assert not any("A thinks" in (m.reasoning or "") for m in b.messages)
    assert [m.role for m in b.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert agent.messages == b.messages


async def test_reading_again_while_the_idle_close_unwinds_gives_the_final_not_a_runtime_error() -> None:
    """The idle timer ended a run in a tool call whose cancellation takes a moment (flushing a file).
    A consumer reading again meanwhile, or leaving `async with`, collided with that close ("anext():
    asynchronous generator is already running"); it now waits for it and gets the idle `Final`, alone."""
    cancelled, release = asyncio.Event(), asyncio.Event()

    from qwq_agent.tools.base import tool

    @tool(timeout=60)
    async def slow() -> str:
        """A tool whose clean-up takes a moment."""
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            await release.wait()
            raise
        return "x"

    def model(req: ScriptedRequest) -> str:
        if "<tool_response>" in (req.prompt or ""):
            return "ok\n</think>\n\nanswer"
        return "w\n</think>\n\n" + call("slow")

    async with (
        ScriptedModelServer(model, when_exhausted="repeat") as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [slow], config=config(consumer_idle_timeout_s=0.2))
        stream = agent.stream("task")
        async for ev in stream:
            if isinstance(ev, ToolStarted):
                break  # the consumer goes quiet while the tool runs
        await asyncio.wait_for(cancelled.wait(), GUARD_S)  # the timer fired; the close is unwinding
        rest = asyncio.create_task(_all(stream))
        closing = asyncio.create_task(stream.aclose())
        await asyncio.sleep(0)  # both are under way (one step of the event loop)
        release.set()
        got = await asyncio.wait_for(rest, GUARD_S)
        await asyncio.wait_for(closing, GUARD_S)
        result = agent.result
    assert result is not None and result.status == "interrupted"
    assert "consumer_idle_timeout_s" in (result.error or "")
    assert [(type(ev), getattr(ev, "status", None)) for ev in got] == [(Final, "interrupted")]


async def _all(stream: RunStream) -> list[Event]:
    return [ev async for ev in stream]


async def test_aclose_from_another_task_ends_the_run_now_and_the_reader_gets_its_final(
    tmp_path: Path,
) -> None:
    """A service's disconnect handler closes the stream while the reading task waits inside it on the
    model: `aclose()` raised RuntimeError and the run went on to `completed`. It now ends the run
    `interrupted` at once (the held request is dropped), and the reading task gets that `Final`."""
    release = asyncio.Event()

    def model(req: ScriptedRequest) -> Turn:
        return Turn(text="thinking hard\n</think>\n\nanswer", hold_after=1, hold_until=release)

    async with (
        ScriptedModelServer(model, when_exhausted="repeat") as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config(), trace_path=tmp_path / "t.jsonl")
        stream = agent.stream("task")
        first = await stream.__anext__()
        assert isinstance(first, RunStarted)
        reading = asyncio.create_task(_all(stream))
        await asyncio.wait_for(server.wait_for_requests(1), GUARD_S)  # the reader waits on the model
        await asyncio.wait_for(stream.aclose(), GUARD_S)
        result = agent.result
        assert result is not None and result.status == "interrupted"
        seen = await asyncio.wait_for(reading, GUARD_S)
        release.set()
    assert [(ev.status, ev.error) for ev in seen if isinstance(ev, Final)] == [(result.status, result.error)]
    assert isinstance(seen[-1], Final)
    assert finals(result.trace_path) == [("interrupted", result.error)]


async def test_an_answer_in_hand_when_the_consumer_goes_quiet_is_kept() -> None:
    """The model's last turn came back whole and only its `Final(completed)` was left to hand out when
    the consumer paused (writing usage to a slow store): the idle timer recorded the run `interrupted`
    with no answer. A run with no work left is now finished as it would have been."""
    async with (
        ScriptedModelServer(lambda req: "t\n</think>\n\nthe answer is 42", when_exhausted="repeat") as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config(consumer_idle_timeout_s=0.2))
        async with agent.stream("6*7?") as events:
            async for ev in events:
                if isinstance(ev, UsageEvent):  # a slow consumer step, until the timer has acted
                    await asyncio.wait_for(until(lambda: agent.result is not None), GUARD_S)
                last = ev
        result = agent.result
    assert result is not None and (result.status, result.answer) == ("completed", "the answer is 42")
    assert isinstance(last, Final) and (last.status, last.answer) == ("completed", "the answer is 42")
    assert len(server.requests) == 1


async def test_an_idle_consumer_holding_a_budget_stop_before_the_start_gets_budget_exceeded() -> None:
    """The run's wall budget ran out while it waited for KV room, and the consumer paused on that
    `BudgetExceeded`: the idle timer recorded `interrupted`. The run had nothing left to do but say so,
    and it now ends `budget_exceeded`, as it would have for a consumer that read on."""
    admission = KVAdmission(1000, headroom=1.0)
    async with (
        ScriptedModelServer(lambda req: "t\n</think>\n\nx", when_exhausted="repeat") as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
        admission.reserve(1000),  # another session holds all of it
    ):
        cfg = config(
            consumer_idle_timeout_s=0.2,
            kv_reservation_tokens=500,
            budget=Budget(max_wall_s=0.2),
        )
        agent = Agent(client, [], config=cfg, admission=admission)
        async with agent.stream("task") as events:
            async for ev in events:
                if isinstance(ev, BudgetExceeded):
                    await asyncio.wait_for(until(lambda: agent.result is not None), GUARD_S)
                last = ev
        result = agent.result
    assert result is not None and result.status == "budget_exceeded"
    assert isinstance(last, Final) and last.status == "budget_exceeded"
    assert server.requests == []


async def test_a_failing_idle_handler_still_closes_the_stream() -> None:
    """What the run's control raises when the idle timer fires must not leave the run paused for good
    (holding its sandbox with no timer left): the stream is closed all the same."""
    closed = asyncio.Event()

    async def events() -> AsyncGenerator[Event, None]:
        try:
            yield RunStarted(task="t", model="m", tools=[])
            yield Final(status="completed", answer="a")
        finally:
            closed.set()

    class Broken:
        def busy(self) -> bool:
            return False

        def wind_up(self, reason: str) -> None:
            raise RuntimeError("broken")

        def stop(self, reason: str) -> None:
            raise RuntimeError("broken")

        def final(self) -> Final | None:
            return None

        def closing(self) -> asyncio.Task[None] | None:
            return None

    stream = RunStream(events(), idle_s=0.05, control=Broken())
    assert isinstance(await stream.__anext__(), RunStarted)
    await asyncio.wait_for(closed.wait(), GUARD_S)
    assert [ev async for ev in stream] == []


async def test_a_run_wound_up_while_its_consumer_holds_an_approval_decision_runs_no_tool_call() -> None:
    """The consumer went quiet right after an `ApprovalDecided` (a UI busy showing it): nothing was in
    flight, so the run was wound up, which promises no new tool call, yet the approved call ran, unread,
    in the background. The wind-up is now checked right before the calls are dispatched."""
    ran: list[str] = []

    @tool(timeout=30)
    async def delete_everything() -> str:
        """A side-effecting tool."""
        ran.append("ran")
        return "deleted"

    async def approve(request: object) -> ApprovalDecision:
        return ApprovalDecision.allow()

    script = ["Do it.\n</think>\n\n" + call("delete_everything"), "Done.\n</think>\n\ndone"]
    async with (
        ScriptedModelServer(script) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(
            client, [delete_everything], approver=approve, config=config(consumer_idle_timeout_s=0.2)
        )
        stream = agent.stream("clean up")
        async for ev in stream:
            if isinstance(ev, ApprovalDecided):
                break  # the consumer goes quiet here: no read, no close
        await asyncio.wait_for(until(lambda: agent.result is not None), GUARD_S)
        rest = await asyncio.wait_for(_all(stream), GUARD_S)
    result = agent.result
    assert result is not None and result.status == "interrupted"
    assert result.error is not None and "consumer_idle_timeout_s" in result.error
    assert ran == []
    assert [type(ev) for ev in rest] == [Final]
    assert len(server.requests) == 1


async def test_two_concurrent_acloses_while_one_reads_give_the_reader_its_final() -> None:
    """A service's disconnect handler and its shutdown hook both close the stream while a task reads it,
    waiting on the model: the second close cancelled the reader again, and that cancellation reached
    it (no `Final`). The stop now happens once; a second `aclose()` waits for the first."""
    release = asyncio.Event()

    def model(req: ScriptedRequest) -> Turn:
        return Turn(text="thinking hard\n</think>\n\nanswer", hold_after=1, hold_until=release)

    async with (
        ScriptedModelServer(model, when_exhausted="repeat") as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config())
        stream = agent.stream("task")
        assert isinstance(await stream.__anext__(), RunStarted)
        reading = asyncio.create_task(_all(stream))
        await asyncio.wait_for(server.wait_for_requests(1), GUARD_S)  # the reader waits on the model
        await asyncio.wait_for(asyncio.gather(stream.aclose(), stream.aclose()), GUARD_S)
        seen = await asyncio.wait_for(reading, GUARD_S)
        release.set()
    result = agent.result
    assert result is not None and result.status == "interrupted"
    assert [ev.status for ev in seen if isinstance(ev, Final)] == ["interrupted"]
    assert not reading.cancelled()
