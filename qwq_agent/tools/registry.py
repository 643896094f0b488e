"""`ToolRegistry`: the tools of a run, and the one place a model's call becomes a tool's output.

Every mistake the model can make (unknown tool, bad arguments) and every failure of the tool
(exception, timeout) comes back as an error observation the model can read and act on; `call` never
raises for them.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import time
import traceback
from collections.abc import Iterable, Iterator
from typing import Any

from jsonschema import validators
from jsonschema.exceptions import SchemaError as InvalidSchema
from jsonschema.exceptions import ValidationError as SchemaError
from pydantic import ValidationError

from qwq_agent.agent.messages import ToolCall, ToolSpec
from qwq_agent.deadline import Deadline
from qwq_agent.protocols import Tool, ToolContext, ToolOutput
from qwq_agent.surrogates import replace_surrogates, replace_surrogates_in
from qwq_agent.tools.arg_check import oversized, run_check
from qwq_agent.tools.base import ToolArgumentsError, UnserialisableResult, same_json_value, to_tool_output
from qwq_agent.tools.output_cap import MAX_OUTPUT_CHARS, cap_output
from qwq_agent.tools.result_bound import output_limit
from qwq_agent.tools.schema_patterns import (
    ArgumentValidator,
    CheckStopped,
    PatternTimeout,
    check_budget,
    check_schema,
    schema_error_path,
)
from qwq_agent.tools.schema_refs import LOCAL_ONLY, unresolvable_refs
from qwq_agent.tools.tool_threads import left_a_thread

__all__ = [
    "LEFT_IN_THREAD",
    "LEFT_RUNNING",
    "DefaultsValidator",
    "ToolCallStopped",
    "ToolRegistry",
    "describe_exception",
    "describe_schema_errors",
    "same_json_value",
    "schema_problems",
]

_MAX_VALUE_CHARS = 80
_TRACEBACK_LINES = 6
# How many of an invalid ToolOutput's field errors its observation names.
_MAX_PROBLEMS = 3
# How long a timed-out or cancelled tool gets to finish its clean-up before it is left behind.
_CANCEL_GRACE_S = 5.0
# What an observation says of a tool that did not end within `_CANCEL_GRACE_S` of its cancellation.
LEFT_RUNNING = "it ignored cancellation and was left running in the background"
# What it says of a sync tool given up on: its task ended at once, but a thread cannot be stopped.
LEFT_IN_THREAD = "it is still running in a thread, abandoned (a thread cannot be stopped)"
# `argument_problems` runs where it is called (an approval prompt, on the event loop): its bound.
_SYNC_CHECK_S = 2.0


class ToolCallStopped(Exception):
    """`ToolRegistry.call` was stopped by its caller's `stop` event before the tool ended.

    `left_running`: the tool still runs: it ignored its cancellation for `_CANCEL_GRACE_S`, or (with
    `in_thread`) it is a sync call abandoned in its thread.
    `started`: False when it was stopped while its arguments were checked, before the tool ran.
    """

    def __init__(
        self, name: str, *, left_running: bool, started: bool = True, in_thread: bool = False
    ) -> None:
        note = LEFT_IN_THREAD if in_thread else LEFT_RUNNING
        super().__init__(f"tool {name!r} was stopped" + (f"; {note}" if left_running else ""))
        self.left_running = left_running
        self.started = started
        self.in_thread = in_thread


class _ToolExit(Exception):
    """A tool's SystemExit or KeyboardInterrupt, carried as an ordinary exception (`original`)."""

    def __init__(self, original: BaseException) -> None:
        # Not str(original): a tool's exception may fail to print (see `_message`).
        super().__init__(type(original).__name__)
        self.original = original


async def _contained(tool: Tool, arguments: dict[str, Any], context: ToolContext) -> Any:
    # A tool calling sys.exit() (argparse on a bad flag) or raising KeyboardInterrupt in its thread
    # would leave its task as such, and asyncio re-raises those out of the event loop: the process
    # dies. Converted inside the task, it becomes the tool's failure like any other. Other
    # BaseExceptions (pytest's Failed, a library's own `Abort`) only end the task: `_call` reports them.
    # The tool is called in here too, so a `__call__` that raises before returning its awaitable is
    # the tool's failure as well.
    try:
        return await tool(arguments, context)
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _ToolExit(exc) from None


