"""Replaying a recorded run, and resuming it with a live model.

`load_recording` reads what a run was set up with (task, tools and their options, `AgentConfig`) and
the completions it got, so a replay builds the same run instead of trusting today's defaults.
`ReplayModel` serves the completions as the model. It checks each prompt (the chat messages and tools,
for a run made through the OpenAI API) against the recorded one, and reports a difference as a
`replay_divergence` warning (a trace that recorded none gets one `replay_unchecked` warning); when it
hands over to a live model it reports a `replay_end` event, so the trace shows which turns were
replayed and which are new. The loop collects these with `take_notices()`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, Field, ValidationError

from qwq_agent.agent.chat_format import PromptOptions, recorded_prompt_options
from qwq_agent.agent.clients.errors import ModelError
from qwq_agent.agent.clients.openai_chat import to_openai_messages, to_openai_tools, tools_digest
from qwq_agent.agent.config import AgentConfig
from qwq_agent.agent.config_history import as_recorded_then
from qwq_agent.agent.events import (
    ContextCheck,
    Event,
    FailureOutcome,
    ModelCall,
    ReplayEnded,
    ReplaySource,
    RunStarted,
    Warning_,
)
from qwq_agent.agent.loops.detector import LoopSignal
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.agent.recorded_settings import RecordedSettingsWarning, known_settings
from qwq_agent.agent.trace import (
    PromptRestorer,
    TraceError,
    common_prefix_len,
    read_trace,
    recorded_completions,
)
from qwq_agent.protocols import Completion, Model, ModelEvent, PromptModel, SamplingParams, TextDelta, Usage

__all__ = [
    "RecordedCompletion",
    "RecordedConfigError",
    "Recording",
    "ReplayExhausted",
    "ReplayModel",
    "ReplayedModelError",
    "load_recording",
]

_EXCERPT = 60
_ABSENT = object()  # a field one message has and the other lacks


# The kind of the warning a resumed run gives when its trace predates settings of this version.
PREDATES_SETTINGS = "trace_predates_settings"


def _predates_warning(predates: dict[str, Any]) -> Warning_:
    """Said once by a resumed run: the whole run (its live part too) has these settings as the trace's
    code ran, not today's defaults, so that the recorded turns replay as they ran (no new nudge)."""
    settings = ", ".join(f"{path}={json.dumps(value)}" for path, value in predates.items())
    return Warning_(
        kind=PREDATES_SETTINGS,
        message=(
            f"the trace was recorded before {len(predates)} settings of this version existed; the resumed "
            f"run, its live part too, has them as the code of that time ran so its recorded turns replay "
            f"as they did: {settings}"
        ),
    )


class RecordedCompletion(Completion):
    """A completion served from a trace, with the intervention that cut it short in the recorded run
    (`ModelCall.intervention`): the turn takes it where its own detector does not step in.

    `wall_out`: the recorded run's wall-time deadline cut the request here (`ModelCall.error_outcome`),
    so the turn ends on it as the run did, whatever the replay's own (fresh) clock says.
    """

    intervention: LoopSignal | None = None
    wall_out: bool = False


class ReplayedModelError(ModelError):
    """A recorded request that failed (`ModelCall.error`) fails again on replay, after the output it had
    received, so the turn is retried (or ends) as it was in the recorded run.

    `outcome` is what the recorded turn did then (`ModelCall.error_outcome`; None in older traces): the
    turn follows it where the recorded run's clock decided (a wall-time stop), which the replay's cannot.
    """

    def __init__(
        self,
        message: str,
        *,
        partial_text: str = "",
        partial_usage: Usage | None = None,
        outcome: FailureOutcome | None = None,
    ) -> None:
        super().__init__(message, partial_text=partial_text, partial_usage=partial_usage)
        self.outcome = outcome

    @classmethod
    def of(cls, call: ModelCall) -> ReplayedModelError:
        """The failure of the recorded `call`."""
        return cls(
            call.error or "",
            partial_text=call.completion,
            partial_usage=call.usage,
            outcome=call.error_outcome,
        )


