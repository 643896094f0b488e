"""Parallel branches: n continuations of one agent state, each in its own restored sandbox.

`run_branches` (behind `Agent.branch` / `Agent.explore`):

1. takes a snapshot of the parent's sandbox (its files; the interpreter is rebuilt or fresh, as asked);
2. at the same time gets every branch a sandbox restored from it, and prefills the shared prefix (the
   transcript so far plus the task) once with a one-token request, so SGLang's radix cache holds it;
3. then sends all branches at once, each a child `Agent` with its own sampling seed, continuing the
   same messages, so their first prompts are served from that cached prefix;
4. selects a winner (`qwq_agent.agent.selection`; a `tests:` check runs on each branch's patch in a
   fresh sandbox holding what the user's checkout will, see `_checkout`); the parent takes its transcript and, restored
   into the parent's own sandbox, its files, so the two stay together; losing sandboxes are released at
   once, the winner's is handed to the caller in the `BranchResult`.

A branch that crashes, times out or cannot get a sandbox is a losing branch with its error. Traces: the
parent's file holds `branches`, one `branch_end` per branch and `branch_selected`; each branch is a
whole run in its own file (`<parent stem>.branch-<i>.jsonl`) whose `run_started` records the shared
history, so `qwq-agent run --replay` replays it like any run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from qwq_agent.agent.branch_result import BranchOutcome, BranchResult
from qwq_agent.agent.chat_format import prompt_options_of
from qwq_agent.agent.config import AgentConfig, RunResult
from qwq_agent.agent.events import (
    BranchEnded,
    BranchesStarted,
    BranchSelected,
    Event,
    Final,
    RunStarted,
    UsageEvent,
    Warning_,
)
from qwq_agent.agent.messages import Message, replace_surrogates_in_messages
from qwq_agent.agent.prompt_size import PromptPreparer
from qwq_agent.agent.selection import (
    SANDBOX_LOST,
    Checkout,
    Selection,
    SelectionError,
    Selector,
    Verifier,
    checked,
    parse_select,
)
from qwq_agent.agent.trace import TraceError, TraceWriter
from qwq_agent.deadline import Deadline
from qwq_agent.protocols import Completion, Model, ModelEvent, PromptModel, Sandbox, Usage
from qwq_agent.surrogates import replace_surrogates
from qwq_agent.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from qwq_agent.sandbox.snapshot import PythonState, Snapshot

__all__ = ["BranchError", "branch_trace_path", "run_branches"]

T = TypeVar("T")

WARMUP_TIMEOUT_S = 120.0
# A branch's restore (and replay) without a `branch_timeout_s`: `Sandbox.restore`'s own default.
RESTORE_TIMEOUT_S = 120.0
# Putting the parent's own files back after a failed or cancelled hand-over (its replay included); the
# restore's own limit is shorter by the slack its reply needs (the interrupt's grace and more).
UNDO_TIMEOUT_S = 120.0
UNDO_SLACK_S = 10.0
MAX_BRANCHES = 64


class Branchable(Protocol):
    """An agent to branch from (`qwq_agent.agent.loop.Agent`): what the branches read of it, and how
    it makes each branch's agent. `Agent.branch` calls this module, so this module names no `Agent`."""

    model: Model
    tools: ToolRegistry
    config: AgentConfig
    sandbox: Any
    sandbox_pool: Any
    trace_path: Path | None
    # Where the exploration running (or last run) from this agent is traced; set by `run_branches`.
    exploration_trace: Path | None
    run_id: str
    tool_options: dict[str, Any]
    messages: list[Message]
    result: RunResult | None
    _running: bool
    # What a cancellation of its run is recorded as (a branch past its limit: "timeout"), see `Agent`.
    _cancel_reason: Callable[[], tuple[str, str] | None] | None

    def _initial_messages(self, task: str) -> list[Message]: ...

    def _recorded_config(self) -> dict[str, Any]:
        """The config as `run_started` records it (the approval policy in effect included)."""
        ...

    def _child(self, run_id: str, *, sandbox: Any, config: AgentConfig, trace_path: str | None) -> Branchable:
        """An agent like this one (model, tools, admission, approver) with its own sandbox, config and trace."""
        ...

    def _next_run_id(self) -> None:
        """Give the run or exploration starting now its own `run_id` (unless the caller fixed one)."""
        ...

    def stream(
        self, task: str, *, history: Sequence[Message] = (), continues: bool = False
    ) -> AsyncGenerator[Event, None]: ...

    def end_run(self, status: str = "interrupted", error: str | None = None) -> RunResult | None: ...


