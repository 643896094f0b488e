"""What the tool-call grammar admits for the schemas real tools have: the built-in tools, `@tool` functions
taking dicts and nested models, MCP-style `$defs`, integer bounds of any width.

Acceptance is checked with `ebnf_match` (and with xgrammar too, when it is installed); calls go through
the agent against the scripted SGLang server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import jsonschema
import pytest
from ebnf_match import Grammar, accepts
from pydantic import BaseModel, Field

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.constrained import (
    UnsupportedSchema,
    tool_call_ebnf,
    tool_call_grammar,
    tool_call_schema,
    validate_tool_call,
)
from qwq_agent.agent.ebnf_numbers import integer_range
from qwq_agent.agent.events import Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.messages import ToolSpec
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest
from qwq_agent.tools.base import tool
from qwq_agent.tools.catalog import build_tools
from qwq_agent.tools.registry import ToolRegistry
from qwq_agent.tools.schema_refs import LOCAL_ONLY

GUARD_S = 60.0


def call(name: str, **arguments: Any) -> str:
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def spec_of(fn: Any) -> ToolSpec:
    return ToolRegistry([fn]).specs()[0]


def one(name: str, parameters: dict[str, Any]) -> list[ToolSpec]:
    return [ToolSpec(name=name, parameters=parameters)]


# --- integer bounds of any width (the default tools lost the grammar to search_code's 1..500) -----------


@pytest.mark.parametrize(
    ("low", "high"),
    [(1, 500), (0, None), (200, 100000), (-37, 1204), (None, -5), (None, 12), (-1000, -999), (7, 7), (-3, 0)],
)
def test_integer_ranges_admit_exactly_the_integers_within_their_bounds(low, high):
    grammar = f"root ::= {integer_range(low, high)}\n"
    parsed = Grammar.parse(grammar)
    for n in [*range(-1300, 1300), 99999, 100000, 100001, 10**12, -(10**12)]:
        inside = (low is None or n >= low) and (high is None or n <= high)
        assert parsed.accepts(str(n)) == inside, n
    for n in {low, high, (low or 0) - 1, (high or 0) + 1} - {None}:  # the edges, by xgrammar too if present
        assert accepts(grammar, str(n)) == ((low is None or n >= low) and (high is None or n <= high))
    for spelling in ("007", "-0", "+5", "1.0", "1e3", ""):
        assert not accepts(grammar, spelling)


def test_the_default_tools_and_fetch_url_are_written_as_a_grammar_without_relaxation():
    specs = ToolRegistry(
        build_tools(["python", "shell", "str_replace_editor", "search_code", "web_search", "fetch_url"])
    ).specs()
    grammar = tool_call_grammar(specs)
    assert grammar.relaxed == ()
    ebnf = tool_call_ebnf(specs)  # strict: nothing in them is left to the check after the call
    assert ebnf == grammar.text
    assert accepts(ebnf, call("search_code", pattern="def main", max_results=500))
    assert accepts(ebnf, call("search_code", pattern="x", context_lines=10, max_results=1))
    assert not accepts(ebnf, call("search_code", pattern="x", max_results=501))
    assert not accepts(ebnf, call("search_code", pattern="x", max_results=0))
    assert not accepts(ebnf, call("search_code", pattern="", max_results=3))  # minLength 1
    assert accepts(ebnf, call("fetch_url", url="https://a.example", offset=123456789012, max_chars=200))
    assert not accepts(ebnf, call("fetch_url", url="https://a.example", offset=-1))
    assert not accepts(ebnf, call("fetch_url", url="https://a.example", max_chars=199))
    assert accepts(ebnf, call("shell", command="ls", timeout=2.5))


# --- free-form objects (a `dict` parameter could only ever be `{}`) ------------------------------------


@tool
def post(url: str, headers: dict[str, Any]) -> str:
    """POST to url with headers."""
    return ""


def test_a_dict_parameter_takes_any_object_not_only_the_empty_one():
    specs = [spec_of(post)]
    ebnf = tool_call_ebnf(specs)
    good = call("post", url="https://x", headers={"Accept": "text/plain", "n": [1, {"a": None}]})
    assert validate_tool_call(good, specs) is None
    assert accepts(ebnf, good)
    assert accepts(ebnf, call("post", url="https://x", headers={}))
    assert not accepts(ebnf, call("post", url="https://x", headers=[]))


def test_object_schemas_admit_what_their_additional_properties_allow():
    free = tool_call_ebnf(one("f", {"type": "object", "properties": {"o": {"type": "object"}}}))
    assert accepts(free, call("f", o={"k": "v"})) and accepts(free, call("f", o={}))
    opened = tool_call_ebnf(
        one(
            "f",
            {
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "additionalProperties": True,
            },
        )
    )
    assert accepts(opened, call("f", a=1, extra="x", more=[True]))
    assert accepts(opened, call("f", extra="x")) and accepts(opened, call("f"))
    typed = tool_call_ebnf(
        one(
            "f",
            {
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "additionalProperties": {"type": "string"},
            },
        )
    )
    assert accepts(typed, call("f", a=1, b="x")) and not accepts(typed, call("f", a=1, b=2))
    mapping = tool_call_ebnf(
        one("f", {"type": "object", "properties": {"m": {"additionalProperties": {"type": "integer"}}}})
    )
    assert accepts(mapping, call("f", m={"x": 1, "y": 2})) and not accepts(mapping, call("f", m={"x": "1"}))
    closed = tool_call_ebnf(
        one("f", {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False})
    )
    assert not accepts(closed, call("f", a=1, b=2))
    # A schema that lists its properties (even none) and says nothing of others is called with those.
    assert not accepts(tool_call_ebnf(one("f", {"type": "object", "properties": {}})), call("f", a=1))


def test_number_spellings_and_bounds_that_are_cheap_to_get_right():
    def ebnf(schema: dict[str, Any]) -> str:
        return tool_call_ebnf(one("f", {"type": "object", "properties": {"v": schema}}))

    assert not accepts(ebnf({"type": "integer", "minimum": 0.5}), call("f", v=0))
    assert accepts(ebnf({"type": "integer", "minimum": 0.5}), call("f", v=1))
    assert not accepts(ebnf({"type": "integer", "exclusiveMaximum": 3}), call("f", v=3))
    big = ebnf({"type": "integer"})
    assert accepts(big, '{"name": "f", "arguments": {"v": 12345678901234567890123}}')
    number = ebnf({"type": "number"})
    for spelling in ("1e+20", "1.5E-7", "-0.25", "12345678901234567890.5"):
        assert accepts(number, '{"name": "f", "arguments": {"v": ' + spelling + "}}"), spelling
    for spelling in ("01", ".5", "1.", "+1", "1e"):
        assert not accepts(number, '{"name": "f", "arguments": {"v": ' + spelling + "}}"), spelling
    positive = ebnf({"type": "number", "exclusiveMinimum": 0})
    assert accepts(positive, call("f", v=0.001)) and accepts(positive, call("f", v=3))
    assert not accepts(positive, call("f", v=0)) and not accepts(positive, call("f", v=0.0))
    assert not accepts(positive, call("f", v=-1.5))
    assert not accepts(ebnf({"type": "number", "minimum": 0}), call("f", v=-1))
    assert accepts(ebnf({"type": "number", "minimum": 0}), call("f", v=0))


# --- nested models: `$defs` and `$ref` -------------------------------------------------------------------


class Point(BaseModel):
    x: int
    y: int


class Node(BaseModel):
    value: int
    children: list[Node] = []


@tool
def move(p: Point, via: Point | None = None) -> str:
    """Move to p."""
    return ""


@tool
def plant(tree: Node, where: str = "here") -> str:
    """Plant a tree (two parameters: a lone model parameter's fields would be the arguments)."""
    return ""


GOOD_MOVE = call("move", p={"x": 1, "y": 2})
WRONG_MOVE = call("move", x=1, y=2)


def test_a_nested_model_is_validated_against_its_own_definitions():
    specs = [spec_of(move)]
    assert "$defs" in specs[0].parameters
    assert validate_tool_call(GOOD_MOVE, specs) is None
    assert validate_tool_call(call("move", p={"x": 1, "y": 2}, via={"x": 0, "y": 0}), specs) is None
    assert (validate_tool_call(WRONG_MOVE, specs) or "").startswith("invalid")
    assert (validate_tool_call(call("move", p={"x": "1", "y": 2}), specs) or "").startswith("invalid")


def test_the_json_schema_constraint_keeps_each_tools_definitions_resolvable():
    specs = [spec_of(move), spec_of(plant), spec_of(post)]
    schema = tool_call_schema(specs)
    check = jsonschema.Draft202012Validator(schema, registry=LOCAL_ONLY)
    assert check.is_valid(json.loads(GOOD_MOVE))
    assert not check.is_valid(json.loads(WRONG_MOVE))
    assert check.is_valid(json.loads(call("plant", tree={"value": 1, "children": [{"value": 2}]})))
    assert not check.is_valid(json.loads(call("plant", tree={"value": 1, "children": [{"value": "2"}]})))
    # A reference to the tool's own root, or into its properties, resolves too.
    selfish = ToolSpec(
        name="s",
        parameters={
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"$ref": "#/properties/a"}},
        },
    )
    check = jsonschema.Draft202012Validator(tool_call_schema([*specs, selfish]), registry=LOCAL_ONLY)
    assert check.is_valid({"name": "s", "arguments": {"a": 1, "b": 2}})
    assert not check.is_valid({"name": "s", "arguments": {"a": 1, "b": "2"}})
    assert schema["anyOf"][2]["properties"]["arguments"] == specs[2].parameters  # nothing to move there