# The status a replay ends with when it asks for a completion the recording does not hold.
RECORDING_ENDED = "recording_ended"


class ReplayExhausted(RuntimeError):
    """The replay model was asked for more completions than the trace recorded.

    No failure of a model: the recording ends there (most often because the recorded run was stopped
    there, e.g. cancelled while a tool ran). The turn ends the run with `status` (`RECORDING_ENDED`)
    and this message, which says how the recorded run ended.
    """

    def __init__(self, message: str, *, status: str = RECORDING_ENDED) -> None:
        super().__init__(message)
        self.status = status


class Recording(BaseModel):
    """One recorded run: how it was set up and the completions it got."""

    path: str
    run_id: str
    task: str
    model: str = ""
    tools: list[str] = Field(default_factory=list)
    tool_options: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    # As the trace stores them: each prompt only past what it shares with the one before
    # (`prompt_shared_prefix_chars`; `trace.restore_prompts` gives them whole, one at a time).
    completions: list[ModelCall] = Field(default_factory=list)
    # How the recorded run ended (its `final` event; None: the trace has none).
    status: str | None = None
    error: str | None = None
    # The conversation the run continued (a branch's shared prefix); replay it with
    # `agent.stream(task, history=recording.history_messages())`.
    history: list[dict[str, Any]] = Field(default_factory=list)
    continues: bool = False
    # How the prompts were rendered (`PromptOptions`; empty in older traces: the defaults).
    prompt_options: dict[str, Any] = Field(default_factory=dict)
    # The request after the completions, which the run did not send: it did not fit the context
    # (`Warning_.refused`; None: the run ended otherwise, or its trace predates the record).
    refused: ContextCheck | None = None

    def prompt(self) -> PromptOptions:
        """The recorded `PromptOptions`; `TraceError` naming the trace when they are not valid."""
        return _prompt_options(self.prompt_options, self.path, self.completions)

    def history_messages(self) -> list[Message]:
        """`history` as messages; `TraceError` naming the trace when a recorded one is not valid."""
        try:
            return [Message.model_validate(m) for m in self.history]
        except ValidationError as exc:
            raise TraceError(
                f"trace {self.path}: its recorded history is not valid ({_first(exc)})"
            ) from None

    def agent_config(self) -> AgentConfig:
        """The recorded `AgentConfig` (defaults fill in settings added since it was written).

        A setting that changes which requests a run makes takes, when the trace lacks it, the value
        that behaves as the code of that time did (`config_history.SINCE`): `max_answer_continuations`
        None (no continuation of a cut-off answer, no close of an unclosed reasoning),
        `intervene_on_last_step` False (no nudge, close or hint on the last step the budget allows),
        `min_context_room_tokens` None (requests not fitted to the context), a loop signal that did not
        exist off (no nudge of a turn the run took whole), `max_requests_per_turn` None..., or the
        replay asks for other completions than the trace holds (`predates` lists them). A setting this
        version no longer has is dropped, with a `RecordedSettingsWarning` naming it (`AgentConfig`
        refuses unknown keys). A config edited by hand or written by an incompatible version raises
        `TraceError` naming the trace and the setting, not pydantic's error.
        """
        config, dropped = self._config()
        if dropped:
            warnings.warn(
                RecordedSettingsWarning(
                    f"trace {self.path}: its recorded config holds settings this version does not have; "
                    f"they are ignored: {', '.join(dropped)}"
                ),
                stacklevel=2,
            )
        return config

    def _config(self) -> tuple[AgentConfig, list[str]]:
        """The recorded `AgentConfig` and the settings dropped from it (unwarned: `recording_of` checks
        it when the trace is read, and the warning is the caller's, once, where it takes the config)."""
        recorded, dropped = known_settings(AgentConfig, as_recorded_then(self.config)[0])
        try:
            return AgentConfig.model_validate(recorded), dropped
        except ValidationError as exc:
            errors = exc.errors()
            if errors and errors[0].get("type") in _OUT_OF_BOUNDS:
                # A trace records the config its run was given: a value of the right type that is out
                # of bounds now was accepted then (this version checks more: a negative retry count,
                # an infinite limit), unless the trace was edited.
                raise RecordedConfigError(
                    f"trace {self.path}: its recorded setting {_first(exc)} is refused by this version; "
                    "the version that recorded it accepted it (or the trace was edited by hand)"
                ) from None
            raise TraceError(f"trace {self.path}: its recorded config is not valid ({_first(exc)})") from None

    def predates(self) -> dict[str, Any]:
        """The settings the trace was recorded before (dotted path: the value `agent_config` gives
        them, the one that runs as its code did); empty for a trace of this version."""
        return as_recorded_then(self.config)[1]


