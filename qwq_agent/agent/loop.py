"""The agent loop: render, stream, parse, run tools, feed observations back, until an answer.

Everything that can go wrong in a step becomes either an observation the model can act on (a
malformed or unknown call, invalid arguments, a tool that raised, a dead sandbox) or a `Final` event
with a status for the caller (a budget used up, a reasoning loop that would not stop, a model server
that stays down). The run never ends with a stack trace, and its trace survives.

A step is one assistant turn (`turn.TurnStreamer`) followed by its tool calls
(`dispatch.ToolDispatcher`); this module decides what comes next.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import uuid
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, aclosing
from pathlib import Path
from typing import Any, overload

from qwq_agent.agent.admission import KVAdmission
from qwq_agent.agent.approval import ApprovalPolicy, Approver, review_calls
from qwq_agent.agent.branch_result import BranchResult
from qwq_agent.agent.branches import run_branches
from qwq_agent.agent.budgets import BudgetTracker, Deadline
from qwq_agent.agent.chat_format import PromptOptions, prompt_options_of
from qwq_agent.agent.config import DEFAULT_SYSTEM_PROMPT, AgentConfig, RunResult
from qwq_agent.agent.constrained import relaxation_warning
from qwq_agent.agent.ctrl_c import ctrl_c_cancels
from qwq_agent.agent.dispatch import ToolDispatcher
from qwq_agent.agent.events import BudgetExceeded, Event, Final, ReplaySource, RunStarted, Warning_
from qwq_agent.agent.language import correction_prompt, language_mismatch, reasoning_drift
from qwq_agent.agent.loop_detector import ToolCallRepetitionDetector
from qwq_agent.agent.messages import MalformedCall, Message, replace_surrogates_in_messages
from qwq_agent.agent.parser import ParseResult
from qwq_agent.agent.run_stream import STOPPED, RunStream
from qwq_agent.agent.trace import TraceError, TraceWriter
from qwq_agent.agent.turn import TurnStreamer
from qwq_agent.protocols import Model, PromptModel, Tool
from qwq_agent.surrogates import replace_surrogates
from qwq_agent.tools.registry import ToolRegistry

__all__ = ["DEFAULT_SYSTEM_PROMPT", "REASONING_CALL_HINT", "Agent", "AgentConfig", "RunResult"]

REASONING_CALL_HINT = (
    "Your <tool_call> was written inside your reasoning, so it was not executed. Finish your reasoning "
    "with </think> first, then write the <tool_call> block."
)


SERVER_INFO_TIMEOUT_S = 10.0
# How long a run started right after `end_run()` waits for the stopped run's stream to unwind (its tool
# calls cancelled, bounded by the dispatcher's own wait; its sandbox and KV room released).
PREVIOUS_RUN_WAIT_S = 30.0
# Left-out symlinks named in the patch warning; past that, only counted.
PATCH_LINKS_SHOWN = 20


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
        tool_options: dict[str, Any] | None = None,
        approver: Approver | None = None,
    ) -> None:
        self.model = model
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(list(tools))
        self.sandbox = sandbox
        self.sandbox_pool = sandbox_pool
        self.config = config or AgentConfig()
        self.trace_path = Path(trace_path) if trace_path else None
        # The trace of the exploration (`branch` / `explore`) running or last run from this agent,
        # once its file is open: the branches run as child agents, so `result` says nothing of them.
        self.exploration_trace: Path | None = None
        self.admission = admission
        # The id of the run running or last run (the first run's from the start). One given here names
        # every run of this agent; otherwise each run after the first gets a new one (`_next_run_id`).
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._given_run_id = run_id
        self._used_run_id: str | None = None  # the id the last run (or exploration) was recorded under
        # Recorded in run_started so a replay can build the same tools (e.g. `build_tools` options).
        self.tool_options = dict(tool_options or {})
        # Decides the calls `config.approval` asks about (see `qwq_agent.agent.approval`).
        self.approver = approver
        self.messages: list[Message] = []
        self.result: RunResult | None = None
        self.tracker = BudgetTracker(budget=self.config.budget)
        self._trace: TraceWriter | None = None
        self._events = 0
        self._warnings: list[Warning_] = []
        self._patch: str | None = None
        self._patch_error: str | None = None
        self._step = 0  # the run's step (from 1 in each run)
        self._turns_before = 0  # the turns before the run: of its history, or its ids' highest, if more
        self._arithmetic_hinted = False  # the run's one hand-arithmetic hint was written
        self._running = False
        self._run: _Run | None = None  # the run holding the agent now (None: free, or exploring)
        self._last_run: _Run | None = None  # the last run started, whose stream may still be unwinding
        # What a cancellation of the run is recorded as: (status, error), or None for "cancelled". For a
        # caller that cancels a run for a reason of its own (a branch past its limit: "timeout").
        self._cancel_reason: Callable[[], tuple[str, str] | None] | None = None
        self._trace_reported = self._trace_recreated_reported = False
        self._trace_open_error: str | None = None
        self._server_context: tuple[int | None] | None = None

    @property
    def trace_file(self) -> Path | None:
        """The file the running (or last) run's trace went to, from its first event on: `trace_path`, or a
        new file next to it when that one already held a run (`TraceWriter(if_exists="new")`). None before
        a run, without a trace, or when it could not be opened."""
        return self._trace.path if self._trace is not None else None

    async def run(self, task: str, *, history: Sequence[Message] = (), continues: bool = False) -> RunResult:
        """Run to the end and return this run's result (events are still written to the trace).

        The result is this call's own, however the run ended: stopped by `end_run()` (even before it
        started), or outlived by a later run of this agent while its stream unwound.
        """
        run = _Run()
        events = self._start(run, task, history, continues)

        def interrupted() -> None:
            run.cancelled_by = "the run was interrupted by KeyboardInterrupt (Ctrl-C)"

        # Ctrl-C under `run_until_complete` or Jupyter lands in the event loop's select(), not here:
        # it is turned into a cancellation of this task, and a KeyboardInterrupt once the run has ended.
        with ctrl_c_cancels(interrupted) as hit:
            try:
                async for _ in events:
                    pass
            except asyncio.CancelledError:
                if not hit():
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                raise KeyboardInterrupt from None
            if hit():  # it ended by itself before the cancellation reached it: the Ctrl-C stands
                raise KeyboardInterrupt
        assert run.result is not None
        return run.result

    def stream(self, task: str, *, history: Sequence[Message] = (), continues: bool = False) -> RunStream:
        """Run the task, yielding every event as it happens; the last one is always `Final`.

        The run goes on only while its events are read. Use it as `async with agent.stream(task) as
        events: async for ev in events: ...` (or `contextlib.aclosing`): leaving the block early ends
        the run `interrupted` and releases its sandbox and KV room there and then, rather than when the
        generator is garbage-collected. A consumer that reads no next event for
        `AgentConfig.consumer_idle_timeout_s` has the run ended `interrupted` (the error says why), its
        trace ended and its sandbox released, unless it has nothing in flight (its answer is in): it then
        finishes as it would have, starting no new turn or tool call. Reading again waits for that and
        gives the run's `Final`, and nothing more. `aclose()` from another task, while one reads, ends
        the run at once; the reader gets its `Final` (see `RunStream`).

        `history` is an earlier conversation this task continues (e.g. a previous run's
        `result.messages`); the task is added to it as the next user turn. With `continues`, nothing
        is added: the model answers `history` as it stands (it ends with a user or tool message), and
        `task` only names the run (a branch continuing a run that stopped mid-way). A lone surrogate in
        `task`, `history` or the system prompt (which no request can encode) is sent as U+FFFD. Each run's
        steps count from 1, and its call ids (`call_{turn}_{n}`) are numbered after `history`'s turns. Each
        run has its own `run_id` (`RunResult.run_id`): a new one for every run after the first, unless
        `Agent(run_id=...)` fixed one; `RunResult.events` counts the run's own events. `history` that
        is not a sequence of `Message` raises TypeError, before anything starts.

        A run stopped with `end_run()` is over: its stream yields nothing more and is closed (its tool
        calls cancelled) by the agent, which is free for the next run at once; that run first waits
        (at most `PREVIOUS_RUN_WAIT_S`) for the stopped run's stream to unwind, so the two never share
        the sandbox. Closing the stopped run's stream, or its finalisation, touches no later run. A run
        stopped while it waits for KV room or a pool sandbox stops waiting at once.
        """
        run = _Run()
        events = self._start(run, task, history, continues)
        return RunStream(events, idle_s=self.config.consumer_idle_timeout_s, control=_Control(self, run))

    def _start(
        self, run: _Run, task: str, history: Sequence[Message], continues: bool
    ) -> AsyncGenerator[Event, None]:
        events = self._stream(run, task, history, continues)
        run.stream = weakref.ref(events)
        return events

    async def _stream(
        self, run: _Run, task: str, history: Sequence[Message], continues: bool
    ) -> AsyncGenerator[Event, None]:
        if self._running:  # its messages, budget and trace are one run's: two at once would mix them
            raise RuntimeError(
                "this Agent is already running a task; create one Agent per concurrent task (a run left "
                "unfinished by a KeyboardInterrupt, e.g. while a stream was read: call agent.end_run())"
            )
        history = _checked_history(history)  # before the agent is taken: a bad call changes nothing
        run.history = history
        previous, self._last_run = self._last_run, run
        self._running, self._run = True, run
        try:
            if previous is not None and not previous.unwound.is_set():
                # In a task of its own, which `end_run()` cancels: a run stopped before it started ends
                # at once rather than when the run before it has unwound.
                waited = asyncio.ensure_future(previous.unwound.wait())
                run.waiting = waited
                try:
                    await asyncio.wait({waited}, timeout=PREVIOUS_RUN_WAIT_S)
                finally:
                    run.waiting = None
                    waited.cancel()
                if self._run is not run:  # `end_run()` was called meanwhile: this run is over unstarted
                    run.unwound.set()
                    return
            run.started = True
            self._next_run_id()
            self._events = 0  # `RunResult.events` counts this run's events
            self._warnings = []  # and `RunResult.warnings` holds its warnings
            self._patch = self._patch_error = None
            self.tracker = BudgetTracker(budget=self.config.budget)
            self._arithmetic_hinted = False
            # Each run counts its steps from 1, and numbers its call ids after the history's turns: the
            # ids of one run are unique, repeat none of the history's, and a replay of the run (given the
            # same history, which the trace records) numbers them the same, so that recorded approval
            # decisions find their calls. A count kept across runs (a second run on this Agent) did neither.
            self._step = 0
            self._turns_before = _turns_in(history)
            # Opened before any sandbox or model request, so a bad trace folder costs nothing.
            trace_notes = self._open_trace()
        except BaseException:  # the agent is not left taken by a run that never began
            if self._run is run:
                self._close_trace()
                self._run = None
            run.unwound.set()
            raise
        # The caller's text comes in here. A lone surrogate in it (a command-line argument that is not
        # UTF-8 arrives with them) renders, but no request holding it can be encoded: the first turn
        # failed as a model error. The model reads U+FFFD instead, as the trace records it.
        task, history = replace_surrogates(task), replace_surrogates_in_messages(history)
        if continues:
            self.messages = list(history)
        elif history:
            self.messages = [*history, Message(role="user", content=task)]
        else:
            self.messages = self._initial_messages(task)
        status, answer, error = "error", None, None
        # The one deadline of this run: every layer below clamps its own time limits to it.
        deadline = self.tracker.deadline
        # Every event of this run goes through it: once `end_run()` stopped the run, what its stream
        # still emits while it unwinds is written to no trace (a later run's least of all).
        emit = self._emitter(run)
        try:
            async with AsyncExitStack() as stack:
                try:
                    async with deadline.timer():  # waiting for KV room or a sandbox counts too
                        await self._abandonable(run, self._enter_resources(stack, deadline, run))
                except TimeoutError:
                    if self._run is not run:
                        raise _Ended from None
                    if not deadline.expired:
                        raise
                    over = ("wall_s", float(self.config.budget.max_wall_s or 0), self.tracker.wall_s)
                    yield emit(BudgetExceeded(budget=over[0], limit=over[1], used=over[2]))
                    status, error = "budget_exceeded", f"{_budget_error(over)} before the run could start"
                    raise _Ended from None
                if self._run is not run:  # ended as its wait ended: what it took is released unused
                    raise _Ended
                if run.pool_sandbox is not None:  # the agent's only while this run holds it
                    self.sandbox = run.pool_sandbox
                yield emit(
                    RunStarted(
                        task=task,
                        model=getattr(self.model, "name", type(self.model).__name__),
                        tools=[s.name for s in self.tools.specs()],
                        sandbox_id=getattr(self.sandbox, "id", None),
                        config=self._recorded_config(),
                        tool_options=self.tool_options,
                        replay_of=_replay_source(self.model),
                        history=[m.model_dump(mode="json") for m in history],
                        continues=continues,
                        prompt_options=prompt_options_of(self.model),
                    )
                )
                if self._run is not run:  # ended by `end_run()` while the caller held an event
                    return
                for note in trace_notes:
                    yield emit(note)
                # aclosing here and below: a consumer that stops iterating (a closed stdout) closes this
                # generator, and the close must reach the model request now, in order; left to the
                # event loop's shutdown, the nested generators were closed at once and collided.
                async with aclosing(self._steps(task, deadline, run)) as steps:
                    async for ev in steps:
                        if isinstance(ev, Final):
                            status, answer, error = ev.status, ev.answer, ev.error
                            break
                        yield ev
                        if self._run is not run:
                            return
                        for note in self._trace_notes(emit):
                            yield note
                if self._run is not run:
                    return
                for note in _take_notices(self.model, final=True):
                    yield emit(note)
                if (failed := await self._collect_patch(run)) is not None:
                    yield failed
        except _Ended:
            pass
        # Each ends this stream's own run only: after `end_run()` the agent may be running the next one.
        except asyncio.CancelledError:
            if self._run is run:
                reason = self._cancel_reason() if self._cancel_reason is not None else None
                if run.cancelled_by is not None:
                    reason = ("interrupted", run.cancelled_by)
                self._end(run, *(reason or ("cancelled", "the run was cancelled")))
            raise
        except GeneratorExit:  # the caller stopped iterating: the trace still ends with a final event
            if self._run is run:
                self._end(run, "interrupted", STOPPED)
            raise
        except Exception as exc:  # our own bug or an environment failure: report, don't crash
            status, error = "error", f"{type(exc).__name__}: {exc}"
            if deadline.expired:  # e.g. the pool's acquire, bounded by the run's deadline, gave up
                status = "budget_exceeded"
        except BaseException as exc:
            # KeyboardInterrupt (Ctrl-C where no asyncio handler turns it into a cancellation: Jupyter,
            # run_until_complete), SystemExit: the run ends, its trace closed and the agent free for the
            # next run, and the exception goes on to the caller. Left as they were, the trace ended
            # after run_started and the agent refused every later run as "already running".
            if self._run is run:
                self._end(run, "interrupted", f"the run was interrupted by {type(exc).__name__}")
            raise
        finally:
            run.unwound.set()
        if self._run is not run:  # ended by `end_run()`: its final is written
            return
        final = self._final(run, status, answer, error)
        self._close_trace()
        self._run = None
        for note in self._settle_trace():
            yield note
        yield final

    async def branch(
        self, n: int, task: str | None = None, *, select: Any = "first", **options: Any
    ) -> BranchResult:
        """Run `n` concurrent branches from this agent's current state, with `task` as their next user
        turn (None: continue the transcript as it stands, e.g. a run stopped by its step budget).

        Each branch continues `self.messages` (the transcript so far) in its own sandbox, restored from
        a snapshot of `self.sandbox`; the shared prefix is prefilled once and the branches are sent at
        once, each with its own sampling seed. `select` picks the winner: ``"tests:CMD"`` (CMD exits 0
        in the branch's sandbox), ``"majority"`` (most common final answer), ``"first"`` (first branch
        that completed) or a function of the outcomes (see `qwq_agent.agent.selection`). Losing
        sandboxes are released; the winner's is `result.sandbox` until `await result.aclose()`.
        This agent then continues from the winner: `self.messages` is its transcript and `self.sandbox`
        (still this agent's own) is restored from its files, the interpreter as `python_state` says
        (fresh, or rebuilt by replaying the winner's cells); if that restore fails, runs past
        `branch_timeout_s` or is cancelled, it is undone (the sandbox restored from its own snapshot)
        and the agent keeps its own transcript; `result.adopt_error` says why, and whether the undo
        worked (after a cancellation, a `winner_not_adopted` warning in the exploration's trace does).
        The agent is busy until the exploration ends: `run()` and another `branch()` / `explore()` are
        refused meanwhile, as two runs at once are. An agent with `sandbox_pool=` and no sandbox of its
        own cannot branch from a transcript (`BranchError`): each run's pool sandbox is destroyed when
        the run ends, so the files its transcript speaks of are gone (`explore()` starts from nothing
        and works; to branch from a run's files, give the agent a sandbox with `sandbox=`).
        Options: see `qwq_agent.agent.branches.run_branches`.
        """
        return await run_branches(self, n, task, select=select, **options)

    async def explore(self, task: str, n: int = 8, *, select: Any = "first", **options: Any) -> BranchResult:
        """`n` concurrent attempts at `task` from a fresh conversation (see `branch`); one is selected.

        The transcript is cleared only once the exploration is accepted: one refused (bad arguments, or
        this agent is running a task) leaves it as it was.
        """
        return await run_branches(self, n, task, select=select, fresh=True, **options)

    def _child(self, run_id: str, *, sandbox: Any, config: AgentConfig, trace_path: str | None) -> Agent:
        """A branch's agent: this one's model, tools, admission, tool options and approver."""
        return Agent(
            self.model,
            self.tools,
            sandbox=sandbox,
            config=config,
            trace_path=trace_path,
            admission=self.admission,
            run_id=run_id,
            tool_options=self.tool_options,
            approver=self.approver,
        )

    def _next_run_id(self) -> None:
        """Give the run (or exploration) starting now its own id: events, trace file name, result and
        spans are filed by it, so a reused agent keeping one id mixed its runs. An id given to the
        constructor is kept for every run, and one the caller set since the last run is used as set."""
        if self.run_id == self._used_run_id and self.run_id != self._given_run_id:
            self.run_id = uuid.uuid4().hex[:12]
        self._used_run_id = self.run_id

    def end_run(self, status: str = "interrupted", error: str | None = None) -> RunResult | None:
        """End the current run from outside: write its `final` event, close the trace, set `result`.

        For a caller that stops a run and will not iterate its stream again (Ctrl-C, SIGTERM, a stop
        button). The agent is free at once; the run's stream yields nothing more, and is closed now
        when it waits between events (its tool calls cancelled, its sandbox and KV room released), else
        it stops at its next event. A run waiting for KV room or a pool sandbox stops waiting now: it
        never takes them. Returns the result of the run it ended (also what that run's `run()`
        returns); when no run holds the agent, does nothing and returns `result` (the last run's).

        A run ended before it started (still waiting for the run before it to unwind) gets a result
        of its own: a new `run_id`, status "cancelled", the error "ended before it started", its
        `history` as `messages`; it writes no trace (`trace_path` None), since it has no `run_started`
        to replay and opening a file for it would only leave a trace that records nothing.
        """
        run = self._run
        if run is None:
            return self.result
        self._end(run, status, error)
        _close_soon(run)
        return run.result

    def _end(self, run: _Run, status: str, error: str | None) -> None:
        """End `run`, the one holding the agent: its `final` (unless written), its trace closed."""
        if run.result is None and run.started:
            self._final(run, status, None, error)
        elif run.result is None:
            self._unstarted(run, error)
        self._close_trace()
        if run.started:  # else the trace writer is the run before's, not this run's
            self._settle_trace()
        self._run = None
        if run.waiting is not None:  # KV room, a sandbox, the run before: it takes none of them now
            run.waiting.cancel()
        if run.pool_sandbox is not None and self.sandbox is run.pool_sandbox:
            # Released as its stream unwinds: the next run takes another from the pool, not this one.
            self.sandbox = None

    def _unstarted(self, run: _Run, error: str | None) -> None:
        """The result of `run`, ended before it started (see `end_run`): its own, with no trace."""
        self._next_run_id()
        why = "ended before it started" + (f": {error}" if error else "")
        run.result = self.result = RunResult(
            run_id=self.run_id,
            status="cancelled",
            error=why,
            messages=list(run.history),
            totals=BudgetTracker(budget=self.config.budget).totals(),
        )

    async def _abandonable(self, run: _Run, wait: Coroutine[Any, Any, None]) -> None:
        """Await `wait` (for KV room, a sandbox) in a task that `end_run()` cancels: a stopped run stops
        waiting at once, and raises `_Ended` then. Queued on, it was admitted later, took the room and a
        sandbox from the runs behind it and went on inside whichever run held the agent by then."""
        task = asyncio.ensure_future(wait)
        run.waiting = task
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            # Cancelled by `end_run()`, not with the stream's own task (a deadline, the caller).
            if task.cancelled() and self._run is not run and (current is None or not current.cancelling()):
                raise _Ended from None
            raise
        finally:
            run.waiting = None

    def _open_trace(self) -> list[Event]:
        """Open this run's trace; what went wrong or was changed, as warnings for after run_started."""
        self._trace, self._trace_reported, self._trace_open_error = None, False, None
        self._trace_recreated_reported = False
        if not self.trace_path:
            return []
        try:
            self._trace = TraceWriter(self.trace_path, if_exists="new", tag=self.run_id)
        except TraceError as exc:
            self._trace_reported, self._trace_open_error = True, str(exc)
            return [Warning_(kind="trace_failed", message=f"{exc}; the run goes on without a trace")]
        notes: list[Event] = []
        if self._trace.unlocked is not None:
            notes.append(Warning_(kind="trace_unlocked", message=self._trace.unlocked))
        if self._trace.path != self.trace_path:
            notes.append(
                Warning_(
                    kind="trace_renamed",
                    message=f"{self.trace_path} already holds a run; this run is traced in {self._trace.path}",
                )
            )
        return notes

    def _trace_notes(self, emit: Callable[..., Event] | None = None) -> list[Event]:
        """One-line warnings, each once: the trace file was removed and written again, writing it failed.
        `emit`: the run's (`_emitter`); None only for the run that has just ended (its final written)."""
        emit = emit or self._emit
        notes: list[Event] = []
        if self._trace is None:
            return notes
        if self._trace.recreated is not None and not self._trace_recreated_reported:
            self._trace_recreated_reported = True
            notes.append(emit(Warning_(kind="trace_recreated", message=self._trace.recreated)))
        if self._trace.error is not None and not self._trace_reported:
            self._trace_reported = True
            message = f"the trace could not be written ({self._trace.error}); what was written stays readable"
            notes.append(emit(Warning_(kind="trace_failed", message=message)))
        return notes

    def _settle_trace(self) -> list[Event]:
        """After the run's trace is closed: the notes its last checks raised (at `final` and the close,
        after `result` was made: a removed trace written again elsewhere, a failure), added to `result`
        with where the trace is now and why it is incomplete, so none is only in a stream nobody reads."""
        notes = self._trace_notes()
        if self.result is not None and self._trace is not None:
            self.result.trace_path = str(self._trace.path)
            self.result.trace_error = self._trace.error
            self.result.warnings.extend(n for n in notes if isinstance(n, Warning_))
        return notes

    async def _collect_patch(self, run: _Run) -> Event | None:
        """What the run changed in /workspace, when the sandbox has a baseline (`open_sandbox(workspace=)`)."""
        from qwq_agent.agent.patch import baseline_of, workspace_changes

        emit = self._emitter(run)
        baseline = baseline_of(self.sandbox) if self.sandbox is not None else None
        if baseline is None:
            return None
        try:
            changes = await workspace_changes(self.sandbox, baseline)
        except Exception as exc:  # a dead sandbox, a full home: the run's answer still stands
            error = str(exc) or type(exc).__name__
            if self._run is run:  # ended meanwhile, the agent's state may be a later run's
                self._patch_error = error
            return emit(Warning_(kind="patch_failed", message=f"the workspace patch is missing: {error}"))
        if self._run is not run:
            return None
        self._patch = changes.text
        if not changes.left_out:
            return None
        # Named, so that a user who needs such a link makes it by hand rather than missing it silently.
        shown = changes.left_out[:PATCH_LINKS_SHOWN]
        more = len(changes.left_out) - len(shown)
        message = (
            f"{len(changes.left_out)} entries left out of the patch (symlinks absolute or leading out of "
            f"the repository, files git would run commands from, paths `git apply` or `patch -p1` would "
            f"take elsewhere on some disks; each says why): "
            + "; ".join(shown)
            + (f"; and {more} more" if more else "")
        )
        return emit(Warning_(kind="patch_links_left_out", message=message))

    async def _enter_resources(self, stack: AsyncExitStack, deadline: Deadline, run: _Run) -> None:
        """Take the run's KV room and pool sandbox onto `stack` (released when it unwinds). The sandbox
        is kept on `run`: the caller makes it the agent's only once it knows the run still holds it."""
        if self.admission is not None:
            await stack.enter_async_context(self.admission.reserve(self.config.kv_reservation_tokens))
        if self.sandbox is None and self.sandbox_pool is not None:
            acquire = self.sandbox_pool.acquire
            # A pool of our own takes the deadline; a user's pool is called as the protocol allows.
            takes_deadline = "deadline" in inspect.signature(acquire).parameters
            cm = acquire(deadline=deadline) if takes_deadline else acquire()
            run.pool_sandbox = await stack.enter_async_context(cm)
            # Released (destroyed) when the run ends: forget it then, so the next run acquires again
            # rather than calling a dead sandbox (and `branch()` does not snapshot one).
            stack.callback(self._forget_sandbox, run.pool_sandbox)

    def _forget_sandbox(self, sandbox: Any) -> None:
        if self.sandbox is sandbox:  # not a later run's
            self.sandbox = None

    async def _context_length(self) -> int | None:
        """The model's context length: configured, or asked once from the server (None if unknown)."""
        if self.config.context_length is not None:
            return self.config.context_length
        if self._server_context is None:
            value: int | None = None
            server_info = getattr(self.model, "server_info", None)
            if server_info is not None:
                try:
                    async with asyncio.timeout(self.tracker.deadline.clamp(SERVER_INFO_TIMEOUT_S)):
                        value = (await server_info()).context_length
                except Exception:  # unknown is fine: the check is then skipped
                    value = None
            self._server_context = (value,)
        return self._server_context[0]

    def _grammar_relaxed(self) -> Warning_ | None:
        """Once a run, before its first step: where the tool-call grammar is looser than the schemas
        (`constrained_tool_calls`, as `TurnStreamer` applies it: a model that renders its own prompt)."""
        specs = self.tools.specs()
        if not (self.config.constrained_tool_calls and specs and isinstance(self.model, PromptModel)):
            return None
        message = relaxation_warning(specs)
        return None if message is None else Warning_(kind="grammar_relaxed", message=message)

    def _initial_messages(self, task: str) -> list[Message]:
        prompt = self.config.system_prompt
        system = [Message(role="system", content=replace_surrogates(prompt))] if prompt else []
        return [*system, Message(role="user", content=task)]

    async def _steps(self, task: str, deadline: Deadline, run: _Run) -> AsyncGenerator[Event, None]:
        # For the parts that emit on their own (the turn, tool calls, approval): what they emit while
        # the stream of a run that `end_run()` stopped unwinds is none of a later run's.
        emit = self._emitter(run)
        dispatcher = ToolDispatcher(
            self.tools,
            self.tracker,
            emit,
            run_id=self.run_id,
            timeout_s=self.config.tool_timeout_s,
            repetition=ToolCallRepetitionDetector(self.config.repetition),
            deadline=deadline,
        )
        if (relaxed := self._grammar_relaxed()) is not None:
            yield emit(relaxed)
        language_checked = not self.config.check_language
        # A switch in the reasoning is an early warning only: reported once, nothing is asked.
        reasoning_language_warned = not self.config.check_language
        reasoning_hints = 0
        while True:
            if (over := self.tracker.exceeded()) is not None:
                name, limit, used = over
                yield emit(BudgetExceeded(budget=name, limit=limit, used=used))
                yield Final(status="budget_exceeded", error=_budget_error(over))
                return
            if run.wind_up is not None:  # its consumer went quiet: no new turn (see `RunStream`)
                yield Final(status="interrupted", error=run.wind_up)
                return
            self._step += 1
            self.tracker.steps += 1
            for note in _take_notices(self.model):
                yield emit(note)
            turn = TurnStreamer(
                self.model,
                self.messages,
                self.tools.specs(),
                self.config,
                self.tracker,
                emit,
                self._step,
                deadline,
                self._context_length,
                arithmetic_hint=not self._arithmetic_hinted,
                call_turn=self._turns_before + self._step,
                stopping=lambda: run.wind_up,
            )
            run.turn = turn
            async with aclosing(turn.run()) as turn_events:
                async for ev in turn_events:
                    yield ev
            if self._run is not run:  # ended by `end_run()` during the turn: the agent may be another run's
                return
            self._arithmetic_hinted = self._arithmetic_hinted or turn.result.arithmetic_hinted
            for note in _take_notices(self.model):
                yield emit(note)
            result = turn.result
            if result.stop_status is not None:
                over = self.tracker.exceeded()
                if result.budget == "wall_s":
                    # The turn's timer fires a little before the budget is used up (the abort's reserve).
                    over = ("wall_s", float(self.config.budget.max_wall_s or 0), self.tracker.wall_s)
                    yield emit(BudgetExceeded(budget=over[0], limit=over[1], used=over[2]))
                elif result.budget is not None:  # the one that stopped the turn, not the first one used up
                    over = self.tracker.exceeded(only=(result.budget,)) or over
                    if over is not None:  # as the check before a step says it
                        yield emit(BudgetExceeded(budget=over[0], limit=over[1], used=over[2]))
                budget_hit = result.stop_status == "budget_exceeded" and over is not None
                yield Final(
                    status=result.stop_status, error=_budget_error(over) if budget_hit else result.error
                )
                return
            parsed = result.parsed
            self.messages.append(
                Message(
                    role="assistant",
                    content=parsed.content.strip(),
                    reasoning=parsed.reasoning,
                    tool_calls=list(parsed.tool_calls),
                    malformed_calls=_malformed_calls(parsed),
                    raw=result.raw,
                    token_ids=_kept_ids(result.raw, result.output_ids),
                )
            )
            if not reasoning_language_warned and parsed.reasoning:
                drift = reasoning_drift(task, parsed.reasoning)
                if drift is not None:
                    reasoning_language_warned = True
                    yield emit(Warning_(kind="language_mix_reasoning", message=drift.reason))
            observations: list[Message] = []
            for err in parsed.errors:
                kind = "truncated_tool_call" if err.cut_off else "malformed_tool_call"
                yield emit(Warning_(kind=kind, message=err.message))
                observations.append(
                    Message(
                        role="tool",
                        name=err.name or "error",
                        tool_call_id=err.id,
                        content=f"Error: your tool call could not be used. {err.message}",
                    )
                )
            calls = list(parsed.tool_calls)
            if calls and run.wind_up is not None:  # its consumer went quiet: no call is asked about or run
                yield Final(status="interrupted", error=run.wind_up)
                return
            if calls and (policy := self._approval_policy()) is not None:
                # Traced as they happen (a viewer shows the question while it waits), yielded after.
                gate = await review_calls(
                    calls, policy, self.approver, emit,
                    run_id=self.run_id, step=self._step, validate=self.tools.argument_problems,
                    wait_s=deadline.left(),
                )  # fmt: skip
                for ev in gate.events:
                    yield ev
                if gate.pending is not None:
                    call = gate.pending.call
                    yield Final(
                        status="awaiting_approval",
                        error=f"tool call {call.id} ({call.name}) is waiting for approval",
                    )
                    return
                calls = gate.approved
                observations.extend(gate.denied)
            if self._run is not run:  # ended while it waited for approval: no call of it runs
                return
            # Checked again here, right before the calls run: the consumer may have gone quiet while it
            # held the approval gate's events (yielded after the decision), and a wound-up run starts
            # no tool call, approved or not.
            if calls and run.wind_up is not None:
                yield Final(status="interrupted", error=run.wind_up)
                return
            if calls:
                # aclosing: closing the run's stream must end its tool calls before the close returns
                # (and the sandbox goes back to the pool), not whenever the GC finalises the generator.
                tool_run = dispatcher.run(calls, self.sandbox, observations, repairs=parsed.repairs)
                run.tools_running = True
                try:
                    async with aclosing(tool_run) as tool_events:
                        async for ev in tool_events:
                            yield ev
                finally:
                    run.tools_running = False
            if observations:
                written = _renders_in_written_order(self.model)
                self.messages.extend(
                    _in_written_order(observations, parsed.call_ids) if written else observations
                )
                # A call written where it runs ends a streak of slips: the hints are counted per streak,
                # or slips early in a long run used them up for a slip much later.
                reasoning_hints = 0
                continue
            answer = parsed.content.strip()
            # Whether a step is left for what the loop would ask next (a hint, a correction): asked on
            # the last step, it was never read, and the run ended budget_exceeded without the answer.
            no_step = self.tracker.exceeded()
            if parsed.reasoning_tool_calls:
                if no_step is None and reasoning_hints < self.config.max_reasoning_call_hints:
                    reasoning_hints += 1
                    yield emit(Warning_(kind="tool_call_in_reasoning", message=REASONING_CALL_HINT))
                    self.messages.append(Message(role="user", content=REASONING_CALL_HINT))
                    continue
                if _written_calls(parsed.reasoning_tool_calls):
                    # The turn's only action is a call that never ran: whatever follows </think> is no
                    # finished answer (often "Let me run it."), so the run does not end `completed`.
                    async for ev in self._unrun_reasoning_call(answer, reasoning_hints, no_step, emit):
                        yield ev
                    return
                # Only the tag named ("I wrote my <tool_call> in the wrong place"): no call was left
                # unrun, so the answer stands (and is checked as any other).
            if not language_checked:
                language_checked = True
                mismatch = language_mismatch(task, answer)
                if mismatch is not None and no_step is None:
                    yield emit(Warning_(kind="language_mix", message=mismatch.reason))
                    self.messages.append(Message(role="user", content=correction_prompt(mismatch.user_lang)))
                    continue
                if mismatch is not None:  # a finished answer, kept: better in another language than lost
                    kept = (
                        f"{mismatch.reason}; no step is left to ask for a correction, so it is kept as it is"
                    )
                    yield emit(Warning_(kind="language_mix", message=kept))
            if result.truncated is not None:  # never a finished answer: a caller would act on half of one
                yield emit(Warning_(kind="truncated_answer", message=result.truncated, level=3))
                yield Final(status="truncated_answer", answer=answer, error=result.truncated)
                return
            yield Final(status="completed", answer=answer)
            return

    async def _unrun_reasoning_call(
        self, answer: str, hints: int, over: tuple[str, float, float] | None, emit: Callable[..., Event]
    ) -> AsyncGenerator[Event, None]:
        """The end of a run whose last turn wrote its tool call inside its reasoning, with no hint left
        for it (`over`: the budget that leaves no step for one): `answer` holds the text after
        `</think>`, under a status that says it is not a finished answer."""
        if over is not None:
            message = (
                "A <tool_call> was written inside the reasoning on the last step the budget allows: it was "
                "not run, and no step is left to ask for it again."
            )
            yield emit(Warning_(kind="tool_call_in_reasoning", message=message, level=2))
            yield emit(BudgetExceeded(budget=over[0], limit=over[1], used=over[2]))
            yield Final(status="budget_exceeded", answer=answer or None, error=_budget_error(over))
            return
        after = f"again after {hints} hint(s) in a row" if hints else "(max_reasoning_call_hints is 0)"
        error = f"the model wrote its tool call inside its reasoning {after}; the call was never run"
        yield emit(Warning_(kind="tool_call_in_reasoning", message=error, level=3))
        yield Final(status="tool_call_in_reasoning", answer=answer or None, error=error)

    def _approval_policy(self) -> ApprovalPolicy | None:
        if self.config.approval is not None:
            return self.config.approval
        return ApprovalPolicy(default="ask") if self.approver is not None else None

    def _recorded_config(self) -> dict[str, Any]:
        """The config as `run_started` records it: with the approval policy in effect, the implicit
        ask-every-call of an approver alone included. A resume has the recorded config but not the
        approver: without the policy it would run a call that waited for a decision, undecided."""
        policy = self._approval_policy()
        config = (
            self.config
            if policy is self.config.approval
            else self.config.model_copy(update={"approval": policy})
        )
        return config.model_dump(mode="json")

    def _emitter(self, run: _Run) -> Callable[..., Event]:
        def emit(event: Event, *, trace: bool = True) -> Event:
            return self._emit(event, trace=trace) if self._run is run else event

        return emit

    def _emit(self, event: Event, *, trace: bool = True) -> Event:
        """Record `event` as the current run's; a run's own code emits through `_emitter(run)`."""
        event.run_id = self.run_id
        event.step = self._step
        self._events += 1
        if isinstance(event, Warning_):
            self._warnings.append(event)
        if trace and self._trace is not None:
            self._trace.write(event)
        return event

    def _final(self, run: _Run, status: str, answer: str | None, error: str | None) -> Event:
        """`run`'s final event and result (`run` holds the agent)."""
        final = Final(status=status, answer=answer, error=error, totals=self.tracker.totals())
        run.final = final
        self._emit(final)
        run.result = self.result = RunResult(
            run_id=self.run_id,
            status=status,
            answer=answer,
            error=error,
            messages=list(self.messages),
            totals=self.tracker.totals(),
            trace_path=str(self._trace.path) if self._trace is not None else None,
            trace_error=self._trace.error if self._trace is not None else self._trace_open_error,
            events=self._events,
            warnings=list(self._warnings),
            patch=self._patch,
            patch_error=self._patch_error,
        )
        return final

    def _close_trace(self) -> None:
        self._running = False
        if self._trace is not None:
            self._trace.close()


def _replay_source(model: Any) -> ReplaySource | None:
    source = getattr(model, "source", None)
    return source if isinstance(source, ReplaySource) else None


def _take_notices(model: Any, *, final: bool = False) -> list[Event]:
    """Events a model has for the run (a replay's divergences and hand-over to the live model)."""
    take = getattr(model, "take_notices", None)
    return list(take(final=final)) if callable(take) else []


class _Ended(Exception):
    """The run ended before its first step (its status and error are already set)."""


class _Run:
    """One call of `Agent.stream`: the run it holds the agent for, which its stream alone ends."""

    def __init__(self) -> None:
        self.stream: weakref.ref[AsyncGenerator[Event, None]] | None = None  # weak: dropped, it is finalised
        self.history: list[Message] = []
        self.started = False  # it has its run id and trace (waited for the run before it)
        self.result: RunResult | None = None  # its own, once its final is written
        self.final: Final | None = None  # and that final event
        # What it waits for now (the run before it, KV room, a sandbox): `end_run()` cancels it.
        self.waiting: asyncio.Future[Any] | None = None
        self.pool_sandbox: Any = None  # the sandbox it took from the agent's pool
        self.unwound = asyncio.Event()  # its tool calls have ended, its sandbox and KV room are released
        self.closing: asyncio.Task[None] | None = None  # `end_run()`'s close of its stream
        # Its consumer went quiet with nothing in flight (`RunStream`): why it ends at its next piece of
        # work (a turn, a request, a tool call), while what it holds (a whole answer) still finishes it.
        self.wind_up: str | None = None
        self.turn: TurnStreamer | None = None  # its current turn (streaming a request, or not)
        self.tools_running = False  # its stream is inside a batch of tool calls
        self.cancelled_by: str | None = None  # why its task was cancelled, when it was a Ctrl-C


class _Control:
    """How a run's `RunStream` reaches the agent (`run_stream.RunControl`)."""

    def __init__(self, agent: Agent, run: _Run) -> None:
        self._agent, self._run = agent, run

    def busy(self) -> bool:
        run = self._run
        return run.tools_running or (run.turn is not None and run.turn.streaming)

    def wind_up(self, reason: str) -> None:
        if self._agent._run is self._run:
            self._run.wind_up = reason

    def stop(self, reason: str) -> None:
        # The stream is closed (or its reader cancelled) by the `RunStream`: `end_run`'s own close
        # would collide with it.
        if self._agent._run is self._run:
            self._agent._end(self._run, "interrupted", reason)

    def final(self) -> Final | None:
        return self._run.final

    def closing(self) -> asyncio.Task[None] | None:
        return self._run.closing


def _close_soon(run: _Run) -> None:
    """Close the stream of `run` (ended by `end_run`) when it waits between events; a stream that is
    running stops at its next event, one already over needs nothing, and without a running event loop
    its finalisation closes it."""
    stream = run.stream() if run.stream is not None else None
    # (`ag_running`: iterated now, by a task waiting inside it; no `ag_frame`: it is over)
    if stream is None or getattr(stream, "ag_running", False) or getattr(stream, "ag_frame", None) is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    run.closing = loop.create_task(_aclose_quietly(stream))  # held: the loop keeps tasks weakly


async def _aclose_quietly(stream: AsyncGenerator[Event, None]) -> None:
    # Its caller resumed it meanwhile ("already running"): it then stops at its next event by itself.
    with contextlib.suppress(RuntimeError):
        await stream.aclose()


def _checked_history(history: Sequence[Message]) -> list[Message]:
    """`history` as a list of messages; TypeError saying what it holds instead."""
    if not isinstance(history, Sequence) or isinstance(history, str | bytes):
        raise TypeError(f"history must be a sequence of Message, not {type(history).__name__}")
    messages = list(history)
    for k, m in enumerate(messages):
        if not isinstance(m, Message):
            hint = (
                " (a trace's recorded history holds dicts: `Recording.history_messages()` gives messages)"
                if isinstance(m, dict)
                else ""
            )
            raise TypeError(f"history[{k}] is a {type(m).__name__}, not a Message{hint}")
    return messages


@overload
def _budget_error(over: tuple[str, float, float]) -> str: ...
@overload
def _budget_error(over: None) -> None: ...
@overload
def _budget_error(over: tuple[str, float, float] | None) -> str | None: ...


def _budget_error(over: tuple[str, float, float] | None) -> str | None:
    if over is None:
        return None
    name, limit, used = over
    if name == "wall_s":  # ended by the timer, a little before the limit (the abort's reserve)
        return f"budget wall_s used up: the run's {limit:g} s deadline was reached ({used:.2f} s)"
    return f"budget {name} used up ({used:g} >= {limit:g})"


# The loop's call ids: `call_{turn}_{n}` (bounded digits: a hostile history's id is no huge int).
_CALL_ID = re.compile(r"call_(\d{1,9})_\d{1,9}")


def _turns_in(history: Sequence[Message]) -> int:
    """The turn after which a run continuing `history` numbers its call ids: the history's assistant
    turns, or the highest turn its call ids name (a history with turns left out), whichever is larger."""
    turns = sum(1 for m in history if m.role == "assistant")
    for m in history:
        ids = [c.id for c in m.tool_calls] + [c.id for c in m.malformed_calls] + [m.tool_call_id or ""]
        for call_id in ids:
            if (match := _CALL_ID.fullmatch(call_id)) is not None:
                turns = max(turns, int(match.group(1)))
    return turns


def _written_calls(bodies: Sequence[str]) -> bool:
    """Whether any `<tool_call>` the reasoning holds has a call in it (a JSON object), not just the tag
    named in passing, as QwQ does when it thinks about the hint it was given."""
    return any(body.strip().startswith("{") for body in bodies)


def _malformed_calls(parsed: ParseResult) -> list[MalformedCall]:
    """The turn's undecodable calls, each at its place among the calls (what a renderer shows)."""
    position = {call_id: k for k, call_id in enumerate(parsed.call_ids)}
    return [
        MalformedCall(id=err.id, raw=err.raw, position=position.get(err.id, len(position)))
        for err in parsed.errors
    ]


def _renders_in_written_order(model: Any) -> bool:
    """Whether `model`'s prompts put results in call order (`PromptOptions.written_order`): off only
    while replaying or resuming a trace recorded before then, whose results came errors first."""
    options = getattr(model, "prompt_options", None)
    return options.written_order if isinstance(options, PromptOptions) else True


def _in_written_order(observations: list[Message], call_ids: list[str]) -> list[Message]:
    """The observations in the order their calls were written, whether they ran, were malformed or
    were denied: QwQ's template gives results no ids, so the model pairs them with its calls by
    position. One whose call is not in the turn (none the loop makes) goes last, in the order given."""
    rank = {call_id: k for k, call_id in enumerate(call_ids)}
    return sorted(observations, key=lambda m: rank.get(m.tool_call_id or "", len(rank)))


def _kept_ids(raw: str, output_ids: list[int] | None) -> list[int] | None:
    """The ids a turn keeps for token-exact prompts (`exact_tokens`); None when they cannot be had."""
    if not output_ids:
        return None
    from qwq_agent.agent.exact_tokens import exact_output_ids
    from qwq_agent.agent.tokenizer import VocabularyNotFound

    try:
        return exact_output_ids(raw, output_ids)
    except VocabularyNotFound:  # no tokenizer here: the turn is sent as text, as before
        return None
