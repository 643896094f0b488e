"""The loop with `Model`s a user writes (the protocol in `qwq_agent.protocols`), not the project's clients.

The models here are the thing under test: a non-streaming backend that hands its output in the
`Completion` alone, one that yields the wrong type, one that raises Ctrl-C's `KeyboardInterrupt`, one
that swallows its cancellation. Each run is a real `Agent` run with real tools and a real trace file.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.events import Final, ModelCall, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.trace import read_trace
from qwq_agent.protocols import Completion, TextDelta
from qwq_agent.testing.helpers import add, call

# Far beyond any deadline below: a regression fails here instead of hanging the suite.
GUARD_S = 60.0


def config(**kw: Any) -> AgentConfig:
    return AgentConfig(check_language=False, model_retries=0, **kw)


class Scripted:
    """A user's model: each request yields the next turn's events, as given."""

    name = "scripted"

    def __init__(self, *turns: list[Any]) -> None:
        self.turns = list(turns)

    async def aclose(self) -> None:
        pass

    async def stream(self, messages: Any, tools: Any, params: Any, *, prefix: str = "") -> AsyncIterator[Any]:
        for event in self.turns.pop(0):
            yield event


# -- a model that streams nothing: its output is the Completion's text ---------------------------------


async def test_a_model_that_yields_only_its_completion_is_answered_from_its_text(tmp_path):
    # before: the Completion's text was never read, and the run "completed" with the answer ''
    model = Scripted(
        [Completion(text="Add them.\n</think>\n\n" + call("add", a=2, b=3))],
        [Completion(text="Done.\n</think>\n\nThe answer is 5.")],
    )
    agent = Agent(model, [add], config=config(), trace_path=tmp_path / "t.jsonl")
    result = await agent.run("What is 2 + 3?")
    assert (result.status, result.answer) == ("completed", "The answer is 5.")
    assert [m.content for m in result.messages if m.role == "tool"] == ["5"]  # the call was parsed and run
    calls = [ev for ev in read_trace(tmp_path / "t.jsonl") if isinstance(ev, ModelCall)]
    assert [c.completion for c in calls] == [
        "Add them.\n</think>\n\n" + call("add", a=2, b=3),
        "Done.\n</think>\n\nThe answer is 5.",
    ]


async def test_when_deltas_came_they_are_the_output_and_the_completions_text_is_not_read():
    # The deltas were parsed as they came (and streamed to the caller): a Completion that says
    # otherwise does not change the turn after the fact.
    model = Scripted(
        [TextDelta(text="Easy.\n</think>\n\n"), TextDelta(text="42"), Completion(text="something else")]
    )
    result = await Agent(model, [], config=config()).run("What is 6 * 7?")
    assert (result.status, result.answer) == ("completed", "42")


class NoneThenText:
    """Yields None where an event belongs, then more output (which must never be taken as the answer)."""

    name = "none-then-text"

    async def aclose(self) -> None:
        pass

    async def stream(self, messages: Any, tools: Any, params: Any, *, prefix: str = "") -> AsyncIterator[Any]:
        yield TextDelta(text="Hmm.\n</think>\n\n")
        yield None
        yield TextDelta(text="42")
        yield Completion(text="Hmm.\n</think>\n\n42")


@pytest.mark.parametrize(
    ("model", "event_type"),
    [
        (Scripted(["Simple.\n</think>\n\nThe answer is 42."]), "str"),
        (Scripted([{"kind": "text", "text": "Simple.\n</think>\n\n42"}]), "dict"),
        (NoneThenText(), "NoneType"),
    ],
    ids=["str", "dict", "none"],
)
async def test_a_model_yielding_something_else_ends_the_run_with_a_type_error(tmp_path, model, event_type):
    # before: a str or dict became an empty piece of output and None ended the stream; each run
    # "completed" with an answer of '' (or of what came before the None)
    agent = Agent(model, [], config=config(), trace_path=tmp_path / "t.jsonl")
    result = await agent.run("What is 6 * 7?")
    assert result.status == "model_error" and result.answer is None
    assert result.error is not None and result.error.startswith("TypeError: ")
    assert type(model).__name__ in result.error and f"a {event_type}" in result.error
    final = read_trace(tmp_path / "t.jsonl")[-1]
    assert isinstance(final, Final) and final.status == "model_error"


# -- Ctrl-C (or sys.exit) during a run --------------------------------------------------------------


class InterruptedOnce:
    """Raises `exc` in the middle of its first request (the user's Ctrl-C landing there); then answers."""

    name = "interrupted-once"

    def __init__(self, exc: BaseException) -> None:
        self.exc: BaseException | None = exc

    async def aclose(self) -> None:
        pass

    async def stream(self, messages: Any, tools: Any, params: Any, *, prefix: str = "") -> AsyncIterator[Any]:
        yield TextDelta(text="thinking")
        if self.exc is not None:
            exc, self.exc = self.exc, None
            raise exc
        yield TextDelta(text="\n</think>\n\nfine")
        yield Completion(text="thinking\n</think>\n\nfine")


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit], ids=["ctrl_c", "sys_exit"])
async def test_a_base_exception_during_a_run_ends_it_and_frees_the_agent(tmp_path, exc_type):
    # before: the trace held only run_started (its lock held), and every later run of the agent
    # raised "this Agent is already running a task"
    agent = Agent(InterruptedOnce(exc_type()), [], config=config(), trace_path=tmp_path / "t.jsonl")
    with pytest.raises(exc_type):
        await agent.run("first")
    events = read_trace(tmp_path / "t.jsonl")
    final = events[-1]
    assert isinstance(final, Final) and final.status == "interrupted"
    assert final.error is not None and exc_type.__name__ in final.error
    assert agent.result is not None and agent.result.status == "interrupted"
    second = await agent.run("second")
    assert (second.status, second.answer) == ("completed", "fine")