def _message(exc: BaseException) -> str:
    """`str(exc)`, or `""` when it cannot be had: a tool's exception may fail to print itself (a
    `__str__` reading an attribute its `__init__` never set), and reporting the failure must not fail."""
    try:
        return str(exc)
    except Exception:
        return ""


def describe_exception(exc: BaseException) -> str:
    """`Type: message` for a tool's failure, or the type's name alone when the message is empty or
    cannot be had; never raises."""
    message = _message(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _encodable(output: ToolOutput) -> ToolOutput:
    # A page decoded with a codec that makes lone surrogates, an MCP server's JSON escape of half a pair:
    # such text cannot be encoded as UTF-8, so the next request to the model and the trace would fail.
    text = replace_surrogates(output.text)
    images = replace_surrogates_in(output.images)
    try:
        metadata = replace_surrogates_in(output.metadata)
    except RecursionError:  # metadata nested past Python's limit is the tool's own; it stays as it is
        metadata = output.metadata
    if text is output.text and images is output.images and metadata is output.metadata:
        return output
    return output.model_copy(update={"text": text, "images": images, "metadata": metadata})


def _checked(name: str, output: ToolOutput) -> ToolOutput:
    """`output` with its fields checked again; an error observation when one is not what it says.

    pydantic checks a model's fields when it is built, not when they are set afterwards
    (`out.text = None`, `out.images.append(png_bytes)`) nor in `model_construct`: such an output
    failed far from its tool (when capped, in the result event) and ended the whole run.
    """
    try:
        return ToolOutput.model_validate(output.__dict__)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'output'}: {e['msg']}" for e in exc.errors()[:_MAX_PROBLEMS]
        )
        return ToolOutput(
            text=f"Tool '{name}' returned an invalid ToolOutput ({problems}); its output is lost.",
            is_error=True,
            metadata={"error": "bad_return"},
        )


def _unserialisable(name: str, exc: BaseException) -> ToolOutput:
    return ToolOutput(
        text=f"Tool '{name}' returned a value that could not be serialised: " + describe_exception(exc),
        is_error=True,
        metadata={"error": "bad_return"},
    )


