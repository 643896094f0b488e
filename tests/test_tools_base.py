"""Typed tools (`@tool`, `FunctionTool.from_model`) and the `ToolRegistry`."""

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from jsonschema import Draft202012Validator
from loop_watch import watch_loop
from pydantic import BaseModel, ConfigDict, Field

from qwq_agent.agent.messages import ToolCall, ToolSpec
from qwq_agent.protocols import Tool, ToolContext, ToolOutput
from qwq_agent.tools.base import FunctionTool, ToolArgumentsError, parse_docstring, to_tool_output, tool
from qwq_agent.tools.registry import ToolRegistry


class Location(BaseModel):
    """A place on Earth."""

    lat: float
    lon: float
    label: str | None = None


@tool
def search(
    ctx: ToolContext,
    query: str,
    mode: Literal["fast", "deep"] = "fast",
    limit: int | None = None,
    tags: list[str] | None = None,
    near: Location | None = None,
) -> dict:
    """Search the index.

    Returns the best hits first.

    Args:
        query: What to look for.
        mode (str): How hard to look;
            deep is slower.
        limit: At most this many hits.

    Returns:
        The hits.
    """
    return {"query": query, "mode": mode, "limit": limit, "call_id": ctx.call_id, "near": near}


@tool(name="multiply", description="Multiply two numbers.")
async def mul(a: int, b: float = 2.0) -> float:
    """Numpy-style docstring.

    Parameters
    ----------
    a : int
        The first factor.
    b : float
        The second factor.
    """
    return a * b


class Ticket(BaseModel):
    """Open a support ticket."""

    title: str = Field(description="One line summary.")
    priority: Literal["low", "high"] = "low"


def open_ticket(ticket: Ticket) -> str:
    return f"opened {ticket.title!r} ({ticket.priority})"


# -- schemas ---------------------------------------------------------------------------------------


