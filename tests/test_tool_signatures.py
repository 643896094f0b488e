"""What a `@tool` function's signature turns into: the schema the model sees, and the validation of what
it sends back, which must agree with that schema."""

from __future__ import annotations

import datetime as dt
import enum
import warnings
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.messages import ToolCall
from qwq_agent.protocols import ToolContext, ToolOutput
from qwq_agent.testing.helpers import call
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import ModelTool, ToolArgumentsError, tool
from qwq_agent.tools.registry import ToolRegistry


async def _observations(turns: list[str], tools: list[Any]) -> list[str]:
    """The tool observations of a real run whose model says `turns`."""
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        result = await Agent(client, tools, config=AgentConfig(check_language=False)).run("go")
    assert result.status == "completed", result.error
    return [m.content for m in result.messages if m.role == "tool"]


# -- Field(...) as a parameter's default ------------------------------------------------------------


async def test_a_field_default_on_a_parameter_is_that_parameters_field() -> None:
    """`limit: int = Field(10, ge=1, ...)` (pydantic's idiom for function parameters, as in
    `validate_call`) was wrapped in a second `Field(default)`: the model saw a bare integer, -7 was
    taken, and a call leaving `limit` out handed the function the FieldInfo object."""
    seen: list[Any] = []

    @tool
    def top(
        query: str,
        limit: int = Field(10, ge=1, le=100, description="how many results"),
        offset: int = Field(0, ge=0),
    ) -> str:
        """Top results.

        Args:
            query: what to rank
            offset: how many to skip
        """
        seen.append((limit, offset))
        return f"{type(limit).__name__}:{limit} from {offset}"

    props = top.spec.parameters["properties"]
    assert props["limit"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "default": 10,
        "description": "how many results",
    }
    # the docstring still describes a parameter whose Field says nothing of it
    assert props["offset"] == {
        "type": "integer",
        "minimum": 0,
        "default": 0,
        "description": "how many to skip",
    }
    assert top.spec.parameters["required"] == ["query"]

    observations = await _observations(
        [
            "Rank.\n</think>\n\n" + call("top", query="q"),
            "Fewer.\n</think>\n\n" + call("top", query="q", limit=-7),
            "done\n</think>\n\nDone.",
        ],
        [top],
    )
    assert observations[0] == "int:10 from 0"
    assert "$.limit" in observations[1] and "minimum of 1" in observations[1], observations[1]
    assert seen == [(10, 0)]
    # validated by pydantic too, for a caller that bypasses the registry's schema check
    with pytest.raises(ToolArgumentsError, match="limit"):
        await top({"query": "q", "limit": 101}, ToolContext())


async def test_annotated_field_and_plain_default_give_the_same_field() -> None:
    @tool
    def page(size: Annotated[int, Field(ge=1, description="rows per page")] = 20) -> str:
        """A page."""
        return str(size)

    assert page.spec.parameters["properties"]["size"] == {
        "type": "integer",
        "minimum": 1,
        "default": 20,
        "description": "rows per page",
    }
    assert (await page({}, ToolContext())).text == "20"
    with pytest.raises(ToolArgumentsError, match="size"):
        await page({"size": 0}, ToolContext())


def test_a_field_default_without_a_value_makes_a_required_parameter() -> None:
    @tool
    def find(pattern: str = Field(min_length=1, description="what to find")) -> str:
        """Find."""
        return pattern

    assert find.spec.parameters["required"] == ["pattern"]
    assert find.spec.parameters["properties"]["pattern"] == {
        "type": "string",
        "minLength": 1,
        "description": "what to find",
    }


# -- strict models: JSON in, the schema's JSON forms accepted ---------------------------------------


class Room(enum.Enum):
    A = "a"
    B = "b"


class Booking(BaseModel):
    """Book a room."""

    model_config = ConfigDict(strict=True)
    day: dt.date
    room: Room
    slot: tuple[int, int]


def book(args: Booking) -> str:
    return f"booked {args.room.value} on {args.day.isoformat()} at {args.slot}"


