"""One assistant turn: stream it, parse it as it comes, and step in when it goes wrong.

The model's turn may take several requests: a reasoning loop gets a nudge or a forced `</think>`
appended and the turn continues from there; so does a turn that ended inside its reasoning (after a bare
`</think>`) or whose answer the token limit cut off (after nothing at all); a tool call can be finished
under a grammar; a dropped connection retries the turn. Whatever happens, the turn ends with its raw text and parse, or with a
status that ends the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

from pydantic import BaseModel, Field

from qwq_agent.agent import parser as qparser
from qwq_agent.agent.budgets import BudgetTracker
from qwq_agent.agent.clients.errors import ModelContextExceeded, ModelDeadlineExceeded, ModelError
from qwq_agent.agent.config import AgentConfig
from qwq_agent.agent.constrained import (
    CallOpenWatcher,
    call_prompt,
    constrained_tool_call_completion,
    grammar_ignored,
)
from qwq_agent.agent.events import (
    ContentDelta,
    ContextCheck,
    Event,
    FailureOutcome,
    ModelCall,
    ReasoningDelta,
    UsageEvent,
    Warning_,
)
from qwq_agent.agent.loop_detector import (
    LoopSignal,
    ReasoningLoopDetector,
    arithmetic_text,
    close_text,
    nudge_text,
)
from qwq_agent.agent.loops.probe import AnswerProbe, ProbeModel, PromptRenderer
from qwq_agent.agent.markers import defuse
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.agent.model_stream import StreamReader
from qwq_agent.agent.prompt_size import PreparedPrompt, PromptPreparer, prompt_tokens, text_tokens
from qwq_agent.agent.replay import RecordedCompletion, ReplayedModelError, ReplayExhausted, ReplayModel
from qwq_agent.agent.turn_limits import ContextLength, PromptSize, Refusal, TurnLimits
from qwq_agent.deadline import Deadline
from qwq_agent.protocols import Completion, Model, ModelEvent, PromptModel, SamplingParams, Usage

Emit = Callable[..., Event]

# Of the wall-time budget, what the turn keeps back for aborting an unfinished request on the server,
# so that the abort, too, ends before the deadline (capped at a tenth of the budget for short budgets).
ABORT_RESERVE_S = 0.5
WALL_OUT = "the wall-time deadline passed while waiting for the model"
# Written for a model that ended its turn inside its reasoning (its answer never began): the close alone,
# since the model thought it was done; what follows is the answer it owes.
END_REASONING_TEXT = "\n</think>\n\n"
# What a request that goes on with the same turn (a continuation of a cut-off answer, a nudge, a close, a
# hint, a retry, a constrained call) may spend: its tokens and time, not another step or tool time. The
# loop counts a step when it starts, so the last step the budget allows is "used up" while it runs.
_CONTINUATION_BUDGETS = ("generated_tokens", "prompt_tokens", "wall_s")
_MAX_TURN_BACKOFF_S = 30.0


class TurnResult(BaseModel):
    raw: str = ""
    parsed: qparser.ParseResult = Field(default_factory=qparser.ParseResult)
    usage: Usage = Field(default_factory=Usage)
    stop_status: str | None = None  # set when the turn itself ends the run
    error: str | None = None
    budget: str | None = None  # the budget that ended the turn (`wall_s` when its deadline passed)
    # The ids the server generated for `raw`, when the turn was one request the model wrote alone; a turn
    # continued with injected text (a nudge, a forced `</think>`, a grammar) was never one sequence.
    output_ids: list[int] | None = None
    arithmetic_hinted: bool = False  # the run's one hand-arithmetic hint was written in this turn
    # Why the answer stops short: it hit the token limit and could not be continued (None: it is whole).
    truncated: str | None = None


class _Attempt(BaseModel):
    """One streamed request of the turn and why it stopped."""

    text: str = ""
    completion: Completion | None = None
    signal: LoopSignal | None = None
    call_open: bool = False
    wall_out: bool = False
    hint: str | None = None  # the hand-arithmetic hint to write before continuing
    max_new_tokens: int = 0  # the request's token limit
    deltas: int = 0  # pieces of output received (its tokens where the model counts none)
    usage: Usage | None = None  # what the request cost so far, as its client counted (the last delta's)
    probes: list[ModelCall] = Field(default_factory=list)  # probes finished meanwhile (counted already)
    abandoned: str | None = None  # why the stream was abandoned: it went on after it was told to stop


class _AfterFailure(BaseModel):
    """What the turn does after a failed request."""

    outcome: FailureOutcome
    status: str | None = None  # how the turn ends; None: it is retried
    message: str = ""
    budget: str | None = None  # the budget that ends it
    wait: float = 0.0  # seconds before the retry


class TurnStreamer:
    """Streams one assistant turn; iterate `run()` for its events, then read `result`."""

    def __init__(
        self,
        model: Model,
        messages: Sequence[Message],
        specs: Sequence[ToolSpec],
        config: AgentConfig,
        tracker: BudgetTracker,
        emit: Emit,
        step: int,
        deadline: Deadline | None = None,
        context_length: ContextLength | None = None,
        arithmetic_hint: bool = True,
        call_turn: int | None = None,
        stopping: Callable[[], str | None] | None = None,
    ) -> None:
        self.model = model
        # Why the turn may send no further request (its run's consumer went quiet), else None.
        self._stopping = stopping
        self.streaming = False  # a request's stream is open and being read
        # Whether this turn may write the run's one hand-arithmetic hint (the run passes False after it).
        self._hint_allowed = arithmetic_hint
        self.messages = messages
        self.specs = list(specs)
        self.config = config
        self.tracker = tracker
        self.emit = emit
        self.step = step
        # Numbers the turn's call ids (`call_{turn}_{n}`): its place in the conversation, which the loop
        # counts from the history's turns so that the ids repeat none of the history's.
        self.call_turn = step if call_turn is None else call_turn
        # Every request of the turn (retries, continuations, the constrained call) runs under one timer.
        self.deadline = deadline if deadline is not None else tracker.deadline
        wall = config.budget.max_wall_s
        self._reserve = min(ABORT_RESERVE_S, 0.1 * wall) if wall is not None else 0.0
        self.result = TurnResult()
        self._context_length = context_length
        self._limits = TurnLimits(
            config.max_requests_per_turn, self._context_limit, min_room=config.min_context_room_tokens
        )
        self._max_new_tokens: int | None = None  # what the next request may ask for (`_before_request`)
        # The next request's prompt as the count prepared it, with the prefix it was prepared for.
        self._prepared: tuple[str, PreparedPrompt] | None = None
        # Tool calls are finished under a grammar only by a model that renders its own prompt.
        self._native: PromptModel | None = (
            model if config.constrained_tool_calls and self.specs and isinstance(model, PromptModel) else None
        )
        # The answer-stability probe needs the raw prompt the turn streams from (native client only).
        self._probe_model: ProbeModel | None = None
        # A replayed turn is answered from the trace, which holds no probes: asking the replay model
        # would consume recorded completions, so a replay runs without them, and takes what they
        # decided from the recording instead (`_recorded_signal`).
        replaying = bool(getattr(model, "replaying", False))
        if config.loop_detector.probe_enabled and isinstance(model, PromptRenderer) and not replaying:
            self._probe_model = model if isinstance(model, ProbeModel) else None
        self._pull: asyncio.Task[ModelEvent | None] | None = None  # the stream's pending read (probing)
        # The prompt of the request the probes ride on, with the turn's prefix it was built for.
        self._probe_base: tuple[str, PreparedPrompt] | None = None
        self._reset()

    def _reset(self) -> None:
        self.detector = ReasoningLoopDetector(self.config.loop_detector)
        probe_model = self._probe_model
        self.probe = None if probe_model is None else AnswerProbe(probe_model, self.config.loop_detector)
        self.parser = qparser.StreamParser(id_prefix=f"call_{self.call_turn}_")
        self.prefix = ""
        self.forced_close = False
        self._reasoning_open = False  # the last parsed output was reasoning (probes ask only then)
        self._continuations = 0  # requests made to continue an answer cut off by the token limit
        self._continuing: str | None = None  # why the next request continues the answer
        self._ended = False  # the turn's output is complete and parsed (`result`): no further request
        if self.result.arithmetic_hinted:  # a retry starts the turn again: the hint went with its prefix
            self._hint_allowed, self.result.arithmetic_hinted = True, False

    async def run(self) -> AsyncGenerator[Event, None]:
        attempts = 0
        while True:
            if self._stopped(self.prefix):
                return
            if (refused := await self._before_request(self._prompt_size(self.prefix))) is not None:
                if self._continuing is not None:  # the answer is whole but for its cut-off end
                    self.result.truncated = (
                        f"{self._continuing}, and it could not be continued: {refused.message}"
                    )
                    for ev in self._finish(self.prefix, length_limited=True):
                        yield ev
                    return
                self.result.raw = self.prefix
                yield self._refused(refused)
                return
            self._continuing = None
            attempt = _Attempt()
            try:
                # aclosing: a consumer that stops early closes this generator; the close must reach
                # `_stream` now (its `finally` aborts the request), not at the event loop's shutdown.
                async with aclosing(self._stream(attempt)) as events:
                    async for ev in events:
                        yield ev
            except Exception as exc:
                for ev in self._abandoned(attempt):
                    yield ev
                failure = _describe(exc)
                if isinstance(exc, ReplayExhausted):  # the recording ends here: no failure of the model
                    yield self._stop(exc.status, str(exc))
                    return
                if not _is_model_error(exc):
                    if self._wall_out(exc):
                        yield self._wall_stop(f"{WALL_OUT} ({failure})")
                    else:
                        yield self._stop("model_error", failure)
                    return
                for ev in self._probe_calls(attempt):
                    yield ev
                cost = self._count_failure(exc, attempt)
                after = self._after_failure(exc, failure, attempts + 1)
                failed = self._failed_call(
                    self.prefix, attempt.text, cost, failure, after.outcome, attempt.max_new_tokens
                )
                for ev in failed:
                    yield ev
                if after.status is not None:
                    self.result.budget = after.budget
                    kind = "budget" if after.status == "budget_exceeded" else None
                    yield self._stop(after.status, after.message, kind=kind)
                    return
                attempts += 1
                message = f"{failure}; retrying the turn in {after.wait:.1f} s"
                yield self.emit(Warning_(kind="model_error", message=message))
                if self._stopped(self.prefix):
                    return
                await asyncio.sleep(after.wait)
                self._reset()
                continue
            for ev in self._abandoned(attempt):
                yield ev
            for ev in self._probe_calls(attempt):
                yield ev
            async for ev in self._record(attempt):
                yield ev
            if attempt.wall_out:
                self.result.raw = self.prefix + attempt.text
                yield self._wall_stop(WALL_OUT)
                return
            if attempt.call_open and attempt.signal is None:
                async for ev in self._finish_call_under_grammar(attempt.text):
                    yield ev
                if self.result.stop_status is not None or self._ended:
                    return
                continue
            if attempt.hint is not None:
                async for ev in self._write_hint(attempt):
                    yield ev
                if self.result.stop_status is not None:
                    return
                continue
            usage = attempt.completion.usage if attempt.completion else None
            length_limited = usage is not None and usage.finish_reason == "length"
            # None: neither a cut-off answer nor an unclosed reasoning is taken up, as in a trace
            # recorded before they were (`AgentConfig.max_answer_continuations`)
            allowed = self.config.max_answer_continuations
            if attempt.signal is None and length_limited and allowed is not None and self.parser.answering:
                async for ev in self._answer_cut(attempt, allowed):
                    yield ev
                if self.result.stop_status is not None:
                    return
                if self._continuing is not None:
                    continue
            elif (
                attempt.signal is None
                and usage is not None
                and not length_limited
                and allowed is not None
                and self.parser.reasoning_only
            ):
                async for ev in self._close_for_answer(attempt):
                    yield ev
                if self.result.stop_status is not None:
                    return
                continue
            if attempt.signal is None and not self._ran_out_thinking(self.prefix + attempt.text, attempt):
                for ev in self._finish(self.prefix + attempt.text, length_limited=length_limited):
                    yield ev
                if not self.prefix and attempt.completion is not None and attempt.completion.output_ids:
                    self.result.output_ids = list(attempt.completion.output_ids)
                return
            async for ev in self._intervene(attempt):
                yield ev
            if self.result.stop_status is not None:
                return

    async def _stream(self, attempt: _Attempt) -> AsyncGenerator[Event, None]:
        """One request: feed the parser and the detectors; stop early when they say so."""
        watcher = CallOpenWatcher(self.prefix) if self._native is not None else None
        pieces: list[str] = []
        params = self._sampling()
        attempt.max_new_tokens = params.max_new_tokens
        if isinstance(self.model, ReplayModel):
            # The recorded run's probes finished during this request and spent the budget there (after
            # its token limit was set): the replay sends none, and counts what they cost.
            for probe in self.model.take_probes():
                self.tracker.account(probe.usage)
                attempt.probes.append(probe)
        # The turn so far goes back as text: a marker the model spelt in it must not become a control
        # token (see `markers`), as in every later prompt.
        stream = self._open_stream(params)
        # A stream that will not stop when told to is abandoned, not waited for (`model_stream`).
        reader = StreamReader(stream, type(self.model).__name__)
        self.streaming = True
        try:
            while True:
                # The timer covers each wait for the next event, not the yields below: keep-alives,
                # a stalled stream or the client's retries cannot outlast the deadline.
                try:
                    async with self.deadline.timer(reserve=self._reserve):
                        if self.probe is None:
                            mev = await reader.next()
                        else:
                            mev = await self._next_or_probe(reader, attempt, pieces)
                except TimeoutError:
                    if not self._wall_out():
                        raise
                    attempt.wall_out = True
                    break
                if mev is None:  # the stream ended, or a probe's answer closed the reasoning
                    break
                if isinstance(mev, RecordedCompletion) and mev.wall_out:
                    # A replay: the recorded run's deadline cut the stream here (the replay's clock,
                    # started afresh, would let it end as a whole completion, and decide anew).
                    attempt.wall_out, attempt.usage = True, mev.usage
                    break
                if isinstance(mev, Completion):
                    attempt.completion = mev
                    if attempt.signal is None:
                        attempt.signal = self._recorded_signal(mev)
                    if any(pieces) or not mev.text:
                        # The deltas are the output: parsed as they came, streamed to the caller and
                        # watched by the detectors, they stand whatever the completion's text says.
                        continue
                    # A model that streams nothing (a non-streaming backend) hands its whole output
                    # here: it is read as the request's one piece.
                    delta = mev.text
                else:
                    delta = mev.text
                    attempt.deltas += 1
                    if mev.usage is not None:
                        attempt.usage = mev.usage
                cut = watcher.feed(delta) if watcher is not None else None
                if cut is not None:  # the rest of the call is generated under the grammar
                    delta, attempt.call_open = delta[:cut], True
                pieces.append(delta)
                for pev in self.parser.feed(delta):
                    if isinstance(pev, qparser.ReasoningEnd) and not self.forced_close:
                        # The model closed its reasoning in this same piece: what would have been
                        # written into the reasoning (a hint, a nudge, a close) has no place left.
                        attempt.hint = None
                        if attempt.signal is not None and attempt.signal.level < 3:
                            attempt.signal = None
                    ev = self._parser_event(pev)
                    if ev is None:
                        continue
                    yield ev
                    # After a forced `</think>` a model that still circles does so in its answer.
                    if isinstance(ev, ReasoningDelta) or (self.forced_close and isinstance(ev, ContentDelta)):
                        attempt.signal = self.detector.feed(ev.text) or attempt.signal
                        if attempt.signal is None and isinstance(ev, ReasoningDelta):
                            attempt.hint = self._arithmetic_hint()
                    if attempt.hint is not None and (
                        attempt.signal is not None or not isinstance(ev, ReasoningDelta)
                    ):
                        # A loop signal in the same piece comes first; and if the reasoning closed in
                        # this piece, the hint has no place.
                        attempt.hint = None
                    if self.probe is not None:
                        self._reasoning_open = isinstance(ev, ReasoningDelta)
                        if attempt.signal is None:  # else this stream ends here: no probe rides on it
                            self._maybe_probe(pieces)
                if attempt.call_open or (
                    # A tag cut in two (`</th` | `ink>`) is read to its end first: if it closes the
                    # reasoning, nothing may be written into it (see `ReasoningEnd` above).
                    (attempt.signal is not None or attempt.hint is not None) and not self.parser.holding()
                ):
                    break  # closing the stream aborts the request on the server
        finally:
            self.streaming = False
            attempt.text = "".join(pieces)
            if (pull := self._pull) is not None:  # cancelling the read closes the stream (and aborts)
                self._pull = None
                pull.cancel()
                await asyncio.gather(pull, return_exceptions=True)
            if self.probe is not None:
                await self.probe.aclose()
            with self.deadline.scope():  # the abort this may send counts against the deadline
                await reader.close()
            attempt.abandoned = reader.abandoned  # the turn goes on (or ends) without it

    def _open_stream(self, params: SamplingParams) -> AsyncIterator[ModelEvent]:
        """The request's stream: of the prompt `_prompt_size` prepared for it, when it did."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] == self.prefix and isinstance(self.model, PromptPreparer):
            return self.model.stream_prepared(prepared[1], params)
        return self.model.stream(self.messages, self.specs, params, prefix=defuse(self.prefix))

    def _recorded_signal(self, done: Completion) -> LoopSignal | None:
        """On a replay: the intervention the recorded run made where this request ended, when this
        turn's detector made none (a close decided on probes' answers, which are not replayed)."""
        if isinstance(done, RecordedCompletion) and done.intervention is not None:
            return self.detector.adopt(done.intervention)
        return None

    def _maybe_probe(self, pieces: list[str]) -> None:
        """Start an answer-stability probe on the reasoning so far, when one is due."""
        assert self.probe is not None
        # Only answers given after the nudge count, so a turn that was never nudged pays nothing.
        if self.detector.level != 1 or not self._reasoning_open or self.forced_close:
            return
        if not self.probe.due(self.detector.bytes_fed):
            return
        reasoning = defuse("".join(pieces))
        self.probe.maybe_launch(
            lambda suffix: self._probe_prompt(reasoning + suffix), self.detector.bytes_fed
        )

    def _probe_prompt(self, appended: str) -> str | list[int]:
        """A probe's prompt: this request's, as the client sends it, then `appended` (the reasoning
        streamed so far and the probe's suffix). A request that goes as ids (kept turns spliced in) is
        followed by `appended` tokenized, so the probe shares every id of it with the server's cache."""
        prefix = defuse(self.prefix)
        if self._probe_base is None or self._probe_base[0] != self.prefix:
            if isinstance(self.model, PromptPreparer):
                base = self.model.prepare_prompt(self.messages, self.specs, prefix=prefix)
            else:
                assert isinstance(self.model, PromptRenderer)  # checked with the probe model in __init__
                base = PreparedPrompt(self.model.render_prompt(self.messages, self.specs) + prefix)
            self._probe_base = (self.prefix, base)
        probe = self._probe_base[1].followed_by(appended)
        return probe.ids if probe.ids is not None else probe.text

    async def _next_or_probe(
        self, reader: StreamReader, attempt: _Attempt, pieces: list[str]
    ) -> ModelEvent | None:
        """The next event of the stream, while taking the answers of probes that finish meanwhile.

        Returns None at the stream's end, or when a probe's answer made the detector close the
        reasoning (`attempt.signal`). The read runs as a task (`self._pull`, cancelled by `_stream`
        whatever happens) so that a probe finishing first is taken at once.
        """
        assert self.probe is not None
        if self._pull is None:
            self._pull = asyncio.ensure_future(reader.next())
        while True:
            for result in self.probe.collect():
                usage = Usage(
                    prompt_tokens=result.prompt_tokens,
                    cached_tokens=result.cached_tokens,
                    completion_tokens=result.completion_tokens,
                    latency_s=result.seconds,
                )
                self.tracker.account(usage)
                attempt.probes.append(
                    ModelCall(
                        prompt=None, completion=result.text, usage=usage, error=result.error, probe=True
                    )
                )
                if (signal := self.detector.observe_probe(result)) is not None:
                    attempt.signal = signal
                    return None
            self._maybe_probe(pieces)  # a probe that finished during a pause makes room for the next
            if self._pull.done():
                pull, self._pull = self._pull, None
                return pull.result()
            waits: set[asyncio.Future[Any]] = {self._pull, *self.probe.pending}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)

    async def _record(self, attempt: _Attempt) -> AsyncIterator[Event]:
        done = attempt.completion
        # A stream the turn closed itself (an intervention, the deadline) sent no completion: the server
        # generated what arrived all the same, and budgets and totals count it.
        usage = done.usage if done else _spent(attempt, None, "aborted")
        self.tracker.account(usage)
        self._limits.record(usage)
        self.result.usage = usage
        prompt = done.prompt if done else None
        ids = list(done.output_ids) if done is not None and done.output_ids else None
        call = ModelCall(
            prompt=prompt,
            prefix=self.prefix,
            completion=attempt.text,
            usage=usage,
            completion_ids=ids,
            max_new_tokens=attempt.max_new_tokens,
            context_length=self._limits.limit,
            messages=done.messages if done else None,
            tools_digest=done.tools_digest if done else None,
            intervention=attempt.signal,  # what a replay must do here too
            error_outcome="wall_out" if attempt.wall_out else None,  # and where the deadline cut it
        )
        for ev in self._traced(call):
            yield ev

    def _abandoned(self, attempt: _Attempt) -> list[Event]:
        """The warning for a request whose stream was left running (see `model_stream`), if it was."""
        if attempt.abandoned is None:
            return []
        return [self.emit(Warning_(kind="model_abandoned", message=attempt.abandoned, level=2))]

    def _probe_calls(self, attempt: _Attempt) -> list[Event]:
        """The probes that finished during `attempt`, traced before its own `model_call` (where a replay
        counts their cost), each with its `usage` event."""
        probes, attempt.probes = attempt.probes, []
        return [ev for probe in probes for ev in self._traced(probe)]

    def _traced(self, call: ModelCall) -> list[Event]:
        """A request's `model_call`, and the `usage` event that follows each one (its cost, counted in
        the totals already): every request goes through here, so the usage events add up to the totals."""
        return [self.emit(call), self.emit(UsageEvent(usage=call.usage, totals=self.tracker.totals()))]

    def _count_failure(self, exc: BaseException, attempt: _Attempt) -> Usage:
        """What a failed request cost, counted against the budget like any request (a retry makes the
        server generate again): what its client reported (with the error, else on its last piece of
        output), else one token per piece received."""
        usage = _spent(attempt, exc.partial_usage if isinstance(exc, ModelError) else None, "error")
        self.tracker.account(usage)
        return usage

    def _after_failure(self, exc: BaseException, failure: str, retry: int) -> _AfterFailure:
        """What the turn does after a failed request: the `retry`-th retry, or how it ends.

        A replayed failure follows the recorded run where that run's clock decided (the replay's own is
        fresh); the rest (retries and token budgets spent) the replay decides as the run did.
        """
        recorded = exc.outcome if isinstance(exc, ReplayedModelError) else None
        if self._walled_out(exc):
            message = f"{WALL_OUT} ({failure})"
            return _AfterFailure(
                outcome="wall_out", status="budget_exceeded", message=message, budget="wall_s"
            )
        if _context_refused(exc) and recorded != "retried":
            # The same prompt is refused the same way however often it is sent.
            message = f"{failure} (the request does not fit the model's context; it is not retried)"
            return _AfterFailure(outcome="ended", status="context_full", message=message)
        if retry > self.config.model_retries:
            return _AfterFailure(outcome="ended", status="model_error", message=failure)
        if (over := self.tracker.exceeded(only=_CONTINUATION_BUDGETS)) is not None:
            # The failed attempts spent a budget a retry would go past (it sends the whole prompt again),
            # as no other continuation of a turn may.
            why = f"the {over[0]} budget is spent, so the turn is not retried"
            return _AfterFailure(
                outcome="wall_out" if over[0] == "wall_s" else "ended",
                status="budget_exceeded",
                message=f"{failure} ({why})",
                budget=over[0],
            )
        # A replayed failure waits for no server: the recorded run already waited.
        replayed = isinstance(exc, ReplayedModelError)
        wait = 0.0 if replayed else self._retry_wait(retry, exc)
        if recorded == "no_time_to_retry" or not self.deadline.allows(wait + self._reserve):
            why = "no time left before the wall-time deadline to retry the turn"
            why += " (as in the recorded run)" if replayed else f" in {wait:.1f} s"
            message = f"{failure} ({why})"
            return _AfterFailure(outcome="no_time_to_retry", status="model_error", message=message)
        return _AfterFailure(outcome="retried", wait=wait)

    def _failed_call(
        self,
        prefix: str,
        completion: str,
        usage: Usage,
        failure: str,
        outcome: FailureOutcome,
        max_new_tokens: int | None,
    ) -> list[Event]:
        """The trace's record of a failed request: the output that came, which the operator saw stream,
        why it failed and what the turn did then, so that a replay fails it, and goes on, as the run did."""
        call = ModelCall(
            prompt=None,
            prefix=prefix,
            completion=completion,
            usage=usage,
            max_new_tokens=max_new_tokens,
            context_length=self._limits.limit,
            error=failure,
            error_outcome=outcome,
        )
        return self._traced(call)

    async def _finish_call_under_grammar(self, text: str) -> AsyncIterator[Event]:
        native = self._native
        if native is None:  # `_stream` opens a call for the grammar only when there is a native model
            raise RuntimeError("a tool call was left open for the grammar without a native model")
        if self._stopped(self.prefix + text):
            return
        prompt_so_far = native.render_prompt(self.messages, self.specs) + defuse(self.prefix + text)
        # Sent as this text, whatever the client does with a stream's prompt (ids, kept turns spliced in).
        if (
            refused := await self._before_request(lambda: text_tokens(call_prompt(prompt_so_far)))
        ) is not None:
            self.result.raw = self.prefix + text
            yield self._refused(refused)
            return
        if self.tracker.exceeded(only=_CONTINUATION_BUDGETS) is not None:
            # The stream spent what the call would be generated with: it is cut off where it opened, as
            # the token limit would have cut it (the run then ends on the budget).
            for last in self._finish(self.prefix + text, length_limited=True):
                yield last
            self._ended = True
            return
        try:
            async with self.deadline.timer(reserve=self._reserve):
                call_text, done = await constrained_tool_call_completion(
                    native,
                    prompt_so_far,
                    self.specs,
                    self._sampling(),  # no more new tokens than the budget and the context leave
                )
        except Exception as exc:
            if isinstance(exc, ReplayExhausted):
                self.result.raw = self.prefix + text
                yield self._stop(exc.status, str(exc))
                return
            if not _is_model_error(exc):
                if not self._wall_out(exc):
                    raise
                self.result.raw = self.prefix + text
                yield self._wall_stop(WALL_OUT + " (for the constrained tool call)")
                return
            # Traced and counted like a failed request of the stream, so that a replay fails it again
            # here; it is not retried (the turn's text so far would be generated anew).
            failure = _describe(exc)
            cost = self._count_failure(exc, _Attempt())
            wall_out = self._walled_out(exc)
            partial = exc.partial_text if isinstance(exc, ModelError) else ""
            outcome: FailureOutcome = "wall_out" if wall_out else "ended"
            limit = self._max_new_tokens
            for failed in self._failed_call(self.prefix + text, partial, cost, failure, outcome, limit):
                yield failed
            if wall_out:
                self.result.raw = self.prefix + text
                yield self._wall_stop(f"{WALL_OUT} (for the constrained tool call: {failure})")
            else:
                yield self._stop("context_full" if _context_refused(exc) else "model_error", failure)
            return
        self.tracker.account(done.usage)
        self._limits.record(done.usage)
        call = ModelCall(
            prompt=done.prompt,
            prefix=self.prefix + text,
            completion=done.text,
            usage=done.usage,
            max_new_tokens=self._max_new_tokens,
            context_length=self._limits.limit,
        )
        for traced in self._traced(call):
            yield traced
        if (problem := grammar_ignored(done.text, self.specs, done.usage.finish_reason)) is not None:
            self.result.raw = self.prefix + text
            yield self._stop("model_error", problem)
            return
        cut = done.usage.finish_reason == "length"
        if cut:
            # The token limit (or what the budget had left) cut the call's JSON: it goes to the parser
            # unclosed, which reports it cut off and never runs it (a closing tag would let the repairs
            # close its brackets around a value cut short), and the turn ends there, as a streamed call
            # cut off does (the model would go on after a call it never finished).
            call_text = call_text.removesuffix("\n" + qparser.CALL_CLOSE)
        for pev in self.parser.feed(call_text):
            if (ev := self._parser_event(pev)) is not None:
                yield ev
        self.prefix += text + call_text
        if cut or self.tracker.exceeded(only=_CONTINUATION_BUDGETS) is not None:
            # No request after the call once its budget is spent: a whole call stands (it runs, and the
            # run ends on the budget after it, as after a streamed call that ended at the budget).
            for last in self._finish(self.prefix, length_limited=True):
                yield last
            self._ended = True

    def _arithmetic_hint(self) -> str | None:
        """The run's one hand-arithmetic hint, when it is due (a slip, or many computations by hand)."""
        cfg, hand = self.config.loop_detector, self.detector.arithmetic
        if not (hand.slips or cfg.arithmetic_heavy_hint) or not self._hint_allowed or self.forced_close:
            return None
        tools = [spec.name for spec in self.specs]
        if cfg.arithmetic_slip_hint and hand.slips:
            text = arithmetic_text(hand.slips[0], hand.checked, tools)
        elif cfg.arithmetic_heavy_hint and hand.checked >= cfg.arithmetic_heavy_hint:
            text = arithmetic_text(None, hand.checked, tools)
        else:
            return None
        return text or None

    async def _write_hint(self, attempt: _Attempt) -> AsyncIterator[Event]:
        """Continue the reasoning after the hint: the same turn, the hint in the model's voice."""
        assert attempt.hint is not None
        if (over := self._intervention_stopped()) is not None:
            # As for a nudge: no continuation past the budgets it spends.
            self.result.raw = self.prefix + attempt.text
            self.result.stop_status, self.result.budget = "budget_exceeded", over[0]
            return
        self._hint_allowed = False
        self.result.arithmetic_hinted = True
        yield self.emit(Warning_(kind="hand_arithmetic", message=attempt.hint.strip(), level=0))
        for pev in self.parser.feed(attempt.hint):
            if (ev := self._parser_event(pev)) is not None:
                yield ev
        self.prefix += attempt.text + attempt.hint

    def _finish(self, raw: str, *, length_limited: bool) -> list[Event]:
        """End the turn with `raw` as its text: the parse's last events, and its result."""
        events = [
            ev for pev in self.parser.close(length_limited=length_limited) if (ev := self._parser_event(pev))
        ]
        self.result.raw = raw
        self.result.parsed = self.parser.result()
        return events

    async def _answer_cut(self, attempt: _Attempt, allowed: int) -> AsyncIterator[Event]:
        """The answer hit the token limit: continue it in a new request, within the budget and
        `allowed` continuations; else say why it stops short (`result.truncated`, or a budget stop)."""
        cut = f"the answer reached the token limit (max_new_tokens={attempt.max_new_tokens})"
        if (over := self.tracker.exceeded(only=_CONTINUATION_BUDGETS)) is not None:
            # No continuation past the budget (`_sampling` gave the request what it had left): the run
            # ends on the budget, and the warning says the answer it leaves is cut off.
            message = f"{cut} and the {over[0]} budget is used up: the answer stops there"
            yield self.emit(Warning_(kind="truncated_answer", message=message, level=3))
            self.result.raw = self.prefix + attempt.text
            self.result.stop_status, self.result.budget = "budget_exceeded", over[0]
            return
        if self._continuations >= allowed:
            self.result.truncated = (
                f"{cut} and was continued {self._continuations} times, the most "
                f"AgentConfig.max_answer_continuations={allowed} allows: it stops there"
            )
            return
        self._continuations += 1
        self._continuing = cut
        message = f"{cut}; the model continues it ({self._continuations} of {allowed})"
        yield self.emit(Warning_(kind="answer_continued", message=message, level=0))
        self.prefix += attempt.text

    async def _close_for_answer(self, attempt: _Attempt) -> AsyncIterator[Event]:
        """The model ended its turn inside its reasoning, with no answer: close the reasoning for it and
        let it answer (what it concluded is in the reasoning, which is no answer to hand a caller)."""
        ended = "the model ended its turn inside its reasoning (no </think>, so no answer)"
        if (over := self.tracker.exceeded(only=_CONTINUATION_BUDGETS)) is not None:
            message = f"{ended}; the {over[0]} budget is spent, so it was not asked to answer"
            yield self.emit(Warning_(kind="unclosed_reasoning", message=message, level=2))
            self.result.raw = self.prefix + attempt.text
            self.result.stop_status, self.result.budget = "budget_exceeded", over[0]
            return
        message = f"{ended}; </think> was written for it and it was asked to answer"
        yield self.emit(Warning_(kind="unclosed_reasoning", message=message, level=2))
        self._closed_for_model()
        for pev in self.parser.feed(END_REASONING_TEXT):
            if (ev := self._parser_event(pev)) is not None:
                yield ev
        self.prefix += attempt.text + END_REASONING_TEXT

    async def _intervene(self, attempt: _Attempt) -> AsyncIterator[Event]:
        """Escalate on a reasoning loop (or reasoning cut off by the token limit): nudge, close, stop."""
        signal = attempt.signal
        if signal is None:
            level, reason = 2, "the reasoning hit the token limit without concluding"
        else:
            level, reason = signal.level, signal.reason
        yield self.emit(Warning_(kind="reasoning_loop", message=reason, level=level))
        if level >= 3:
            self.result.raw = self.prefix + attempt.text
            self.result.stop_status = "reasoning_loop"
            return
        if (over := self._intervention_stopped()) is not None:
            # The step that is running may go on (it costs no further step): only the budgets the
            # request after the nudge or the close spends stop it.
            self.result.raw = self.prefix + attempt.text
            self.result.stop_status, self.result.budget = "budget_exceeded", over[0]
            return
        tools = [spec.name for spec in self.specs]
        inject = nudge_text(signal, tools) if level == 1 else close_text(signal)
        if level == 2:
            self._closed_for_model()
        for pev in self.parser.feed(inject):
            if (ev := self._parser_event(pev)) is not None:
                yield ev
        self.prefix += attempt.text + inject

    def _intervention_stopped(self) -> tuple[str, float, float] | None:
        """The budget that keeps a nudge, close or hint from going on with the turn, or None."""
        if self.config.intervene_on_last_step:
            return self.tracker.exceeded(only=_CONTINUATION_BUDGETS)
        # A trace written before the last step could be intervened on: every budget stopped it, the
        # step that is running included, and its replay holds no completion after the intervention.
        return self.tracker.exceeded()

    def _closed_for_model(self) -> None:
        """`</think>` is written for the model: its answer is watched for a loop from here on, and only
        to stop the run, as after the detector's own close; whatever reached the close (the detector,
        a reasoning cut by the token limit, a turn ended inside it) the detector stands at level 2."""
        self.forced_close = True
        self.detector.closed()

    def _retry_wait(self, retry: int, exc: BaseException) -> float:
        """Seconds before the `retry`-th retry of the turn: a server failing now (a restart, a full
        queue) is not asked again at once, and one that said when to come back is not asked sooner.
        """
        from qwq_agent.agent.clients.retry import retry_delay

        backoff = min(_MAX_TURN_BACKOFF_S, self.config.model_retry_backoff_s * 2 ** (retry - 1))
        return retry_delay(backoff, exc) if isinstance(exc, ModelError) else backoff

    def _wall_out(self, exc: BaseException | None = None) -> bool:
        return self.deadline.left(self._reserve) == 0.0 or isinstance(exc, ModelDeadlineExceeded)

    def _walled_out(self, exc: BaseException) -> bool:
        """Whether a failed request ends the turn on the wall-time deadline: by this clock, or for a
        replayed failure, by the recorded run's (the replay's clock is not the run's)."""
        recorded = exc.outcome if isinstance(exc, ReplayedModelError) else None
        return recorded == "wall_out" or self._wall_out(exc)

    def _wall_stop(self, message: str) -> Event:
        self.result.budget = "wall_s"
        return self._stop("budget_exceeded", message, kind="budget")

    def _stop(
        self, status: str, message: str, *, kind: str | None = None, refused: ContextCheck | None = None
    ) -> Event:
        self.result.stop_status = status
        self.result.error = message
        return self.emit(Warning_(kind=kind or status, message=message, level=3, refused=refused))

    def _stopped(self, raw: str) -> bool:
        """Whether the turn stops before its next request (its run winds up, see `RunStream`): then it
        ends `interrupted`, with `raw` as its text, and the run with it."""
        reason = self._stopping() if self._stopping is not None else None
        if reason is None:
            return False
        self.result.raw, self.result.stop_status, self.result.error = raw, "interrupted", reason
        return True

    def _refused(self, refusal: Refusal) -> Event:
        """End the turn on a request it may not send; one that did not fit the context records the check
        (`Warning_.refused`), for a replay to refuse it the same way."""
        check = None
        if refusal.prompt_tokens is not None and refusal.context_length is not None:
            check = ContextCheck(prompt_tokens=refusal.prompt_tokens, context_length=refusal.context_length)
        return self._stop(refusal.status, refusal.message, refused=check)

    async def _context_limit(self) -> int | None:
        """The model's context length: configured, else the server's. A replay has no server of its own
        while its recording answers (nor past it, without a live model): it checks against the context
        length the recorded run used. A resumed run's live requests go by the live server's, which may be
        larger (resuming there is how a run that filled its context goes on)."""
        if isinstance(self.model, ReplayModel) and not self.model.live:
            configured = self.config.context_length
            return configured if configured is not None else self.model.recorded_context_length()
        return await self._context_length() if self._context_length is not None else None

    def _prompt_size(self, prefix: str) -> PromptSize:
        """The size of a streamed request's prompt (the conversation, then `prefix`), as the model
        counts it (None where it cannot). A model that prepares its prompts prepares this one here, and
        `_stream` sends what was counted: a long transcript is rendered and tokenized once a request."""

        def size() -> int | None:
            if not isinstance(self.model, PromptPreparer):
                return prompt_tokens(self.model, self.messages, self.specs, defuse(prefix))
            prepared = self.model.prepare_prompt(self.messages, self.specs, prefix=defuse(prefix))
            self._prepared = (prefix, prepared)
            return prepared.tokens

        return size

    async def _before_request(self, size: PromptSize) -> Refusal | None:
        """Count the next request and set the token limit it asks for (`_sampling`): what the generation
        budget has left, lowered so that its prompt (`size` counts it) and its output fit the model's
        context. Else why it may not be sent."""
        self._prepared = None  # `size` prepares this request's prompt, if it is counted at all
        recorded = self.model.peek() if isinstance(self.model, ReplayModel) else None
        if recorded is not None and recorded.max_new_tokens is not None:
            # The recorded run sent this request, with this limit: it fit then and asks the same now.
            self._max_new_tokens, self._limits.limit = recorded.max_new_tokens, recorded.context_length
            return self._limits.count()
        allowed = await self._limits.before_request(self._wanted(), size)
        if isinstance(allowed, Refusal):
            return allowed
        self._max_new_tokens = allowed
        return None

    def _wanted(self) -> int:
        """The configured `max_new_tokens`, or what the generation budget has left when that is less."""
        wanted = self.config.sampling.max_new_tokens
        left = self.tracker.left("generated_tokens")
        return max(1, int(left)) if left is not None and left < wanted else wanted

    def _sampling(self) -> SamplingParams:
        """The configured sampling, asking for the token limit `_before_request` set for this request."""
        params = self.config.sampling
        limit = self._max_new_tokens if self._max_new_tokens is not None else self._wanted()
        if limit != params.max_new_tokens:
            return params.model_copy(update={"max_new_tokens": limit})
        return params

    @staticmethod
    def _ran_out_thinking(raw: str, attempt: _Attempt) -> bool:
        usage = attempt.completion.usage if attempt.completion else None
        return usage is not None and usage.finish_reason == "length" and "</think>" not in raw

    def _parser_event(self, pev: Any) -> Event | None:
        # Deltas are not traced one by one: the model_call event holds the whole completion.
        if isinstance(pev, qparser.ReasoningDelta):
            return self.emit(ReasoningDelta(text=pev.text), trace=False)
        if isinstance(pev, qparser.ContentDelta):
            return self.emit(ContentDelta(text=pev.text), trace=False)
        return None


def _spent(attempt: _Attempt, reported: Usage | None, finish: str) -> Usage:
    """What a request that ended without a completion cost: what its client reported (with the error,
    else on its last delta), else one token per piece of output received."""
    counted = reported or attempt.usage or Usage(completion_tokens=attempt.deltas)
    return counted.model_copy(update={"finish_reason": finish})


def _describe(exc: BaseException) -> str:
    """A failure as `Type: message`; a replayed one as the recorded run described it."""
    return str(exc) if isinstance(exc, ReplayedModelError) else f"{type(exc).__name__}: {exc}"


def _is_model_error(exc: BaseException) -> bool:
    return isinstance(exc, ModelError | OSError | TimeoutError)


def _context_refused(exc: BaseException) -> bool:
    """Whether the server refused the request for not fitting the model's context; for a replayed
    failure, whether the recorded run's client said so (its `Type: message` names the type)."""
    if isinstance(exc, ReplayedModelError):
        return str(exc).startswith(f"{ModelContextExceeded.__name__}:")
    return isinstance(exc, ModelContextExceeded)
