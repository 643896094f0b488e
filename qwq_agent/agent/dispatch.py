"""Running one turn's tool calls: concurrently, except that calls on the sandbox keep their order."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
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
from qwq_agent.tools.registry import (
    LEFT_IN_THREAD,
    LEFT_RUNNING,
    ToolCallStopped,
    ToolRegistry,
    describe_exception,
)
from qwq_agent.tools.sandbox_tools import SANDBOX_REPLACED_NOTE

# How long past the run's deadline `run` still waits for its calls. The registry stops each call by
# the deadline and gives it 5 s to end its clean-up, so only a call stuck below the registry is still
# out by then; it is abandoned rather than left to hold the run for ever.
OVERDUE_GRACE_S = 10.0
# How long a closed or failed `run` waits for the calls it cancels: the registry gives each tool 5 s to
# end its clean-up once cancelled, so this is only passed by a call stuck below the registry.
CANCEL_WAIT_S = 6.0
# The longest `ToolResultEvent.error_type` kept: a label, not a message (the text says what happened).
MAX_ERROR_TYPE_CHARS = 100
# The longest reason for a lost sandbox a `sandbox_replaced` warning quotes (it may hold the
# supervisor's last words).
MAX_LOST_REASON_CHARS = 300


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
    ) -> AsyncGenerator[Event, None]:
        """Yield call and result events as they happen; append one observation per call, in call order.

        `repairs` maps a call id to the repairs the parser made to it (shown in its `ToolCallEvent`).
        A call still out `OVERDUE_GRACE_S` after the run's deadline is abandoned: its observation says
        so, and the run's next step finds the wall-time budget used up.
        """
        sandbox_lock = asyncio.Lock()  # FIFO, so sandbox calls run in the order the model wrote them
        clock = _ToolClock(self.tracker)
        for call in calls:
            yield self.emit(ToolCallEvent(call=call, repairs=list((repairs or {}).get(call.id, ()))))
        # The calls report progress (started, output) and their end on one queue, in the order it happens.
        progress: asyncio.Queue[Event | tuple[int, ToolOutput, float] | BaseException] = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._report(k, call, sandbox, sandbox_lock, clock, progress))
            for k, call in enumerate(calls)
        ]
        watch = asyncio.create_task(clock.watch())
        started = time.monotonic()
        ended: dict[int, tuple[ToolOutput, float]] = {}
        abandoned = False
        try:
            while len(ended) < len(tasks):
                try:
                    item = await self._next(progress)
                except TimeoutError:  # only a call stuck below the registry's own limits gets here
                    abandoned = True
                    for k, call in enumerate(calls):
                        if k not in ended:
                            ended[k] = (_abandoned(call), time.monotonic() - started)
                            yield self._result_event(call, *ended[k])
                    break
                if isinstance(item, BaseException):
                    raise item
                if not isinstance(item, tuple):
                    yield self.emit(item)
                    continue
                k, output, duration = item
                ended[k] = (output, duration)
                yield self._result_event(calls[k], output, duration)
        finally:
            watch.cancel()
            out = [t for t in tasks if not t.done()]
            for t in out:
                t.cancel()
            if out and not abandoned:
                # Closed early (the consumer stopped) or failed: the calls end before `run` does, so
                # once the run's stream is closed none of them still runs in the sandbox it hands back.
                _, left = await asyncio.wait(out, timeout=CANCEL_WAIT_S)
                out = list(left)
            for t in out:
                # an abandoned call's eventual end is nobody's to handle; retrieved so asyncio does
                # not log it
                t.add_done_callback(lambda t: t.cancelled() or t.exception())
        for k, call in enumerate(calls):
            output, _ = ended[k]
            text = output.text
            if output.images:
                text += f"\n[{len(output.images)} image(s) produced; shown to the user]"
            if output.metadata.get("sandbox_replaced") is True:
                # Whatever the tool, a run that lost its files hears of it: the model in the observation,
                # the caller in the trace and `RunResult.warnings` (the run may still end `completed`).
                yield self.emit(
                    Warning_(kind="sandbox_replaced", message=_lost_message(call, output), level=2)
                )
            warning = self.repetition.record(call, output.text)
            if warning is not None:
                yield self.emit(Warning_(kind="repeated_tool_call", message=warning.message))
                text += f"\n\nNote: {warning.message}"
            observations.append(Message(role="tool", name=call.name, tool_call_id=call.id, content=text))

    async def _next(self, progress: asyncio.Queue[Any]) -> Any:
        """The next item of `progress`; TimeoutError once the run's deadline is `OVERDUE_GRACE_S` past.

        Every call is limited by the deadline in the registry, so this wait ends before then unless
        something below it hangs; the run must end all the same.
        """
        left = self.deadline.left()
        async with asyncio.timeout(None if left is None else left + OVERDUE_GRACE_S):
            return await progress.get()

    def _result_event(self, call: ToolCall, output: ToolOutput, duration: float) -> Event:
        return self.emit(
            ToolResultEvent(
                call_id=call.id,
                name=call.name,
                text=output.text,
                is_error=output.is_error,
                images=output.images,
                duration_s=duration,
                error_type=_error_type(output),
            )
        )

    async def _report(
        self,
        index: int,
        call: ToolCall,
        sandbox: Any,
        lock: asyncio.Lock,
        clock: _ToolClock,
        progress: asyncio.Queue[Any],
    ) -> None:
        try:
            output, duration = await self._call(call, sandbox, lock, clock, progress)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            # A CancelledError nobody asked for: `run` waits for one item from each call, so it must
            # hear of it (as an error) or it waits until the deadline.
            progress.put_nowait(RuntimeError(f"tool call {call.name!r} ended in a stray CancelledError"))
            return
        except (KeyboardInterrupt, SystemExit):
            # The process is being stopped (a tool's own are its output already, in the registry):
            # asyncio re-raises these out of the event loop.
            raise
        except Exception as exc:  # our own failure: raised in `run`, where the loop reports it
            progress.put_nowait(exc)
            return
        except BaseException as exc:
            # Not an Exception, yet not a stop of the process either (pytest's Failed, a library's
            # `Abort` raised around the tool): this call's failure, not the run's.
            output = ToolOutput(
                text=f"Tool '{call.name}' failed: {describe_exception(exc)}",
                is_error=True,
                metadata={"error": "exception", "exception_type": type(exc).__name__},
            )
            duration = 0.0
        progress.put_nowait((index, output, duration))

    async def _call(
        self,
        call: ToolCall,
        sandbox: Any,
        lock: asyncio.Lock,
        clock: _ToolClock,
        progress: asyncio.Queue[Any],
    ) -> tuple[ToolOutput, float]:
        tool = self.tools.get(call.name)
        # A sandbox call waits here for the ones written before it; its time (its timeout, its share of
        # the tool-time budget) starts when its turn comes, not while it waits.
        if tool is None or not tool.uses_sandbox:
            return await self._run_call(call, sandbox, clock, progress)
        async with lock:
            # One sandbox call at a time: a replacement counted meanwhile was this call's doing.
            before = getattr(sandbox, "replacements", 0)
            output, duration = await self._run_call(call, sandbox, clock, progress)
            if getattr(sandbox, "replacements", 0) != before:
                output = _lost_sandbox(output, str(getattr(sandbox, "replaced_because", "") or ""))
            return output, duration

    async def _run_call(
        self, call: ToolCall, sandbox: Any, clock: _ToolClock, progress: asyncio.Queue[Any]
    ) -> tuple[ToolOutput, float]:
        # The call's time counts from the instant its deadline is reckoned from: started later, a
        # call its deadline ended measured a hair under what was left and the run went on "in budget".
        now = time.monotonic()
        left = clock.left(now)
        if left is not None and left <= 0:
            # A sandbox call whose turn came after the calls before it used up the budget.
            return _out_of_tool_time(call, self.tracker.budget.max_tool_s, 0.0, ran=False), 0.0
        # The call's deadline: the run's, or sooner for the per-call limit and what is left of the
        # tool-time budget were the calls running beside it to end now (`_ToolClock` stops it sooner
        # when they do not). The registry, the tool and the sandbox below all clamp to it.
        deadline = self.deadline.sooner(self.timeout_s).sooner(left)

        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        ended = False  # output after the call's end (a sync tool abandoned in its thread) is dropped

        def deliver(delta: ToolOutputDelta) -> None:
            if not ended:
                progress.put_nowait(delta)

        def on_output(stream: str, text: str, capped: bool = False) -> None:
            if ended or not (text or capped):
                return
            which: Literal["stdout", "stderr"] = "stderr" if stream == "stderr" else "stdout"
            delta = ToolOutputDelta(call_id=call.id, name=call.name, stream=which, text=text, capped=capped)
            if threading.get_ident() == loop_thread:
                deliver(delta)
                return
            # A sync tool's thread: an asyncio.Queue is not thread-safe, and a put from there did not
            # wake the loop to pass the delta on.
            try:
                loop.call_soon_threadsafe(deliver, delta)
            except RuntimeError:  # the loop is closed: the run is long over
                pass

        ctx = ToolContext(
            sandbox=sandbox, run_id=self.run_id, call_id=call.id, deadline=deadline, on_output=on_output
        )
        progress.put_nowait(ToolStarted(call_id=call.id, name=call.name))
        running = clock.start(now)
        # Stopped through the registry, not cancelled: the registry then says whether the tool ended
        # or ignored its cancellation and still runs.
        stop = asyncio.Event()
        task = asyncio.ensure_future(self.tools.call(call, ctx, timeout=self.timeout_s, stop=stop))
        try:
            if not await clock.ended_in_budget(task, running):
                stop.set()
                try:
                    await asyncio.wait({task})
                except asyncio.CancelledError:
                    await _cancelled(task)
                    raise
        finally:
            duration = clock.end(running)
            ended = True
        try:
            return task.result(), duration
        except ToolCallStopped as exc:
            limit = self.tracker.budget.max_tool_s
            out = _out_of_tool_time(
                call, limit, duration, ran=exc.started, left_running=exc.left_running, in_thread=exc.in_thread
            )
            return out, duration


class _Running:
    """One call on the tool clock: when it started, and whether another call ran while it did."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.shared = False