def test_two_tools_definitions_of_one_name_stay_apart():
    def item_tool(name: str, item: dict[str, Any], key: str) -> ToolSpec:
        return ToolSpec(
            name=name,
            parameters={
                "type": "object",
                "required": ["item"],
                "properties": {"item": {"$ref": f"#/{key}/Item"}},
                key: {"Item": item},
            },
        )

    specs = [
        item_tool("a", {"type": "integer"}, "$defs"),
        item_tool("b", {"type": "string"}, "definitions"),  # draft-7's name for them
    ]
    check = jsonschema.Draft202012Validator(tool_call_schema(specs), registry=LOCAL_ONLY)
    assert check.is_valid({"name": "a", "arguments": {"item": 1}})
    assert check.is_valid({"name": "b", "arguments": {"item": "x"}})
    assert not check.is_valid({"name": "a", "arguments": {"item": "x"}})
    assert not check.is_valid({"name": "b", "arguments": {"item": 1}})
    ebnf = tool_call_ebnf(specs)
    assert accepts(ebnf, call("a", item=1)) and not accepts(ebnf, call("a", item="x"))
    assert accepts(ebnf, call("b", item="x")) and not accepts(ebnf, call("b", item=1))
    assert validate_tool_call(call("b", item="x"), specs) is None


