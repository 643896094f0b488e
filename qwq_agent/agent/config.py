"""What an agent is configured with, and what a run gives back."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from qwq_agent.agent.approval import ApprovalPolicy
from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.events import Warning_
from qwq_agent.agent.loop_detector import LoopDetectorConfig, RepetitionConfig
from qwq_agent.agent.messages import Message
from qwq_agent.protocols import SamplingParams
from qwq_agent.surrogates import escape_surrogates

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful assistant that solves tasks with tools. Compute, count, inspect and verify with "
    "the tools instead of doing it in your head; when the task is done, give the final answer concisely."
)


class AgentConfig(BaseModel):
    """How one agent behaves; every threshold is configuration."""

    # A misspelt setting (`AgentConfig(max_steps=3)`, which is `budget=Budget(max_steps=3)`) is an
    # error: ignored, the run went with the default. A trace recorded by a version with settings since
    # removed still loads: `Recording.agent_config` drops them, with a warning.
    model_config = ConfigDict(extra="forbid")

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(max_new_tokens=8192))
    budget: Budget = Field(default_factory=Budget)
    loop_detector: LoopDetectorConfig = Field(default_factory=LoopDetectorConfig)
    repetition: RepetitionConfig = Field(default_factory=RepetitionConfig)
    check_language: bool = True
    # Per tool call. A call's deadline is the soonest of this, the tool-time budget and the run's wall
    # deadline; the registry, the tools and the sandbox each clamp to it (no other setting to match).
    # More than 0: with 0 every call failed before its tool ran (its argument check had no time).
    tool_timeout_s: float = Field(default=660.0, gt=0.0, allow_inf_nan=False)
    model_retries: int = Field(default=2, ge=0)
    # Wait before the n-th retry of a turn: this doubled per retry (capped at 30 s), or longer when the
    # server asked for it (Retry-After); a wait the wall deadline cannot fit ends the run instead.
    model_retry_backoff_s: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    # Hints (REASONING_CALL_HINT) for a tool call written inside the reasoning, in a row: a turn with a
    # call where it runs ends the streak. A turn whose only action is still such a call then ends the run
    # `tool_call_in_reasoning` (0: at the first), never `completed` with a call that never ran.
    max_reasoning_call_hints: int = Field(default=2, ge=0)
    # Times one turn's answer cut off by the token limit (`sampling.max_new_tokens`) is continued in a new
    # request before the run ends `truncated_answer` with what was written. No continuation goes past the
    # budget: an answer the generation budget cut off ends the run `budget_exceeded`.
    # None: as before this setting existed, a cut-off answer is the turn's answer as it stands and a turn
    # ended inside its reasoning is not closed for the model to answer. A trace written then lacks the
    # key and replays so (`Recording.agent_config`): today's default asked for requests it never made.
    max_answer_continuations: int | None = Field(default=2, ge=0)
    # A nudge, a close of looping reasoning or an arithmetic hint on the last step the budget allows
    # goes on with that step (only the token and wall-time budgets stop it). False: as before this
    # setting existed, the step budget (every budget) stops it there and the run ends budget_exceeded.
    # Only for traces written then, which lack the key and replay so (`Recording.agent_config`).
    intervene_on_last_step: bool = True
    # Generate every tool call under a grammar built from the tools' schemas, so calls are always
    # well formed (SGLang's native client only; see qwq_agent.agent.constrained).
    constrained_tool_calls: bool = False
    # Requests one turn may make (retries, nudges, constrained calls and their continuations) before it
    # ends with an error (None: no cap, as before this setting existed; for traces written then); and
    # the model's context length, checked before every request (None: asked from the server when the
    # client can tell, else not checked).
    max_requests_per_turn: int | None = Field(default=32, ge=1)
    context_length: int | None = Field(default=None, ge=1)
    # Before every request its prompt is counted (`prompt_size`) and its max_new_tokens lowered so that
    # prompt + output fit the context length (the server refuses a request that does not fit). With
    # fewer new tokens than this left (or than max_new_tokens asks, when that is less) the run ends
    # `context_full` instead of sending: a QwQ turn cut off every few hundred tokens would only spend the
    # rest of the context on reasoning it never finishes. None: as before this setting existed, only a
    # turn's later requests are checked, against the last one's size, and nothing is lowered; only for
    # traces written then, which lack the key and replay so (`Recording.agent_config`).
    min_context_room_tokens: int | None = Field(default=512, ge=1)
    # How long an event of `Agent.stream()` may wait for the consumer's next read before the run is
    # ended `interrupted`, its sandbox and KV room released: a run only goes on while it is read, so a
    # consumer gone quiet held them with no deadline. None: no limit. (`Agent.run()` reads at once.)
    consumer_idle_timeout_s: float | None = Field(default=300.0, gt=0.0, allow_inf_nan=False)
    # KV tokens a run reserves under admission control: its expected peak context.
    kv_reservation_tokens: int = Field(default=8192, ge=0)
    # Which tool calls need a human decision (None: none, unless the Agent has an approver, which is
    # then asked about every call). Part of the config so a trace records it and a resume applies it.
    approval: ApprovalPolicy | None = None


class RunResult(BaseModel):
    """How a run ended, with what it produced and used."""

    run_id: str
    status: str
    answer: str | None = None
    error: str | None = None
    messages: list[Message]
    totals: dict[str, float]
    trace_path: str | None = None
    # Why the trace is missing or incomplete (a bad folder, a full disk); None when it is whole.
    trace_error: str | None = None
    events: int = 0
    # The run's warnings, as its trace has them: what it met and dealt with, which a run that still
    # ended `completed` may have cost (a `sandbox_replaced`: the files it made were lost on the way; a
    # `language_mix` answer kept as it was; a `repeated_tool_call` ...).
    warnings: list[Warning_] = Field(default_factory=list)
    # `git diff` of /workspace from its upload to the run's end (`open_sandbox(workspace=...)`); None
    # when no baseline was recorded or the diff failed (a `patch_failed` warning says why). Bytes that
    # are not UTF-8 are held as lone surrogates: `qwq_agent.agent.patch.patch_bytes` gives git's bytes
    # back; in JSON (`model_dump_json`) they are `\xNN` escapes, which `git apply` would not read so.
    patch: str | None = None
    # Why `patch` is None although a baseline was recorded: the diff failed (git's words; the
    # `patch_failed` warning says the same). None when there is a patch, or none was asked for.
    patch_error: str | None = None

    @field_serializer("patch", when_used="json")
    def _patch_in_json(self, patch: str | None) -> str | None:
        return None if patch is None else escape_surrogates(patch)