class BranchError(ValueError):
    """Branches asked for in a way that cannot work (n out of range, seeds that do not match n)."""


def branch_trace_path(parent: str | Path, index: int) -> Path:
    """Where branch `index` of the exploration traced in `parent` writes its run."""
    p = Path(parent)
    return p.with_name(f"{p.stem}.branch-{index}{p.suffix or '.jsonl'}")


class _Branch:
    """One branch while it runs: its sandbox (held by `stack`), its agent and its outcome."""

    def __init__(self, index: int, seed: int) -> None:
        self.index = index
        self.outcome = BranchOutcome(index=index, seed=seed, status="pending")
        self.stack = AsyncExitStack()
        self.sandbox: Any = None
        self.ready = False
        # How many times the sandbox's container had been replaced when the branch began: more at the
        # end means it died meanwhile, and what it holds now is not the branch's work.
        self.replacements = 0
        # When it must be done: `branch_timeout_s` from the start of its sandbox's setup, which counts.
        self.deadline = Deadline.never()

    @property
    def lost(self) -> bool:
        """Whether the branch's sandbox died (and was replaced by an empty one) after it began."""
        return self.sandbox is not None and getattr(self.sandbox, "replacements", 0) > self.replacements


async def run_branches(
    parent: Branchable,
    n: int,
    task: str | None,
    *,
    select: Any = "first",
    seeds: list[int] | None = None,
    temperature: float | None = None,
    python_state: PythonState = "fresh",
    branch_timeout_s: float | None = None,
    warm_prefix: bool = True,
    on_event: Callable[[int, Event], None] | None = None,
    fresh: bool = False,
) -> BranchResult:
    """Run `task` in `n` concurrent branches of `parent`'s state and select one (see the module doc).

    `task` is the branches' next user turn; None continues the transcript as it stands (a run that
    stopped after a tool result, e.g. on its step budget), which must then end with a user or tool
    message.

    `seeds` (one per branch; default: random) and `temperature` (default: the config's) make the
    branches sample differently. `branch_timeout_s` bounds each branch (on top of its budget), from
    the start of its sandbox's setup (the restore and a replay of the parent's cells included, see
    `python_state`): a branch past it is cancelled and loses with status "timeout", which its own
    trace and result say too. The shared prefix's warm-up (`warm_prefix`) runs beside the setups and
    gives up after `branch_timeout_s` (else `WARMUP_TIMEOUT_S`); the time the branches wait for it
    after their setups is not theirs: it is an optimisation, and its failure no failure of theirs.
    `on_event(index, event)` sees every event of every branch as it happens; what it raises is no
    failure of the branch: the first such error is reported in the exploration's trace (an
    `on_event_failed` warning) and the callback is still called. Raises `BranchError` /
    `SelectionError` for bad arguments, before anything starts. `fresh` (`Agent.explore`) starts
    from an empty transcript: the parent's is cleared once the exploration is accepted, never by one
    that is refused.
    """
    if not 1 <= n <= MAX_BRANCHES:
        raise BranchError(f"n must be between 1 and {MAX_BRANCHES}, got {n}")
    if seeds is not None and len(seeds) != n:
        raise BranchError(f"{len(seeds)} seeds given for {n} branches: give one per branch")
    if parent._running:  # its transcript is still changing: branch after its run (or exploration) ends
        raise BranchError("the agent is running a task: branch from it after its run ends")
    cap = getattr(parent.sandbox_pool, "max_live", None)
    if isinstance(cap, int) and n > cap:
        # Each branch holds its pool sandbox until the selection: the ones past the cap would wait for
        # a release only this exploration could make, and lose after the pool's acquire timeout.
        raise BranchError(
            f"{n} branches need {n} sandboxes at once (each keeps its own until one is selected), but the "
            f"agent's sandbox pool has max_live={cap}: explore with n <= {cap}, or give the pool more room"
        )
    selector = parse_select(select)
    if isinstance(selector, Verifier) and parent.sandbox is None and parent.sandbox_pool is None:
        # Every branch would run (all its model time spent) and then have nowhere to run the command.
        raise SelectionError(
            f"'{selector.label}' needs a sandbox to run its command in, and the agent has none: "
            "give it a sandbox (or a sandbox pool), or select with 'majority', 'first' or a function"
        )
    # Taken in as `Agent.stream` takes them (lone surrogates replaced), so the prefix warmed is the one
    # the branches send.
    history = [] if fresh else replace_surrogates_in_messages(parent.messages)
    continues = task is None
    task = None if task is None else replace_surrogates(task)
    if continues:
        if not history or history[-1].role not in ("user", "tool"):
            raise BranchError(
                "nothing to continue: the transcript is empty or ends with the model's answer; give a task"
            )
        task = next((m.content for m in history if m.role == "user"), "")
    assert task is not None
    if history and parent.sandbox is None and parent.sandbox_pool is not None:
        raise BranchError(
            "this agent has no sandbox of its own: the sandbox_pool sandbox of its last run was destroyed "
            "when the run ended, so the files its transcript speaks of are gone; explore() starts from "
            "nothing, or give the agent a sandbox (sandbox=) to branch from its files"
        )
    if fresh:
        parent.messages = []
    # An exploration is recorded as a run of its own (its trace, its branches' ids): not under the id of
    # the agent's previous run.
    parent._next_run_id()
    seeds = list(seeds) if seeds is not None else [random.randrange(2**31) for _ in range(n)]
    branches = [_Branch(i, s) for i, s in enumerate(seeds)]
    trace = _open_parent_trace(parent)
    # Known to the caller from now on: a Ctrl-C before `run_branches` returns still has a trace to name.
    parent.exploration_trace = trace.path if trace is not None else None
    emit = _emitter(parent, trace)
    observe = _observer(on_event, emit)
    # The parent is busy until the exploration ends: a run or another exploration meanwhile is refused,
    # as two runs at once are (the winner's transcript replaces the parent's at the end).
    parent._running = True
    try:
        snapshot = await _snapshot(parent.sandbox)
        specs = parent.tools.specs()
        if continues:
            first = history
        elif history:
            first = [*history, Message(role="user", content=task)]
        else:
            first = parent._initial_messages(task)
        traces = [str(branch_trace_path(trace.path, i)) if trace else None for i in range(n)]
        for b in branches:
            b.deadline = Deadline.after(branch_timeout_s)
        warm, set_up_at = await asyncio.gather(
            _warm_prefix(parent, first, specs, branch_timeout_s) if warm_prefix else _none(),
            asyncio.gather(
                *(
                    _ended_at(_sandbox_for(b, parent, snapshot, python_state, branch_timeout_s))
                    for b in branches
                )
            ),
        )
        # The wait for the warm-up once every sandbox was set up is not the branches' time.
        waited = time.monotonic() - max(set_up_at)
        for b in branches:
            if b.deadline.at is not None:
                b.deadline = Deadline(at=b.deadline.at + waited)
        emit(
            RunStarted(
                task=task,
                model=getattr(parent.model, "name", type(parent.model).__name__),
                tools=[s.name for s in specs],
                config=parent._recorded_config(),
                tool_options=parent.tool_options,
                history=[m.model_dump(mode="json") for m in history],
                continues=continues,
                prompt_options=prompt_options_of(parent.model),
            )
        )
        emit(
            BranchesStarted(
                n=n,
                select=selector.label,
                seeds=seeds,
                traces=traces,
                snapshot_id=getattr(snapshot, "id", None),
                warmup=warm,
            )
        )
        await asyncio.gather(
            *(
                _run_one(
                    parent,
                    b,
                    task,
                    history,
                    continues,
                    traces[b.index],
                    temperature,
                    branch_timeout_s,
                    observe,
                )
                for b in branches
            )
        )
        outcomes = [b.outcome for b in branches]
        sandboxes = {b.index: b.sandbox for b in branches if b.ready}
        for b in branches:
            if b.lost:  # no selector may pick it (`selection.checked`); a verifier says so in its own words
                b.outcome.lost, b.outcome.verdict = True, f"cannot win: {SANDBOX_LOST}"
        choice = await _select(
            selector,
            outcomes,
            sandboxes,
            checkout=_checkout(parent, snapshot),
            timeout_s=branch_timeout_s,
            links=_start_links(parent),
        )
        for o in outcomes:
            emit(_ended(o))
        emit(BranchSelected(winner=choice.winner, reason=choice.reason))
        won = outcomes[choice.winner] if choice.winner is not None else None
        keep = branches[choice.winner] if choice.winner is not None else None
        adopt_error = None
        if won is not None and won.result is not None and keep is not None:
            adopt_error = await _hand_over(parent, keep, python_state, branch_timeout_s, emit)
            if adopt_error is not None:
                message = f"the parent keeps its own transcript: {adopt_error}"
                emit(Warning_(kind="winner_not_adopted", message=message))
        emit(
            Final(
                status=won.status if won else "no_winner",
                answer=won.answer if won else None,
                error=None if won else choice.reason,
                totals=_summed(outcomes),
            )
        )
        if won is not None and won.result is not None and adopt_error is None:
            parent.messages = list(won.result.messages)
        result = BranchResult(
            winner=choice.winner,
            reason=choice.reason,
            select=selector.label,
            branches=outcomes,
            trace_path=str(trace.path) if trace else None,
            snapshot_id=getattr(snapshot, "id", None),
            warmup=warm,
            adopt_error=adopt_error,
        )
        for b in branches:
            if b is not keep:
                await b.stack.aclose()
        if keep is not None:
            result.sandbox = keep.sandbox
            result.keep(keep.stack.aclose)
        return result
    except BaseException as exc:
        if trace is not None:
            # Cancelled (Ctrl-C) or failed before the selection: the trace still ends with `final`,
            # as a run's does. (After a normal `final` this writes nothing.)
            cancelled = isinstance(exc, asyncio.CancelledError)
            trace.write_final(
                "cancelled" if cancelled else "error",
                error="the exploration was cancelled" if cancelled else f"{type(exc).__name__}: {exc}",
                run_id=parent.run_id,
                totals=_summed([b.outcome for b in branches]),
            )
        for b in branches:
            await b.stack.aclose()
        raise
    finally:
        parent._running = False
        if trace is not None:
            trace.close()


