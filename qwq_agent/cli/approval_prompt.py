"""`qwq-agent run --approve ...`: the approval policy from the command line, and the terminal prompt.

The prompt shows the call and takes one key: `a` allow, `d` deny (then a reason, which the model
reads as the call's observation), `e` edit (new arguments as JSON, checked against the tool's schema
and asked again until they fit). Without a terminal, a call that needs a decision stops the run
(`awaiting_approval`); `--resume TRACE --decide ...` continues it later (an edit there is checked
against the tool's schema before anything starts, and refused with exit 2 when it does not fit).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import fnmatch
import json
import queue
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from pydantic import ValidationError

from qwq_agent.agent.approval import (
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalRequest,
    Approver,
    replay_approver,
    resume_decisions,
)
from qwq_agent.agent.repair import non_finite_problem
from qwq_agent.cli.errors import EXIT_AWAITING_APPROVAL
from qwq_agent.cli.safe_text import plain, safe

__all__ = [
    "PolicyFileError",
    "TerminalApprover",
    "add_arguments",
    "check_names",
    "load_policy",
    "parse_decision",
    "report_pending",
    "resume_command",
    "setup",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`--approve` and `--decide`, added to the `run` parser."""
    p.add_argument(
        "--approve",
        metavar="ask|auto|TOOLS|FILE.json",
        help="which tool calls need your approval: ask (all), auto (none, the default), a comma-separated "
        "list of tools that run without asking (the others ask), or a JSON policy file (rules with "
        "argument patterns)",
    )
    p.add_argument(
        "--decide",
        metavar="allow|deny[:REASON]|edit:JSON",
        help="with --resume of a run awaiting approval: the decision on the call it waits for (edit's "
        "arguments must fit the tool's schema)",
    )


def parse_decision(value: str) -> ApprovalDecision:
    """`allow`, `deny`, `deny:REASON` or `edit:{"arg": ...}`; ValueError says what is accepted."""
    action, _, rest = value.partition(":")
    if action == "allow" and not rest:
        return ApprovalDecision.allow()
    if action == "deny":
        return ApprovalDecision.deny(rest or None)
    if action == "edit":
        try:
            arguments = json.loads(rest)
        except ValueError as exc:
            raise ValueError(f"--decide edit: the arguments are not JSON ({exc})") from None
        if not isinstance(arguments, dict):
            raise ValueError("--decide edit: the arguments must be a JSON object")
        if (problem := non_finite_problem(arguments)) is not None:
            raise ValueError(f"--decide edit: {problem}")
        return ApprovalDecision.edit(arguments)
    raise ValueError(f"--decide takes allow, deny[:REASON] or edit:JSON, not {value!r}")


POLICY_FIX = (
    'write it as {"rules": [{"tool": GLOB, "action": "allow|deny|ask", "arguments": {NAME: [REGEX, ...]}, '
    '"reason": TEXT}, ...], "default": "allow|deny|ask"}'
)


class PolicyFileError(ValueError):
    """An `--approve FILE.json` that cannot be read or is not a valid `ApprovalPolicy`; the message
    names the file and every problem (where in the file, what is wrong), `fix` says what to do."""

    def __init__(self, message: str, fix: str = POLICY_FIX) -> None:
        super().__init__(message)
        self.fix = fix