async def _stop(task: asyncio.Future[Any]) -> bool:
    """Cancel `task` and give it `_CANCEL_GRACE_S` to end; False when it would not."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=_CANCEL_GRACE_S)
    if not done:
        # its eventual exception is nobody's to handle; retrieve it so asyncio does not log it
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return bool(done)


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def _expected(schema: Any) -> str:
    """A short human description of what `schema` accepts."""
    if not isinstance(schema, dict):
        return "a value"
    if "const" in schema:
        return _show(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(_show(v) for v in schema["enum"])
    if "$ref" in schema:
        return "an object of type " + str(schema["$ref"]).rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_expected(s) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"an array of ({_expected(schema['items'])})"
    return str(kind) if kind else "a value"


def _error_line(err: SchemaError) -> str:
    path = err.json_path
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        where = f"{path}.{missing}" if path != "$" else f"$.{missing}"
        prop = err.schema.get("properties", {}).get(missing, {}) if isinstance(err.schema, dict) else {}
        return f"{where}: missing required argument (expected {_expected(prop)})"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {})) if isinstance(err.schema, dict) else []
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        names = ", ".join(repr(e) for e in extra)
        return f"{path}: unexpected argument(s) {names}; allowed: {', '.join(allowed) or 'none'}"
    if err.validator in ("type", "anyOf", "oneOf", "enum", "const", "$ref"):
        return f"{path}: expected {_expected(err.schema)}, got {_show(err.instance)}"
    # minimum, maxLength, pattern, ...: jsonschema's message already says what and why.
    return f"{path}: {err.message if len(err.message) < 200 else err.message[:199] + '…'}"


def _expand(err: SchemaError) -> list[SchemaError]:
    """For anyOf/oneOf (e.g. `Model | None`), the errors of the branch the value was meant for.

    A branch whose type fits the value (no type error at the value itself) is the one the model was
    aiming at: its errors ("$.at.x: missing") say more than "expected Point or null".
    """
    if err.validator not in ("anyOf", "oneOf") or not err.context:
        return [err]
    branches: dict[Any, list[SchemaError]] = {}
    for sub in err.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [
        subs
        for subs in branches.values()
        if not any(s.validator in ("type", "const", "enum") and not s.relative_path for s in subs)
    ]
    if len(fitting) != 1:
        return [err]
    return [e for sub in fitting[0] for e in _expand(sub)]


def _default_accepted(check: Any) -> Any:
    def wrapped(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        # The model did what the docs said: `{"type": "string", "default": null}` documents null.
        if isinstance(schema, dict) and "default" in schema and same_json_value(instance, schema["default"]):
            return
        yield from check(validator, value, instance, schema) or ()

    return wrapped


# Draft 2020-12, except that a value equal to the schema's documented `default` is always valid; its
# regular expressions run under a time limit (schema_patterns.py: a backtracking `pattern` froze the
# event loop).
DefaultsValidator = validators.extend(
    ArgumentValidator,
    {keyword: _default_accepted(check) for keyword, check in ArgumentValidator.VALIDATORS.items()},
)


def describe_schema_errors(errors: list[SchemaError], *, limit: int = 10) -> list[str]:
    """One line per validation error, ordered by path, capped at `limit` (with a count of the rest)."""
    expanded = [e for err in errors for e in _expand(err)]
    # `{"type": "string", "enum": [...]}` fails twice for 1; the enum line already says it all.
    has_enum = {tuple(e.absolute_path) for e in expanded if e.validator in ("enum", "const")}
    expanded = [e for e in expanded if not (e.validator == "type" and tuple(e.absolute_path) in has_enum)]
    ordered = sorted(expanded, key=lambda e: (list(map(str, e.absolute_path)), str(e.validator)))
    lines = [_error_line(e) for e in ordered[:limit]]
    if len(ordered) > limit:
        lines.append(f"... and {len(ordered) - limit} more")
    return lines


def _where(arguments: Any, target: str, *, name: bool) -> str:
    """The JSON path of the string `target` (that very object) in `arguments`: a value, or with
    `name` the name of a property; `$` when it is not there."""
    stack: list[tuple[Any, str]] = [(arguments, "$")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if name and key is target:
                    return f"{path}.{key}" if len(key) <= _MAX_VALUE_CHARS else path
                stack.append((item, f"{path}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
        elif value is target and not name:
            return path
    return "$"


def schema_problems(validator: Any, arguments: Any, *, limit: int = 10) -> list[str]:
    """Why `arguments` do not fit `validator`'s schema, one line each (at most `limit` and a count).

    Arguments over `arg_check.MAX_ARGUMENT_CHARS` are refused unchecked, and a value or property name
    that could not be matched against a pattern in time is refused too: never taken as fitting.
    Raises `CheckStopped` when the check's budget (`check_budget`) runs out.
    """
    too_large = oversized(arguments)
    if too_large:
        return [too_large]
    try:
        errors = list(validator.iter_errors(arguments))
    except PatternTimeout as exc:
        where = _where(arguments, exc.text, name=exc.name)
        what = f"the argument name {_show(exc.text)}" if exc.name else "the value"
        return [
            f"{where}: {what} could not be checked against the tool's pattern {_show(exc.pattern)} "
            f"in time; send a shorter {'name' if exc.name else 'value'}"
        ]
    return describe_schema_errors(errors, limit=limit)


class ToolRegistry:
    """The tools available to a run, by name.

    Every output is capped at `max_output_chars` of text (head and tail kept) and 16 MB of images.

    Time limit of a call, most specific first: the tool's own `timeout` attribute (e.g.
    `FunctionTool(timeout=...)`, for a tool known to be slow or fast), then `call(..., timeout=)`, then
    the registry's `timeout` (seconds; None for no limit); whichever applies is clamped to the call's
    deadline (`call(..., deadline=)` or `context.deadline`), so no tool outlives the run's budget.
    """

    def __init__(
        self,
        tools: Iterable[Tool] = (),
        *,
        timeout: float | None = 60.0,
        max_errors: int = 10,
        max_output_chars: int = MAX_OUTPUT_CHARS,
    ) -> None:
        self.timeout = timeout
        self.max_errors = max_errors
        self.max_output_chars = max_output_chars
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, Any] = {}
        for t in tools:
            self.add(t)

    def add(self, tool: Tool) -> Tool:
        """Register `tool`; raises ValueError on a duplicate name or an invalid JSON Schema (one with a
        `$ref` that does not resolve within it, or a `pattern` that does not compile, included), and TypeError for an object that is not a `Tool` (e.g. one that does not declare `uses_sandbox`)."""
        if not isinstance(tool, Tool):
            missing = [m for m in ("spec", "uses_sandbox", "__call__") if m not in dir(tool)]
            raise TypeError(
                f"{tool!r} is not a tool: it lacks {', '.join(missing)} (a tool declares `spec`, "
                "`uses_sandbox` (True when it works on the run's sandbox) and an async `__call__`)"
            )
        spec = tool.spec
        if spec.name in self._tools:
            raise ValueError(f"a tool named {spec.name!r} is already registered")
        try:
            check_schema(spec.parameters)  # its patterns must compile, or they could not be enforced
            dangling = unresolvable_refs(spec.parameters)
        except RecursionError:  # a few frames per level: ~150 levels pass Python's limit
            raise ValueError(f"tool {spec.name!r}: its schema nests too deeply to be checked") from None
        except InvalidSchema as exc:  # a pattern that does not compile among them: refused, not skipped
            where = schema_error_path(exc)
            raise ValueError(f"tool {spec.name!r}: invalid schema at {where}: {exc.message}") from None
        if dangling:
            raise ValueError(
                f"tool {spec.name!r}: {dangling[0]}; only references into the schema itself are supported"
            )
        self._tools[spec.name] = tool
        # LOCAL_ONLY: a `$ref` to a URL must never make the host fetch it.
        self._validators[spec.name] = DefaultsValidator(spec.parameters, registry=LOCAL_ONLY)
        return tool

    def get(self, name: str) -> Tool | None:
        """The tool called `name`, or None."""
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def specs(self) -> list[ToolSpec]:
        """The specs of all tools, in registration order (what the prompt's `# Tools` lists)."""
        return [t.spec for t in self._tools.values()]

    def argument_problems(self, call: ToolCall) -> list[str]:
        """Why `call`'s arguments do not fit its tool's schema, one line each (empty: they fit).

        Runs in the calling thread, for at most a couple of seconds (then that is the problem).
        """
        if call.name not in self._validators:
            return [f"there is no tool named {call.name!r}"]
        try:
            with check_budget(time.monotonic() + _SYNC_CHECK_S):
                return self._problems(call)
        except CheckStopped:
            return [
                f"the arguments could not be checked against the tool's schema within {_SYNC_CHECK_S:g} s"
            ]
        except Exception as exc:
            return [
                f"the arguments could not be checked against the tool's schema: {type(exc).__name__}: {exc}"
            ]

    def _problems(self, call: ToolCall) -> list[str]:
        return schema_problems(self._validators[call.name], call.arguments, limit=self.max_errors)

    async def call(
        self,
        call: ToolCall,
        context: ToolContext | None = None,
        *,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        stop: asyncio.Event | None = None,
    ) -> ToolOutput:
        """Run `call` and return its output; every failure is an `is_error=True` observation.

        The text is cut to `max_output_chars` (head and tail), whatever the tool returned, and lone
        surrogates in it become U+FFFD. Setting `stop` ends the call as its time limit does (the tool
        is cancelled and given 5 s to end), but raises `ToolCallStopped`, which says whether the tool
        ended: a cancellation from outside cannot tell its canceller that.
        """
        # The tool's value is cut to what this cap can show (result_bound.py), not the default's.
        with output_limit(self.max_output_chars):
            output = await self._call(call, context, timeout=timeout, deadline=deadline, stop=stop)
        return _encodable(cap_output(output, self.max_output_chars))

    async def _call(
        self,
        call: ToolCall,
        context: ToolContext | None,
        *,
        timeout: float | None,
        deadline: Deadline | None,
        stop: asyncio.Event | None,
    ) -> ToolOutput:
        tool = self._tools.get(call.name)
        if tool is None:
            return self._unknown(call.name)

        if context is None:
            context = ToolContext(call_id=call.id)
        elif call.id and context.call_id != call.id:
            context = context.model_copy(update={"call_id": call.id})

        limit = getattr(tool, "timeout", None)
        if limit is None:
            limit = timeout if timeout is not None else self.timeout
        deadline = deadline if deadline is not None else context.deadline
        if deadline is not None:
            if context.deadline is None:
                context = context.model_copy(update={"deadline": deadline})
            # A backstop: tools that clamp to the deadline themselves report before it fires.
            limit = deadline.clamp(limit)

        # On the argument checks' own threads, under the call's limit (arg_check.py): a check can be
        # slow, and on the event loop it stopped every other task and the timer.
        try:
            problems = await run_check(lambda: self._problems(call), limit=limit)
        except TimeoutError:
            return ToolOutput(
                text=f"Tool '{call.name}': its arguments could not be checked against its schema within "
                f"{limit:g} s, the time limit of the call.",
                is_error=True,
                metadata={"error": "timeout"},
            )
        except Exception as exc:  # e.g. a schema whose `$ref` fails to resolve: the run goes on
            return ToolOutput(
                text=f"Tool '{call.name}' could not check its arguments: its schema is broken "
                f"({type(exc).__name__}: {str(exc)[:300]}). Try another tool or approach.",
                is_error=True,
                metadata={"error": "bad_schema"},
            )
        if problems:
            return ToolOutput(
                text=f"Invalid arguments for tool '{call.name}':\n" + "\n".join(f"- {p}" for p in problems),
                is_error=True,
                metadata={"error": "invalid_arguments"},
            )
        if deadline is not None:
            limit = deadline.clamp(limit)  # the check took some of it
        if stop is not None and stop.is_set():  # stopped while its arguments were checked
            raise ToolCallStopped(call.name, left_running=False, started=False)
        task = asyncio.ensure_future(_contained(tool, call.arguments, context))
        stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            # not asyncio.wait_for: it waits, without end, for a tool that swallows its cancellation
            await asyncio.wait(
                {task} if stopping is None else {task, stopping},
                timeout=limit,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            await _stop(task)
            raise
        finally:
            if stopping is not None:
                stopping.cancel()
        if not task.done():
            ended = await _stop(task)
            in_thread = ended and left_a_thread(task)  # its task ended, its sync function runs on
            if stop is not None and stop.is_set():  # also when it was set during the clean-up's wait
                raise ToolCallStopped(call.name, left_running=in_thread or not ended, in_thread=in_thread)
            if in_thread:
                fate = f"; {LEFT_IN_THREAD}."
            else:
                fate = " and was cancelled." if ended else f"; {LEFT_RUNNING}."
            return ToolOutput(
                text=f"Tool '{call.name}' timed out after {limit:g} s{fate}",
                is_error=True,
                metadata={"error": "timeout"},
            )
        if task.cancelled():
            # Only `_stop` cancels the task, and not on this path: the tool's own await ended in
            # CancelledError (a shared future someone else cancelled). Re-raised, it would read as
            # this call being cancelled, and nobody is waiting for that.
            return ToolOutput(
                text=f"Tool '{call.name}' raised CancelledError: something it awaited was cancelled "
                "(the tool itself was not).",
                is_error=True,
                metadata={"error": "exception", "exception_type": "CancelledError"},
            )
        try:
            result = task.result()
        except ToolArgumentsError as exc:
            return ToolOutput(
                text=f"Invalid arguments for tool '{call.name}':\n{_message(exc)}",
                is_error=True,
                metadata={"error": "invalid_arguments"},
            )
        except UnserialisableResult as exc:  # a FunctionTool's value, converted in its own thread
            return _unserialisable(call.name, exc.__cause__ or exc)
        # The tool's own failure, reported to the model instead of ending the run. Any BaseException:
        # the task was not cancelled (checked above), so whatever it ended in came from the tool, and
        # one that is not an Exception (pytest's Failed, trio's Cancelled, a library's `Abort`) would
        # otherwise leave `call`, documented never to raise for a tool's failure.
        except BaseException as caught:
            failure: BaseException = caught.original if isinstance(caught, _ToolExit) else caught
            # traceback prints an exception whose __str__ raises as "<exception str() failed>"
            tail = traceback.format_exception(failure)
            short = "".join(tail).rstrip().splitlines()[-_TRACEBACK_LINES:]
            return ToolOutput(
                text=f"Tool '{call.name}' raised {describe_exception(failure)}\nTraceback (last lines):\n"
                + "\n".join(short),
                is_error=True,
                metadata={"error": "exception", "exception_type": type(failure).__name__},
            )
        try:
            output = to_tool_output(result)
        except Exception as exc:
            return _unserialisable(call.name, exc)
        return _checked(call.name, output)

    def _unknown(self, name: str) -> ToolOutput:
        available = list(self._tools)
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        text = f"Unknown tool '{name}'."
        if close:
            text += " Did you mean: " + ", ".join(close) + "?"
        text += " Available tools: " + (", ".join(available) if available else "none") + "."
        return ToolOutput(text=text, is_error=True, metadata={"error": "unknown_tool"})