async def _none() -> None:
    return None


async def _ended_at(work: Awaitable[None]) -> float:
    """When `work` ended (the monotonic clock)."""
    await work
    return time.monotonic()


def _observer(
    on_event: Callable[[int, Event], None] | None, emit: Callable[[Event], Event]
) -> Callable[[int, Event], None]:
    """`on_event` as the branches call it: what the caller's callback raises (a display whose stdout was
    closed, an observer's socket timing out) is no failure of the branch whose event it saw. The first
    such error is reported in the exploration's trace; the callback is still called for later events."""
    failed = False

    def observe(index: int, event: Event) -> None:
        nonlocal failed
        if on_event is None:
            return
        try:
            on_event(index, event)
        except Exception as exc:
            if not failed:
                failed = True
                message = (
                    f"the on_event callback raised {_why(exc)} at branch {index}'s {event.type} event; "
                    "the branches went on (its later errors are not reported)"
                )
                emit(Warning_(kind="on_event_failed", message=message))

    return observe


def _open_parent_trace(parent: Branchable) -> TraceWriter | None:
    if parent.trace_path is None:
        return None
    try:
        return TraceWriter(parent.trace_path, if_exists="new", tag=parent.run_id)
    except TraceError:  # as for a run: no trace is no reason to fail (each branch reports its own)
        return None


