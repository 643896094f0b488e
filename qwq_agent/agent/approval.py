"""Human approval of tool calls: a policy per tool, an async approver, and deferred decisions.

A policy (`ApprovalPolicy`, part of `AgentConfig` so a trace records it) says for each call whether it
runs (`allow`), is refused (`deny`) or needs a decision (`ask`); rules match a tool name (a glob) and,
optionally, regular expressions on argument values (e.g. shell commands that start with `rm`). The
first rule that matches wins.

The patterns are the operator's, the text they are matched against the model's: a pattern that
backtracks (`^(a|a)*$`) could take longer than the universe on one argument. So each match has a
time limit (`schema_patterns.MATCH_TIMEOUT_S`, as for tools' schemas) and `review_calls` matches on the
argument checks' threads, never on the event loop. A rule whose match did not finish in time may or may
not apply: the call is asked about (a `policy_timeout` warning says why), never allowed on a guess.

An `ask` goes to the run's approver: any `async (ApprovalRequest) -> ApprovalDecision` callable. It
can allow, deny with a reason (the model reads it as the call's observation), allow with edited
arguments (re-validated against the tool's schema), or defer. With no approver, or on `defer`, the
run stops with status `awaiting_approval`; its trace holds everything needed to resume it in another
process with the decision (`resume_decisions`), replaying the recorded model turns instead of asking
the model again. No call of a turn runs before every call of that turn is decided.

A replay's recorded turns are history (`replay_approver`): each call is decided as the recorded run
decided it, whatever the policy now (denied stays denied, an edited call runs with the edited
arguments, one that ran runs again, one that waited for a decision waits for one); only the calls after
the recording follow the policy. A recorded decision is found by call id and applies only to the call it
was made about (same tool, same arguments): a replayed call that differs from the one recorded under its
id is not decided by the recording, and is not run without asking.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator

from qwq_agent.agent.events import ApprovalDecided, ApprovalRequested, Final, ToolCallEvent, Warning_
from qwq_agent.agent.messages import Message, ToolCall
from qwq_agent.agent.repair import non_finite_problem
from qwq_agent.agent.trace import read_trace
from qwq_agent.surrogates import replace_surrogates_in
from qwq_agent.tools.arg_check import run_check
from qwq_agent.tools.schema_patterns import search_in_time

__all__ = [
    "ApprovalDecision",
    "ApprovalPolicy",
    "ApprovalRequest",
    "Approver",
    "GateOutcome",
    "PendingApproval",
    "PolicyTimeout",
    "RecordedApprover",
    "Rule",
    "pending_approval",
    "recorded_decisions",
    "replay_approver",
    "resume_decisions",
    "review_calls",
]

Action = Literal["allow", "deny", "ask"]

# How long one call's policy check may take in all (every rule's patterns), at most.
_POLICY_CHECK_S = 5.0


class PolicyTimeout(Exception):
    """A rule's pattern could not be matched against a call's argument in time: whether the rule
    applies is unknown. `rule` is the rule's index in the policy (-1 when the rule is not in one)."""

    def __init__(self, argument: str, pattern: str, rule: int = -1) -> None:
        where = f"rules[{rule}]" if rule >= 0 else "the rule"
        super().__init__(
            f"{where}: argument {argument!r} could not be matched against the pattern {pattern!r} in time"
        )
        self.argument = argument
        self.pattern = pattern
        self.rule = rule


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> Any:
    # `regex` in its `re`-compatible mode: Python's syntax, and a time limit per match (`re` has none).
    return regex.compile(pattern, regex.V0)