def load_policy(value: str) -> ApprovalPolicy:
    """The `--approve` value as a policy (a `.json` path is read as a policy file).

    Raises `PolicyFileError` for a policy file that cannot be read, is not UTF-8 or is not valid,
    ValueError for a bad flag value.
    """
    if value.endswith(".json"):
        try:
            return ApprovalPolicy.model_validate_json(Path(value).read_text(encoding="utf-8"))
        except OSError as exc:
            raise PolicyFileError(f"--approve: cannot read {value}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            # A ValueError too: caught here so that the message names the flag and the file, not
            # only the codec's complaint (a Latin-1 reason, a UTF-16 file saved by an editor).
            byte = exc.object[exc.start : exc.start + 1]
            raise PolicyFileError(
                f"--approve: {value} is not UTF-8 (byte {byte!r} at offset {exc.start})",
                f"save {value} as UTF-8",
            ) from None
        except ValidationError as exc:
            raise PolicyFileError(f"--approve: {value} is not a valid policy: {_problems(exc)}") from None
    return ApprovalPolicy.from_flag(value)


def _problems(exc: ValidationError) -> str:
    """Pydantic's errors on one line, each as `where: what`: `rules[1].action: ...`, not only its
    header line ("1 validation error for ApprovalPolicy"), which says neither."""
    parts = []
    for error in exc.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.get("loc", ())).lstrip(".")
        what = error.get("msg", "").removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            what = "unknown key (misspelt?)"
        elif error.get("type") not in ("value_error", "json_invalid") and "input" in error:
            what += f", got {json.dumps(error['input'], default=str)[:60]}"
        parts.append(f"{where}: {what}" if where else what)
    return "; ".join(parts)


def setup(
    args: argparse.Namespace, config: Any, source: Path | None, tools: Sequence[Any], console: Any
) -> Approver | None:
    """Set `config.approval` from `--approve` and build the run's approver (None: calls wait).

    Raises `CliError` for a bad `--approve`/`--decide`.
    """
    from qwq_agent.cli.errors import CliError
    from qwq_agent.tools.registry import ToolRegistry

    approve = getattr(args, "approve", None)
    decide = getattr(args, "decide", None)
    run_id = getattr(args, "run_id", None)  # the run of an old multi-run trace that `source` means
    try:
        if approve is not None:
            config.approval = load_policy(approve)
            check_names(config.approval, tools, console)
        decision = parse_decision(decide) if decide else None
    except PolicyFileError as exc:
        raise CliError(str(exc), exc.fix) from None
    except ValueError as exc:
        raise CliError(str(exc).splitlines()[0], "see `qwq-agent run --help`") from None
    if decision is not None and source is None:
        raise CliError("--decide needs --resume TRACE of a run awaiting approval", "add --resume TRACE")
    if config.approval is None and source is not None and _approver_only(source, run_id):
        # A trace from before approver-only runs recorded their policy (`approval: null`), whose
        # approver alone asked about calls: that approver asked about every call, so the resume
        # does too. Without a policy here, a call still waiting for a decision would run, undecided.
        config.approval = ApprovalPolicy(default="ask")
    if config.approval is None:
        if decision is not None:
            raise CliError("--decide: the run has no approval policy, so nothing waits", "drop --decide")
        return None  # an approver alone would ask about every call
    interactive: Approver | None = None
    # sys.stdin is None when fd 0 is closed (`<&-`): no terminal either, so calls wait for a decision.
    if sys.stdin is not None and sys.stdin.isatty():
        interactive = TerminalApprover(console, ToolRegistry(list(tools)).argument_problems)
    if source is None:
        return interactive
    if decision is not None:
        if decision.action == "edit":
            _check_edit(source, run_id, decision, ToolRegistry(list(tools)))
        try:
            return resume_decisions(source, decision, then=interactive, run_id=run_id)
        except ValueError as exc:
            raise CliError(
                str(exc), "drop --decide, or resume a run whose status is awaiting_approval"
            ) from None
    # A replay or resume decides the recorded calls as the recorded run did, whatever `--approve` says
    # now (a denied call stays denied); only the calls after the recording follow the policy.
    return replay_approver(source, then=interactive, run_id=run_id)


def _may_have(parameters: Any, name: str) -> bool:
    """Whether a call of a tool whose arguments' schema is `parameters` can hold an argument `name`:
    it declares it, or its schema does not say which names it takes (no `properties`, open
    `additionalProperties`, `patternProperties`)."""
    if not isinstance(parameters, dict) or not isinstance(parameters.get("properties"), dict):
        return True
    if name in parameters["properties"] or parameters.get("patternProperties"):
        return True
    extra = parameters.get("additionalProperties")
    return extra is not None and extra is not False