def test_the_grammar_writes_references_including_recursive_ones():
    specs = [spec_of(move), spec_of(plant)]
    grammar = tool_call_grammar(specs)
    assert grammar.relaxed == ()
    ebnf = grammar.text
    assert accepts(ebnf, GOOD_MOVE)
    assert accepts(ebnf, call("move", p={"x": 1, "y": 2}, via=None))
    assert not accepts(ebnf, WRONG_MOVE)
    tree = {"value": 1, "children": [{"value": 2, "children": [{"value": 3, "children": []}]}]}
    assert accepts(ebnf, call("plant", tree=tree))
    assert not accepts(ebnf, call("plant", tree={"value": 1, "children": [{"children": []}]}))


def test_what_the_grammar_cannot_express_is_relaxed_where_it_is_and_said():
    specs = [
        ToolSpec(
            name="grep",
            parameters={
                "type": "object",
                "required": ["pattern", "n"],
                "properties": {
                    "pattern": {"type": "string", "pattern": "^[a-z]+$"},
                    "n": {"type": "integer", "minimum": 1, "maximum": 3},
                    "both": {"allOf": [{"type": "integer"}, {"multipleOf": 2}]},
                },
            },
        ),
        ToolSpec(name="now", parameters={"type": "object", "properties": {}, "additionalProperties": False}),
    ]
    grammar = tool_call_grammar(specs)
    assert any("grep" in r and "pattern" in r for r in grammar.relaxed)
    assert any("both" in r and "multipleOf" in r for r in grammar.relaxed)  # allOf merged, but for that
    assert not any("now" in r for r in grammar.relaxed)
    # The rest of the schema still holds: only the pattern and the intersection are left to the check.
    assert accepts(grammar.text, call("grep", pattern="ABC", n=2))
    assert not accepts(grammar.text, call("grep", pattern="abc", n=4))
    assert accepts(grammar.text, call("grep", pattern="abc", n=1, both=3))
    assert accepts(grammar.text, call("now"))
    with pytest.raises(UnsupportedSchema, match="pattern"):
        tool_call_ebnf(specs)  # the strict form refuses what it would relax


def test_one_of_is_exact_only_where_its_branches_cannot_overlap():
    def relaxed(schema: dict[str, Any]) -> tuple[str, ...]:
        return tool_call_grammar(one("f", {"type": "object", "properties": {"v": schema}})).relaxed

    assert relaxed({"oneOf": [{"type": "integer"}, {"type": "number"}]}) == (
        "f.v: oneOf is written as anyOf (a value may match more than one branch)",
    )
    assert relaxed({"oneOf": [{"type": "string"}, {"type": "integer"}]}) == ()
    cat = {"type": "object", "required": ["kind"], "properties": {"kind": {"const": "cat"}}}
    dog = {"type": "object", "required": ["kind"], "properties": {"kind": {"const": "dog"}}}
    assert relaxed({"oneOf": [cat, dog]}) == ()  # a discriminated union
    assert relaxed({"type": "number", "minimum": 200}) == (
        "f.v: number bounds not enforced (beyond the sign)",
    )
    assert relaxed({"type": "integer", "multipleOf": 5}) == ("f.v: multipleOf not enforced",)