class _ToolClock:
    """The tool-time budget as the calls of one turn spend it together (see `Budget`).

    The budget bounds the sum of the calls' durations, so every running call's time counts as it
    passes: with N calls running it runs out N times as fast. `watch()` sets `ran_out` once the ended
    calls' time (`tracker.tool_s`) plus the running ones' elapsed time reaches the limit.
    """

    def __init__(self, tracker: BudgetTracker) -> None:
        self.tracker = tracker
        self.ran_out = asyncio.Event()
        self._running: list[_Running] = []
        self._changed = asyncio.Event()

    def left(self, now: float | None = None) -> float | None:
        """What is left of the budget at `now` (default: now), the running calls' time so far counted;
        None: unlimited."""
        limit = self.tracker.budget.max_tool_s
        if limit is None:
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, limit - self.tracker.tool_s - sum(now - r.started for r in self._running))

    def start(self, started: float) -> _Running:
        running = _Running(started)
        self._running.append(running)
        if len(self._running) > 1:
            for r in self._running:
                r.shared = True
        self._changed.set()
        return running

    def end(self, running: _Running) -> float:
        """Take `running` off the clock, adding its duration to the run's tool time; the duration."""
        duration = time.monotonic() - running.started
        self._running.remove(running)
        self.tracker.tool_s += duration
        self._changed.set()
        return duration

    async def watch(self) -> None:
        """Set `ran_out` when the budget is used up; returns then (or at once when it is unlimited)."""
        while (left := self.left()) is not None:
            if left <= 0:
                self.ran_out.set()
                return
            self._changed.clear()
            # At the present rate it runs out in left / N; a call starting or ending changes the rate.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left / len(self._running) if self._running else None):
                    await self._changed.wait()

    async def ended_in_budget(self, task: asyncio.Future[ToolOutput], running: _Running) -> bool:
        """Wait for `task` to end; False when the budget ran out first and `running` is to be stopped.

        A call that never ran beside another has what was left of the budget as its deadline, which
        ends it at the moment the budget runs out: its own timeout is its observation, whichever of
        the two fires first.
        """
        out: asyncio.Future[Any] = asyncio.ensure_future(self.ran_out.wait())
        try:
            done, _ = await asyncio.wait({task, out}, return_when=asyncio.FIRST_COMPLETED)
            if task in done or not running.shared:
                await asyncio.wait({task})
                return True
            return False
        except asyncio.CancelledError:
            # Closed early: the call ends before this does, as when the registry was awaited directly.
            await _cancelled(task)
            raise
        finally:
            out.cancel()


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait for it to end, even when cancelled meanwhile (the registry bounds the
    wait by its clean-up grace): a stopped call must not go on in the sandbox after its turn."""
    task.cancel()
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise


def _out_of_tool_time(
    call: ToolCall,
    limit: float | None,
    duration: float,
    *,
    ran: bool,
    left_running: bool = False,
    in_thread: bool = False,
) -> ToolOutput:
    budget = f"the run's tool-time budget ({limit or 0:g} s, the sum of all tool calls' durations)"
    if not ran:
        text = f"Tool '{call.name}' was not run: {budget} was used up by other calls."
    elif in_thread:
        text = (
            f"Tool '{call.name}' was given up on after {duration:.2f} s: {budget} ran out while it ran "
            f"beside other calls; {LEFT_IN_THREAD}."
        )
    elif left_running:
        text = (
            f"Tool '{call.name}' was cancelled: {budget} ran out while it ran beside other calls; "
            f"{LEFT_RUNNING} after {duration:.2f} s."
        )
    else:
        text = (
            f"Tool '{call.name}' was stopped after {duration:.2f} s: {budget} ran out while it ran beside "
            "other calls."
        )
    return ToolOutput(
        text=text,
        is_error=True,
        metadata={"error": "tool_budget"},
    )


def _error_type(output: ToolOutput) -> str | None:
    """The label of a failed output (its `metadata["error"]`, e.g. "timeout") for `ToolResultEvent`.

    None for a success, and for a label that is not a string: the metadata is the tool's own, and an
    HTTP or MCP wrapper puts a status code or an error object there, which is no label (and ended the
    run when it failed the event's validation). A long one is cut: it goes into the event and the trace.
    """
    label = output.metadata.get("error") if output.is_error else None
    if not isinstance(label, str):
        return None
    label = str.__str__(label)  # its characters: a str subclass may override len() and slicing
    return label if len(label) <= MAX_ERROR_TYPE_CHARS else label[: MAX_ERROR_TYPE_CHARS - 1] + "…"


def _abandoned(call: ToolCall) -> ToolOutput:
    return ToolOutput(
        text=f"Tool '{call.name}' had not finished when the run's time was up; it was abandoned.",
        is_error=True,
        metadata={"error": "timeout"},
    )


def _lost_sandbox(output: ToolOutput, why: str) -> ToolOutput:
    """`output` of a call that found the sandbox dead and ran in a fresh one: marked, and noted for the
    model unless the tool said so itself (python, shell and the editor do; `search_code`'s "no
    matches", or a user's tool, would otherwise hide that the files are gone)."""
    metadata = {**output.metadata, "sandbox_replaced": True, "sandbox_lost_because": why}
    if output.metadata.get("sandbox_replaced") is True:
        return output.model_copy(update={"metadata": metadata})
    return output.model_copy(update={"text": f"{SANDBOX_REPLACED_NOTE}\n{output.text}", "metadata": metadata})


def _lost_message(call: ToolCall, output: ToolOutput) -> str:
    why = str(output.metadata.get("sandbox_lost_because") or "it died")[:MAX_LOST_REASON_CHARS]
    return (
        f"the run's sandbox was lost ({why}) and replaced by a fresh one at call {call.id} ({call.name}): "
        "the files and variables the run had made there are gone"
    )
