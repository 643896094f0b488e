"""The agent loop: render, stream, parse, run tools, feed observations back, until an answer.

Everything that can go wrong in a step becomes either an observation the model can act on (a
malformed or unknown call, invalid arguments, a tool that raised, a dead sandbox) or a `Final` event
with a status for the caller (a budget used up, a reasoning loop that would not stop, a model server
that stays down). The run never ends with a stack trace, and its trace survives.

A step is one assistant turn (`turn.TurnStreamer`) followed by its tool calls
(`dispatch.ToolDispatcher`); this module decides what comes next.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from qwq_agent.agent.admission import KVAdmission
from qwq_agent.agent.budgets import BudgetTracker
from qwq_agent.agent.config import DEFAULT_SYSTEM_PROMPT, AgentConfig, RunResult
from qwq_agent.agent.dispatch import ToolDispatcher
from qwq_agent.agent.events import BudgetExceeded, Event, Final, RunStarted, Warning_
from qwq_agent.agent.language import correction_prompt, language_mismatch, reasoning_drift
from qwq_agent.agent.loop_detector import ToolCallRepetitionDetector
from qwq_agent.agent.messages import Message
from qwq_agent.agent.trace import TraceWriter
from qwq_agent.agent.turn import TurnStreamer
from qwq_agent.protocols import Model, Tool
from qwq_agent.tools.registry import ToolRegistry

__all__ = ["DEFAULT_SYSTEM_PROMPT", "REASONING_CALL_HINT", "Agent", "AgentConfig", "RunResult"]

REASONING_CALL_HINT = (
    "Your <tool_call> was written inside your reasoning, so it was not executed. Finish your reasoning "
    "with </think> first, then write the <tool_call> block."
)


class Agent:
    """One agent run at a time over a model, a set of tools and (optionally) a sandbox.

    Many agents may share one model client, one sandbox pool and one `KVAdmission`: create one
    `Agent` per task and run them as asyncio tasks.
    """

    def __init__(
        self,
        model: Model,
        tools: ToolRegistry | Sequence[Tool] = (),
        *,
        sandbox: Any = None,
        sandbox_pool: Any = None,
        config: AgentConfig | None = None,
        trace_path: str | Path | None = None,
        admission: KVAdmission | None = None,
        run_id: str | None = None,
    ) -> None:
        self.model = model
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(list(tools))
        self.sandbox = sandbox
        self.sandbox_pool = sandbox_pool
        self.config = config or AgentConfig()
        self.trace_path = Path(trace_path) if trace_path else None
        self.admission = admission
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.messages: list[Message] = []
        self.result: RunResult | None = None
        self.tracker = BudgetTracker(budget=self.config.budget)
        self._trace: TraceWriter | None = None
        self._events = 0
        self._step = 0

    async def run(self, task: str, *, history: Sequence[Message] = ()) -> RunResult:
        """Run to the end and return the result (events are still written to the trace)."""
        async for _ in self.stream(task, history=history):
            pass
        assert self.result is not None
        return self.result

    async def stream(self, task: str, *, history: Sequence[Message] = ()) -> AsyncIterator[Event]:
        """Run the task, yielding every event as it happens; the last one is always `Final`.

        `history` is an earlier conversation this task continues (e.g. a previous run's
        `result.messages`); the task is added to it as the next user turn.
        """
        self.tracker = BudgetTracker(budget=self.config.budget)
        self._trace = TraceWriter(self.trace_path) if self.trace_path else None
        self.messages = (
            [*history, Message(role="user", content=task)] if history else self._initial_messages(task)
        )
        status, answer, error = "error", None, None
        try:
            async with AsyncExitStack() as stack:
                if self.admission is not None:
                    await stack.enter_async_context(self.admission.reserve(self.config.kv_reservation_tokens))
                if self.sandbox is None and self.sandbox_pool is not None:
                    self.sandbox = await stack.enter_async_context(self.sandbox_pool.acquire())
                yield self._emit(
                    RunStarted(
                        task=task,
                        model=getattr(self.model, "name", type(self.model).__name__),
                        tools=[s.name for s in self.tools.specs()],
                        sandbox_id=getattr(self.sandbox, "id", None),
                        config=self.config.model_dump(mode="json"),
                    )
                )
                async for ev in self._steps(task):
                    if isinstance(ev, Final):
                        status, answer, error = ev.status, ev.answer, ev.error
                        break
                    yield ev
        except asyncio.CancelledError:
            self._final("cancelled", None, "the run was cancelled")
            self._close_trace()
            raise
        except Exception as exc:  # our own bug or an environment failure: report, don't crash
            status, error = "error", f"{type(exc).__name__}: {exc}"
        yield self._final(status, answer, error)
        self._close_trace()

    def _initial_messages(self, task: str) -> list[Message]:
        system = (
            [Message(role="system", content=self.config.system_prompt)] if self.config.system_prompt else []
        )
        return [*system, Message(role="user", content=task)]

    async def _steps(self, task: str) -> AsyncIterator[Event]:
        dispatcher = ToolDispatcher(
            self.tools,
            self.tracker,
            self._emit,
            run_id=self.run_id,
            timeout_s=self.config.tool_timeout_s,
            repetition=ToolCallRepetitionDetector(self.config.repetition),
        )
        language_checked = not self.config.check_language
        # A switch in the reasoning is an early warning only: reported once, nothing is asked.
        reasoning_language_warned = not self.config.check_language
        reasoning_hints = 0
        while True:
            if (over := self.tracker.exceeded()) is not None:
                name, limit, used = over
                yield self._emit(BudgetExceeded(budget=name, limit=limit, used=used))
                yield Final(status="budget_exceeded", error=_budget_error(over))
                return
            self._step += 1
            self.tracker.steps += 1
            turn = TurnStreamer(
                self.model,
                self.messages,
                self.tools.specs(),
                self.config,
                self.tracker,
                self._emit,
                self._step,
            )
            async for ev in turn.run():
                yield ev
            result = turn.result
            if result.stop_status is not None:
                over = self.tracker.exceeded()
                budget_hit = result.stop_status == "budget_exceeded" and over is not None
                yield Final(
                    status=result.stop_status, error=_budget_error(over) if budget_hit else result.error
                )
                return
            parsed = result.parsed
            self.messages.append(
                Message(
                    role="assistant",
                    content=parsed.content.strip(),
                    reasoning=parsed.reasoning,
                    tool_calls=list(parsed.tool_calls),
                    raw=result.raw,
                )
            )
            if not reasoning_language_warned and parsed.reasoning:
                drift = reasoning_drift(task, parsed.reasoning)
                if drift is not None:
                    reasoning_language_warned = True
                    yield self._emit(Warning_(kind="language_mix_reasoning", message=drift.reason))
            observations: list[Message] = []
            for err in parsed.errors:
                yield self._emit(Warning_(kind="malformed_tool_call", message=err.message))
                observations.append(
                    Message(
                        role="tool",
                        name=err.name or "error",
                        tool_call_id=err.id,
                        content=f"Error: your tool call could not be used. {err.message}",
                    )
                )
            if parsed.tool_calls:
                async for ev in dispatcher.run(parsed.tool_calls, self.sandbox, observations):
                    yield ev
            if observations:
                self.messages.extend(observations)
                continue
            if parsed.reasoning_tool_calls and reasoning_hints < self.config.max_reasoning_call_hints:
                reasoning_hints += 1
                yield self._emit(Warning_(kind="tool_call_in_reasoning", message=REASONING_CALL_HINT))
                self.messages.append(Message(role="user", content=REASONING_CALL_HINT))
                continue
            answer = parsed.content.strip()
            if not language_checked:
                language_checked = True
                mismatch = language_mismatch(task, answer)
                if mismatch is not None:
                    yield self._emit(Warning_(kind="language_mix", message=mismatch.reason))
                    self.messages.append(Message(role="user", content=correction_prompt(mismatch.user_lang)))
                    continue
            yield Final(status="completed", answer=answer)
            return

    def _emit(self, event: Event, *, trace: bool = True) -> Event:
        event.run_id = self.run_id
        event.step = self._step
        self._events += 1
        if trace and self._trace is not None:
            self._trace.write(event)
        return event

    def _final(self, status: str, answer: str | None, error: str | None) -> Event:
        final = self._emit(Final(status=status, answer=answer, error=error, totals=self.tracker.totals()))
        self.result = RunResult(
            run_id=self.run_id,
            status=status,
            answer=answer,
            error=error,
            messages=list(self.messages),
            totals=self.tracker.totals(),
            trace_path=str(self.trace_path) if self.trace_path else None,
            events=self._events,
        )
        return final

    def _close_trace(self) -> None:
        if self._trace is not None:
            self._trace.close()


def _budget_error(over: tuple[str, float, float] | None) -> str | None:
    if over is None:
        return None
    name, limit, used = over
    return f"budget {name} used up ({used:g} >= {limit:g})"