# --- through the agent: the request, and the warning ---------------------------------------------------


@tool
def grep(pattern: Annotated[str, Field(pattern="^[a-z]+$")], n: int = 1) -> str:
    """Count lines matching pattern (a pattern the grammar cannot write)."""
    return "3"


def two_call_model(name: str, arguments: dict[str, Any]) -> Any:
    """Opens a call in each of its first two turns (the call generated under the grammar), then answers."""

    def answer(request: ScriptedRequest) -> str:
        prompt = request.prompt or ""
        if request.sampling_params.get("ebnf") or request.sampling_params.get("json_schema"):
            return json.dumps({"name": name, "arguments": arguments})
        if prompt.rstrip().endswith("</tool_call>"):
            return ""
        if prompt.count("<tool_response>") >= 2:
            return "Done.\n</think>\n\nDone."
        return "Call it.\n</think>\n\n<tool_call>\n"

    return answer


async def run_agent(server: ScriptedModelServer, tools: list[Any], trace: Any) -> tuple[Any, list[Any]]:
    async with SGLangClient(server.url, retry=NO_RETRY) as client:
        cfg = AgentConfig(check_language=False, constrained_tool_calls=True)
        agent = Agent(client, tools, config=cfg, trace_path=trace)

        async def collect() -> list[Any]:
            return [ev async for ev in agent.stream("Go.")]

        events = await asyncio.wait_for(collect(), GUARD_S)
    return agent.result, events


def grammar_requests(server: ScriptedModelServer) -> list[dict[str, Any]]:
    params = [r.sampling_params for r in server.requests]
    return [p for p in params if p.get("ebnf") or p.get("json_schema")]


async def test_the_default_tools_are_called_under_the_grammar_without_a_warning(tmp_path):
    tools = build_tools(["python", "shell", "str_replace_editor", "search_code", "fetch_url"])
    answer = two_call_model("search_code", {"pattern": "main", "max_results": 500})
    async with ScriptedModelServer(answer) as server:
        result, events = await run_agent(server, tools, tmp_path / "t.jsonl")
    sent = grammar_requests(server)
    assert len(sent) == 2 and all(p.get("ebnf") and not p.get("json_schema") for p in sent)
    assert accepts(sent[0]["ebnf"], call("search_code", pattern="main", max_results=500))
    assert not [e for e in events if isinstance(e, Warning_) and e.kind == "grammar_relaxed"]
    assert result.status == "completed"


async def test_a_relaxed_grammar_is_warned_about_once_per_run_and_traced(tmp_path):
    trace = tmp_path / "t.jsonl"
    async with ScriptedModelServer(two_call_model("grep", {"pattern": "abc"})) as server:
        result, events = await run_agent(server, [grep], trace)
    assert result.status == "completed"
    assert [bool(p.get("ebnf")) for p in grammar_requests(server)] == [True, True]
    warned = [e for e in events if isinstance(e, Warning_) and e.kind == "grammar_relaxed"]
    assert len(warned) == 1
    assert "grep" in warned[0].message and "pattern" in warned[0].message
    traced = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [e["message"] for e in traced if e.get("kind") == "grammar_relaxed"] == [warned[0].message]


async def test_a_nested_model_tool_is_called_under_the_grammar(tmp_path):
    points: list[Point] = []

    @tool
    def goto(p: Point, speed: int = 1) -> str:
        """Go to p."""
        points.append(p)
        return "ok"

    async with ScriptedModelServer(two_call_model("goto", {"p": {"x": 1, "y": 2}})) as server:
        result, events = await run_agent(server, [goto], tmp_path / "t.jsonl")
    sent = grammar_requests(server)
    assert sent and all(p.get("ebnf") for p in sent)
    assert accepts(sent[0]["ebnf"], call("goto", p={"x": 1, "y": 2}))
    assert not accepts(sent[0]["ebnf"], call("goto", x=1, y=2))
    assert result.status == "completed" and points == [Point(x=1, y=2)] * 2
    assert not [e for e in events if isinstance(e, Warning_) and e.kind == "grammar_relaxed"]
