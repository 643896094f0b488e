"""The tool-time budget (`Budget.max_tool_s`) bounds the sum of the calls' durations, also when the calls
of one turn run at once: each running call's time counts as it passes, and the calls still running when
the sum reaches the limit are stopped with an observation that says so.

Real HTTP model server (scripted output), real tools, and a real Docker sandbox for the sandbox path.
Every run is guarded by a `wait_for` far beyond the budget, so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio

import pytest

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import BudgetExceeded, Event, Final, ToolResultEvent, ToolStarted
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.sandbox import DockerSandbox, SandboxConfig
from qwq_agent.testing.helpers import call
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import tool
from qwq_agent.tools.catalog import build_tools

GUARD_S = 120.0


@tool
async def lookup(key: str) -> str:
    """A host-side lookup: "fast" answers at once, any other key takes a minute."""
    if key != "fast":
        await asyncio.sleep(60)
    return f"value of {key}"


async def run_turn(calls: list[str], tools: list, limit: float, sandbox: DockerSandbox | None = None):  # type: ignore[no-untyped-def,type-arg]
    turns = ["Look them all up.\n</think>\n\n" + "\n".join(calls), "done\n</think>\n\nok"]
    cfg = AgentConfig(check_language=False, budget=Budget(max_tool_s=limit))
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, tools, sandbox=sandbox, config=cfg)
            events: list[Event] = await asyncio.wait_for(_collect(agent), GUARD_S)
        requests = len(server.requests)
    assert agent.result is not None
    return agent.result, events, requests


async def _collect(agent: Agent) -> list[Event]:
    return [ev async for ev in agent.stream("look up")]


def assert_tool_budget_ended(result, events, requests: int) -> None:  # type: ignore[no-untyped-def]
    assert result.status == "budget_exceeded", result
    assert "tool_s" in (result.error or "")
    assert any(isinstance(ev, BudgetExceeded) and ev.budget == "tool_s" for ev in events)
    assert isinstance(events[-1], Final)
    assert requests == 1  # the run ended before asking the model again


async def test_concurrent_host_calls_share_the_tool_time_budget() -> None:
    """Eight slow lookups in one turn with 1 s of tool time: before, each got the whole 1 s and the
    run used 8 s of tool time; now they spend it together and are stopped when the sum reaches 1 s."""
    slow = [call("lookup", key=f"k{i}") for i in range(8)]
    result, events, requests = await run_turn([call("lookup", key="fast"), *slow], [lookup], limit=1.0)
    assert_tool_budget_ended(result, events, requests)
    assert 1.0 <= result.totals["tool_s"] < 3.0  # the old code: ~8
    results = [ev for ev in events if isinstance(ev, ToolResultEvent)]
    assert len(results) == 9
    fast = next(r for r in results if "fast" in r.text)
    assert not fast.is_error and fast.text == "value of fast"  # it ended in time: its own result
    stopped = [r for r in results if r is not fast]
    assert all(r.error_type == "tool_budget" for r in stopped), [r.text for r in stopped]
    assert all("tool-time budget" in r.text and "was stopped" in r.text for r in stopped)
    # The sum of what was recorded per call is the run's tool time.
    assert abs(sum(r.duration_s for r in results) - result.totals["tool_s"]) < 0.01


async def test_a_call_alone_still_ends_at_its_own_deadline() -> None:
    """One call that never shares the budget is ended by its deadline (what was left), as before."""
    result, events, requests = await run_turn([call("lookup", key="k0")], [lookup], limit=0.5)
    assert_tool_budget_ended(result, events, requests)
    (only,) = [ev for ev in events if isinstance(ev, ToolResultEvent)]
    assert only.error_type == "timeout" and "timed out after" in only.text


async def test_a_sandbox_call_shares_the_budget_and_the_next_one_does_not_start(sandbox_image: str) -> None:
    """Three slow lookups beside a slow cell, with another cell queued behind it on the sandbox lock.

    With 6 s of tool time the four running calls use it up after ~1.5 s, well before the cell's own
    deadline (6 s, which the sandbox shortens by its interrupt grace and slack): the cell is cancelled
    in the sandbox, the queued cell is not run, and the sandbox serves the next call. Before, each
    lookup ran 6 s and both cells ran: over 20 s of tool time.
    """
    slow_cell = "x = 41\nimport time\nwhile True:\n    time.sleep(0.05)"
    calls = [
        call("python", code=slow_cell, timeout=60),
        *(call("lookup", key=f"k{i}") for i in range(3)),
        call("python", code="x + 1", timeout=60),
    ]
    config = SandboxConfig(image=sandbox_image, interrupt_grace_s=1.0)
    async with DockerSandbox.create(config) as sb:
        tools = [*build_tools(["python"]), lookup]
        result, events, requests = await run_turn(calls, tools, limit=6.0, sandbox=sb)
        after = await asyncio.wait_for(sb.python("x + 1", timeout=10), GUARD_S)
    assert_tool_budget_ended(result, events, requests)
    assert result.totals["tool_s"] < 12.0  # the old code: over 20
    results = {ev.call_id: ev for ev in events if isinstance(ev, ToolResultEvent)}
    turn = next(m for m in result.messages if m.role == "assistant" and m.tool_calls)
    ids = [c.id for c in turn.tool_calls]
    first_cell, *lookups, queued_cell = (results[i] for i in ids)
    assert all(r.error_type == "tool_budget" and "was stopped" in r.text for r in [first_cell, *lookups])
    assert queued_cell.error_type == "tool_budget" and "was not run" in queued_cell.text
    started = {ev.call_id for ev in events if isinstance(ev, ToolStarted)}
    assert queued_cell.call_id not in started
    assert after.error is None and after.value == "42"  # the cell was stopped, the interpreter kept


async def test_a_call_ignoring_its_stop_by_the_budget_is_said_to_be_left_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call that swallows its cancellation when the shared budget runs out is left running after the
    registry's clean-up grace: its observation says so, as a timed-out one's does. Before, it read
    "was stopped" while the tool went on after the run had ended."""
    import qwq_agent.tools.registry as registry_module

    monkeypatch.setattr(registry_module, "_CANCEL_GRACE_S", 0.3)
    release = asyncio.Event()
    running = {"now": False, "cancellations": 0}

    @tool
    async def stubborn(key: str) -> str:
        """Keeps working through its cancellation until released."""
        running["now"] = True
        try:
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    running["cancellations"] += 1
        finally:
            running["now"] = False
        return f"late value of {key}"

    try:
        calls = [call("lookup", key="fast"), call("stubborn", key="b")]
        result, events, requests = await run_turn(calls, [lookup, stubborn], limit=0.5)
        still_running = running["now"]
    finally:
        release.set()
    assert_tool_budget_ended(result, events, requests)
    assert still_running and running["cancellations"] >= 1
    (obs,) = [ev for ev in events if isinstance(ev, ToolResultEvent) and ev.name == "stubborn"]
    assert obs.error_type == "tool_budget" and "tool-time budget" in obs.text
    assert "left running in the background" in obs.text and "was stopped" not in obs.text, obs.text


async def test_a_sync_call_stopped_by_the_budget_is_said_to_be_abandoned_in_its_thread() -> None:
    """A sync tool cannot be cancelled: stopped when the shared budget runs out, its thread runs on.
    Its observation said "was stopped" while the function went on after the run had ended."""
    import threading

    release = threading.Event()
    threads: list[threading.Thread] = []

    @tool
    def blocking(key: str) -> str:
        """Blocks its thread until released."""
        threads.append(threading.current_thread())
        release.wait(GUARD_S)
        return f"late value of {key}"

    try:
        calls = [call("lookup", key="fast"), call("lookup", key="slow"), call("blocking", key="b")]
        result, events, requests = await run_turn(calls, [lookup, blocking], limit=0.5)
        still_running = [t.is_alive() for t in threads]
    finally:
        release.set()
    assert_tool_budget_ended(result, events, requests)
    assert still_running == [True]
    (obs,) = [ev for ev in events if isinstance(ev, ToolResultEvent) and ev.name == "blocking"]
    assert obs.error_type == "tool_budget" and "tool-time budget" in obs.text
    assert "still running in a thread" in obs.text and "was stopped" not in obs.text, obs.text