def _emitter(parent: Branchable, trace: TraceWriter | None) -> Callable[[Event], Event]:
    def emit(event: Event) -> Event:
        event.run_id = parent.run_id
        if trace is not None:
            trace.write(event)
        return event

    return emit


async def _snapshot(sandbox: Sandbox | None) -> Snapshot | None:
    """The parent's sandbox state for the branches (None: no sandbox, each branch starts fresh)."""
    return None if sandbox is None else await sandbox.snapshot()


async def _sandbox_for(
    branch: _Branch,
    parent: Branchable,
    snapshot: Snapshot | None,
    python_state: PythonState,
    limit_s: float | None,
) -> None:
    """Give `branch` a sandbox holding `snapshot` by its deadline; a failure makes it a losing branch
    (status "timeout" past the deadline), not an error.

    From the parent's pool when it has one (released back to it), else a sandbox started like the
    parent's (closed after use).
    """
    if parent.sandbox_pool is None and parent.sandbox is None:
        branch.ready = True  # a run without a sandbox: so are its branches
        return
    started = time.perf_counter()
    timer = asyncio.timeout(branch.deadline.left())
    try:
        async with timer:
            sandbox = await _set_up(branch, parent, snapshot, python_state)
    except Exception as exc:
        if isinstance(exc, TimeoutError) and timer.expired():
            why = f"the branch ran past its {_seconds(limit_s)} limit while its sandbox was set up"
            branch.outcome.status, branch.outcome.error = "timeout", why
        else:
            branch.outcome.status, branch.outcome.error = "error", f"no sandbox: {type(exc).__name__}: {exc}"
        await branch.stack.aclose()
        return
    branch.outcome.sandbox_s = time.perf_counter() - started
    branch.sandbox, branch.ready = sandbox, True
    branch.replacements = getattr(sandbox, "replacements", 0)