class Rule(BaseModel):
    """One line of a policy: which calls it covers and what happens to them."""

    # A misspelt key ("argumnets", "reasons") is an error: ignored, it widens or silences the rule.
    model_config = ConfigDict(extra="forbid")

    tool: str = "*"  # a glob on the tool name
    action: Action
    # Argument name -> regular expressions (Python's syntax, searched for) on its value as text; the
    # rule applies when every named argument matches one of its patterns. Empty: any arguments.
    arguments: dict[str, list[str]] = Field(default_factory=dict)
    reason: str | None = None  # shown to the user on `ask`, to the model on `deny`

    @field_validator("arguments")
    @classmethod
    def _patterns_compile(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, patterns in value.items():
            for p in patterns:
                try:
                    _compiled(p)  # with what matches it: the `regex` module
                except regex.error as exc:
                    raise ValueError(f"argument {name!r}: bad pattern {p!r}: {exc}") from None
        return value

    def matches(self, call: ToolCall) -> bool:
        """Whether the rule covers `call`. Raises `PolicyTimeout` when a pattern could not be matched
        in time (`schema_patterns.MATCH_TIMEOUT_S` a match), and `CheckStopped` when the check's budget
        (`check_budget`) is spent: a match that did not finish is never taken as either answer."""
        if not fnmatch.fnmatchcase(call.name, self.tool):
            return False
        for name, patterns in self.arguments.items():
            if name not in call.arguments:
                return False
            value = call.arguments[name]
            text = value if isinstance(value, str) else repr(value)
            if not any(_search(p, text, name) for p in patterns):
                return False
        return True


def _search(pattern: str, text: str, argument: str) -> bool:
    try:
        return search_in_time(_compiled(pattern), text)
    except TimeoutError:
        raise PolicyTimeout(argument, pattern) from None


class ApprovalPolicy(BaseModel):
    """Rules in order (the first match wins), then `default` for calls no rule covers."""

    # A misspelt key ("rule") is an error: ignored, it would leave an allow-all policy.
    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(default_factory=list)
    default: Action = "allow"

    def action_for(self, call: ToolCall) -> tuple[Action, Rule | None]:
        """What happens to `call`, and the rule that says so (None: the default).

        Raises `PolicyTimeout` (naming the rule) when a rule's pattern could not be matched in time:
        `review_calls` asks about such a call.
        """
        for index, rule in enumerate(self.rules):
            try:
                matched = rule.matches(call)
            except PolicyTimeout as exc:
                raise PolicyTimeout(exc.argument, exc.pattern, index) from None
            if matched:
                return rule.action, rule
        return self.default, None

    @classmethod
    def from_flag(cls, value: str) -> ApprovalPolicy:
        """`ask` (every call), `auto` (none), or comma-separated tools that run without asking."""
        value = value.strip()
        if value == "ask":
            return cls(default="ask")
        if value == "auto":
            return cls(default="allow")
        tools = [t.strip() for t in value.split(",") if t.strip()]
        if not tools:
            raise ValueError("--approve takes ask, auto, or a comma-separated list of tools")
        return cls(rules=[Rule(tool=t, action="allow") for t in tools], default="ask")


class ApprovalRequest(BaseModel):
    """A call waiting for a decision."""

    run_id: str = ""
    step: int = 0
    call: ToolCall
    reason: str | None = None  # the rule's reason, if it gave one


class ApprovalDecision(BaseModel):
    """What the approver decided: `edit` runs the call with `arguments` instead of the model's."""

    action: Literal["allow", "deny", "edit", "defer"]
    reason: str | None = None
    arguments: dict[str, Any] | None = None
    by: str = "user"

    @classmethod
    def allow(cls, *, by: str = "user") -> ApprovalDecision:
        return cls(action="allow", by=by)

    @classmethod
    def deny(cls, reason: str | None = None, *, by: str = "user") -> ApprovalDecision:
        return cls(action="deny", reason=reason, by=by)

    @classmethod
    def edit(cls, arguments: dict[str, Any], *, by: str = "user") -> ApprovalDecision:
        return cls(action="edit", arguments=arguments, by=by)


class Approver(Protocol):
    """Decides an `ask`: any async callable taking the request."""

    def __call__(self, request: ApprovalRequest) -> Awaitable[ApprovalDecision]: ...


class RecordedApprover:
    """Decisions known in advance by call id (a trace's, or the one a resume brings), then `then`.

    `calls` holds, by id, the call each decision was made about (as the model wrote it): a decision
    applies only to a call with that id, tool name and arguments. A decision whose call is not in `calls`
    is never applied (there is nothing to check it against).

    The known decisions are binding: `review_calls` applies them whatever the policy says (a recorded
    run's calls are decided again as they were). The calls in `undecided` waited for a decision that the
    recording does not hold: they are asked about whatever the policy says. A call under an id the
    recording holds but that differs from the recorded one (the replay went another way, or the trace
    numbered its calls otherwise) is decided by none of this, and is asked about where the policy would
    let it run. Any other call follows the policy; one it asks about goes to `then`, and with no `then` it
    is deferred again.
    """

    def __init__(
        self,
        decisions: Mapping[str, ApprovalDecision],
        then: Approver | None = None,
        *,
        calls: Mapping[str, ToolCall],
        undecided: Iterable[str] = (),
    ) -> None:
        self.decisions = dict(decisions)
        self.calls = dict(calls)
        self.then = then
        self.undecided = set(undecided) - self.decisions.keys()

    def matches(self, call: ToolCall) -> bool:
        """Whether the recording holds `call` itself under its id (same tool, same arguments).

        Both are compared as the trace records them: a live call's values that its JSON changes (NaN to
        null, a tuple to a list) still match the recording of that very call.
        """
        recorded = self.calls.get(call.id)
        if recorded is None:
            return False
        mine, theirs = _as_recorded(call), _as_recorded(recorded)
        return mine is not None and mine == theirs

    def known(self, call: ToolCall) -> ApprovalDecision | None:
        """The decision recorded for `call`; None when there is none, or it was made about another call."""
        decision = self.decisions.get(call.id)
        return decision if decision is not None and self.matches(call) else None

    def waiting(self, call: ToolCall) -> bool:
        """Whether `call` is one the recorded run asked about and never had decided."""
        return call.id in self.undecided and self.matches(call)

    def differs(self, call: ToolCall) -> bool:
        """Whether the recording holds another call (or one it cannot check) under `call`'s id."""
        held = call.id in self.calls or call.id in self.decisions or call.id in self.undecided
        return held and not self.matches(call)

    async def __call__(self, request: ApprovalRequest) -> ApprovalDecision:
        known = self.known(request.call)
        if known is not None:
            return known
        if self.then is None:
            return ApprovalDecision(action="defer")
        return await self.then(request)


def _as_recorded(call: ToolCall) -> dict[str, Any] | None:
    """`call`'s tool and arguments in the form a trace writes them (see `trace._encode`); None when it
    cannot be written at all."""
    try:
        form: dict[str, Any] = replace_surrogates_in(
            call.model_dump(mode="json", include={"name", "arguments"})
        )
        return form
    except (ValueError, RecursionError):
        return None


def denied_text(reason: str | None) -> str:
    why = f": {reason}" if reason else " (no reason given)"
    return f"Error: this call was not run; the user denied it{why}. Do something else, or ask the user."


class GateOutcome(BaseModel):
    """A turn's calls after review: those to run (arguments possibly edited), and refusals."""

    approved: list[ToolCall] = Field(default_factory=list)
    denied: list[Message] = Field(default_factory=list)
    pending: ApprovalRequest | None = None
    events: list[Any] = Field(default_factory=list)  # what `emit` returned, in order


Validate = Callable[[ToolCall], list[str]]


async def review_calls(
    calls: Sequence[ToolCall],
    policy: ApprovalPolicy,
    approver: Approver | None,
    emit: Callable[[Any], Any],
    *,
    run_id: str = "",
    step: int = 0,
    validate: Validate | None = None,
    wait_s: float | None = None,
) -> GateOutcome:
    """Decide every call of a turn; `emit` gets `approval_requested` / `approval` events.

    Stops at the first deferred call (`pending`): none of the turn's calls runs then. `wait_s` bounds
    the wait for all the turn's decisions (the run's deadline): when it passes, the call waiting is
    deferred, so the run stops awaiting approval instead of running out of budget mid-question.

    The policy's patterns are matched off the event loop, each match under a time limit: a call whose
    check did not finish in time is asked about, with a `policy_timeout` warning saying why.
    """
    out = GateOutcome()
    started = time.monotonic()
    recorded = approver if isinstance(approver, RecordedApprover) else None

    def left() -> float | None:
        return None if wait_s is None else max(0.0, wait_s - (time.monotonic() - started))

    for call in calls:
        try:
            action, rule = await _policy_action(policy, call, left())
            reason = rule.reason if rule is not None else None
        except (PolicyTimeout, TimeoutError) as exc:
            why = (
                str(exc) if isinstance(exc, PolicyTimeout) else "the policy's patterns did not finish in time"
            )
            reason = f"the approval policy could not decide this call: {why}"
            out.events.append(
                emit(Warning_(kind="policy_timeout", message=f"{call.name} ({call.id}): {reason}"))
            )
            action = "ask"
        known = recorded.known(call) if recorded is not None else None
        if known is not None and known.by == "policy" and known.action in ("allow", "deny"):
            # Decided by the recorded run's policy (allowed: it ran; or denied): so again, whatever the
            # policy now, for the replay to rebuild what the recording saw.
            action, reason = known.action, known.reason
        elif known is not None or (recorded is not None and recorded.waiting(call)):
            action = "ask"  # the recorded run asked about it: its decision (or a new one) stands
        elif recorded is not None and recorded.differs(call) and action == "allow":
            # The recording decided another call under this id: whatever a person said there (a deny
            # awaited on resume, say) says nothing of this one, and it does not run unasked.
            action = "ask"
        if action == "ask":
            request = ApprovalRequest(run_id=run_id, step=step, call=call, reason=reason)
            out.events.append(emit(ApprovalRequested(call=call, reason=reason)))
            decision = ApprovalDecision(action="defer")
            if approver is not None:
                try:
                    async with asyncio.timeout(left()):
                        decision = await approver(request)
                except TimeoutError:
                    pass  # deferred: the trace keeps the question for a later process
            if decision.action == "edit":
                # A NaN the tool would get and the trace record as null: refused like the model's own.
                non_finite = non_finite_problem(decision.arguments or {})
                problems = [non_finite] if non_finite is not None else []
                if not problems and validate is not None:
                    problems = validate(call.model_copy(update={"arguments": decision.arguments or {}}))
                if problems:
                    # The approver's arguments are not valid: the call is refused, and the model told why.
                    decision = ApprovalDecision.deny(
                        "the edited arguments are invalid: " + "; ".join(problems), by=decision.by
                    )
        else:
            decision = ApprovalDecision(action=action, reason=reason, by="policy")
            if action == "allow":
                out.approved.append(call)
                continue  # allowed by policy: nothing to record
        if decision.action == "defer":
            out.pending = ApprovalRequest(run_id=run_id, step=step, call=call, reason=reason)
            return out
        out.events.append(
            emit(
                ApprovalDecided(
                    call_id=call.id,
                    name=call.name,
                    action=decision.action,
                    reason=decision.reason,
                    arguments=decision.arguments,
                    by=decision.by,
                    call=call,
                )
            )
        )
        if decision.action == "deny":
            out.denied.append(
                Message(
                    role="tool", name=call.name, tool_call_id=call.id, content=denied_text(decision.reason)
                )
            )
        elif decision.action == "edit":
            out.approved.append(call.model_copy(update={"arguments": dict(decision.arguments or {})}))
        else:
            out.approved.append(call)
    return out


async def _policy_action(
    policy: ApprovalPolicy, call: ToolCall, wait_s: float | None
) -> tuple[Action, Rule | None]:
    """`policy.action_for(call)`, its patterns matched on the argument checks' threads (the event
    loop, its timers and signal handlers go on meanwhile) within `_POLICY_CHECK_S` and `wait_s`.

    Raises `PolicyTimeout` for a match that ran out of time, `TimeoutError` when the whole check did.
    """
    if not any(rule.arguments for rule in policy.rules):
        return policy.action_for(call)  # globs only: nothing that can take long
    limit = _POLICY_CHECK_S if wait_s is None else min(_POLICY_CHECK_S, wait_s)
    return await run_check(lambda: policy.action_for(call), limit=limit)


class PendingApproval(BaseModel):
    """The call a trace's run stopped at, waiting for a decision."""

    run_id: str
    step: int
    call: ToolCall
    reason: str | None = None


def pending_approval(path: str | Path, *, run_id: str | None = None) -> PendingApproval | None:
    """The call the run in `path` waits on, or None if it did not stop awaiting approval.

    `run_id` picks the run of a trace holding several (`read_trace`), here and in the readers below.
    """
    events = read_trace(path, run_id=run_id, prompts="stored")  # no prompt is needed
    final = next((e for e in reversed(events) if isinstance(e, Final)), None)
    if final is None or final.status != "awaiting_approval":
        return None
    asked = next((e for e in reversed(events) if isinstance(e, ApprovalRequested)), None)
    if asked is None:
        return None
    return PendingApproval(run_id=asked.run_id, step=asked.step, call=asked.call, reason=asked.reason)


def recorded_decisions(path: str | Path, *, run_id: str | None = None) -> dict[str, ApprovalDecision]:
    """The decisions a trace recorded, by call id (a resume applies them again without asking)."""
    return {
        e.call_id: ApprovalDecision(action=e.action, reason=e.reason, arguments=e.arguments, by=e.by)
        for e in read_trace(path, run_id=run_id, prompts="stored")
        if isinstance(e, ApprovalDecided)
    }


def replay_approver(
    path: str | Path, *, then: Approver | None = None, run_id: str | None = None
) -> RecordedApprover:
    """An approver for a replay or resume of the run in `path` that decides its calls as it did.

    Its recorded decisions; each call it ran with no decision (the policy allowed it) allowed again; each
    call it asked about and never decided (the one it waits on) asked about again, through `then`.
    Each applies only to the call it was made about (same id, tool and arguments). Calls the recording
    does not hold follow the policy, and `then` decides those it asks about.
    """
    events = read_trace(path, run_id=run_id, prompts="stored")  # no prompt is needed
    decisions = recorded_decisions(path, run_id=run_id)
    # The calls as the model wrote them: what was asked about, then what was decided (a policy's deny
    # is asked about nowhere; older traces do not record its call), then what ran undecided.
    calls: dict[str, ToolCall] = {}
    for e in events:
        if isinstance(e, ApprovalRequested):
            calls.setdefault(e.call.id, e.call)
    for e in events:
        if isinstance(e, ApprovalDecided) and e.call is not None:
            calls.setdefault(e.call_id, e.call)
    for e in events:
        if isinstance(e, ToolCallEvent) and e.call.id not in decisions:
            decisions[e.call.id] = ApprovalDecision.allow(by="policy")
            calls.setdefault(e.call.id, e.call)
    asked = [e.call.id for e in events if isinstance(e, ApprovalRequested)]
    return RecordedApprover(decisions, then=then, calls=calls, undecided=asked)


def resume_decisions(
    path: str | Path, decision: ApprovalDecision, *, then: Approver | None = None, run_id: str | None = None
) -> RecordedApprover:
    """An approver to resume the run in `path`: `replay_approver`'s, plus `decision` for the pending call.

    Raises ValueError when the run is not awaiting approval.
    """
    pending = pending_approval(path, run_id=run_id)
    if pending is None:
        raise ValueError(f"the run in {path} is not awaiting approval: nothing to decide")
    approver = replay_approver(path, then=then, run_id=run_id)
    approver.decisions[pending.call.id] = decision
    approver.calls[pending.call.id] = pending.call  # `decision` is about this call, and only this one
    approver.undecided.discard(pending.call.id)
    return approver