# -- a model that ignores its cancellation ----------------------------------------------------------


class Stubborn:
    """Swallows every cancellation (a wrapper that retries on any error) until the test releases it."""

    name = "stubborn"

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.swallowed = 0

    async def aclose(self) -> None:
        pass

    async def stream(self, messages: Any, tools: Any, params: Any, *, prefix: str = "") -> AsyncIterator[Any]:
        yield TextDelta(text="thinking")
        while not self.released.is_set():
            try:
                await self.released.wait()
            except asyncio.CancelledError:
                self.swallowed += 1


async def test_a_model_that_ignores_its_cancellation_is_abandoned_at_the_wall_deadline(tmp_path):
    # before: the run waited on the stream for ever, however short its wall-time budget
    model = Stubborn()
    agent = Agent(model, [], config=config(budget=Budget(max_wall_s=1.0)), trace_path=tmp_path / "t.jsonl")
    run = asyncio.ensure_future(agent.run("q"))
    try:
        done, _ = await asyncio.wait({run}, timeout=GUARD_S)
    finally:
        model.released.set()  # lets the abandoned stream (or, before the fix, the stuck run) end
    assert run in done, "the run outlived its wall-time budget"
    result = run.result()
    assert result.status == "budget_exceeded" and "wall_s" in (result.error or "")
    assert model.swallowed >= 1  # it was asked to stop, and would not
    abandoned = [w for w in result.warnings if w.kind == "model_abandoned"]
    assert len(abandoned) == 1 and "abandoned" in abandoned[0].message
    events = read_trace(tmp_path / "t.jsonl")
    assert isinstance(events[-1], Final) and events[-1].status == "budget_exceeded"
    assert any(isinstance(ev, Warning_) and ev.kind == "model_abandoned" for ev in events)


class DeafToClose:
    """Writes a looping reasoning, then ignores the close the loop detector sends (its `finally` waits,
    swallowing cancellation, until the test releases it)."""

    name = "deaf-to-close"

    def __init__(self) -> None:
        self.released = asyncio.Event()

    async def aclose(self) -> None:
        pass

    async def stream(self, messages: Any, tools: Any, params: Any, *, prefix: str = "") -> AsyncIterator[Any]:
        if prefix:  # after the nudge (and the close): it answers
            yield TextDelta(text="\n</think>\n\n42")
            yield Completion(text="\n</think>\n\n42")
            return
        try:
            for _ in range(2000):
                yield TextDelta(text="Wait, let me recompute 6 times 7 again from the start. ")
        finally:
            while not self.released.is_set():
                try:
                    await self.released.wait()
                except asyncio.CancelledError:
                    pass


