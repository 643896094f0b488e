"""Running one turn's tool calls: concurrently, except that calls on the sandbox keep their order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal

from qwq_agent.agent.budgets import BudgetTracker, Deadline
from qwq_agent.agent.events import (
    Event,
    ToolCallEvent,
    ToolOutputDelta,
    ToolResultEvent,
    ToolStarted,
    Warning_,
)
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
        # The calls report progress (started, output) and their end on one queue, in the order it happens.
        progress: asyncio.Queue[Event | tuple[ToolCall, ToolOutput, float] | BaseException] = asyncio.Queue()
        tasks = [asyncio.create_task(self._report(call, sandbox, sandbox_lock, progress)) for call in calls]
        try:
            done = 0
            while done < len(tasks):
                item = await progress.get()
                if isinstance(item, BaseException):
                    raise item
                if not isinstance(item, tuple):
                    yield self.emit(item)
                    continue
                done += 1
                call, output, duration = item
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
            done_call = await t
            assert done_call is not None  # a failed call raised above
            _, output, _ = done_call
            text = output.text
            if output.images:
                text += f"\n[{len(output.images)} image(s) produced; shown to the user]"
            warning = self.repetition.record(call, output.text)
            if warning is not None:
                yield self.emit(Warning_(kind="repeated_tool_call", message=warning.message))
                text += f"\n\nNote: {warning.message}"
            observations.append(Message(role="tool", name=call.name, tool_call_id=call.id, content=text))

    async def _report(
        self, call: ToolCall, sandbox: Any, lock: asyncio.Lock, progress: asyncio.Queue[Any]
    ) -> tuple[ToolCall, ToolOutput, float] | None:
        try:
            result = await self._call(call, sandbox, lock, progress)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            # A CancelledError nobody asked for: `run` waits for one item from each call, so it must
            # hear of it (as an error) or it waits for ever.
            progress.put_nowait(RuntimeError(f"tool call {call.name!r} ended in a stray CancelledError"))
            return None
        except Exception as exc:  # raised in `run` instead, where awaiting the task used to raise it
            progress.put_nowait(exc)
            return None
        progress.put_nowait(result)
        return result

    async def _call(
        self, call: ToolCall, sandbox: Any, lock: asyncio.Lock, progress: asyncio.Queue[Any]
    ) -> tuple[ToolCall, ToolOutput, float]:
        started = time.monotonic()
        # The call's deadline: the run's, or sooner for the per-call limit and the tool-time budget.
        # The registry, the tool and the sandbox below all clamp to it.
        deadline = self.deadline.sooner(self.timeout_s).sooner(self.tracker.left("tool_s"))

        def on_output(stream: str, text: str, capped: bool = False) -> None:
            if text or capped:
                which: Literal["stdout", "stderr"] = "stderr" if stream == "stderr" else "stdout"
                progress.put_nowait(
                    ToolOutputDelta(call_id=call.id, name=call.name, stream=which, text=text, capped=capped)
                )

        ctx = ToolContext(
            sandbox=sandbox, run_id=self.run_id, call_id=call.id, deadline=deadline, on_output=on_output
        )
        tool = self.tools.get(call.name)
        if tool is not None and tool.uses_sandbox:
            async with lock:
                progress.put_nowait(ToolStarted(call_id=call.id, name=call.name))
                output = await self.tools.call(call, ctx, timeout=self.timeout_s)
        else:
            progress.put_nowait(ToolStarted(call_id=call.id, name=call.name))
            output = await self.tools.call(call, ctx, timeout=self.timeout_s)
        duration = time.monotonic() - started
        self.tracker.tool_s += duration
        return call, output, duration