def test_schema_from_type_hints_and_docstring():
    spec = search.spec
    assert spec.name == "search"
    assert spec.description == "Search the index.\n\nReturns the best hits first."
    params = spec.parameters
    Draft202012Validator.check_schema(params)
    assert params["required"] == ["query"]
    assert "ctx" not in params["properties"]  # the context is injected, never shown
    props = params["properties"]
    assert props["query"] == {"type": "string", "description": "What to look for."}
    assert props["mode"]["enum"] == ["fast", "deep"] and props["mode"]["default"] == "fast"
    assert props["mode"]["description"] == "How hard to look; deep is slower."
    assert props["limit"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    assert props["limit"]["description"] == "At most this many hits."
    assert {"type": "array", "items": {"type": "string"}} in props["tags"]["anyOf"]
    assert params["$defs"]["Location"]["required"] == ["lat", "lon"]
    assert params["additionalProperties"] is False
    assert "title" not in params and "title" not in props["query"]


def test_decorator_with_arguments_and_numpy_docstring():
    assert mul.spec.name == "multiply"
    assert mul.spec.description == "Multiply two numbers."
    props = mul.spec.parameters["properties"]
    assert props["a"]["description"] == "The first factor."
    assert props["b"] == {"type": "number", "default": 2.0, "description": "The second factor."}


def test_parse_docstring_google_with_types_and_continuations():
    desc, args = parse_docstring(
        """Do a thing.

        Args:
            path (str): Where.
            *names: Which
                ones.
        Raises:
            ValueError: never an argument.
        """
    )
    assert desc == "Do a thing."
    assert args == {"path": "Where.", "names": "Which ones."}


def test_single_model_argument_is_flattened():
    t = tool(open_ticket)
    params = t.spec.parameters
    assert set(params["properties"]) == {"title", "priority"}
    assert params["properties"]["title"]["description"] == "One line summary."
    assert t.spec.description == "Open a support ticket."


def test_function_tools_satisfy_the_protocol():
    assert isinstance(search, Tool) and isinstance(FunctionTool.from_model(Ticket, open_ticket), Tool)


# -- calling ---------------------------------------------------------------------------------------


async def test_sync_tool_gets_context_and_nested_models():
    out = await search({"query": "q", "near": {"lat": 1.5, "lon": 2}}, ToolContext(call_id="c7"))
    assert out.is_error is False
    assert '"call_id": "c7"' in out.text
    assert '"near": {"lat": 1.5, "lon": 2.0, "label": null}' in out.text


async def test_sync_tools_run_off_the_event_loop():
    seen = {}

    @tool
    def where() -> str:
        seen["thread"] = threading.current_thread()
        return "ok"

    assert (await where({}, ToolContext())).text == "ok"
    assert seen["thread"] is not threading.main_thread()


async def test_async_tool_and_defaults():
    out = await mul({"a": 3}, ToolContext())
    assert out.text == "6.0"


async def test_from_model_sync_and_async_with_context():
    t = FunctionTool.from_model(Ticket, open_ticket, name="ticket")
    assert t.spec.name == "ticket"
    assert (await t({"title": "Disk full"}, ToolContext())).text == "opened 'Disk full' (low)"

    async def with_ctx(ctx: ToolContext, ticket: Ticket) -> str:
        return f"{ctx.run_id}:{ticket.priority}"

    t2 = FunctionTool.from_model(Ticket, with_ctx)
    assert (await t2({"title": "x", "priority": "high"}, ToolContext(run_id="r1"))).text == "r1:high"


def test_return_values_are_converted():
    out = ToolOutput(text="img", images=["AAAA"])
    assert to_tool_output(out) is out
    assert to_tool_output("plain").text == "plain"
    assert to_tool_output({"a": [1, "é"]}).text == '{"a": [1, "é"]}'
    assert to_tool_output(Location(lat=1, lon=2)).text == '{"lat": 1.0, "lon": 2.0, "label": null}'
    assert to_tool_output(dt.date(2026, 1, 2)).text == '"2026-01-02"'
    assert to_tool_output(None).text == "null"


async def test_direct_call_with_bad_arguments_raises_argument_error():
    with pytest.raises(ToolArgumentsError, match="query"):
        await search({}, ToolContext())


# -- registry --------------------------------------------------------------------------------------


@tool
def fail(message: str) -> str:
    """Always fails."""
    raise ValueError(f"bad input: {message}")


@tool(timeout=0.05)
async def slow() -> str:
    await asyncio.sleep(5)
    return "never"


def registry() -> ToolRegistry:
    return ToolRegistry([search, mul, fail, slow, tool(open_ticket)])


def test_specs_in_order_and_duplicates_rejected():
    reg = registry()
    assert [s.name for s in reg.specs()] == ["search", "multiply", "fail", "slow", "open_ticket"]
    assert "search" in reg and len(reg) == 5 and reg.get("nope") is None
    with pytest.raises(ValueError, match="already registered"):
        reg.add(search)


async def test_registry_runs_a_valid_call_with_the_call_id():
    out = await registry().call(ToolCall(id="call_3", name="search", arguments={"query": "x"}))
    assert not out.is_error and '"call_id": "call_3"' in out.text


async def test_unknown_tool_lists_available_and_close_matches():
    out = await registry().call(ToolCall(id="c", name="serach", arguments={}))
    assert out.is_error
    assert "Unknown tool 'serach'" in out.text
    assert "Did you mean: search?" in out.text
    assert "search, multiply, fail, slow, open_ticket" in out.text


async def test_all_argument_errors_are_reported_with_paths_expected_and_given():
    args = {"query": 3, "mode": "fastest", "limit": "5", "extra": True, "near": {"lat": "north"}}
    out = await registry().call(ToolCall(name="search", arguments=args))
    assert out.is_error and out.metadata["error"] == "invalid_arguments"
    lines = out.text.splitlines()
    assert lines[0] == "Invalid arguments for tool 'search':"
    assert "- $: unexpected argument(s) 'extra'; allowed: limit, mode, near, query, tags" in lines
    assert "- $.query: expected string, got 3" in lines
    assert '- $.mode: expected one of "fast", "deep", got "fastest"' in lines
    assert '- $.limit: expected integer or null, got "5"' in lines  # not coerced to 5
    assert '- $.near.lat: expected number, got "north"' in lines
    assert "- $.near.lon: missing required argument (expected number)" in lines


async def test_missing_required_argument_and_error_cap():
    reg = ToolRegistry([search], max_errors=2)
    out = await reg.call(ToolCall(name="search", arguments={"mode": 1, "limit": "x", "tags": 5}))
    assert out.is_error
    assert out.text.count("\n- $") == 2
    assert out.text.endswith("\n- ... and 2 more")
    assert "expected string, got 1" not in out.text  # one line for mode (the enum), not two
    out = await reg.call(ToolCall(name="search", arguments={}))
    assert "- $.query: missing required argument (expected string)" in out.text


async def test_nested_unknown_keys_are_reported_not_dropped():
    out = await registry().call(
        ToolCall(name="search", arguments={"query": "q", "near": {"lat": 1, "lon": 2, "x": 0}})
    )
    assert out.is_error and "'x'" in out.text


async def test_exception_becomes_an_error_observation():
    out = await registry().call(ToolCall(name="fail", arguments={"message": "boom"}))
    assert out.is_error and out.metadata["exception_type"] == "ValueError"
    assert out.text.startswith("Tool 'fail' raised ValueError: bad input: boom")
    assert "Traceback (last lines):" in out.text and 'raise ValueError(f"bad input: {message}")' in out.text


async def test_timeouts_per_tool_and_per_registry():
    out = await registry().call(ToolCall(name="slow", arguments={}))
    assert out.is_error and out.metadata["error"] == "timeout"
    assert "timed out after 0.05 s" in out.text

    async def sleepy() -> str:
        await asyncio.sleep(5)
        return "never"

    reg = ToolRegistry([tool(sleepy)], timeout=0.05)
    assert (await reg.call(ToolCall(name="sleepy", arguments={}))).metadata["error"] == "timeout"
    reg = ToolRegistry([tool(sleepy)], timeout=None)
    out = await reg.call(ToolCall(name="sleepy", arguments={}), timeout=0.05)
    assert out.is_error and "0.05 s" in out.text


async def test_third_party_tool_returning_plain_values_is_normalised():
    class Echo:
        uses_sandbox = False

        spec = FunctionTool(lambda text: text, name="echo").spec

        async def __call__(self, arguments, context):
            return {"echo": arguments["text"], "call": context.call_id}

    reg = ToolRegistry([Echo()])
    out = await reg.call(ToolCall(id="c1", name="echo", arguments={"text": "hi"}))
    assert out == ToolOutput(text='{"echo": "hi", "call": "c1"}')


def test_registry_rejects_an_invalid_schema():
    class Broken:
        uses_sandbox = False

        spec = FunctionTool(lambda: None, name="broken").spec.model_copy(update={"parameters": {"type": 5}})

        async def __call__(self, arguments, context):
            return ToolOutput(text="")

    with pytest.raises(Exception, match="5"):
        ToolRegistry([Broken()])


def test_annotated_field_descriptions_and_sphinx_numpy_docstrings():
    from typing import Annotated

    from pydantic import Field

    def convert(
        amount: Annotated[float, Field(description="How much, in the source currency.", gt=0)],
        currency: str = "EUR",
        when: str | None = None,
    ) -> str:
        """Convert money.

        :param amount: overridden by the Annotated description
        :param currency: ISO 4217 code
            of the target.
        :param str when: a date
        """
        return ""

    props = tool(convert).spec.parameters["properties"]
    assert tool(convert).spec.description == "Convert money."
    assert props["amount"]["description"] == "How much, in the source currency."
    assert props["amount"]["exclusiveMinimum"] == 0
    assert props["currency"]["description"] == "ISO 4217 code of the target."
    assert props["when"]["description"] == "a date"

    desc, args = parse_docstring(
        """Sum numbers.

        Parameters
        ----------
        x : int
            The first
            number.
        *rest
            Others.

        Returns
        -------
        int
        """
    )
    assert desc == "Sum numbers." and args == {"x": "The first number.", "rest": "Others."}


async def test_a_value_equal_to_the_documented_default_is_accepted():
    @tool
    def grep(pattern: str, path: str = None, limit: int = 10) -> str:  # type: ignore[assignment]  # noqa: RUF013
        """Grep.

        Args:
            pattern: what
            path: where (default: everywhere)
            limit: at most this many
        """
        return f"{pattern} in {path or 'everywhere'} ({limit})"

    schema = grep.spec.parameters["properties"]["path"]
    assert schema["type"] == "string" and schema["default"] is None  # the type leaves null out
    reg = ToolRegistry([grep])
    out = await reg.call(ToolCall(id="1", name="grep", arguments={"pattern": "x", "path": None, "limit": 10}))
    assert not out.is_error and out.text == "x in everywhere (10)"
    # Anything else still has to fit the type: a number, or true for an integer default.
    for bad in ({"path": 3}, {"limit": True}, {"limit": None}):
        out = await reg.call(ToolCall(id="2", name="grep", arguments={"pattern": "x", **bad}))
        assert out.is_error, bad


async def test_a_third_party_schema_documenting_a_default_outside_its_type_is_honoured():
    class Lookup:
        uses_sandbox = False

        spec = ToolSpec(
            name="lookup",
            description="look up",
            parameters={
                "type": "object",
                "properties": {"key": {"type": "string"}, "lang": {"type": "string", "default": None}},
                "required": ["key"],
                "additionalProperties": False,
            },
        )

        async def __call__(self, arguments, context):
            return ToolOutput(text=repr(arguments.get("lang")))

    reg = ToolRegistry([Lookup()])
    out = await reg.call(ToolCall(id="1", name="lookup", arguments={"key": "k", "lang": None}))
    assert not out.is_error and out.text == "None"
    out = await reg.call(ToolCall(id="2", name="lookup", arguments={"key": None}))
    assert out.is_error  # no default documented for key


async def test_model_tools_accept_their_documented_default():
    from qwq_agent.tools.base import ModelTool

    class Find(ModelTool):
        name = "find"
        description = "find"

        class Args(BaseModel):
            query: str
            lang: str = None  # type: ignore[assignment]

        async def run(self, args, context):
            return ToolOutput(text=f"{args.query}/{args.lang}")

    out = await ToolRegistry([Find()]).call(
        ToolCall(id="1", name="find", arguments={"query": "q", "lang": None})
    )
    assert not out.is_error and out.text == "q/None"


async def test_a_tool_exiting_becomes_an_error_observation_not_the_end_of_the_process():
    def exits(code: int) -> str:
        """Calls sys.exit, as argparse does on a bad flag."""
        raise SystemExit(code)

    def interrupted() -> str:
        """Raises KeyboardInterrupt in its worker thread."""
        raise KeyboardInterrupt

    async def exits_async() -> str:
        """Calls sys.exit on the event loop."""
        raise SystemExit(3)

    reg = ToolRegistry([tool(exits), tool(interrupted), tool(exits_async)])
    out = await reg.call(ToolCall(name="exits", arguments={"code": 2}))
    assert out.is_error and out.text.startswith("Tool 'exits' raised SystemExit: 2")
    assert out.metadata["exception_type"] == "SystemExit"
    out = await reg.call(ToolCall(name="interrupted", arguments={}))
    assert out.is_error and out.metadata["exception_type"] == "KeyboardInterrupt"
    out = await reg.call(ToolCall(name="exits_async", arguments={}))
    assert out.is_error and out.text.startswith("Tool 'exits_async' raised SystemExit: 3")


async def test_a_tool_whose_own_await_was_cancelled_by_someone_else_is_an_error_observation():
    async def shared_result() -> str:
        """Waits on a future another user of it cancels."""
        shared = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(shared.cancel)
        return str(await shared)

    reg = ToolRegistry([tool(shared_result)])
    call = asyncio.ensure_future(reg.call(ToolCall(name="shared_result", arguments={})))
    done, _ = await asyncio.wait({call}, timeout=10)  # watches without cancelling anything
    assert done and not call.cancelled(), "the tool's CancelledError escaped the registry as its own"
    out = call.result()
    assert out.is_error and out.text.startswith("Tool 'shared_result' raised CancelledError")
    assert out.metadata["exception_type"] == "CancelledError"


async def test_a_tool_swallowing_its_cancellation_cannot_hold_the_call_past_its_limit(monkeypatch):
    import qwq_agent.tools.registry as registry_module

    monkeypatch.setattr(registry_module, "_CANCEL_GRACE_S", 0.1)
    release = asyncio.Event()

    async def stubborn() -> str:
        """Ignores cancellation until released."""
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass
        return "late"

    reg = ToolRegistry([tool(stubborn)], timeout=0.1)
    call = asyncio.ensure_future(reg.call(ToolCall(name="stubborn", arguments={})))
    done, _ = await asyncio.wait({call}, timeout=5)  # asyncio.wait never cancels: it only watches
    try:
        assert done, "the call waited on a tool that ignores cancellation"
        out = call.result()
        assert out.is_error and out.metadata["error"] == "timeout"
        assert "ignored cancellation" in out.text
        # a cancellation from outside (the run's deadline) ends the call too
        outer = asyncio.ensure_future(reg.call(ToolCall(name="stubborn", arguments={}), timeout=None))
        await asyncio.sleep(0)
        outer.cancel()
        done, _ = await asyncio.wait({outer}, timeout=5)
        assert done and outer.cancelled()
    finally:
        release.set()


async def test_every_tool_output_is_capped_by_the_registry() -> None:
    @tool
    def log(n: int) -> str:
        """Return a long log."""
        return "head " + "." * n + " tail"

    @tool
    def explode() -> str:
        """Fail with a long message."""
        raise RuntimeError("y" * 1_000_000)

    registry = ToolRegistry([log, explode], max_output_chars=1_000)
    short = await registry.call(ToolCall(id="1", name="log", arguments={"n": 10}))
    assert short.text == "head .......... tail" and "chars_omitted" not in short.metadata
    long = await registry.call(ToolCall(id="2", name="log", arguments={"n": 100_000}))
    assert long.text.startswith("head ") and long.text.endswith(" tail")
    assert (
        "[... 99010 chars omitted from the middle ...]" in long.text
        and long.metadata["chars_omitted"] == 99_010
    )
    failed = await registry.call(ToolCall(id="3", name="explode", arguments={}))
    assert failed.is_error and len(failed.text) < 1_100


class _Abort(BaseException):
    """A library's own BaseException (pytest's Failed, trio's Cancelled), not an Exception."""


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise TypeError("no message to show")


async def test_a_tool_raising_any_base_exception_is_an_error_observation():
    def aborts() -> str:
        """Bails out with a BaseException in its worker thread."""
        raise _Abort("bailed out")

    async def aborts_async() -> str:
        """Bails out with a BaseException on the event loop."""
        raise _Abort("bailed out here")

    reg = ToolRegistry([tool(aborts), tool(aborts_async)])
    out = await reg.call(ToolCall(name="aborts", arguments={}))
    assert out.is_error and out.text.startswith("Tool 'aborts' raised _Abort: bailed out")
    assert out.metadata["exception_type"] == "_Abort"
    out = await reg.call(ToolCall(name="aborts_async", arguments={}))
    assert out.is_error and out.text.startswith("Tool 'aborts_async' raised _Abort: bailed out here")


async def test_a_tool_exception_that_cannot_print_itself_is_reported_by_its_type():
    def fails() -> str:
        """Raises an exception whose __str__ raises."""
        raise _Unprintable()

    out = await ToolRegistry([tool(fails)]).call(ToolCall(name="fails", arguments={}))
    assert out.is_error and out.text.startswith("Tool 'fails' raised _Unprintable\n")
    assert out.metadata["exception_type"] == "_Unprintable"


async def test_a_slow_argument_check_leaves_the_event_loop_free_and_ends_at_the_time_limit():
    import time

    from qwq_agent.tools.arg_check import CHECK_THREADS

    # Each level of this schema tries both branches of its `anyOf` when the first fails, and every
    # leaf fails: 2**24 evaluations for an array nested 24 deep, minutes of checking. The check ran on
    # the event loop before the timed part of the call (nothing else ran, the limit could not fire),
    # then in a worker thread that ran on after the call gave up. Now it runs on the checks' own
    # threads under the call's limit, and is stopped at its next keyword when the call gives up.
    nest = {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/nest"}, {"$ref": "#/$defs/nest"}]}}
    parameters = {"type": "object", "properties": {"rows": {"$ref": "#/$defs/nest"}}, "$defs": {"nest": nest}}

    class Store:
        uses_sandbox = False
        spec = ToolSpec(name="store", description="Store rows.", parameters=parameters)

        async def __call__(self, arguments, context):
            return ToolOutput(text="stored")

    rows: list = [0]
    for _ in range(24):
        rows = [rows]
    registry = ToolRegistry([Store()], timeout=0.5)
    started = time.monotonic()
    # more slow calls than the checks have threads: each is given up on at its limit
    calls = asyncio.gather(
        *(registry.call(ToolCall(name="store", arguments={"rows": rows})) for _ in range(CHECK_THREADS + 1))
    )
    # The loop is free while they are checked: a short sleep, due long before any call's limit, ends
    # while every call is still being checked (on the loop itself, the check would have run first).
    await asyncio.sleep(0.05)
    assert not calls.done()
    outs = await calls
    took = time.monotonic() - started
    for out in outs:
        assert out.is_error and out.metadata["error"] == "timeout", out.text
        assert "could not be checked" in out.text and "0.5 s" in out.text
    assert took < 30, took  # a bound on runaway work (the limit's 0.5 s expected), not a measurement
    # The abandoned checks stopped: the threads are free for the next call.
    quick = await ToolRegistry([Store()], timeout=2).call(ToolCall(name="store", arguments={"rows": [[]]}))
    assert quick.text == "stored"


class _Tagged:
    """A tool whose schema is given; it answers "tagged" when its arguments got through."""

    uses_sandbox = False

    def __init__(self, parameters: dict) -> None:
        self.spec = ToolSpec(name="tagged", description="Tag a word.", parameters=parameters)

    async def __call__(self, arguments, context):
        return ToolOutput(text="tagged")


async def test_schema_patterns_are_enforced_with_python_semantics_on_any_text():
    # RE2 (round 1) skipped every `pattern` on a text with one non-ASCII character, could not compile
    # `\uXXXX` or `{1,4096}` (so those were not enforced at all), and its `\s` has no `\v`. The
    # patterns run on `regex` now, Python's dialect, with ECMA's `$` (the very end of the text).
    properties = {
        "name": {"type": "string", "pattern": "^[a-z0-9_-]+$"},
        "header": {"type": "string", "pattern": "^[\\u0020-\\u007e]+$"},
        "line": {"type": "string", "pattern": "^[^\\n]{1,4096}$"},
        "token": {"type": "string", "pattern": r"^\S+$"},
        "blank": {"type": "string", "pattern": r"^\s*$"},
        "word": {"type": "string", "pattern": r"^\w+$"},
        "code": {"type": "string", "pattern": r"^(?=.*\d)\w+$"},  # lookahead: RE2 had none
        "emoji": {"type": "string", "pattern": "^\\u{1F600}+$"},  # ECMA's braced escape
        "letters": {"type": "string", "pattern": r"^\p{L}+$"},
    }
    reg = ToolRegistry([_Tagged({"type": "object", "properties": properties})])

    async def check(**arguments: str) -> str:
        return (await reg.call(ToolCall(name="tagged", arguments=arguments))).text

    for refused in (
        {"name": "../../etc/passwd\u00e9"},
        {"name": "ok\n; rm -rf ~ #\u00e9"},
        {"name": "ok\n"},  # Python's `$` also matches before a final newline; ECMA's does not
        {"header": "x\r\nSet-Cookie: pwned=1"},
        {"line": "one\ntwo"},
        {"line": "x" * 4097},
        {"token": "rm\x0b-rf"},
        {"code": "no digits"},
        {"emoji": "\U0001f600x"},
        {"letters": "abc1"},
        {"word": "\ud800"},  # a lone surrogate (RE2 could not read it: no check at all)
    ):
        (key,) = refused
        text = await check(**refused)
        assert text.startswith(f"Invalid arguments for tool 'tagged':\n- $.{key}: "), (refused, text)
    for accepted in (
        {"name": "notes_1"},
        {"header": "text/plain; q=1"},
        {"line": "x" * 4096},
        {"blank": "\x0b \t"},
        {"word": "café"},  # Python's (and pydantic's) \w is Unicode
        {"code": "abc1"},
        {"emoji": "\U0001f600\U0001f600"},
        {"letters": "Straße"},
    ):
        assert await check(**accepted) == "tagged", accepted


async def test_a_pattern_that_runs_out_of_time_refuses_the_call_and_leaves_the_loop_free():
    import time

    # `^(a|a)*$` backtracks through 2**40 paths on 40 `a`s and a `!`. Each match has a time limit;
    # running out of it is a refusal that says so, never a pass: not even under `not`, where a
    # failed subschema is what lets a value through.
    slow = "^(a|a)*$"
    reg = ToolRegistry(
        [
            _Tagged(
                {
                    "type": "object",
                    "properties": {
                        "word": {"type": "string", "pattern": slow},
                        "free": {"type": "string", "not": {"pattern": slow}},
                    },
                    "patternProperties": {slow: {"type": "string"}},
                    "additionalProperties": False,
                }
            )
        ],
        timeout=30,
    )
    hostile = "a" * 40 + "!"
    async with watch_loop() as watch:
        started = time.monotonic()
        value = await reg.call(ToolCall(name="tagged", arguments={"word": hostile}))
        denied = await reg.call(ToolCall(name="tagged", arguments={"free": hostile}))
        name = await reg.call(ToolCall(name="tagged", arguments={hostile: "x"}))
        took = time.monotonic() - started
    for out, where in ((value, "$.word: the value"), (denied, "$.free: the value")):
        assert out.metadata["error"] == "invalid_arguments", out.text
        assert f'{where} could not be checked against the tool\'s pattern "^(a|a)*$" in time' in out.text
        assert "send a shorter value" in out.text
    assert name.metadata["error"] == "invalid_arguments", name.text
    assert 'the argument name "aaaa' in name.text and "send a shorter name" in name.text, name.text
    # Bounds a loaded machine cannot reach and the old code passed by far (minutes a match).
    assert took < 30 and watch.longest < 5.0, (took, watch.longest)
    assert (await reg.call(ToolCall(name="tagged", arguments={"word": "aaaa", "free": "b"}))).text == "tagged"


async def test_unevaluated_properties_names_are_matched_off_the_gil():
    import time

    # jsonschema's unevaluatedProperties matched `patternProperties` names with Python's `re`, holding
    # the GIL: a 26-character name froze the event loop ~4 s (34: minutes), whatever the time limit.
    words = r"^(\w+\s?)*$"
    schema = {
        "type": "object",
        "patternProperties": {words: {"type": "string"}},
        "unevaluatedProperties": False,
    }
    reg = ToolRegistry([_Tagged(schema)], timeout=1.0)
    async with watch_loop() as watch:
        started = time.monotonic()
        out = await reg.call(ToolCall(name="tagged", arguments={"a" * 30 + "!": "x"}))
        took = time.monotonic() - started
    # Bounds a loaded machine cannot reach and the old code passed by far (4 s at 26 characters, about
    # a minute at these 31).
    assert watch.longest < 5.0 and took < 30, (watch.longest, took)
    assert (
        out.metadata["error"] == "invalid_arguments" and "Unevaluated properties are not allowed" in out.text
    )
    assert (await reg.call(ToolCall(name="tagged", arguments={"two words": "x"}))).text == "tagged"


def test_a_pattern_that_does_not_compile_refuses_the_tool_at_load():
    # An enforced check or none at all: a tool whose pattern cannot be compiled is not offered with
    # the check silently off (what RE2 did for `\uXXXX`); ToolRegistry.add says which tool and where.
    for pattern in ("[a-", r"(?<x>a)\k<x>"):
        with pytest.raises(ValueError, match=r"tool 'tagged': invalid schema at \$\.properties\.p\.pattern"):
            ToolRegistry(
                [_Tagged({"type": "object", "properties": {"p": {"type": "string", "pattern": pattern}}})]
            )
    with pytest.raises(ValueError, match=r"tool 'tagged': invalid schema at \$\.patternProperties"):
        ToolRegistry([_Tagged({"type": "object", "patternProperties": {"(": {}}})])


async def test_unique_items_is_linear_with_jsonschemas_equality():
    from jsonschema import Draft202012Validator

    # jsonschema compares items that do not sort (objects) pairwise: 20,000 rows were minutes of
    # checking, a timeout at best. Each item's canonical key goes into a set now.
    schema = {"type": "object", "properties": {"rows": {"type": "array", "uniqueItems": True}}}
    reg = ToolRegistry([_Tagged(schema)], timeout=5)
    rows = [{"k": i, "tags": ["a", i]} for i in range(20_000)]
    out = await reg.call(ToolCall(name="tagged", arguments={"rows": rows}))
    assert out.text == "tagged", out.text
    out = await reg.call(ToolCall(name="tagged", arguments={"rows": [*rows, {"tags": ["a", 7], "k": 7.0}]}))
    assert "$.rows: has non-unique elements: item 20000 equals item 7" in out.text, out.text
    reference = Draft202012Validator({"uniqueItems": True})
    for items in (
        [1, 1.0],
        [True, 1],
        [False, 0, None, ""],
        [{"a": 1}, {"a": 1.0}],
        [{"a": [1, {"b": True}]}, {"a": [1, {"b": 1}]}],
        [[1], [True]],
        ["1", 1],
        [None, None],
        [{"a": 1, "b": 2}, {"b": 2, "a": 1}],
        [[], {}],
        [0.5, 0.25, 0.5],
    ):
        ours = await reg.call(ToolCall(name="tagged", arguments={"rows": items}))
        assert (ours.text == "tagged") == reference.is_valid(items), items


async def test_argument_checks_run_on_their_own_threads_not_the_default_executor():
    import concurrent.futures

    # Checks the registry gave up on kept running in asyncio's default executor: one turn of slow
    # checks left no thread there for DNS (`getaddrinfo`, fetch_url's resolver) or anyone else.
    used: list[object] = []

    class Watched(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            used.append(fn)
            return super().submit(fn, *args, **kwargs)

    loop = asyncio.get_running_loop()
    loop.set_default_executor(Watched(max_workers=2))
    schema = {"type": "object", "properties": {"rows": {"type": "array", "uniqueItems": True}}}
    reg = ToolRegistry([_Tagged(schema)], timeout=5)
    rows = [{"k": i} for i in range(6_000)]
    outs = await asyncio.gather(
        *(reg.call(ToolCall(id=f"s{i}", name="tagged", arguments={"rows": rows})) for i in range(8))
    )
    assert [o.text for o in outs] == ["tagged"] * 8
    assert used == []
    await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 3)  # the pool is free for DNS


async def test_arguments_too_large_to_check_are_refused_before_the_check():
    from qwq_agent.tools.arg_check import MAX_ARGUMENT_CHARS

    reg = ToolRegistry([_Tagged({"type": "object", "properties": {"s": {"type": "string"}}})])
    out = await reg.call(ToolCall(name="tagged", arguments={"s": "x" * (MAX_ARGUMENT_CHARS + 1)}))
    assert out.metadata["error"] == "invalid_arguments" and "longer than" in out.text, out.text
    many = await reg.call(ToolCall(name="tagged", arguments={"s": "x", "n": [0] * MAX_ARGUMENT_CHARS}))
    assert many.metadata["error"] == "invalid_arguments" and "longer than" in many.text
    assert (await reg.call(ToolCall(name="tagged", arguments={"s": "x" * 100_000}))).text == "tagged"


def _twin_chain(levels: int, keyword: str) -> dict:
    """`$defs` d0..d{levels}: each level reaches the one below twice through `keyword` (an object of
    two keys for `dependentSchemas`, a list of two for `anyOf`), so a walk without memory is 2**levels."""
    defs: dict = {"d0": {}}
    for k in range(1, levels + 1):
        below = {"$ref": f"#/$defs/d{k - 1}"}
        defs[f"d{k}"] = {
            keyword: {"a": below, "b": below} if keyword == "dependentSchemas" else [below, below]
        }
    return defs


async def test_unevaluated_properties_walk_is_linear_in_the_schema():
    # The walk that finds the evaluated keys followed each `anyOf` branch that passes, then each `$ref`
    # below, afresh: 2**40 steps here, where jsonschema's own `anyOf` stops at the first branch that
    # passes (40 steps). It remembers each (subschema, scope) it has walked now.
    schema = {
        "unevaluatedProperties": False,  # first: keywords run in the schema's order
        "type": "object",
        "properties": {"a": {}},
        "$ref": "#/$defs/d40",
        "$defs": _twin_chain(40, "anyOf"),
    }
    reg = ToolRegistry([_Tagged(schema)], timeout=10)
    assert (await reg.call(ToolCall(name="tagged", arguments={"a": 1}))).text == "tagged"
    out = await reg.call(ToolCall(name="tagged", arguments={"a": 1, "z": 2}))
    assert "Unevaluated properties are not allowed ('z' was unexpected)" in out.text, out.text


async def test_a_given_up_unevaluated_properties_check_ends_and_frees_its_thread():
    from qwq_agent.tools.arg_check import CHECK_THREADS

    # `dependentSchemas` two keys wide, 40 deep: 2**40 steps of walking, which looked at no budget, so
    # a check given up on ran on forever. CHECK_THREADS such calls took every check thread, and every
    # later call of any tool was refused at its limit. They stop at the next step now.
    hostile = {
        "unevaluatedProperties": False,
        "type": "object",
        "properties": {"a": {}, "b": {}},
        "$ref": "#/$defs/d40",
        "$defs": _twin_chain(40, "dependentSchemas"),
    }
    reg = ToolRegistry([_Tagged(hostile)], timeout=0.3)
    outs = await asyncio.gather(
        *(
            reg.call(ToolCall(id=f"h{i}", name="tagged", arguments={"a": 1, "b": 2}))
            for i in range(CHECK_THREADS)
        )
    )
    assert all(o.metadata["error"] == "timeout" for o in outs), [o.text for o in outs]
    # Queued behind the given-up checks: it runs only once one of them has ended.
    plain = ToolRegistry([_Tagged({"type": "object", "properties": {"x": {"type": "string"}}})], timeout=5)
    assert (await plain.call(ToolCall(name="tagged", arguments={"x": "hi"}))).text == "tagged"


class Outline(BaseModel):
    """A heading and the headings under it."""

    heading: str
    below: "list[Outline]" = []


async def test_a_lone_recursive_model_parameter_gives_its_fields_as_the_arguments():
    # pydantic writes a recursive model as `{"$ref": "#/$defs/Outline", "$defs": ...}`: the arguments had
    # no properties of their own, and `additionalProperties: false` refused every call.
    @tool
    def write(outline: Outline) -> str:
        """Write an outline."""
        return f"{outline.heading}: {len(outline.below)}"

    params = write.spec.parameters
    assert set(params["properties"]) == {"heading", "below"} and params["required"] == ["heading"]
    assert params["additionalProperties"] is False and "$ref" not in params
    Draft202012Validator.check_schema(params)
    registry = ToolRegistry([write])
    arguments = {"heading": "a", "below": [{"heading": "b", "below": [{"heading": "c"}]}]}
    assert registry.argument_problems(ToolCall(id="1", name="write", arguments=arguments)) == []
    out = await registry.call(ToolCall(id="1", name="write", arguments=arguments))
    assert not out.is_error and out.text == "a: 1"
    wrong = {"heading": "a", "below": [{"title": "b"}]}
    assert registry.argument_problems(ToolCall(id="2", name="write", arguments=wrong))


# -- sync tools' threads ---------------------------------------------------------------------------

# More than asyncio's default executor ever has (min(32, cpus + 4)): hung calls used to take them all.
_HUNG_CALLS = 33


async def test_sync_tools_that_hang_past_their_limit_leave_threads_for_the_next_calls():
    """Sync tools ran in asyncio's default executor: a turn of calls hanging past their limit took its
    every thread for good, and each later sync call "timed out ... and was cancelled" without ever
    running. Now they run on threads of their own, which grow past the ones given up on."""
    from qwq_agent.agent.clients import NO_RETRY, SGLangClient
    from qwq_agent.agent.loop import Agent, AgentConfig
    from qwq_agent.testing.helpers import call
    from qwq_agent.testing.scripted_server import ScriptedModelServer

    release = threading.Event()
    stuck_threads: list[threading.Thread] = []

    @tool(timeout=0.3)
    def stuck(n: int) -> str:
        """Waits on something that does not come (a request to a stalled server, no timeout)."""
        stuck_threads.append(threading.current_thread())
        release.wait(60)  # released at the end of the test; a bound in case it is not
        return "late"

    @tool(timeout=20)
    def quick() -> str:
        """Returns at once."""
        return "ok"

    turns = [
        "Try.\n</think>\n\n" + "\n".join(call("stuck", n=i) for i in range(_HUNG_CALLS)),
        "Now the quick one.\n</think>\n\n" + call("quick"),
        "done\n</think>\n\nDone.",
    ]
    try:
        async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
            result = await Agent(client, [stuck, quick], config=AgentConfig(check_language=False)).run("go")
        assert all(t.is_alive() for t in stuck_threads)
    finally:
        release.set()
    observations = [m.content for m in result.messages if m.role == "tool"]
    assert result.status == "completed", result.error
    assert len(observations) == _HUNG_CALLS + 1 and len(stuck_threads) == _HUNG_CALLS
    for text in observations[:-1]:
        assert "timed out after 0.3 s" in text and "still running in a thread" in text, text
        assert "cancelled" not in text, text
    assert observations[-1] == "ok"
    # daemon threads: the interpreter does not wait for them at exit
    assert all(t.daemon for t in stuck_threads)


def test_a_process_whose_sync_tool_hangs_exits_when_its_run_ends(tmp_path):
    """`asyncio.run()` joins the default executor's threads when it ends: a sync tool hung past its
    limit there held the process open for ever after the run had ended."""
    import subprocess
    import sys

    script = tmp_path / "hang.py"
    script.write_text(
        "import asyncio, threading\n"
        "from qwq_agent.agent.messages import ToolCall\n"
        "from qwq_agent.tools.base import tool\n"
        "from qwq_agent.tools.registry import ToolRegistry\n"
        "@tool(timeout=0.2)\n"
        "def hang() -> str:\n"
        "    threading.Event().wait()\n"
        "    return 'never'\n"
        "async def main():\n"
        "    out = await ToolRegistry([hang]).call(ToolCall(name='hang', arguments={}))\n"
        "    print(out.text, flush=True)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "timed out after 0.2 s" in done.stdout and "still running in a thread" in done.stdout


async def test_a_sync_tools_return_value_is_serialised_off_the_event_loop():
    """A sync tool's return value (a list of 10**7 items) was turned into JSON on the event loop, before
    the output cap: every other task of the process waited for it. This value's serialisation waits
    for the loop to run a callback: on the loop itself, it cannot."""
    loop = asyncio.get_running_loop()

    class NeedsTheLoop:
        def __str__(self) -> str:  # to_jsonable_python's fallback for a value it does not know
            loop_ran = threading.Event()
            loop.call_soon_threadsafe(loop_ran.set)
            return "loop free" if loop_ran.wait(10) else "loop blocked"

    @tool
    def produce() -> list:
        """A value with no JSON form of its own."""
        return [NeedsTheLoop()]

    out = await ToolRegistry([produce]).call(ToolCall(name="produce", arguments={}))
    assert out.text == '["loop free"]'


async def test_a_sync_tools_value_that_cannot_be_serialised_is_a_bad_return():
    @tool
    def loop_back() -> list:
        """A list that holds itself."""
        looped: list = []
        looped.append(looped)
        return looped

    out = await ToolRegistry([loop_back]).call(ToolCall(name="loop_back", arguments={}))
    assert out.is_error and out.metadata["error"] == "bad_return", out.text
    assert out.text.startswith("Tool 'loop_back' returned a value that could not be serialised: ValueError")


# -- the thread pools themselves -------------------------------------------------------------------


def test_a_thread_the_os_refuses_fails_its_call_and_leaves_the_pool_whole(monkeypatch):
    """When the OS refused a thread ("can't start new thread": a pids limit, memory), the call was
    reported as failed but stayed queued and ran later anyway, and the pool kept counting the thread
    that never started: after `size` such failures no call of the process ever ran again. The OS's
    refusal is simulated (threading.Thread.start raising as it does then); the pool is real."""
    from qwq_agent.tools.daemon_threads import DaemonThreads

    pool = DaemonThreads(2, "test-refused")
    ran: list[str] = []
    real_start = threading.Thread.start

    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refused)
    failed = [pool.submit(lambda n=n: ran.append(f"failed-{n}")) for n in range(3)]
    for future in failed:
        with pytest.raises(RuntimeError, match="can't start new thread"):
            future.result(timeout=0)
    monkeypatch.setattr(threading.Thread, "start", real_start)
    after = [pool.submit(lambda n=n: ran.append(f"after-{n}")) for n in range(3)]
    for future in after:
        future.result(timeout=10)
    assert sorted(ran) == ["after-0", "after-1", "after-2"]  # the refused calls never ran


async def test_an_async_tools_value_is_not_queued_behind_the_sync_tools():
    """An async tool's value (a small dict) was serialised on the sync tools' threads: while 32 sync
    calls of the turn held them, within their limits, it waited in their queue until its own limit,
    and the model was told the call "timed out and was cancelled" although it had done its work."""
    from qwq_agent.tools.tool_threads import TOOL_THREADS

    loop = asyncio.get_running_loop()
    release = threading.Event()
    all_started = asyncio.Event()
    started: list[int] = []
    lock = threading.Lock()

    @tool(timeout=60)
    def fetch(n: int) -> str:
        """Holds a tool thread until released."""
        with lock:
            started.append(n)
            if len(started) == TOOL_THREADS:
                loop.call_soon_threadsafe(all_started.set)
        release.wait(60)
        return f"page {n}"

    @tool(timeout=10)
    async def book(room: str) -> dict:
        """Book a room."""
        return {"room": room, "status": "booked"}

    reg = ToolRegistry([fetch, book])
    fetches = [
        asyncio.create_task(reg.call(ToolCall(name="fetch", arguments={"n": n}))) for n in range(TOOL_THREADS)
    ]
    try:
        await asyncio.wait_for(all_started.wait(), 30)
        out = await reg.call(ToolCall(name="book", arguments={"room": "A"}))
    finally:
        release.set()
        pages = await asyncio.gather(*fetches)
    assert not out.is_error and out.text == '{"room": "A", "status": "booked"}', out.text
    assert [p.text for p in pages] == [f"page {n}" for n in range(TOOL_THREADS)]


async def test_a_sync_tools_long_iterator_is_cut_in_python_with_a_note():
    """A sync tool returning `itertools.repeat(0, 10**7)` was pulled whole inside pydantic-core, which
    holds the GIL: the event loop stood still for seconds. It is pulled in Python now, only as far as
    the output cap can show, and the observation says it was cut."""
    import itertools

    from qwq_agent.tools.result_bound import MAX_RESULT_ITEMS

    @tool
    def zeros() -> list:
        """Ten million zeros, lazily."""
        return itertools.repeat(0, 10**7)

    out = await ToolRegistry([zeros]).call(ToolCall(name="zeros", arguments={}))
    note = f"[output cut at {MAX_RESULT_ITEMS:,} items: the tool returned more than an output can show]"
    assert not out.is_error, out.text
    assert out.text.startswith("[0, 0, ") and out.text.endswith(", 0, 0]\n" + note), out.text[-200:]
    assert out.metadata["items_cut_at"] == MAX_RESULT_ITEMS
    # the whole of it, before the output cap cut its middle
    assert (
        to_tool_output(itertools.repeat(0, 10**7)).text
        == "[" + ", ".join(["0"] * MAX_RESULT_ITEMS) + "]\n" + note
    )


def test_values_are_cut_at_the_cap_of_items_or_of_text():
    from qwq_agent.tools.result_bound import bound_value

    def words():
        while True:
            yield "x" * 1000

    value, cut = bound_value({"a": words(), "b": [1, 2]}, max_items=10**6, max_chars=5_000)
    assert (
        cut == 6 and value == {"a": ["x" * 1000] * 5} and "b" not in value
    )  # 5,000 chars of text, then no more
    # a list too long keeps head and tail: half the room each, the last items taken first from the end
    value, cut = bound_value([[1, 2], (3, 4), {5}, {"k": iter([6, 7])}], max_items=11, max_chars=10**6)
    assert cut == 11 and value == [[1, 2], [3, 4], [], {"k": [6, 7]}]
    assert bound_value(list(range(10)), max_items=4, max_chars=10**6) == (
        [0, 1, "[6 items left out]", 8, 9],
        4,
    )
    small = {"a": [1, (2, 3)], "b": "text"}
    assert bound_value(small, max_items=100, max_chars=100)[0] is small  # nothing to cut: the same value
    assert bound_value(iter([1, 2]), max_items=2, max_chars=100) == ([1, 2], None)  # it fits exactly
    looped: list = []
    looped.append(looped)
    value, cut = bound_value(looped, max_items=100, max_chars=100)
    assert cut is None and value[0] is looped  # left for the serialiser to refuse, as before


def test_an_endless_iterator_ends_at_the_cap_instead_of_eating_memory(tmp_path):
    """A sync tool (limit 0.5 s) returning `itertools.repeat(1)` never timed out: pydantic-core pulled
    it with the GIL held, the loop (and the limit's timer) never ran again, and the process grew until
    memory ran out. Run in a child under a memory limit, so the old behaviour cannot harm the host."""
    import resource
    import subprocess
    import sys

    script = tmp_path / "endless.py"
    script.write_text(
        "import asyncio, itertools\n"
        "from qwq_agent.agent.messages import ToolCall\n"
        "from qwq_agent.tools.base import tool\n"
        "from qwq_agent.tools.registry import ToolRegistry\n"
        "@tool(timeout=30)\n"
        "def numbers() -> list:\n"
        "    'Numbers, lazily.'\n"
        "    return itertools.repeat(1)\n"
        "out = asyncio.run(ToolRegistry([numbers]).call(ToolCall(name='numbers', arguments={})))\n"
        "print(out.is_error, out.text[-80:].splitlines()[-1], flush=True)\n"
    )

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    done = subprocess.run(
        [sys.executable, str(script)], preexec_fn=limit_memory, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("False [output cut at "), done.stdout


def test_a_process_that_abandoned_a_tool_pulling_its_iterator_exits_cleanly(tmp_path):
    """A sync tool's generator over a slow source, given up on at its limit, was being pulled inside
    pydantic-core's Rust code: at interpreter exit CPython unwound that thread through Rust frames and
    the process died of SIGABRT ("FATAL: exception not rethrown") after a completed run."""
    import resource
    import subprocess
    import sys

    script = tmp_path / "pages.py"
    script.write_text(
        "import asyncio, time\n"
        "from qwq_agent.agent.messages import ToolCall\n"
        "from qwq_agent.tools.base import tool\n"
        "from qwq_agent.tools.registry import ToolRegistry\n"
        "@tool(timeout=0.5)\n"
        "def search(query: str) -> list:\n"
        "    'Results, page by page.'\n"
        "    def pages():\n"
        "        while True:\n"
        "            time.sleep(0.05)\n"
        "            yield {'hit': query}\n"
        "    return pages()\n"
        "out = asyncio.run(ToolRegistry([search]).call(ToolCall(name='search', arguments={'query': 'x'})))\n"
        "print(out.text, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "timed out after 0.5 s" in done.stdout and "still running in a thread" in done.stdout


async def test_an_abandoned_tools_iterator_is_pulled_no_further():
    """Given up on at its limit, a sync tool's endless generator was pulled on for ever in its thread."""
    gate = threading.Event()
    pulled: list[int] = []
    threads: list[threading.Thread] = []

    @tool(timeout=0.3)
    def feed() -> list:
        """An endless feed."""

        def items():
            threads.append(threading.current_thread())
            gate.wait(30)  # until the call was given up on
            n = 0
            while True:
                pulled.append(n)
                yield n
                n += 1

        return items()

    out = await ToolRegistry([feed]).call(ToolCall(name="feed", arguments={}))
    gate.set()
    assert "timed out after 0.3 s" in out.text and "still running in a thread" in out.text, out.text
    await asyncio.to_thread(threads[0].join, 30)
    assert not threads[0].is_alive()
    assert len(pulled) == 1  # the item in hand when it learnt it was abandoned


async def _stream_events(turns: list[str], tools: list, on_event) -> list:
    """The events of a real run (scripted model) of `tools`, each passed to `on_event` as it comes."""
    from qwq_agent.agent.clients import NO_RETRY, SGLangClient
    from qwq_agent.agent.loop import Agent, AgentConfig
    from qwq_agent.testing.scripted_server import ScriptedModelServer

    events = []
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, tools, config=AgentConfig(check_language=False))
        async with agent.stream("go") as stream:
            async for event in stream:
                events.append(event)
                on_event(event)
    return events


async def test_output_a_sync_tool_streams_from_its_thread_reaches_the_loop_at_once():
    """`context.on_output` called in a sync tool's thread put the delta on the loop's queue with
    `put_nowait`, which is not thread-safe: the loop, asleep, was not woken to pass it on."""
    from qwq_agent.agent.events import ToolOutputDelta
    from qwq_agent.testing.helpers import call

    seen = threading.Event()

    @tool(timeout=60)
    def chatty(context: ToolContext) -> str:
        """Reports progress, then waits until the progress was seen."""
        assert context.on_output is not None
        context.on_output("stdout", "halfway\n", False)
        return "seen" if seen.wait(20) else "not seen"

    def on_event(event) -> None:
        if isinstance(event, ToolOutputDelta) and event.text == "halfway\n":
            seen.set()

    turns = ["Go.\n</think>\n\n" + call("chatty"), "done\n</think>\n\nDone."]
    events = await _stream_events(turns, [chatty], on_event)
    results = [e.text for e in events if type(e).__name__ == "ToolResultEvent"]
    assert results == ["seen"]


async def test_output_of_a_call_already_ended_is_dropped():
    """A sync tool abandoned at its limit runs on in its thread; what it streamed then came after its
    result, as if the call were still running."""
    from qwq_agent.agent.events import ToolOutputDelta, ToolResultEvent
    from qwq_agent.testing.helpers import call

    given_up = threading.Event()
    streamed = threading.Event()

    @tool(timeout=0.3)
    def late(context: ToolContext) -> str:
        """Outlives its limit, then reports."""
        given_up.wait(20)
        assert context.on_output is not None
        context.on_output("stdout", "too late\n", False)
        streamed.set()
        return "late"

    @tool(timeout=60)
    def holder() -> str:
        """Keeps the turn's calls going until `late` has reported."""
        return "held" if streamed.wait(20) else "not held"

    def on_event(event) -> None:
        if isinstance(event, ToolResultEvent) and event.name == "late":
            given_up.set()

    turns = ["Go.\n</think>\n\n" + call("late") + "\n" + call("holder"), "done\n</think>\n\nDone."]
    events = await _stream_events(turns, [late, holder], on_event)
    results = {e.name: e.text for e in events if isinstance(e, ToolResultEvent)}
    assert results["holder"] == "held" and "timed out after 0.3 s" in results["late"]
    assert not [e for e in events if isinstance(e, ToolOutputDelta)]


def _counted(n: int, pulled: list[int]) -> Iterator[int]:
    for i in range(n):
        pulled.append(i)
        yield i


async def test_an_iterator_nested_past_the_depth_limit_is_left_out_not_pulled_whole():
    """Past 200 levels the value went to pydantic-core as it was, which pulled a generator in it whole."""
    from qwq_agent.tools.result_bound import TOO_DEEP

    pulled: list[int] = []

    @tool
    def deep() -> list:
        """Nested data."""
        value: Any = _counted(200_000, pulled)
        for _ in range(202):
            value = [value]
        return value

    out = await ToolRegistry([deep]).call(ToolCall(name="deep", arguments={}))
    assert not out.is_error and pulled == [], len(pulled)
    assert json.dumps(TOO_DEEP) in out.text


async def test_an_iterator_in_a_dataclass_or_model_is_cut_in_python_with_a_note():
    """A dataclass (or model) counted as one item and went to pydantic-core as it was: a generator in
    a field was pulled whole in Rust, no cut, no note."""
    from dataclasses import dataclass

    from qwq_agent.tools.result_bound import MAX_RESULT_ITEMS, bound_value

    @dataclass(frozen=True)
    class Page:
        title: str
        rows: Any

    class Report(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        pages: list[Page]

    pulled: list[int] = []

    @tool
    def query() -> Report:
        """All rows."""
        return Report(pages=[Page("all rows", _counted(200_000, pulled))])

    out = await ToolRegistry([query]).call(ToolCall(name="query", arguments={}))
    assert not out.is_error, out.text
    assert len(pulled) <= MAX_RESULT_ITEMS + 1  # no further than one item past the cap
    assert out.text.startswith('{"pages": [{"title": "all rows", "rows": [0, 1, 2')
    assert out.metadata["items_cut_at"] == MAX_RESULT_ITEMS
    plain = Report(pages=[Page("two", [1, 2])])
    assert bound_value(plain) == (plain, None)  # nothing to cut: the same object


async def test_the_bound_follows_the_registrys_cap_and_keeps_a_lists_tail():
    """The bound was fixed at the default cap: a raised `max_output_chars` still cut a list at 50,000
    items; and a long list lost its real tail (a log's last line, the error) to the middle of it."""

    @tool
    def numbers() -> list:
        """Numbers."""
        return list(range(60_000))

    @tool
    def log() -> list:
        """Log lines, the last one the error."""
        return [f"line {i}" for i in range(199_999)] + ["FATAL: disk full"]

    big = await ToolRegistry([numbers], max_output_chars=1_000_000).call(
        ToolCall(name="numbers", arguments={})
    )
    assert big.text == json.dumps(list(range(60_000))) and "items_cut_at" not in big.metadata
    out = await ToolRegistry([log]).call(ToolCall(name="log", arguments={}))
    assert out.text.startswith('["line 0", "line 1"'), out.text[:50]
    assert '"line 199998", "FATAL: disk full"]\n[output cut at ' in out.text, out.text[-200:]
