"""A run's stream and the consumer reading it: closed by `async with`, ended when the consumer stops
reading, and a stopped run's late model answer leaves the next run's transcript alone.

Real scripted HTTP model server and client, a real sandbox pool (Docker), real trace files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from qwq_agent.agent import loop
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import Final, RunStarted
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.trace import read_trace
from qwq_agent.sandbox import SandboxConfig, SandboxPool
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import DockerAPIError
from qwq_agent.testing.helpers import call
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest, Turn
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