def _checkout(parent: Branchable, snapshot: Snapshot | None) -> Checkout | None:
    """How a `tests:` check sees what a branch delivers: what the user's checkout will hold once the
    branch's patch is applied to it, in a fresh sandbox started like the parent's. None only when there
    is no baseline (so no patch): the branches are then checked in place. With a baseline, a branch
    without a patch fails its check (never in place instead).

    From the user's own folder when it is known (the parent's sandbox was opened on it, `origin_of`):
    uploaded again as `open_sandbox` does, a baseline recorded, the patch applied. Nothing of the start
    state's sandbox takes part (its HOME, its ignored files, its git directory: all the parent's runs'
    to rewrite), and the user's ignored files the tests may need (a local settings file, a built
    extension) are there as they will be. Else from the parent's snapshot, files only, with every file
    the baseline's tree does not hold removed, ignored ones included (`apply_patch(clean=True)`): the
    next best thing, which keeps only what git tracked at the start; it still trusts the start state's
    git objects and `/workspace/.git`. Either way the command runs under a fresh, empty HOME without
    user site-packages (`selection`).

    Not from the parent's pool: the branches' sandboxes are still held, and a pool of n would have none
    left to give.
    """
    from qwq_agent.agent.patch import baseline_of
    from qwq_agent.agent.workspace import origin_of

    template = parent.sandbox
    if snapshot is None or template is None or baseline_of(template) is None:
        return None
    start = snapshot
    origin = origin_of(template)
    if origin is not None and not origin.is_dir():
        origin = None  # gone from the host since: the snapshot is all there is

    @asynccontextmanager
    async def checkout(patch: str) -> AsyncIterator[Any]:
        from qwq_agent.agent.patch import apply_patch, inherit_baseline
        from qwq_agent.agent.workspace import upload_workspace
        from qwq_agent.sandbox.docker_sandbox import DockerSandbox

        if getattr(template, "config", None) is None or getattr(template, "engine", None) is None:
            raise TypeError(
                f"a fresh sandbox like the parent's ({type(template).__name__}) cannot be started"
            )
        async with DockerSandbox.create(template.config, engine=template.engine) as sandbox:
            if origin is not None:
                await upload_workspace(sandbox, origin)
                await apply_patch(sandbox, patch)
            else:
                await sandbox.restore(start)
                inherit_baseline(sandbox, template)
                await apply_patch(sandbox, patch, clean=True)
            yield sandbox

    return checkout


def _start_links(parent: Branchable) -> dict[str, str] | None:
    """The links of the parent's baseline (path to target): the tests a check protects may reach other
    files through them (`protected.through_links`)."""
    from qwq_agent.agent.patch import baseline_of

    baseline = baseline_of(parent.sandbox) if parent.sandbox is not None else None
    return baseline.links if baseline is not None else None


