"""OpenTelemetry spans of agent runs, built from the run's event stream.

One `invoke_agent` span per run, a `step N` span per step under it, and under each step a `chat`
span per model request and an `execute_tool` span per tool call, with the attributes of the GenAI
semantic conventions (model, token usage with cached tokens, finish reason, tool name and call id,
errors) plus the run and sandbox ids. Events carry their own timestamps, so spans get the times the
things happened, not the times the recorder saw them. Prompts, outputs, tool arguments and results
are recorded only with `capture_content`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from qwq_agent.agent.events import (
    BudgetExceeded,
    Event,
    Final,
    ModelCall,
    RunStarted,
    ToolCallEvent,
    ToolResultEvent,
    Warning_,
)

__all__ = ["CAPTURE_CONTENT_ENV", "SpanRecorder", "traced"]

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_AGENT_NAME = "qwq-agent"
_MAX_ATTR_CHARS = 16_000


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ATTR_CHARS else text[: _MAX_ATTR_CHARS - 1] + "…"


@dataclass
class _Run:
    run_id: str
    span: Span
    model: str
    sampling: dict[str, Any]
    last_ts: float
    step: int = 0
    step_span: Span | None = None
    step_start: float = 0.0
    tools: dict[str, Span] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0, "cached": 0})
    failed_call: bool = False  # the last model call failed and has its span (its model_error warning follows)


class SpanRecorder:
    """Turns events into spans; call `handle(ev)` for each event of one or more runs, in order.

    `provider` names the serving system (`gen_ai.provider.name`, e.g. "sglang"); `capture_content`
    defaults to the `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` environment variable.
    """

    def __init__(
        self,
        tracer: Tracer | None = None,
        *,
        provider: str | None = None,
        capture_content: bool | None = None,
    ) -> None:
        self.tracer = tracer or trace.get_tracer("qwq_agent")
        self.provider = provider
        if capture_content is None:
            from qwq_agent.settings import get_settings

            capture_content = get_settings().otel_capture_content
        self.capture_content = capture_content
        self._runs: dict[str, _Run] = {}

    def handle(self, ev: Event) -> None:
        """Record one event (deltas and usage events carry nothing a span needs and are skipped)."""
        if isinstance(ev, RunStarted):
            self._start_run(ev)
            return
        run = self._runs.get(ev.run_id)
        if run is None:
            return
        if ev.step > run.step and not isinstance(ev, Final):
            self._next_step(run, ev.step)
        if isinstance(ev, ModelCall):
            self._model_call(run, ev)
        elif isinstance(ev, ToolCallEvent):
            self._tool_call(run, ev)
        elif isinstance(ev, ToolResultEvent):
            self._tool_result(run, ev)
        elif isinstance(ev, Warning_):
            self._warning(run, ev)
        elif isinstance(ev, BudgetExceeded):
            run.span.add_event(
                "qwq_agent.budget_exceeded",
                {"qwq_agent.budget": ev.budget, "qwq_agent.limit": ev.limit, "qwq_agent.used": ev.used},
                timestamp=_ns(ev.ts),
            )
        elif isinstance(ev, Final):
            self._final(run, ev)
            return
        run.last_ts = max(run.last_ts, ev.ts)

    def abort(self, reason: str, run_ids: Iterable[str] | None = None) -> None:
        """End the open spans of runs `run_ids` as failed (their stream stopped without a `Final`).

        `run_ids=None` ends every run still open. Runs not open (ended, or never started) are
        skipped; the other runs of this recorder are left as they are and go on being recorded.
        """
        ids = list(self._runs) if run_ids is None else [i for i in dict.fromkeys(run_ids) if i in self._runs]
        for run_id in ids:
            run = self._runs.pop(run_id)
            for span in run.tools.values():
                span.set_status(Status(StatusCode.ERROR, reason))
                span.end(end_time=_ns(run.last_ts))
            if run.step_span is not None:
                run.step_span.end(end_time=_ns(run.last_ts))
            run.span.set_attribute("error.type", "aborted")
            run.span.set_status(Status(StatusCode.ERROR, reason))
            run.span.end(end_time=_ns(run.last_ts))

    # -- one method per kind of event ---------------------------------------------------------------

    def _start_run(self, ev: RunStarted) -> None:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": _AGENT_NAME,
            "gen_ai.conversation.id": ev.run_id,
            "gen_ai.request.model": ev.model,
            "qwq_agent.run_id": ev.run_id,
            "qwq_agent.tools": ev.tools,
        }
        if ev.sandbox_id:
            attrs["qwq_agent.sandbox_id"] = ev.sandbox_id
        if self.provider:
            attrs["gen_ai.provider.name"] = self.provider
        if self.capture_content:
            attrs["gen_ai.input.messages"] = _messages("user", ev.task)
        span = self.tracer.start_span(
            f"invoke_agent {_AGENT_NAME}", kind=SpanKind.INTERNAL, attributes=attrs, start_time=_ns(ev.ts)
        )
        sampling = ev.config.get("sampling", {}) if isinstance(ev.config, dict) else {}
        self._runs[ev.run_id] = _Run(
            run_id=ev.run_id, span=span, model=ev.model, sampling=sampling, last_ts=ev.ts
        )

    def _next_step(self, run: _Run, step: int) -> None:
        if run.step_span is not None:
            run.step_span.end(end_time=_ns(run.last_ts))
        run.step = step
        # A step starts when the previous one ended: the loop goes straight on to the next request.
        run.step_start = run.last_ts
        run.step_span = self.tracer.start_span(
            f"step {step}",
            context=trace.set_span_in_context(run.span),
            attributes={"qwq_agent.step": step, "qwq_agent.run_id": self._run_id(run)},
            start_time=_ns(run.step_start),
        )

    def _parent(self, run: _Run) -> Any:
        return trace.set_span_in_context(run.step_span or run.span)

    def _model_call(self, run: _Run, ev: ModelCall) -> None:
        usage = ev.usage
        start = ev.ts - usage.latency_s if usage.latency_s is not None else run.step_start
        start = min(max(start, run.step_start), ev.ts)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": run.model,
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "gen_ai.usage.cache_read.input_tokens": usage.cached_tokens,
            "qwq_agent.run_id": self._run_id(run),
            "qwq_agent.step": run.step,
        }
        if usage.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = [usage.finish_reason]
        if usage.ttft_s is not None:
            attrs["qwq_agent.ttft_s"] = usage.ttft_s
        if self.provider:
            attrs["gen_ai.provider.name"] = self.provider
        for key, name in (
            ("max_new_tokens", "gen_ai.request.max_tokens"),
            ("temperature", "gen_ai.request.temperature"),
            ("top_p", "gen_ai.request.top_p"),
            ("top_k", "gen_ai.request.top_k"),
        ):
            if run.sampling.get(key) is not None:
                attrs[name] = run.sampling[key]
        if ev.prefix:
            attrs["qwq_agent.continuation"] = True  # a turn resumed after a nudge or a grammar-made call
        if self.capture_content:
            if ev.prompt is not None:
                attrs["gen_ai.input.messages"] = _messages("user", ev.prompt + ev.prefix)
            attrs["gen_ai.output.messages"] = _messages("assistant", ev.completion, usage.finish_reason)
        span = self.tracer.start_span(
            f"chat {run.model}",
            context=self._parent(run),
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=_ns(start),
        )
        if usage.finish_reason == "aborted":
            span.set_attribute("error.type", "aborted")
        if ev.error is not None:
            span.set_attribute("error.type", ev.error.split(":", 1)[0] or "model_error")
            span.set_status(Status(StatusCode.ERROR, ev.error[:200]))
        run.failed_call = ev.error is not None
        span.end(end_time=_ns(ev.ts))
        run.usage["input"] += usage.prompt_tokens
        run.usage["output"] += usage.completion_tokens
        run.usage["cached"] += usage.cached_tokens

    def _tool_call(self, run: _Run, ev: ToolCallEvent) -> None:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": ev.call.name,
            "gen_ai.tool.call.id": ev.call.id,
            "gen_ai.tool.type": "function",
            "qwq_agent.run_id": self._run_id(run),
            "qwq_agent.step": run.step,
        }
        if ev.repairs:
            attrs["qwq_agent.repairs"] = ev.repairs
        if self.capture_content:
            attrs["gen_ai.tool.call.arguments"] = _clip(json.dumps(ev.call.arguments, ensure_ascii=False))
        run.tools[ev.call.id] = self.tracer.start_span(
            f"execute_tool {ev.call.name}",
            context=self._parent(run),
            kind=SpanKind.INTERNAL,
            attributes=attrs,
            start_time=_ns(ev.ts),
        )

    def _tool_result(self, run: _Run, ev: ToolResultEvent) -> None:
        span = run.tools.pop(ev.call_id, None)
        if span is None:
            return
        if ev.images:
            span.set_attribute("qwq_agent.images", len(ev.images))
        if self.capture_content:
            span.set_attribute("gen_ai.tool.call.result", _clip(ev.text))
        if ev.is_error:
            span.set_attribute("error.type", ev.error_type or "tool_error")
            span.set_status(Status(StatusCode.ERROR, ev.text.splitlines()[0][:200] if ev.text else None))
        span.end(end_time=_ns(ev.ts))

    def _warning(self, run: _Run, ev: Warning_) -> None:
        target = run.step_span or run.span
        target.add_event(
            "qwq_agent.warning",
            {
                "qwq_agent.warning.kind": ev.kind,
                "qwq_agent.warning.message": ev.message[:500],
                "qwq_agent.level": ev.level,
            },
            timestamp=_ns(ev.ts),
        )
        failed_call, run.failed_call = run.failed_call, False
        # A failed request is a failed ModelCall; a trace written before those were recorded, or a turn
        # that could send no request, has only this warning: it stands for the request.
        if ev.kind == "model_error" and not failed_call:
            span = self.tracer.start_span(
                f"chat {run.model}",
                context=self._parent(run),
                kind=SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": run.model,
                    "error.type": ev.message.split(":", 1)[0] or "model_error",
                    "qwq_agent.run_id": self._run_id(run),
                },
                start_time=_ns(max(run.step_start, run.last_ts)),
            )
            span.set_status(Status(StatusCode.ERROR, ev.message[:200]))
            span.end(end_time=_ns(ev.ts))

    def _final(self, run: _Run, ev: Final) -> None:
        end = _ns(max(ev.ts, run.last_ts))
        for span in run.tools.values():
            span.set_status(Status(StatusCode.ERROR, f"the run ended ({ev.status}) before the tool returned"))
            span.end(end_time=end)
        if run.step_span is not None:
            run.step_span.end(end_time=end)
        span = run.span
        span.set_attribute("qwq_agent.status", ev.status)
        span.set_attribute("gen_ai.usage.input_tokens", run.usage["input"])
        span.set_attribute("gen_ai.usage.output_tokens", run.usage["output"])
        span.set_attribute("gen_ai.usage.cache_read.input_tokens", run.usage["cached"])
        for key, value in ev.totals.items():
            span.set_attribute(f"qwq_agent.totals.{key}", value)
        if self.capture_content and ev.answer is not None:
            span.set_attribute("gen_ai.output.messages", _messages("assistant", ev.answer, "stop"))
        if ev.status != "completed":
            span.set_attribute("error.type", ev.status)
            span.set_status(Status(StatusCode.ERROR, (ev.error or ev.status)[:200]))
        span.end(end_time=end)
        self._runs.pop(ev.run_id, None)

    @staticmethod
    def _run_id(run: _Run) -> str:
        return run.run_id


def _messages(role: str, text: str, finish_reason: str | None = None) -> str:
    """GenAI semconv message JSON: one message with one text part."""
    message: dict[str, Any] = {"role": role, "parts": [{"type": "text", "content": _clip(text)}]}
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return json.dumps([message], ensure_ascii=False)


async def traced(events: AsyncIterator[Event], recorder: SpanRecorder | None = None) -> AsyncIterator[Event]:
    """Pass `agent.stream(task)` through, recording spans; a stream cut short ends them as failed.

    Only the runs of this stream are ended so: a recorder shared by several streams (one per
    concurrent run) goes on recording the others. Closing this stream closes `events` too, so
    `aclosing(traced(agent.stream(task)))` ends the run (and releases its sandbox) when it is left.
    """
    recorder = recorder or SpanRecorder()
    seen: set[str] = set()
    try:
        async for ev in events:
            seen.add(ev.run_id)
            recorder.handle(ev)
            yield ev
    finally:
        # Closing this closes the stream it wraps: its run ends (and releases its sandbox) now, not when
        # the garbage collector finalises it.
        close = getattr(events, "aclose", None)
        try:
            if close is not None:
                await close()
        finally:
            # A run of this stream whose `Final` came is no longer open, so this ends only the cut ones.
            recorder.abort("the event stream ended without a final event", seen)