async def test_a_stream_that_will_not_close_after_an_intervention_is_abandoned_and_the_turn_goes_on():
    # The loop detector closes the stream to nudge the model: a stream that does not end then is left
    # behind (with a warning) rather than holding the run for ever, with no wall budget at all.
    model = DeafToClose()
    agent = Agent(model, [], config=config(budget=Budget(max_wall_s=None)))
    run = asyncio.ensure_future(agent.run("What is 6 * 7?"))
    try:
        done, _ = await asyncio.wait({run}, timeout=GUARD_S)
    finally:
        model.released.set()
    assert run in done, "the run waited for ever on a stream that would not close"
    result = run.result()
    kinds = [w.kind for w in result.warnings]
    assert "reasoning_loop" in kinds and "model_abandoned" in kinds
    assert (result.status, result.answer) == ("completed", "42")


_ABANDON_AND_COLLECT = """
import asyncio, gc, sys
sys.path.insert(0, {tests!r})
from test_custom_models import Stubborn
from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.loop import Agent, AgentConfig

async def main():
    config = AgentConfig(check_language=False, model_retries=0, budget=Budget(max_wall_s=0.2))
    result = await Agent(Stubborn(), [], config=config).run("q")
    print(result.status, [w.kind for w in result.warnings])
    gc.collect()  # the run's objects are dropped: an abandoned stream is finalised now, if ever
    await asyncio.sleep(0.05)

asyncio.run(main())  # and the loop's shutdown closes the async generators still alive
"""


def test_an_abandoned_stream_prints_no_error_when_it_is_collected_or_the_loop_shuts_down():
    """After a stream was abandoned, asyncio finalised it (on collection) with an `aclose()` that failed
    "asynchronous generator is already running", printed as "Task exception was never retrieved". In a
    process of its own (a real interpreter's collection and `asyncio.run` shutdown)."""
    child = _ABANDON_AND_COLLECT.format(tests=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=GUARD_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("budget_exceeded") and "model_abandoned" in proc.stdout
    assert proc.stderr == ""


_CTRL_C_UNDER_RUN_UNTIL_COMPLETE = """
import asyncio, signal, sys, threading
sys.path.insert(0, {tests!r})
from test_custom_models import Held
from qwq_agent.agent.events import Final
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.trace import read_trace

model = Held()
agent = Agent(model, [], config=AgentConfig(check_language=False, model_retries=0), trace_path={trace!r})
loop = asyncio.new_event_loop()

def press_ctrl_c():
    model.waiting.wait(60)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Python's default handler
    loop.call_soon_threadsafe(lambda: None)  # wakes select() to run it, wherever the signal landed

threading.Thread(target=press_ctrl_c, daemon=True).start()
try:
    loop.run_until_complete(agent.run("first"))
    print("not interrupted")
except KeyboardInterrupt:
    print("KeyboardInterrupt")
print([(e.status, e.error) for e in read_trace({trace!r}) if isinstance(e, Final)])
print(loop.run_until_complete(asyncio.wait_for(agent.run("second"), 60)).status)
loop.close()
"""


class Held:
    """Starts its answer, then waits on the server (a future nobody sets) on its first request."""

    name = "held"

    def __init__(self) -> None:
        self.waiting = threading.Event()
        self.calls = 0

    async def aclose(self) -> None:
        pass

    async def stream(self, messages: Any, tools: Any, params: Any, *, prefix: str = "") -> AsyncIterator[Any]:
        self.calls += 1
        if self.calls == 1:
            yield TextDelta(text="thinking")
            self.waiting.set()
            await asyncio.get_running_loop().create_future()
        yield TextDelta(text="ok\n</think>\n\nfine")
        yield Completion(text="")


def test_ctrl_c_under_run_until_complete_ends_the_run_and_frees_the_agent(tmp_path):
    """A real SIGINT while `loop.run_until_complete(agent.run(...))` waits on the model lands in the
    event loop's select(), not in the run: the KeyboardInterrupt left the run's task pending, its trace
    without a final, and the next run was refused "already running". In a process of its own."""
    trace = str(tmp_path / "t.jsonl")
    child = _CTRL_C_UNDER_RUN_UNTIL_COMPLETE.format(tests=str(Path(__file__).parent), trace=trace)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=GUARD_S)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "KeyboardInterrupt"
    assert lines[1] == str([("interrupted", "the run was interrupted by KeyboardInterrupt (Ctrl-C)")])
    assert lines[2] == "completed"
