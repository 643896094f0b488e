"""The agent loop: render, stream, parse, run tools, feed observations back, until an answer.

Everything that can go wrong in a step becomes either an observation the model can act on (a
malformed or unknown call, invalid arguments, a tool that raised, a dead sandbox) or a `Final` event
with a status for the caller (a budget used up, a reasoning loop that would not stop, a model server
that stays down). The run never ends with a stack trace, and its trace survives.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from qwq_agent.agent import parser as qparser
from qwq_agent.agent.admission import KVAdmission
from qwq_agent.agent.budgets import Budget, BudgetTracker
from qwq_agent.agent.constrained import CallOpenWatcher, constrained_tool_call_completion
from qwq_agent.agent.events import (
    BudgetExceeded,
    ContentDelta,
    Event,
    Final,
    ModelCall,
    ReasoningDelta,
    RunStarted,
    ToolCallEvent,
    ToolResultEvent,
    UsageEvent,
    Warning_,
)
from qwq_agent.agent.language import correction_prompt, language_mismatch
from qwq_agent.agent.loop_detector import (
    LoopDetectorConfig,
    ReasoningLoopDetector,
    RepetitionConfig,
    ToolCallRepetitionDetector,
    close_text,
    nudge_text,
)
from qwq_agent.agent.messages import Message, ToolCall
from qwq_agent.agent.trace import TraceWriter
from qwq_agent.protocols import (
    Completion,
    Model,
    SamplingParams,
    TextDelta,
    Tool,
    ToolContext,
    ToolOutput,
    Usage,
)
from qwq_agent.tools.registry import ToolRegistry

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful assistant that solves tasks with tools. Compute, count, inspect and verify with "
    "the tools instead of doing it in your head; when the task is done, give the final answer concisely."
)

REASONING_CALL_HINT = (
    "Your <tool_call> was written inside your reasoning, so it was not executed. Finish your reasoning "
    "with </think> first, then write the <tool_call> block."
)


class AgentConfig(BaseModel):
    """How one agent behaves; every threshold is configuration."""

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(max_new_tokens=8192))
    budget: Budget = Field(default_factory=Budget)
    loop_detector: LoopDetectorConfig = Field(default_factory=LoopDetectorConfig)
    repetition: RepetitionConfig = Field(default_factory=RepetitionConfig)
    check_language: bool = True
    # Above the sandbox tools' own cap (600 s), so their timeouts report first, with detail.
    tool_timeout_s: float = 660.0
    model_retries: int = 2
    max_reasoning_call_hints: int = 2
    # Generate every tool call under a grammar built from the tools' schemas, so calls are always
    # well formed (SGLang's native client only; see qwq_agent.agent.constrained).
    constrained_tool_calls: bool = False
    # KV tokens a run reserves under admission control: its expected peak context.
    kv_reservation_tokens: int = 8192


class RunResult(BaseModel):
    """How a run ended, with what it produced and used."""

    run_id: str
    status: str
    answer: str | None = None
    error: str | None = None
    messages: list[Message]
    totals: dict[str, float]
    trace_path: str | None = None
    events: int = 0


class _Turn(BaseModel):
    raw: str = ""
    parsed: qparser.ParseResult = Field(default_factory=qparser.ParseResult)
    usage: Usage = Field(default_factory=Usage)
    stop_status: str | None = None  # set when the turn itself ended the run


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
        self._trace: TraceWriter | None = None
        self._events = 0
        self._step = 0

    # -- public API -------------------------------------------------------------------------------

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
        if history:
            self.messages = [*history, Message(role="user", content=task)]
        else:
            self.messages = self._initial_messages(task)
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

    # -- the steps ----------------------------------------------------------------------------------

    def _initial_messages(self, task: str) -> list[Message]:
        msgs = []
        if self.config.system_prompt:
            msgs.append(Message(role="system", content=self.config.system_prompt))
        msgs.append(Message(role="user", content=task))
        return msgs

    async def _steps(self, task: str) -> AsyncIterator[Event]:
        repetition = ToolCallRepetitionDetector(self.config.repetition)
        language_checked = not self.config.check_language
        reasoning_hints = 0
        while True:
            if (over := self.tracker.exceeded()) is not None:
                name, limit, used = over
                yield self._emit(BudgetExceeded(budget=name, limit=limit, used=used))
                yield Final(status="budget_exceeded", error=f"budget {name} used up ({used:g} >= {limit:g})")
                return
            self._step += 1
            self.tracker.steps += 1
            turn = _Turn()
            async for ev in self._generate(turn):
                yield ev
            if turn.stop_status is not None:
                over = self.tracker.exceeded()
                error = turn.usage.finish_reason
                if turn.stop_status == "budget_exceeded" and over is not None:
                    error = f"budget {over[0]} used up ({over[2]:g} >= {over[1]:g})"
                yield Final(status=turn.stop_status, error=error)
                return
            parsed = turn.parsed
            self.messages.append(
                Message(
                    role="assistant",
                    content=parsed.content.strip(),
                    reasoning=parsed.reasoning,
                    tool_calls=list(parsed.tool_calls),
                    raw=turn.raw,
                )
            )
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
                async for ev in self._run_tools(parsed.tool_calls, observations, repetition):
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
                    prompt = correction_prompt(mismatch.user_lang)
                    yield self._emit(Warning_(kind="language_mix", message=mismatch.reason))
                    self.messages.append(Message(role="user", content=prompt))
                    continue
            yield Final(status="completed", answer=answer)
            return

    async def _generate(self, turn: _Turn) -> AsyncIterator[Event]:
        """Stream one assistant turn into `turn`, intervening when the reasoning goes in circles."""
        cfg = self.config
        detector = ReasoningLoopDetector(cfg.loop_detector)
        stream_parser = qparser.StreamParser(id_prefix=f"call_{self._step}_")
        prefix = ""
        attempts = 0
        forced_close = False
        constrain = self._can_constrain()
        while True:
            pieces: list[str] = []
            completion: Completion | None = None
            signal = None
            call_open = wall_out = False
            watcher = CallOpenWatcher(prefix) if constrain else None
            stream = self.model.stream(self.messages, self.tools.specs(), self._sampling(), prefix=prefix)
            try:
                async for mev in stream:
                    if isinstance(mev, TextDelta):
                        delta = mev.text
                        cut = watcher.feed(delta) if watcher is not None else None
                        if cut is not None:  # the rest of the call is generated under the grammar
                            delta, call_open = delta[:cut], True
                        pieces.append(delta)
                        for pev in stream_parser.feed(delta):
                            ev = self._parser_event(pev)
                            if ev is not None:
                                yield ev
                            # After a forced `</think>` a model that still circles does so in its answer.
                            if isinstance(ev, ReasoningDelta) or (
                                forced_close and isinstance(ev, ContentDelta)
                            ):
                                signal = detector.feed(ev.text) or signal
                        if self._left("wall_s") == 0.0:
                            wall_out = True
                        if signal is not None or call_open or wall_out:
                            break  # closing the stream aborts the request on the server
                    elif isinstance(mev, Completion):
                        completion = mev
            except Exception as exc:
                if not _is_model_error(exc) or attempts >= cfg.model_retries:
                    turn.stop_status = "model_error"
                    turn.usage.finish_reason = f"{type(exc).__name__}: {exc}"
                    yield self._emit(Warning_(kind="model_error", message=turn.usage.finish_reason, level=3))
                    return
                attempts += 1
                yield self._emit(
                    Warning_(kind="model_error", message=f"{type(exc).__name__}: {exc}; retrying the turn")
                )
                detector = ReasoningLoopDetector(cfg.loop_detector)
                stream_parser = qparser.StreamParser(id_prefix=f"call_{self._step}_")
                prefix = ""
                continue
            finally:
                await _aclose(stream)
            text = "".join(pieces)
            usage = completion.usage if completion else Usage(completion_tokens=0, finish_reason="aborted")
            self._account(usage)
            yield self._emit(
                ModelCall(
                    prompt=completion.prompt if completion else None,
                    prefix=prefix,
                    completion=text,
                    usage=usage,
                )
            )
            yield self._emit(UsageEvent(usage=usage, totals=self.tracker.totals()))
            turn.usage = usage
            if wall_out:
                turn.raw, turn.stop_status = prefix + text, "budget_exceeded"
                yield self._emit(
                    Warning_(kind="budget", message="the wall-time budget ran out mid-generation")
                )
                return
            if call_open and signal is None:
                prompt_so_far = self.model.render_prompt(self.messages, self.tools.specs()) + prefix + text  # type: ignore[attr-defined]
                try:
                    call_text, done = await constrained_tool_call_completion(
                        self.model,
                        prompt_so_far,
                        self.tools.specs(),
                        cfg.sampling,  # type: ignore[arg-type]
                    )
                except Exception as exc:
                    if not _is_model_error(exc):
                        raise
                    turn.stop_status = "model_error"
                    turn.usage.finish_reason = f"{type(exc).__name__}: {exc}"
                    yield self._emit(Warning_(kind="model_error", message=turn.usage.finish_reason, level=3))
                    return
                self._account(done.usage)
                yield self._emit(
                    ModelCall(
                        prompt=done.prompt, prefix=prefix + text, completion=done.text, usage=done.usage
                    )
                )
                for pev in stream_parser.feed(call_text):
                    ev = self._parser_event(pev)
                    if ev is not None:
                        yield ev
                prefix = prefix + text + call_text
                continue
            if signal is None and not self._needs_closure(prefix + text, usage):
                for pev in stream_parser.close():
                    ev = self._parser_event(pev)
                    if ev is not None:
                        yield ev
                turn.raw = prefix + text
                turn.parsed = stream_parser.result()
                return
            if signal is None:  # ran out of tokens inside the reasoning: make it conclude
                signal_level, reason = 2, "the reasoning hit the token limit without concluding"
            else:
                signal_level, reason = signal.level, signal.reason
            yield self._emit(Warning_(kind="reasoning_loop", message=reason, level=signal_level))
            if signal_level >= 3 or self.tracker.exceeded() is not None:
                turn.raw = prefix + text
                turn.stop_status = "reasoning_loop" if signal_level >= 3 else "budget_exceeded"
                return
            inject = nudge_text(signal) if signal_level == 1 else close_text(signal)
            forced_close = forced_close or signal_level == 2
            for pev in stream_parser.feed(inject):
                ev = self._parser_event(pev)
                if ev is not None:
                    yield ev
            prefix = prefix + text + inject

    def _left(self, budget: str) -> float | None:
        """What is left of a budget (`wall_s`, `tool_s`, `generated_tokens`), or None if unlimited."""
        b, t = self.config.budget, self.tracker
        limit, used = {
            "wall_s": (b.max_wall_s, t.wall_s),
            "tool_s": (b.max_tool_s, t.tool_s),
            "generated_tokens": (b.max_generated_tokens, t.generated_tokens),
        }[budget]
        return None if limit is None else max(0.0, limit - used)

    def _sampling(self) -> SamplingParams:
        """The configured sampling, with no more new tokens than the generation budget has left."""
        params = self.config.sampling
        left = self._left("generated_tokens")
        if left is not None and left < params.max_new_tokens:
            return params.model_copy(update={"max_new_tokens": max(1, int(left))})
        return params

    def _can_constrain(self) -> bool:
        """Constrained calls need a model that renders prompts and takes grammars (SGLang's client)."""
        return (
            self.config.constrained_tool_calls
            and len(self.tools) > 0
            and hasattr(self.model, "render_prompt")
            and hasattr(self.model, "generate")
        )

    def _needs_closure(self, raw: str, usage: Usage) -> bool:
        return usage.finish_reason == "length" and "</think>" not in raw

    async def _run_tools(
        self, calls: Sequence[ToolCall], observations: list[Message], repetition: ToolCallRepetitionDetector
    ) -> AsyncIterator[Event]:
        """Run the calls concurrently; calls that use the sandbox run in the order they were made."""
        sandbox_lock = asyncio.Lock()
        for call in calls:
            yield self._emit(ToolCallEvent(call=call))
        tasks = [asyncio.create_task(self._call_tool(call, sandbox_lock)) for call in calls]
        try:
            for fut in asyncio.as_completed(tasks):
                call, output, duration = await fut
                yield self._emit(
                    ToolResultEvent(
                        call_id=call.id,
                        name=call.name,
                        text=output.text,
                        is_error=output.is_error,
                        images=output.images,
                        duration_s=duration,
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
            warning = repetition.record(call, output.text)
            if warning is not None:
                yield self._emit(Warning_(kind="repeated_tool_call", message=warning.message))
                text += f"\n\nNote: {warning.message}"
            observations.append(Message(role="tool", name=call.name, tool_call_id=call.id, content=text))

    async def _call_tool(
        self, call: ToolCall, sandbox_lock: asyncio.Lock
    ) -> tuple[ToolCall, ToolOutput, float]:
        started = time.monotonic()
        tool = self.tools.get(call.name)
        ctx = ToolContext(sandbox=self.sandbox, run_id=self.run_id, call_id=call.id)
        limits = [self.config.tool_timeout_s, self._left("tool_s"), self._left("wall_s")]
        timeout = max(0.001, min(x for x in limits if x is not None))
        if tool is not None and getattr(tool, "uses_sandbox", False):
            async with sandbox_lock:
                output = await self.tools.call(call, ctx, timeout=timeout)
        else:
            output = await self.tools.call(call, ctx, timeout=timeout)
        duration = time.monotonic() - started
        self.tracker.tool_s += duration
        return call, output, duration

    # -- bookkeeping --------------------------------------------------------------------------------

    def _account(self, usage: Usage) -> None:
        self.tracker.generated_tokens += usage.completion_tokens
        self.tracker.prompt_tokens += usage.prompt_tokens
        self.tracker.cached_tokens += usage.cached_tokens

    def _parser_event(self, pev: Any) -> Event | None:
        kind = type(pev).__name__
        if kind == "ReasoningDelta":
            return self._emit(ReasoningDelta(text=pev.text), trace=False)
        if kind == "ContentDelta":
            return self._emit(ContentDelta(text=pev.text), trace=False)
        return None

    def _emit(self, event: Event, *, trace: bool = True) -> Event:
        event.run_id = self.run_id
        event.step = self._step
        self._events += 1
        # Deltas are not traced one by one: the model_call event holds the whole completion.
        if trace and self._trace is not None:
            self._trace.write(event)
        return event

    def _final(self, status: str, answer: str | None, error: str | None) -> Final:
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
        return final  # type: ignore[return-value]

    def _close_trace(self) -> None:
        if self._trace is not None:
            self._trace.close()


def _is_model_error(exc: BaseException) -> bool:
    from qwq_agent.agent.clients.errors import ModelError

    return isinstance(exc, ModelError | OSError | TimeoutError)


async def _aclose(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            pass
