"""Typed events of an agent run: what the CLI, traces and users' own code consume."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from qwq_agent.agent.loops.detector import LoopSignal
from qwq_agent.agent.messages import ToolCall
from qwq_agent.protocols import Usage

# What the turn did after a failed request (`ModelCall.error_outcome`).
FailureOutcome = Literal["retried", "ended", "wall_out", "no_time_to_retry"]


class _Event(BaseModel):
    run_id: str = ""
    step: int = 0
    ts: float = Field(default_factory=time.time)


class ReplaySource(BaseModel):
    """The recording a run replays (`mode="replay"`) or resumes from (`mode="resume"`)."""

    mode: Literal["replay", "resume"]
    path: str
    run_id: str
    completions: int


class RunStarted(_Event):
    type: Literal["run_started"] = "run_started"
    task: str
    model: str
    tools: list[str]
    sandbox_id: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    # How the tools were built (e.g. `build_tools` options), so a replay can build the same ones.
    tool_options: dict[str, Any] = Field(default_factory=dict)
    replay_of: ReplaySource | None = None
    # The conversation this run continued (a branch's shared prefix, `Agent.stream(history=...)`),
    # so a replay sends the same prompts; empty for a run that started from its task alone.
    history: list[dict[str, Any]] = Field(default_factory=list)
    # True when no user turn was added to `history` (the run continued it as it stood).
    continues: bool = False
    # How the client rendered the prompts (`chat_format.PromptOptions`, e.g. keep_reasoning), so a
    # replay renders the same ones; only `written_order` for a model that renders none (an
    # OpenAI-compatible API; empty in its traces written before that), and empty in traces written
    # before it was recorded (`chat_format.recorded_prompt_options` says what applies then).
    prompt_options: dict[str, Any] = Field(default_factory=dict)


class ReplayEnded(_Event):
    """The recorded completions are used up: from here on the live model answers (resume only)."""

    type: Literal["replay_end"] = "replay_end"
    completions: int
    divergences: int = 0


class ReasoningDelta(_Event):
    type: Literal["reasoning"] = "reasoning"
    text: str


class ContentDelta(_Event):
    type: Literal["content"] = "content"
    text: str


class ModelCall(_Event):
    """One model request: the exact prompt sent and the exact text that came back."""

    type: Literal["model_call"] = "model_call"
    prompt: str | None
    prefix: str = ""
    completion: str
    usage: Usage
    prompt_shared_prefix_chars: int | None = None
    """Set on a call as a trace stores it (`read_trace(prompts="stored")`): `prompt` is then only what
    follows this many characters of the run's previous prompt (`PromptRestorer` puts it back); None
    when `prompt` is whole."""
    completion_ids: list[int] | None = None
    """The token ids the server generated (native API), so a replay keeps the turn token-exact."""
    max_new_tokens: int | None = None
    """The token limit the request asked for: `sampling.max_new_tokens`, or fewer where the generation
    budget or the room left in the model's context allowed fewer. A replay asks for the same (None in
    traces written before it was recorded, and on a probe)."""
    context_length: int | None = Field(default=None, gt=0)
    """The model's context length the request was checked against (configured, or the server's), so
    that a replay, which has no server to ask, ends a run whose context filled up where it ended; None
    when it was unknown (nothing was checked) or in traces written before it was recorded."""
    messages: list[dict[str, Any]] | None = None
    """The chat messages sent (OpenAI API, which takes no prompt), for a replay to check its requests
    against. In the trace file only those after the ones the previous call sent are stored
    (`messages_shared_prefix` says how many it shares); `read_trace` puts the whole list back."""
    messages_shared_prefix: int | None = None
    tools_digest: str | None = None
    """A digest of the tools sent with `messages` (the native prompt holds them)."""
    intervention: LoopSignal | None = None
    """The loop signal this request was cut short for (a nudge, a close, a stop), so a replay steps in
    the same way where it cannot decide so itself (a probe's answers are not replayed)."""
    error: str | None = None
    """Why the request failed (a dropped connection, an error or abort from the server), as
    `Type: message`; None for a request that returned. A failed request's `completion` is the output
    received before the failure and its `usage` what that cost; the turn was then retried from its
    start, or ended. A replay fails it again at the same place. (Traces written before it was recorded
    hold no failed requests.)"""
    error_outcome: FailureOutcome | None = None
    """What the turn did after the failure: `retried` it, `ended` the run (its retries or a budget spent,
    or a request that is not retried), or ended it on the wall-time deadline: `wall_out` (the deadline
    passed, or the client's next try would pass it) and `no_time_to_retry` (the turn's retry would).
    A replay's clock cannot tell those two, so it follows the recording there; None in traces written
    before it was recorded (the replay then decides by its own clock). On a request that did not fail
    (`error` None), `wall_out` says the wall-time deadline cut its stream and ended the run there, which a
    replay does at the same place (None in traces written before this was recorded)."""
    probe: bool = False
    """An answer-stability probe sent beside the stream (`loops/probe.py`): its cost is in the totals
    like any request's, so it is recorded (before the `model_call` of the request it rode on) without
    its prompt (the turn's, the reasoning so far and the probe's suffix). A replay serves it no
    completion but counts its cost where the recording does (False in traces written before)."""


class ToolCallEvent(_Event):
    type: Literal["tool_call"] = "tool_call"
    call: ToolCall
    repairs: list[str] = Field(default_factory=list)


class ToolStarted(_Event):
    """A tool call began running (a sandbox call may first wait behind earlier ones on that sandbox)."""

    type: Literal["tool_started"] = "tool_started"
    call_id: str
    name: str


class ToolOutputDelta(_Event):
    """Output of a running tool call as it arrives (coalesced and capped per call).

    The call's `ToolResultEvent` still carries its whole output: deltas are for watching, not for the model.
    """

    type: Literal["tool_output"] = "tool_output"
    call_id: str
    name: str
    stream: Literal["stdout", "stderr"] = "stdout"
    text: str
    capped: bool = False  # no more output of this call is streamed (it is in the result)


class ToolResultEvent(_Event):
    type: Literal["tool_result"] = "tool_result"
    call_id: str
    name: str
    text: str
    is_error: bool = False
    images: list[str] = Field(default_factory=list)
    duration_s: float = 0.0
    # The output's metadata["error"] when it is a string (timeout, invalid_arguments, ...), cut to 100 chars.
    error_type: str | None = None


class ApprovalRequested(_Event):
    """A tool call needs a decision (policy `ask`); followed by `approval`, or the run stops awaiting it."""

    type: Literal["approval_requested"] = "approval_requested"
    call: ToolCall
    reason: str | None = None


class ApprovalDecided(_Event):
    """How a call was decided: allowed, denied (the reason is the model's observation) or edited."""

    type: Literal["approval"] = "approval"
    call_id: str
    name: str
    action: Literal["allow", "deny", "edit"]
    reason: str | None = None
    arguments: dict[str, Any] | None = None
    by: str = "user"
    # The call as the model wrote it, so that a replay applies the decision to this call only (None in
    # traces written before it was recorded).
    call: ToolCall | None = None


class UsageEvent(_Event):
    type: Literal["usage"] = "usage"
    usage: Usage
    totals: dict[str, float] = Field(default_factory=dict)


class ContextCheck(BaseModel):
    """A request's prompt as counted before it was sent, and the model's context length it was checked
    against."""

    # A trace holding other counts is not one this code wrote (edited, or corrupted): refused on reading.
    prompt_tokens: int = Field(ge=0)
    context_length: int = Field(gt=0)


class Warning_(_Event):
    """A problem the loop noticed and acted on (loop, repetition, language, malformed call)."""

    type: Literal["warning"] = "warning"
    kind: str
    message: str
    level: int = 1
    refused: ContextCheck | None = None
    """On the `context_full` warning of a request the turn did not send (it did not fit): the check
    that refused it, so that a replay refuses it the same way. Where it was the run's first request no
    model call records the context length (it may have come from the server, which a replay has not);
    None on other warnings, and in traces written before it was recorded."""


class BudgetExceeded(_Event):
    type: Literal["budget"] = "budget"
    budget: str
    limit: float
    used: float


class Final(_Event):
    type: Literal["final"] = "final"
    status: str
    answer: str | None = None
    error: str | None = None
    totals: dict[str, float] = Field(default_factory=dict)


class BranchesStarted(_Event):
    """An exploration forked `n` branches from one state; each branch's run is traced in its own file."""

    type: Literal["branches"] = "branches"
    n: int
    select: str
    seeds: list[int]
    traces: list[str | None] = Field(default_factory=list)
    snapshot_id: str | None = None
    # The request that prefilled the shared prefix once before the branches were sent (None: skipped).
    warmup: Usage | None = None


class BranchEnded(_Event):
    """How one branch ended, and what the selection made of it."""

    type: Literal["branch_end"] = "branch_end"
    index: int
    status: str
    answer: str | None = None
    error: str | None = None
    verdict: str | None = None
    passed: bool | None = None
    trace: str | None = None
    first_turn_cached_tokens: int = 0
    first_turn_prompt_tokens: int = 0
    # How its sandbox's interpreter was restored, and the parent's cells that failed on replay.
    python_state: str | None = None
    replay_failures: list[str] = Field(default_factory=list)


class BranchSelected(_Event):
    """Which branch won (None: none did) and why."""

    type: Literal["branch_selected"] = "branch_selected"
    winner: int | None
    reason: str


Event = Annotated[
    RunStarted
    | ReasoningDelta
    | ContentDelta
    | ModelCall
    | ToolCallEvent
    | ToolStarted
    | ToolOutputDelta
    | ToolResultEvent
    | UsageEvent
    | Warning_
    | BudgetExceeded
    | ReplayEnded
    | ApprovalRequested
    | ApprovalDecided
    | BranchesStarted
    | BranchEnded
    | BranchSelected
    | Final,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