async def _set_up(
    branch: _Branch, parent: Branchable, snapshot: Snapshot | None, python_state: PythonState
) -> Any:
    """`branch`'s sandbox, held by its stack, with `snapshot` restored into it by the branch's deadline."""
    pool, template = parent.sandbox_pool, parent.sandbox
    if pool is not None:
        sandbox = await branch.stack.enter_async_context(pool.acquire())
    else:
        from qwq_agent.sandbox.docker_sandbox import DockerSandbox

        starting = DockerSandbox.create(template.config, engine=template.engine)
        sandbox = await branch.stack.enter_async_context(starting)
    if snapshot is not None:
        restoring = time.perf_counter()
        restored = await sandbox.restore(
            snapshot, python_state=python_state, timeout=branch.deadline.clamp(RESTORE_TIMEOUT_S)
        )
        branch.outcome.python_state, branch.outcome.restore_note = restored.python_state, restored.note
        branch.outcome.replay_failures = [
            f"cell {f.index} ({_code_head(f.code)}): {f.error}" for f in restored.failed_cells
        ]
        if template is not None:  # the baseline's git dir came with the home: patches still work
            from qwq_agent.agent.patch import inherit_baseline
            from qwq_agent.agent.workspace import inherit_origin

            inherit_baseline(sandbox, template)
            inherit_origin(sandbox, template)
        branch.outcome.restore_s = time.perf_counter() - restoring
    return sandbox


async def _hand_over(
    parent: Branchable,
    winner: _Branch,
    python_state: PythonState,
    limit_s: float | None,
    emit: Callable[[Event], Event],
) -> str | None:
    """Put the winner's files in the parent's sandbox, so that the parent's next turn (which continues the
    winner's transcript) finds what that transcript says was done. None when done, or nothing to do;
    else why not, and what the parent's sandbox holds (the caller adopts the transcript only on None).

    The parent keeps its sandbox (whoever owns it still closes it), restored from a snapshot of the
    winner's; its interpreter as `python_state` says, as each branch's was: fresh, or rebuilt by
    replaying the winner's cells (the branch's own, after the parent's it replayed).

    All or nothing: the parent's sandbox is snapshotted first, and when the restore fails midway, runs
    past `limit_s` (the exploration's `branch_timeout_s`, else `RESTORE_TIMEOUT_S`) or is cancelled, that
    snapshot is restored again (shielded from the cancellation, bounded by `UNDO_TIMEOUT_S`), so the
    parent's files stay with its own transcript; the answer says whether that worked. A cancellation is
    raised again once it is done, after a `winner_not_adopted` warning saying so.
    """
    target, source = parent.sandbox, winner.sandbox
    if target is None or source is None:  # no files to keep with the transcript
        return None
    if winner.lost:  # its replacement is empty: restoring it would wipe the parent's files
        return f"{SANDBOX_LOST}; the parent's sandbox was not touched"
    deadline = Deadline.after(limit_s if limit_s is not None else RESTORE_TIMEOUT_S)
    limit = f"{limit_s if limit_s is not None else RESTORE_TIMEOUT_S:g} s"
    try:
        async with asyncio.timeout(deadline.left()):
            own = await target.snapshot(timeout=deadline.left())
            theirs = await source.snapshot(timeout=deadline.left())
    except Exception as exc:
        why = f"the hand-over ran past its {limit} limit" if isinstance(exc, TimeoutError) else _why(exc)
        return (
            f"a snapshot for the hand-over could not be taken ({why}); the parent's sandbox was not touched"
        )
    try:
        async with asyncio.timeout(deadline.left()):
            await target.restore(theirs, python_state=python_state, timeout=deadline.left())
    except BaseException as exc:
        undone = await _finish(_put_back(target, own, python_state))
        if isinstance(exc, asyncio.CancelledError):
            emit(Warning_(kind="winner_not_adopted", message=f"the exploration was cancelled; {undone}"))
            raise
        if not isinstance(exc, Exception):
            raise
        why = f"it ran past the hand-over's {limit} limit" if isinstance(exc, TimeoutError) else _why(exc)
        return f"the winner's files could not be put in the parent's sandbox ({why}); {undone}"
    return None