class BookRoom(ModelTool[Booking]):
    name = "book_room"
    description = "Book a room."
    Args = Booking

    async def run(self, args: Booking, context: ToolContext) -> ToolOutput:
        return ToolOutput(text=book(args))


async def test_a_strict_model_tool_takes_the_json_forms_its_schema_describes() -> None:
    """A strict model's date, Enum and tuple fields are a string, a string and an array in the schema,
    and pydantic validated the JSON arguments in Python mode, where strict wants `date`/`Room`/`tuple`
    instances: every call was refused, with pydantic's documentation URLs in the observation."""

    @tool
    def reserve(day: dt.date = Field(strict=True), room: Room = Field(strict=True)) -> str:  # noqa: B008
        """Reserve a room."""
        return f"reserved {room.value} on {day.isoformat()}"

    booking = {"day": "2025-03-01", "room": "a", "slot": [9, 10]}
    observations = await _observations(
        [
            "Book.\n</think>\n\n"
            + "\n".join(
                [
                    call("book", **booking),
                    call("book_room", **booking),
                    call("reserve", day="2025-03-02", room="b"),
                ]
            ),
            "done\n</think>\n\nDone.",
        ],
        [tool(book), BookRoom(), reserve],
    )
    assert observations == [
        "booked a on 2025-03-01 at (9, 10)",
        "booked a on 2025-03-01 at (9, 10)",
        "reserved b on 2025-03-02",
    ]


async def test_a_strict_model_still_refuses_what_its_schema_does_not_allow() -> None:
    wrong = {"day": "2025-03-01", "room": "a", "slot": ["9", "10"]}  # strings where the schema says integers
    with pytest.raises(ToolArgumentsError, match="slot") as caught:
        await tool(book)(wrong, ToolContext())
    assert "errors.pydantic.dev" not in str(caught.value)
    out = await BookRoom()(wrong, ToolContext())
    assert out.is_error and "slot" in out.text and "errors.pydantic.dev" not in out.text
    # Through the registry, pydantic's refusal (a date that does not exist, which the schema's `format`
    # does not check) reaches the model without the URLs either.
    reg = ToolRegistry([tool(book)])
    out = await reg.call(ToolCall(name="book", arguments={**wrong, "slot": [9, 10], "day": "2025-02-30"}))
    assert out.is_error and out.metadata["error"] == "invalid_arguments"
    assert "day" in out.text and "errors.pydantic.dev" not in out.text, out.text


async def test_arguments_with_no_json_text_are_still_validated_as_python_values() -> None:
    """A direct caller may pass Python objects, and a string may hold a lone surrogate: neither has a
    JSON text, and both were accepted before."""

    @tool
    def when(day: dt.date, note: str = "") -> str:
        """When."""
        return f"{day.isoformat()} {len(note)}"

    assert (await when({"day": dt.date(2025, 3, 1)}, ToolContext())).text == "2025-03-01 0"
    assert (await when({"day": "2025-03-01", "note": "a\ud800b"}, ToolContext())).text == "2025-03-01 3"
    assert (
        await tool(book)({"day": dt.date(2025, 3, 1), "room": Room.B, "slot": (1, 2)}, ToolContext())
    ).text == ("booked b on 2025-03-01 at (1, 2)")


# -- parameter names pydantic cannot hold -----------------------------------------------------------


@pytest.mark.parametrize("name", ["model_config", "_private", "model_dump"])
def test_a_parameter_name_pydantic_cannot_hold_is_refused_at_decoration(name: str) -> None:
    """A parameter named `model_config` became the arguments model's configuration: it vanished from
    the schema, and the model could never pass it."""
    namespace: dict[str, Any] = {}
    exec(f"def settings({name}: dict, level: int = 1) -> str:\n    return 'x'", namespace)
    with pytest.raises(TypeError, match=f"settings.*{name}") as caught:
        tool(namespace["settings"])
    assert "rename" in str(caught.value)


