"""Running one turn's tool calls: concurrently, except that calls on the sandbox keep their order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from qwq_agent.agent.budgets import BudgetTracker, Deadline
from qwq_agent.agent.events import Event, ToolCallEvent, ToolResultEvent, Warning_
from qwq_agent.agent.loop_detector import ToolCallRepetitionDetector
from qwq_agent.agent.messages import Message, ToolCall
from qwq_agent.protocols import ToolContext, ToolOutput
from qwq_agent.tools.registry import ToolRegistry


class ToolDispatcher:
    """Runs tool calls for one run and turns their outputs into the observations the model reads."""

    def __init__(
        self,
        tools: ToolRegistry,
        tracker: BudgetTracker,
        emit: Callable[..., Event],
        *,
        run_id: str,
        timeout_s: float,
        repetition: ToolCallRepetitionDetector,
        deadline: Deadline | None = None,
    ) -> None:
        self.tools = tools
        self.tracker = tracker
        self.emit = emit
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.repetition = repetition
        self.deadline = deadline if deadline is not None else tracker.deadline

    async def run(
        self,
        calls: Sequence[ToolCall],
        sandbox: Any,
        observations: list[Message],
        *,
        repairs: Mapping[str, list[str]] | None = None,
    ) -> AsyncIterator[Event]:
        """Yield call and result events as they happen; append one observation per call, in call order.

        `repairs` maps a call id to the repairs the parser made to it (shown in its `ToolCallEvent`).
        """
        sandbox_lock = asyncio.Lock()  # FIFO, so sandbox calls run in the order the model wrote them
        for call in calls:
            yield self.emit(ToolCallEvent(call=call, repairs=list((repairs or {}).get(call.id, ()))))
        tasks = [asyncio.create_task(self._call(call, sandbox, sandbox_lock)) for call in calls]
        try:
            for fut in asyncio.as_completed(tasks):
                call, output, duration = await fut
                yield self.emit(
                    ToolResultEvent(
                        call_id=call.id,
                        name=call.name,
                        text=output.text,
                        is_error=output.is_error,
                        images=output.images,
                        duration_s=duration,
                        error_type=output.metadata.get("error") if output.is_error else None,
                    )
                )
        finally:
            for t in tasks:
                t.cancel()
        for call, t in zip(calls, tasks, strict=True):
            _, output, _ = t.result()
            text = output.text
            if output.images:
                text += f"\n[{len(output.images)} image(s) produced; shown to the user]"
            warning = self.repetition.record(call, output.text)
            if warning is not None:
                yield self.emit(Warning_(kind="repeated_tool_call", message=warning.message))
                text += f"\n\nNote: {warning.message}"
            observations.append(Message(role="tool", name=call.name, tool_call_id=call.id, content=text))

    async def _call(
        self, call: ToolCall, sandbox: Any, lock: asyncio.Lock
    ) -> tuple[ToolCall, ToolOutput, float]:
        started = time.monotonic()
        # The call's deadline: the run's, or sooner for the per-call limit and the tool-time budget.
        # The registry, the tool and the sandbox below all clamp to it.
        deadline = self.deadline.sooner(self.timeout_s).sooner(self.tracker.left("tool_s"))
        ctx = ToolContext(sandbox=sandbox, run_id=self.run_id, call_id=call.id, deadline=deadline)
        tool = self.tools.get(call.name)
        if tool is not None and getattr(tool, "uses_sandbox", False):
            async with lock:
                output = await self.tools.call(call, ctx, timeout=self.timeout_s)
        else:
            output = await self.tools.call(call, ctx, timeout=self.timeout_s)
        duration = time.monotonic() - started
        self.tracker.tool_s += duration
        return call, output, duration