async def _put_back(sandbox: Any, snapshot: Snapshot, python_state: PythonState) -> str:
    """Restore the parent's own `snapshot` into its sandbox; what its sandbox holds now, in words."""
    try:
        async with asyncio.timeout(UNDO_TIMEOUT_S):
            restored = await sandbox.restore(
                snapshot, python_state=python_state, timeout=UNDO_TIMEOUT_S - UNDO_SLACK_S
            )
    except Exception as exc:
        # Which of the two restores began in the sandbox, and how far it got, is not known here: each
        # that began runs to its end there (none that had not begins late), so it may hold either's
        # files, part of them, or nothing.
        why = f"over {UNDO_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError) else _why(exc)
        return (
            f"putting the parent's own files back failed too ({why}): what its sandbox holds is unknown "
            "(its own files, the winner's, part of either, or nothing)"
        )
    return f"the parent's own files were put back ({restored.note})"


async def _finish(work: Awaitable[T]) -> T:
    """`work` run to its end even when the caller is cancelled meanwhile (it must be bounded); such a
    cancellation is raised once it is done."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _seconds(limit_s: float | None) -> str:
    """A time limit in a message ("3 s"); "time" when there is none (no message should need it then)."""
    return "time" if limit_s is None else f"{limit_s:g} s"


async def _warm_prefix(
    parent: Branchable, messages: list[Message], specs: list[Any], limit_s: float | None
) -> Usage | None:
    """Prefill the branches' shared first prompt once (one generated token), so all of them hit the cache.

    Only for clients that render prompts themselves (SGLang's native API); others send the branches
    at once and rely on the server. A failure here is no failure of the branches; nor is a slow one:
    it gives up after `limit_s` (the branches' own limit; else `WARMUP_TIMEOUT_S`), and the branches
    then go on without it.
    """
    model = parent.model
    if not isinstance(model, PromptModel):
        return None
    params = parent.config.sampling.model_copy(update={"max_new_tokens": 1, "stop": [], "seed": None})
    try:
        async with asyncio.timeout(WARMUP_TIMEOUT_S if limit_s is None else min(WARMUP_TIMEOUT_S, limit_s)):
            if isinstance(model, PromptPreparer):
                # The prompt the branches' first requests send, as they send it: with kept turns' ids
                # spliced in, which the text tokenized would not give (the cache would miss from there).
                completion = await _completion_of(
                    model.stream_prepared(model.prepare_prompt(messages, specs), params)
                )
            else:
                completion = await model.generate(model.render_prompt(messages, specs), params)
    except Exception:
        return None
    return completion.usage if completion is not None else None


async def _completion_of(events: AsyncIterator[ModelEvent]) -> Completion | None:
    """The completion a stream ends with (None if it has none); closed either way, so a request left
    unfinished (the warm-up timed out) is aborted on the server now."""
    async with aclosing(events) as stream:  # type: ignore[type-var]
        async for event in stream:
            if isinstance(event, Completion):
                return event
    return None


async def _run_one(
    parent: Branchable,
    branch: _Branch,
    task: str,
    history: list[Message],
    continues: bool,
    trace_path: str | None,
    temperature: float | None,
    timeout_s: float | None,
    observe: Callable[[int, Event], None],
) -> None:
    """Run one branch to its end; whatever happens becomes its outcome."""
    out = branch.outcome
    if not branch.ready:
        return
    sampling = parent.config.sampling.model_copy(
        update={"seed": out.seed, **({"temperature": temperature} if temperature is not None else {})}
    )
    note = _replay_note(out)
    if note is not None:  # told with the branch's first prompt: in its task, or as the turn it answers
        if continues:
            history = [*history, Message(role="user", content=note)]
        else:
            task = f"{task}\n\n{note}"
    child = parent._child(
        f"{parent.run_id}-b{branch.index}",
        sandbox=branch.sandbox,
        config=parent.config.model_copy(update={"sampling": sampling}),
        trace_path=trace_path,
    )
    first_usage = True
    timed_out = f"the branch ran past its {_seconds(timeout_s)} limit"
    timer = asyncio.timeout(branch.deadline.left())  # what its sandbox's setup left of it
    # The timer cancels the child's stream: its run ends there, and says why (not "cancelled").
    child._cancel_reason = lambda: ("timeout", timed_out) if timer.expired() else None
    try:
        # aclosing: however the loop is left, the child's tool calls end before this branch does.
        async with timer, aclosing(child.stream(task, history=history, continues=continues)) as events:
            async for ev in events:
                if first_usage and isinstance(ev, UsageEvent):
                    first_usage = False
                    out.first_turn_prompt_tokens = ev.usage.prompt_tokens
                    out.first_turn_cached_tokens = ev.usage.cached_tokens
                observe(branch.index, ev)
    except Exception as exc:  # a crashing branch loses; the exploration goes on
        timeout = isinstance(exc, TimeoutError) and timer.expired()
        status, error = ("timeout", timed_out) if timeout else ("error", _why(exc))
        child.end_run(status, error)
        out.status, out.error = status, error
    finally:  # cancelled too: the child ended its run, and the exploration's `final` sums its totals
        _collect(out, child.result)


def _collect(out: BranchOutcome, result: RunResult | None) -> None:
    """Fill a branch's outcome from its child's result, unless a timeout or crash decided it already."""
    if result is not None:
        out.result = result
        out.trace_path = result.trace_path
        if out.status == "pending":
            out.status, out.answer, out.error = result.status, result.answer, result.error
    if out.status == "pending":
        out.status, out.error = "error", "the branch ended without a result"


async def _select(
    selector: Selector,
    outcomes: list[BranchOutcome],
    sandboxes: dict[int, Any],
    *,
    checkout: Checkout | None,
    timeout_s: float | None,
    links: dict[str, str] | None = None,
) -> Selection:
    try:
        if isinstance(selector, Verifier):  # it checks the branches' work: where it is, and how long
            choice = await selector.select(
                outcomes, sandboxes, checkout=checkout, timeout_s=timeout_s, links=links
            )
        else:
            choice = await selector.select(outcomes, sandboxes)
    except Exception as exc:  # a broken selector: no winner, every branch kept in the result
        return Selection(winner=None, reason=f"the selection failed: {type(exc).__name__}: {exc}")
    return checked(choice, outcomes)


def _summed(outcomes: list[BranchOutcome]) -> dict[str, float]:
    """All branches' totals added up (tokens, steps, tool time): what the exploration used.

    Wall time is left out: the branches ran at the same time, so their sum says nothing.
    """
    totals: dict[str, float] = {}
    for o in outcomes:
        for key, value in (o.result.totals if o.result else {}).items():
            if key == "wall_s":
                continue
            totals[key] = totals.get(key, 0.0) + float(value or 0)
    return totals


def _ended(o: BranchOutcome) -> BranchEnded:
    return BranchEnded(
        index=o.index,
        status=o.status,
        answer=o.answer,
        error=o.error,
        verdict=o.verdict,
        passed=o.passed,
        trace=o.trace_path,
        first_turn_cached_tokens=o.first_turn_cached_tokens,
        first_turn_prompt_tokens=o.first_turn_prompt_tokens,
        python_state=o.python_state,
        replay_failures=o.replay_failures,
    )


def _code_head(code: str, limit: int = 120) -> str:
    """A cell on one line (its lines joined by "; "), cut to `limit` characters, for a mention."""
    line = "; ".join(x.strip() for x in code.splitlines() if x.strip())
    return f"`{line[:limit]}`" + (" ..." if len(line) > limit else "")


def _replay_note(outcome: BranchOutcome) -> str | None:
    """What the branch's model is told when the parent's Python state came back incomplete, else None.

    Its transcript says those cells ran fine; without this it would rely on what they defined.
    """
    if not outcome.replay_failures:
        return None
    return (
        "[Note: this sandbox was restored from a snapshot, with its files exactly as they were, and its "
        "Python interpreter was rebuilt by running the earlier cells again. These did not run as before, "
        "so what they defined may be missing: " + "; ".join(outcome.replay_failures) + "]"
    )