def check_names(policy: ApprovalPolicy, tools: Sequence[Any], console: Any) -> None:
    """Refuse a rule naming an argument that no tool its glob matches has; warn of a glob matching none
    of the run's tools. Either rule would never apply, silently: a `deny` that denies nothing.

    Raises `PolicyFileError` naming every unknown argument (`rules[0].arguments.URL`).
    """
    specs = [t.spec for t in tools]
    problems: list[str] = []
    for index, rule in enumerate(policy.rules):
        matched = [spec for spec in specs if fnmatch.fnmatchcase(spec.name, rule.tool)]
        if not matched:
            # A warning, not a refusal: one policy file may serve runs with other tools.
            close = difflib.get_close_matches(rule.tool, [spec.name for spec in specs], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            console.print(
                plain(
                    f"warning: --approve: rules[{index}].tool {rule.tool!r} matches none of this run's "
                    f"tools{hint}; the rule never applies",
                    "yellow",
                ),
                soft_wrap=True,
            )
            continue
        for name in rule.arguments:
            if not any(_may_have(spec.parameters, name) for spec in matched):
                known = sorted({n for spec in matched for n in spec.parameters.get("properties", {})})
                shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
                problems.append(
                    f"rules[{index}].arguments.{name}: no tool matching {rule.tool!r} has an argument "
                    f"{name!r} (they have: {shown or 'none'})"
                )
    if problems:
        raise PolicyFileError(
            "--approve: the policy names arguments the tools do not have: " + "; ".join(problems),
            "spell each argument as the tool's schema does (named above), or drop it",
        )


def _check_edit(source: Path, run_id: str | None, decision: ApprovalDecision, registry: Any) -> None:
    """Refuse `--decide edit:JSON` whose arguments do not fit the waiting call's tool, before anything
    starts: applied, the resume would turn the edit into a denial the model reads, and go on."""
    from qwq_agent.agent.approval import pending_approval
    from qwq_agent.cli.errors import CliError

    pending = pending_approval(source, run_id=run_id)
    if pending is None:
        return  # `resume_decisions` says the run does not wait
    edited = pending.call.model_copy(update={"arguments": decision.arguments or {}})
    problems = registry.argument_problems(edited)
    if problems:
        raise CliError(
            f"--decide edit: the arguments do not fit {pending.call.name}: " + "; ".join(problems),
            f"give {pending.call.name} arguments its schema takes, or decide allow or deny",
        )


def _approver_only(source: Path, run_id: str | None) -> bool:
    """Whether the run in `source` asked for approvals (a run awaiting approval asked too): with no
    recorded policy, its approver alone asked."""
    from qwq_agent.agent.events import ApprovalRequested
    from qwq_agent.agent.trace import read_trace

    events = read_trace(source, run_id=run_id, prompts="stored")
    return any(isinstance(e, ApprovalRequested) for e in events)


_TERMINAL = threading.Lock()
"""One question on the terminal at a time, whichever run asks: parallel branches share one terminal,
and a key typed for the panel on screen must not answer another branch's call."""


class _Withdrawn(Exception):
    """Nobody waits for this question's answer any more (its wait timed out, or the run stopped)."""


_WAKE = object()
"""Put in a `_StdinLines` queue when a question is withdrawn, to wake the thread reading for it."""


class _StdinLines:
    """The one reader of a stdin stream for approval questions: a thread reads lines into a queue.

    A question then stops reading the moment it is withdrawn, instead of leaving a thread blocked in
    `input()` that would swallow the next line, typed for the next question.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.lines: queue.Queue[object] = queue.Queue()
        threading.Thread(target=self._read, name="approval-stdin", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                line = self.stream.readline()
            except (OSError, ValueError):  # the terminal went away, or stdin was closed
                line = ""
            self.lines.put(line)
            if not line:
                return  # EOF: the "" stays in the queue for every later question

    def discard_typed_ahead(self) -> None:
        """Drop lines typed before the question was shown: they were not answers to it."""
        while True:
            try:
                item = self.lines.get_nowait()
            except queue.Empty:
                return
            if item == "":
                self.lines.put(item)
                return

    def reader(self, withdrawn: threading.Event) -> _Answers:
        return _Answers(self, withdrawn)


class _Answers:
    """What `Prompt.ask(stream=...)` reads a question's answers from: raises `_Withdrawn` once the
    question is withdrawn, `EOFError` at the end of stdin (like `input()`)."""

    def __init__(self, source: _StdinLines, withdrawn: threading.Event) -> None:
        self.source = source
        self.withdrawn = withdrawn

    def readline(self) -> str:
        while True:
            if self.withdrawn.is_set():
                raise _Withdrawn
            item = self.source.lines.get()
            if item is _WAKE:
                continue  # for a withdrawn question: ours, checked above, or an earlier one
            if item == "":
                self.source.lines.put(item)
                raise EOFError
            assert isinstance(item, str)
            return item.rstrip("\r\n")  # as input() returns it: Enter alone takes the default


_READERS: dict[int, _StdinLines] = {}
_READERS_LOCK = threading.Lock()


def _stdin_lines() -> _StdinLines:
    stream = sys.stdin
    with _READERS_LOCK:
        found = _READERS.get(id(stream))
        if found is None or found.stream is not stream:
            found = _READERS[id(stream)] = _StdinLines(stream)
        return found


class TerminalApprover:
    """Asks at the terminal; `validate` checks edited arguments (lines of problems, empty when fine).

    Questions from concurrent runs (branches) are asked one after the other, each panel naming its
    run; a question whose wait ends (timed out, cancelled) is withdrawn and says so.
    """

    def __init__(self, console: Any, validate: Callable[[Any], list[str]]) -> None:
        self.console = console
        self.validate = validate

    async def __call__(self, request: ApprovalRequest) -> ApprovalDecision:
        # A daemon thread, not the default executor: a prompt left waiting must not keep the
        # process alive after Ctrl-C ends the run.
        loop = asyncio.get_running_loop()
        done: asyncio.Future[ApprovalDecision] = loop.create_future()
        withdrawn = threading.Event()
        lines = _stdin_lines()

        def ask() -> None:
            try:
                with _TERMINAL:
                    if withdrawn.is_set():
                        return  # withdrawn before its turn came: never shown
                    lines.discard_typed_ahead()
                    try:
                        result = self._ask(request, lines.reader(withdrawn))
                    except _Withdrawn:
                        self.console.print(
                            plain(
                                f"\nthe question on {request.call.name} ({request.call.id}) was withdrawn; "
                                "that answer is not used",
                                "yellow",
                            )
                        )
                        return
            except EOFError:  # stdin closed: nobody can answer now, so the run waits for a decision
                loop.call_soon_threadsafe(_settle, done, ApprovalDecision(action="defer"), None)
            except BaseException as exc:  # the terminal went away
                loop.call_soon_threadsafe(_settle, done, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, result, None)

        threading.Thread(target=ask, name="approval-prompt", daemon=True).start()
        try:
            return await done
        finally:
            if not done.done() or done.cancelled():
                withdrawn.set()
                lines.lines.put(_WAKE)

    def _ask(self, request: ApprovalRequest, answers: _Answers) -> ApprovalDecision:
        from rich.panel import Panel
        from rich.prompt import Prompt
        from rich.syntax import Syntax

        stream = cast(TextIO, answers)  # Prompt.ask only calls its readline()
        call = request.call
        body = Syntax(safe(json.dumps(call.arguments, indent=2, ensure_ascii=False)), "json", word_wrap=True)
        run = f"run {request.run_id}: " if request.run_id else ""
        title = f"{run}approve tool call {call.name} ({call.id})?"
        subtitle = request.reason or ""
        self.console.print(Panel(body, title=plain(title), subtitle=plain(subtitle), border_style="magenta"))
        while True:
            choice = Prompt.ask(
                "\\[a]llow, \\[d]eny, \\[e]dit",
                choices=["a", "d", "e"],
                default="a",
                console=self.console,
                stream=stream,
            )
            if choice == "a":
                return ApprovalDecision.allow()
            if choice == "d":
                reason = Prompt.ask(
                    "reason (the model reads it)", default="", console=self.console, stream=stream
                )
                return ApprovalDecision.deny(reason.strip() or None)
            text = Prompt.ask(
                "new arguments (JSON)",
                default=json.dumps(call.arguments, ensure_ascii=False),
                console=self.console,
                stream=stream,
            )
            try:
                arguments = json.loads(text)
            except ValueError as exc:
                self.console.print(plain(f"not JSON: {exc}", "red"))
                continue
            if not isinstance(arguments, dict):
                self.console.print("[red]the arguments must be a JSON object[/red]")
                continue
            if (problem := non_finite_problem(arguments)) is not None:
                self.console.print(plain(problem, "red"))
                continue
            problems = self.validate(call.model_copy(update={"arguments": arguments}))
            if problems:
                self.console.print(
                    plain("invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems), "red")
                )
                continue
            return ApprovalDecision.edit(arguments)


def report_pending(console: Any, result: Any) -> int:
    """Say which call the run waits on and how to resume it; the exit code for a waiting run. A run whose
    trace does not hold the wait whole (a full disk stopped it before `approval_requested` or `final`)
    cannot be resumed: said so, and 1."""
    pending, why = _recorded_wait(result.trace_path, result.trace_error)
    what = "a tool call"
    if pending is not None:
        # The model's arguments: a 6 KB one printed whole is a screenful, not a line.
        what = f"{pending.call.name} {_head_tail(json.dumps(pending.call.arguments, ensure_ascii=False))}"
    if why is not None:
        line = f"the run stopped to wait for approval of {what}, but {why}: it cannot be resumed"
        line += "; run the task again"
        console.print(plain(line, "yellow"), soft_wrap=True)
        return 1
    console.print(plain(f"waiting for approval of {what}", "magenta"), soft_wrap=True)
    console.print(plain(f"resume with: {resume_command(result.trace_path)}", "dim"), soft_wrap=True)
    return EXIT_AWAITING_APPROVAL


def unresumable(trace_path: str | None, trace_error: str | None) -> str | None:
    """Why the run in `trace_path`, which stopped awaiting approval, cannot be resumed from it (e.g. "its
    trace does not record the wait (...: No space left on device)"); None when it can."""
    return _recorded_wait(trace_path, trace_error)[1]


def _recorded_wait(trace_path: str | None, trace_error: str | None) -> tuple[Any, str | None]:
    """The call the trace records the run waiting on, and why a resume cannot work (None: it can)."""
    from qwq_agent.agent.approval import pending_approval

    if not trace_path:
        return None, f"it has no trace ({trace_error or 'none was asked for'})"
    try:
        pending = pending_approval(trace_path)
    except Exception as exc:  # a trace removed or unreadable since: no resume either
        return None, f"its trace cannot be read ({type(exc).__name__}: {exc})"
    if pending is None:
        return None, f"its trace does not record the wait ({trace_error or 'no pending approval in it'})"
    if trace_error is not None:
        # A trace with a hole (a write that failed) would replay a run other than this one.
        return pending, f"its trace is incomplete ({trace_error})"
    return pending, None


def resume_command(trace_path: str | Path) -> str:
    """The command that continues the run awaiting approval in `trace_path`, with a decision: the path
    quoted for a shell, so that the command pastes as printed (a path with a space, a `$`)."""
    return f"qwq-agent run --resume {shlex.quote(str(trace_path))} --decide allow|deny:REASON|edit:JSON"


_SHOWN_ARGUMENT_CHARS = 200


def _head_tail(text: str, limit: int = _SHOWN_ARGUMENT_CHARS) -> str:
    """`text`, or its head and tail with the middle left out (and counted) when longer than `limit`."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-(limit // 3) :]
    return f"{head}…({len(text) - len(head) - len(tail):,} characters left out)…{tail}"


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
    else:
        future.set_result(result)