def test_parameter_names_that_shadow_model_attributes_still_work() -> None:
    namespace: dict[str, Any] = {}
    exec("def dump(json: str, schema: int = 1) -> str:\n    return json * schema", namespace)
    with pytest.warns(UserWarning):  # pydantic's note that the names shadow BaseModel's methods
        dump = tool(namespace["dump"])
    assert set(dump.spec.parameters["properties"]) == {"json", "schema"}
    assert dump.bind({"json": "ab", "schema": 2}) == {"json": "ab", "schema": 2}


# -- parameter names our own call path uses ---------------------------------------------------------


@pytest.mark.parametrize("name", ["func", "fn", "args", "kwargs", "self", "timeout", "context", "call"])
@pytest.mark.parametrize("is_async", [False, True])
async def test_a_parameter_named_like_a_call_helpers_own_reaches_the_function(
    name: str, is_async: bool
) -> None:
    """A sync tool with a parameter named `func` failed every call: the helper that runs it in its
    thread (`_call_and_convert(func, *args, **kwargs)`) took `func` as its own, "got multiple values
    for argument 'func'"."""
    namespace: dict[str, Any] = {}
    prefix = "async " if is_async else ""
    exec(
        f"{prefix}def find({name}: str, module: str = 'm') -> str:\n    return module + '.' + {name}",
        namespace,
    )
    reg = ToolRegistry([tool(namespace["find"])])
    out = await reg.call(ToolCall(name="find", arguments={name: "parse"}))
    assert not out.is_error and out.text == "m.parse", out.text


# -- parameter names that are BaseModel properties --------------------------------------------------


@pytest.mark.parametrize("name", ["model_extra", "model_fields_set", "model_fields", "model_computed_fields"])
async def test_a_parameter_named_like_a_basemodel_property_gets_the_models_value(name: str) -> None:
    """`model_extra` and `model_fields_set` were accepted and shown in the schema, but the function got
    pydantic's property (None, a set of names) instead of what the model sent, silently."""
    namespace: dict[str, Any] = {}
    exec(f"def echo({name}: str, n: int = 1) -> str:\n    return repr(({name}, n))", namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic's note that the name shadows a BaseModel attribute
        echo = tool(namespace["echo"])
    assert set(echo.spec.parameters["properties"]) == {name, "n"}
    out = await ToolRegistry([echo]).call(ToolCall(name="echo", arguments={name: "hello"}))
    assert out.text == "('hello', 1)"
    assert echo.bind({name: "hi", "n": 2}) == {name: "hi", "n": 2}


# -- a direct call's Python values -------------------------------------------------------------------


class Level(enum.IntEnum):
    LOW = 1


async def test_a_direct_calls_python_values_reach_the_function_unchanged() -> None:
    """Arguments with a JSON text were validated as that text even when they were not JSON values: a
    direct call's int dict keys became strings, a tuple under `Any` a list, an IntEnum under `Any` an
    int, and a `None` key of `dict[int | None, str]` was refused ("null" is no int)."""
    seen: list[Any] = []

    @tool
    def histogram(bins: dict, point: Any = None, tag: dict[int | None, str] | None = None) -> str:
        """Report what arrived."""
        seen.append((bins, point, tag))
        return "ok"

    await histogram({"bins": {0: 5, 10: 7}, "point": (3, 4), "tag": {1: "a", None: "n"}}, ToolContext())
    await histogram({"bins": {0: 5}, "point": Level.LOW}, ToolContext())
    assert seen[0] == ({0: 5, 10: 7}, (3, 4), {1: "a", None: "n"})
    assert type(seen[0][1]) is tuple
    assert seen[1][1] is Level.LOW
    # JSON values (what a model sends) are still validated as the JSON they are
    await histogram({"bins": {"0": 5}, "point": [1.5, None, True]}, ToolContext())
    assert seen[2] == ({"0": 5}, [1.5, None, True], None)
    with pytest.raises(ToolArgumentsError, match="bins"):
        await histogram({"bins": [1]}, ToolContext())