# pydantic's error types for a value of the right type outside a setting's bounds.
_OUT_OF_BOUNDS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number", "multiple_of"}
)


class RecordedConfigError(TraceError):
    """A trace's recorded config holds a value this version refuses (`Recording.agent_config`)."""


def _prompt_options(recorded: dict[str, Any], path: str | Path, calls: Sequence[ModelCall]) -> PromptOptions:
    # OpenAI-API model calls record no prompt: the client rendered none (`recorded_prompt_options`).
    rendered = not calls or any(call.prompt is not None for call in calls)
    try:
        return recorded_prompt_options(recorded, rendered_prompts=rendered)
    except ValidationError as exc:
        raise TraceError(f"trace {path}: its recorded prompt options are not valid ({_first(exc)})") from None


def _first(exc: ValidationError) -> str:
    """The first problem pydantic found, as `where: what` (and how many more there are)."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    more = f"; {len(errors) - 1} more" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', '')}, got {str(first.get('input'))[:80]!r}{more}"


def load_recording(path: str | Path, *, run_id: str | None = None) -> Recording:
    """Read one run from a trace; raises `TraceError` (or OSError) when there is none to read."""
    return recording_of(read_trace(path, run_id=run_id, prompts="stored"), path)


def recording_of(events: list[Event], path: str | Path) -> Recording:
    """The run recorded in `events` (one run's, as `read_trace` returns them) read from `path`.

    Read them with `prompts="stored"`: a recording of whole prompts holds them all at once.
    """
    started = next((e for e in events if isinstance(e, RunStarted)), None)
    if started is None:
        raise TraceError(f"trace {path} has no run_started event: nothing to replay")
    final = next((e for e in reversed(events) if e.type == "final"), None)
    recording = Recording(
        path=str(path),
        run_id=started.run_id,
        task=started.task,
        model=started.model,
        tools=list(started.tools),
        tool_options=dict(started.tool_options),
        config=dict(started.config),
        completions=recorded_completions(events),
        status=getattr(final, "status", None),
        error=getattr(final, "error", None),
        history=list(started.history),
        continues=started.continues,
        prompt_options=dict(started.prompt_options),
        refused=_refusal(events),
    )
    # found now, when the trace is read, not once a run built from it has started
    recording._config()
    recording.history_messages()
    recording.prompt()
    return recording


def _refusal(events: Sequence[Event]) -> ContextCheck | None:
    """The check that refused the recorded run's last request, unsent (it did not fit the context)."""
    return next((e.refused for e in reversed(events) if isinstance(e, Warning_) and e.refused), None)


def _excerpt(text: str, at: int) -> str:
    piece = text[max(0, at - 10) : at + _EXCERPT]
    return piece if piece else "(end)"


class ReplayModel:
    """A `Model` that answers with the completions recorded in a trace, in order.

    With `then`, it hands over to a live model once the recording runs out: that is how an
    interrupted run resumes (the recorded turns are replayed, tools re-run in a fresh sandbox so its
    state is rebuilt, and the live model continues from where the trace ends).

    The prompts it checks against the recording are rendered with `prompt_options` (the recorded
    ones, by `from_trace` / `from_recording`), or by `then` when that renders prompts itself: a
    resumed run's live client must be made with the recorded options (`Recording.prompt()`).
    """

    def __init__(
        self,
        calls: Sequence[ModelCall],
        *,
        then: Model | None = None,
        chunk: int = 16,
        source: ReplaySource | None = None,
        prompt_options: PromptOptions | None = None,
        recorded_end: tuple[str | None, str | None] = (None, None),
        refused: ContextCheck | None = None,
        predates: dict[str, Any] | None = None,
    ) -> None:
        """`recorded_end`: the recorded run's final status and error, told when the recording runs out.
        `refused`: the check that refused the request after the recorded ones (`Recording.refused`).
        `predates`: the settings the trace was recorded before (`Recording.predates`): a resumed run
        says once, before its first request, that its live part runs with them as the trace's code did."""
        # A probe's record answers no request: its cost is counted by the turn whose request follows it.
        self._calls: list[ModelCall] = []
        self._probes: dict[int, list[ModelCall]] = {}
        for call in calls:
            if call.probe:
                self._probes.setdefault(len(self._calls), []).append(call)
            else:
                self._calls.append(call)
        if source is not None:
            source = source.model_copy(update={"completions": len(self._calls)})
        if then is not None:
            # A run that ended on failed requests (its retries spent, or interrupted between them), or on
            # a request the wall-time deadline cut, resumes by asking the live model, not by failing them
            # all again (or stopping where the deadline did).
            while self._calls and (self._calls[-1].error is not None or _walled_out(self._calls[-1])):
                self._calls.pop()
            if source is not None:
                source = source.model_copy(update={"completions": len(self._calls)})
        self._next = 0
        # The calls keep their prompts as the trace stores them; each is made whole when its turn
        # comes, so a replay holds one recorded prompt, not all of them.
        self._prompts = PromptRestorer()
        self._then = then
        self._prompt_options = prompt_options or PromptOptions()
        self._chunk = chunk
        self.source = source
        self.divergences = 0
        # OpenAI-API traces recorded before the messages sent were hold nothing to check against: said
        # once, at the first replayed request, rather than replaying changed requests silently.
        self._unchecked = any(_returned(c) for c in self._calls) and not any(
            c.prompt is not None or c.messages is not None for c in self._calls
        )
        self._handed_over = False
        self._notices: list[Event] = []
        if then is not None and predates:
            self._notices.append(_predates_warning(predates))
        self._recorded_end = recorded_end
        self._refused = refused
        self.name = f"replay({len(self._calls)} completions)"

    @classmethod
    def from_trace(
        cls, path: str | Path, *, run_id: str | None = None, then: Model | None = None, chunk: int = 16
    ) -> ReplayModel:
        """Replay one run of the trace at `path` (`run_id` picks one in an old multi-run file)."""
        events = read_trace(path, run_id=run_id, prompts="stored")
        calls = recorded_completions(events)
        source = ReplaySource(
            mode="resume" if then is not None else "replay",
            path=_absolute(path),
            run_id=next((e.run_id for e in events if e.run_id), ""),
            completions=len(calls),
        )
        started = next((e for e in events if isinstance(e, RunStarted)), None)
        options = _prompt_options(started.prompt_options if started else {}, path, calls)
        final = next((e for e in reversed(events) if e.type == "final"), None)
        end = (getattr(final, "status", None), getattr(final, "error", None))
        return cls(
            calls,
            then=then,
            chunk=chunk,
            source=source,
            prompt_options=options,
            recorded_end=end,
            refused=_refusal(events),
            predates=as_recorded_then(started.config)[1] if started else None,
        )

    @classmethod
    def from_recording(
        cls,
        recording: Recording,
        *,
        then: Model | None = None,
        chunk: int = 16,
        prompt_options: PromptOptions | None = None,
    ) -> ReplayModel:
        """Replay `recording`; `prompt_options` overrides the recorded ones (e.g. a flag given anew)."""
        source = ReplaySource(
            mode="resume" if then is not None else "replay",
            path=_absolute(recording.path),
            run_id=recording.run_id,
            completions=len(recording.completions),
        )
        options = prompt_options or recording.prompt()
        return cls(
            recording.completions,
            then=then,
            chunk=chunk,
            source=source,
            prompt_options=options,
            recorded_end=(recording.status, recording.error),
            refused=recording.refused,
            predates=recording.predates(),
        )

    @property
    def prompt_options(self) -> PromptOptions:
        """How the prompts are rendered: by the live model when it renders them, else as recorded."""
        live = getattr(self._then, "prompt_options", None)
        if isinstance(self._then, PromptModel) and isinstance(live, PromptOptions):
            return live
        return self._prompt_options

    @property
    def remaining(self) -> int:
        return len(self._calls) - self._next

    @property
    def replaying(self) -> bool:
        """Whether the next request is answered from the recording."""
        return self._next < len(self._calls)

    def take_probes(self) -> list[ModelCall]:
        """The probes the recorded run sent beside the request answered next (none once the recording
        is used up): the turn counts their cost, as the run did, and traces them again."""
        if not self.replaying:
            return []
        return [p.model_copy(update={"ts": time.time()}) for p in self._probes.pop(self._next, [])]

    def peek(self) -> ModelCall | None:
        """The recorded call that answers the next request (None once the recording is used up): the
        turn asks for its `max_new_tokens`, so the replay decides as the run did."""
        return self._calls[self._next] if self.replaying else None

    @property
    def live(self) -> bool:
        """Whether the next request goes to the live model: the recording is used up, and one was given."""
        return self._then is not None and not self.replaying

    @property
    def server_info(self) -> Callable[[], Awaitable[Any]]:
        """The live model's `server_info`, where it has one (else AttributeError, as a model without one
        raises): the loop asks it for the live server's context length once the live model takes over."""
        info = getattr(self._then, "server_info", None)
        if info is None:
            raise AttributeError(f"{type(self._then).__name__} has no server_info")
        return cast(Callable[[], Awaitable[Any]], info)

    def recorded_context_length(self) -> int | None:
        """The context length the recorded run's requests were last checked against (None if never):
        while the recording answers, and past it with no live model, the replay checks against it, as
        the run did against its server's (a live model's requests are checked against its own)."""
        if self._refused is not None:  # the run's last check, and its only one when it sent nothing
            return self._refused.context_length
        return next((c.context_length for c in reversed(self._calls) if c.context_length), None)

    def count_prompt_tokens(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, prefix: str = ""
    ) -> int | None:
        """The prompt's tokens as the recorded run's client counted them (`PromptCounter`): a native
        client's exact count under the recorded prompt options, an OpenAI-API client's estimate; the
        live model's count once it has taken over. Past the recording, the request the run refused
        unsent counts what it counted then."""
        from qwq_agent.agent.prompt_size import estimate_prompt_tokens, prompt_tokens, rendered_prompt_tokens

        if self._then is not None and not self.replaying:
            return prompt_tokens(self._then, messages, tools, prefix)
        if any(call.messages is not None for call in self._calls):  # an OpenAI-API run's recording
            counted = estimate_prompt_tokens(messages, tools, prefix=prefix)
        else:
            counted = rendered_prompt_tokens(messages, tools, prefix=prefix, options=self.prompt_options)
        refused = self._refused
        if refused is None or self.replaying:
            return counted
        # A count that differs now is a divergence; told only where the calls show which client counted
        # (with none recorded, an OpenAI-API client's estimate and a native count look alike).
        if self._calls and counted is not None and counted != refused.prompt_tokens:
            self.divergences += 1
            what = f"the request after the {len(self._calls)} recorded model calls, unsent for the context"
            self._notices.append(
                Warning_(
                    kind="replay_divergence",
                    message=f"{what}, counts {counted} tokens, {refused.prompt_tokens} when recorded; "
                    "the recorded count is used anyway",
                )
            )
        return refused.prompt_tokens

    def take_notices(self, *, final: bool = False) -> list[Event]:
        """Events the loop should emit: divergences seen, and the hand-over to the live model.

        `final`: the run has ended; a recording it did not use up is a divergence too.
        """
        if self._then is not None and not self.replaying:
            self._hand_over()
        if final and self.replaying:
            self.divergences += 1
            used = self._next
            self._notices.append(
                Warning_(
                    kind="replay_divergence",
                    message=(
                        f"the run ended after {used} of the {len(self._calls)} recorded model calls; "
                        "the recording went on"
                    ),
                )
            )
        notices, self._notices = self._notices, []
        return notices

    def _hand_over(self) -> None:
        if not self._handed_over:
            self._handed_over = True
            self._notices.append(ReplayEnded(completions=len(self._calls), divergences=self.divergences))

    def _check_prompt(self, call: ModelCall, prompt: str) -> None:
        recorded = call.prompt
        if recorded is None or recorded == prompt:  # a failed or cut-off request records none
            return
        at = common_prefix_len(recorded, prompt)
        self._diverged(
            f"the prompt differs from the recording at character {at} (recorded "
            f"{_excerpt(recorded, at)!r}, now {_excerpt(prompt, at)!r})"
        )

    def _check_request(
        self, call: ModelCall, messages: Sequence[Message], tools: Sequence[ToolSpec], prefix: str
    ) -> None:
        """Check what this request sends against the recorded `call`: its prompt, as a native client
        renders it, or its chat messages and tools, as an OpenAI-API client sends them."""
        if call.messages is not None:
            problems = [_messages_differ(call.messages, to_openai_messages(messages, prefix))]
            if call.tools_digest is not None and call.tools_digest != tools_digest(to_openai_tools(tools)):
                problems.append(
                    "the tools sent differ from the recorded ones (their descriptions or parameters)"
                )
            if found := [p for p in problems if p]:
                self._diverged("; ".join(found))
        elif call.prompt is not None:
            self._check_prompt(call, self.render_prompt(messages, tools) + prefix)
        elif self._unchecked:
            self._unchecked = False
            self._notices.append(
                Warning_(
                    kind="replay_unchecked",
                    message=(
                        "the trace records neither the prompts nor the messages its requests sent (an "
                        "OpenAI-API run recorded before they were), so this replay cannot be checked "
                        "against it: a changed tool result or an edited task goes unreported"
                    ),
                )
            )

    def _diverged(self, what: str) -> None:
        self.divergences += 1
        self._notices.append(
            Warning_(
                kind="replay_divergence",
                message=(
                    f"recorded model call {self._next} of {len(self._calls)}: {what}; "
                    "the recorded completion is used anyway"
                ),
            )
        )

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncIterator[ModelEvent]:
        if not self.replaying:
            if self._then is None:
                raise self._exhausted()
            self._hand_over()
            async for ev in self._then.stream(messages, tools, params, prefix=prefix):
                yield ev
            return
        call = self._take()
        self._check_request(call, messages, tools, prefix)
        text = call.completion
        for i in range(0, len(text), self._chunk):
            # A request the run cut short (an intervention) cost what was recorded, wherever it is cut now.
            yield TextDelta(text=text[i : i + self._chunk], usage=call.usage)
        if call.error is not None:
            raise ReplayedModelError.of(call)
        yield RecordedCompletion(
            text=text,
            prompt=call.prompt,
            usage=call.usage,
            output_ids=call.completion_ids or [],
            messages=call.messages,
            tools_digest=call.tools_digest,
            intervention=call.intervention,
            wall_out=_walled_out(call),
        )

    def _exhausted(self) -> ReplayExhausted:
        """The recording runs out here: how many calls it held, and how the recorded run ended."""
        n = len(self._calls)
        status, error = self._recorded_end
        if status is None:
            ended = "the recorded run has no final event (its process was killed, or its trace cut short)"
        else:
            ended = f"the recorded run ended {status!r}" + (f" ({error})" if error else "")
        return ReplayExhausted(
            f"the recording ends here, after {n} model call{'' if n == 1 else 's'}: {ended}"
        )

    def _take(self) -> ModelCall:
        """The next recorded call, with its whole prompt."""
        call = self._calls[self._next]
        self._next += 1
        return self._prompts.whole(call)

    def render_prompt(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
        """The prompt a native client would send (replayed constrained calls ask for it)."""
        if isinstance(self._then, PromptModel):
            return self._then.render_prompt(messages, tools)
        from qwq_agent.agent.chat_format import render

        options = self._prompt_options
        return render(
            list(messages),
            list(tools),
            keep_reasoning=options.keep_reasoning,
            profile=options.profile,
            written_order=options.written_order,
        )

    async def generate(self, prompt: str, params: SamplingParams | None = None) -> Completion:
        """The next recorded completion as a whole (a constrained tool call, when replaying one)."""
        if not self.replaying:
            if self._then is None:
                raise self._exhausted()
            if not isinstance(self._then, PromptModel):
                raise ReplayExhausted(
                    f"the trace recorded {len(self._calls)} completions; all were used, and the live "
                    f"model {self._then.name!r} cannot complete a raw prompt",
                    status="model_error",  # the live model's shortcoming, not the recording's end
                )
            self._hand_over()
            return await self._then.generate(prompt, params)
        call = self._take()
        self._check_prompt(call, prompt)
        if call.error is not None:
            raise ReplayedModelError.of(call)
        return Completion(
            text=call.completion, prompt=call.prompt, usage=call.usage, output_ids=call.completion_ids or []
        )

    async def aclose(self) -> None:
        if self._then is not None:
            await self._then.aclose()


def _returned(call: ModelCall) -> bool:
    """Whether the recorded request returned a completion, and so recorded what it sent if it could
    (a failed request, or one the turn cut off itself, records nothing sent)."""
    return call.error is None and call.usage.finish_reason != "aborted"


def _messages_differ(recorded: Sequence[dict[str, Any]], sent: Sequence[dict[str, Any]]) -> str | None:
    """Where the chat messages sent now first differ from the recorded ones, in words; None if nowhere."""
    for i, (old, new) in enumerate(zip(recorded, sent, strict=False)):
        if old != new:
            key = next(k for k in {**new, **old} if old.get(k, _ABSENT) != new.get(k, _ABSENT))
            a, b = (_field_text(m.get(key, _ABSENT)) for m in (old, new))
            at = common_prefix_len(a, b)
            return (
                f"message {i + 1} of {len(sent)} ({new.get('role')}) differs from the recorded one in "
                f"its {key} at character {at} (recorded {_excerpt(a, at)!r}, now {_excerpt(b, at)!r})"
            )
    if len(sent) > len(recorded):
        extra = sent[len(recorded)]
        return (
            f"the recording sent {len(recorded)} messages, this request {len(sent)} (the first one more: "
            f"{extra.get('role')} {_excerpt(_as_json(extra), 0)!r})"
        )
    if len(sent) < len(recorded):
        gone = recorded[len(sent)]
        return (
            f"the recording sent {len(recorded)} messages, this request {len(sent)} (the first one "
            f"missing: {gone.get('role')} {_excerpt(_as_json(gone), 0)!r})"
        )
    return None


def _field_text(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return value if isinstance(value, str) else _as_json(value)


def _as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _walled_out(call: ModelCall) -> bool:
    """Whether the recorded run's wall-time deadline cut `call`'s stream (not a failed request)."""
    return call.error is None and call.error_outcome == "wall_out"


def _absolute(path: str | Path) -> str:
    """The recording's path as `run_started.replay_of` records it: absolute, meaningful from any folder."""
    return str(Path(path).resolve())
