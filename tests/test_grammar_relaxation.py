"""Where the tool-call grammar cannot write a schema exactly it admits more, never less: every call valid
for the schema is accepted (where it said nothing was relaxed, exactly those), for the shapes real tool
schemas have (OpenAPI-style `allOf` composition, `$ref` with siblings, `patternProperties` maps,
`prefixItems`, `if`/`then`, `dependentSchemas`, unions beside their siblings, enums beside other
keywords); and its size stays in proportion to the schema.

Instances are drawn by hypothesis and judged by jsonschema; their objects use the names the schema lists
(a schema that lists its properties is called with those, see `ebnf_writer`), and any names where the
schema admits others.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
import pytest
from ebnf_match import Grammar, accepts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwq_agent.agent.constrained import ToolCallGrammar, tool_call_ebnf, tool_call_grammar, validate_tool_call
from qwq_agent.agent.ebnf_writer import MAX_TOOL_GRAMMAR_CHARS
from qwq_agent.agent.messages import ToolSpec
from qwq_agent.tools.schema_refs import LOCAL_ONLY

VALUE = st.sampled_from(["r", "w", "a.txt", "file", "url", "", "clang", 0, 1, 5, 7, -3, 2.5, True, None])
ENV = st.dictionaries(st.sampled_from(["CC", "PATH_2", "lower", "9X"]), VALUE, max_size=3)
BASE = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}


def args(*names: str, **special: Any) -> Any:
    """Argument objects with any of `names`, each a `VALUE` or, where given, its own strategy."""
    return st.fixed_dictionaries({}, optional={n: special.get(n, VALUE) for n in names})


def level(depth: int) -> dict[str, Any]:
    """'At least one of a, b, c' nested `depth` deep (a union beside the properties it names)."""
    props: dict[str, Any] = {"a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"}}
    if depth > 1:
        props["child"] = level(depth - 1)
    return {
        "type": "object",
        "properties": props,
        "anyOf": [{"required": ["a"]}, {"required": ["b"]}, {"required": ["c"]}],
    }


def level_args(depth: int) -> Any:
    if depth == 1:
        return args("a", "b", "c")
    return args("a", "b", "c", "child", child=level_args(depth - 1) | VALUE)


def in_schema_order(value: Any, schema_text: str) -> Any:
    """`value` with its objects' keys in the order the schema first names them (the grammar's order)."""
    if isinstance(value, list):
        return [in_schema_order(v, schema_text) for v in value]
    if not isinstance(value, dict):
        return value
    at = {k: schema_text.find(json.dumps(k)) % (len(schema_text) + 1) for k in value}  # unnamed: last
    return {k: in_schema_order(value[k], schema_text) for k in sorted(value, key=lambda k: at[k])}


# (label, schema, arguments strategy, a valid call's arguments)
SHAPES: list[tuple[str, dict[str, Any], Any, dict[str, Any]]] = [
    (
        "allOf: $ref base + a part with a required property",
        {
            "$defs": {"Base": BASE},
            "allOf": [
                {"$ref": "#/$defs/Base"},
                {"type": "object", "properties": {"mode": {"enum": ["r", "w"]}}, "required": ["mode"]},
            ],
        },
        args("path", "mode"),
        {"path": "a.txt", "mode": "r"},
    ),
    (
        "$ref beside properties and required",
        {
            "$defs": {"Base": BASE},
            "$ref": "#/$defs/Base",
            "properties": {"mode": {"type": "string"}},
            "required": ["mode"],
        },
        args("path", "mode"),
        {"path": "a.txt", "mode": "r"},
    ),
    (
        "patternProperties + additionalProperties: false",
        {
            "type": "object",
            "properties": {
                "cmd": {"type": "string"},
                "env": {
                    "type": "object",
                    "patternProperties": {"^[A-Z_][A-Z0-9_]*$": {"type": "string"}},
                    "additionalProperties": False,
                },
            },
            "required": ["cmd", "env"],
        },
        args("cmd", "env", env=ENV | VALUE),
        {"cmd": "make", "env": {"CC": "clang"}},
    ),
    (
        "prefixItems + items",
        {
            "type": "object",
            "properties": {
                "row": {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}}
            },
            "required": ["row"],
        },
        args("row", row=st.lists(VALUE, max_size=4) | VALUE),
        {"row": ["total", 3, 4]},
    ),
    (
        "if/then adding a required property",
        {
            "type": "object",
            "properties": {"kind": {"enum": ["file", "url"]}},
            "required": ["kind"],
            "if": {"properties": {"kind": {"const": "file"}}},
            "then": {"properties": {"path": {"type": "string"}}, "required": ["path"]},
        },
        args("kind", "path"),
        {"kind": "file", "path": "a.txt"},
    ),
    (
        "dependentSchemas",
        {
            "type": "object",
            "properties": {"user": {"type": "string"}},
            "dependentSchemas": {
                "user": {"properties": {"password": {"type": "string"}}, "required": ["password"]}
            },
        },
        args("user", "password"),
        {"user": "u", "password": "p"},
    ),
    (
        "oneOf branches sharing properties with their siblings",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "oneOf": [
                {"properties": {"a": {"minimum": 5}}, "required": ["a"]},
                {"properties": {"b": {"minimum": 5}}, "required": ["b"]},
            ],
        },
        args("a", "b"),
        {"a": 7, "b": 1},
    ),
    (
        "allOf whose first part forbids what the second adds",
        {
            "allOf": [
                {"properties": {"a": {"type": "string"}}, "additionalProperties": False},
                {"properties": {"b": {"type": "integer"}}},
            ]
        },
        args("a", "b"),
        {"a": "r"},
    ),
    (
        "allOf of parts that cannot be merged (two unions)",
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "anyOf": [{"required": ["a"]}]},
                {
                    "properties": {"b": {"type": "string"}},
                    "anyOf": [{"required": ["b"]}, {"required": ["a"]}],
                },
            ]
        },
        args("a", "b"),
        {"a": 1, "b": "x"},
    ),
    (
        "unevaluatedProperties over an allOf",
        {
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "allOf": [{"properties": {"b": {"type": "integer"}}}],
            "unevaluatedProperties": False,
        },
        args("a", "b"),
        {"a": "r", "b": 1},
    ),
    (
        "enums narrowed by the keywords beside them",
        {
            "type": "object",
            "properties": {
                "order": {"type": "string", "enum": ["asc", "desc", None]},
                "level": {"type": "integer", "enum": [1, 2, 3], "minimum": 2},
            },
        },
        args("order", "level", order=VALUE | st.sampled_from(["asc", "desc"]), level=st.integers(0, 4)),
        {"order": "asc", "level": 2},
    ),
    ("a union beside its properties, nested", level(3), level_args(3), {"a": "x", "child": {"b": "y"}}),
]


@functools.cache
def written(label: str) -> tuple[ToolCallGrammar, Grammar, jsonschema.Draft202012Validator]:
    """A shape's grammar, parsed, and its schema's validator (once per shape, not per example)."""
    schema = next(s for lbl, s, _, _ in SHAPES if lbl == label)
    grammar = tool_call_grammar([ToolSpec(name="t", parameters=schema)])
    return grammar, Grammar.parse(grammar.text), jsonschema.Draft202012Validator(schema, registry=LOCAL_ONLY)


@pytest.mark.parametrize(("label", "schema", "arguments", "example"), SHAPES, ids=[s[0] for s in SHAPES])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_valid_call_is_accepted_and_exactly_those_where_nothing_is_relaxed(
    label: str, schema: dict[str, Any], arguments: Any, example: dict[str, Any], data: Any
) -> None:
    grammar, parsed, check = written(label)
    known = json.dumps({"name": "t", "arguments": example})
    assert validate_tool_call(known, [ToolSpec(name="t", parameters=schema)]) is None
    assert parsed.accepts(known), (label, grammar.relaxed)
    drawn = in_schema_order(data.draw(arguments), json.dumps(schema))
    call = json.dumps({"name": "t", "arguments": drawn})
    valid = check.is_valid(drawn)
    if valid:
        assert parsed.accepts(call), (label, call, grammar.relaxed)
    elif not grammar.relaxed:
        assert not parsed.accepts(call), (label, call)


def test_the_shapes_the_grammar_can_merge_are_written_exactly():
    exact = {
        label
        for label, schema, _, _ in SHAPES
        if not tool_call_grammar([ToolSpec(name="t", parameters=schema)]).relaxed
    }
    assert exact == {
        "allOf: $ref base + a part with a required property",
        "$ref beside properties and required",
        "allOf whose first part forbids what the second adds",
        "enums narrowed by the keywords beside them",
        "a union beside its properties, nested",
    }
    merged = tool_call_ebnf(
        [ToolSpec(name="t", parameters=SHAPES[0][1])]
    )  # strict: the merged allOf needs no check
    assert accepts(merged, json.dumps({"name": "t", "arguments": {"path": "p", "mode": "w"}}))
    assert not accepts(merged, json.dumps({"name": "t", "arguments": {"path": "p"}}))
    assert not accepts(merged, json.dumps({"name": "t", "arguments": {"path": "p", "mode": "x"}}))


def test_an_enum_beside_keywords_that_refuse_all_of_it_is_said_to_be_relaxed():
    spec = [
        ToolSpec(
            name="t",
            parameters={"type": "object", "properties": {"tag": {"const": "abcdef", "maxLength": 3}}},
        )
    ]
    assert tool_call_grammar(spec).relaxed == (
        "t.tag: no value of its const satisfies the keywords beside it",
    )


def test_the_grammar_grows_with_the_schema_not_exponentially_with_its_nesting():
    # Each level's union used to write the level's properties (the levels below included) once per branch.
    for depth in (4, 8, 12):
        schema = level(depth)
        grammar = tool_call_grammar([ToolSpec(name="t", parameters=schema)])
        assert grammar.relaxed == ()
        assert len(grammar.text) < 20 * len(json.dumps(schema)), depth
    deep = level(12)
    inner: dict[str, Any] = {"a": "x"}
    for _ in range(11):
        inner = {"c": "z", "child": inner}
    assert accepts(
        tool_call_grammar([ToolSpec(name="t", parameters=deep)]).text,
        json.dumps({"name": "t", "arguments": inner}),
    )


def test_a_tool_whose_grammar_would_be_too_large_takes_any_arguments_and_says_so():
    words = [f"value-{i:07d}-" + "x" * 40 for i in range(MAX_TOOL_GRAMMAR_CHARS // 40)]
    huge = ToolSpec(name="huge", parameters={"type": "object", "properties": {"w": {"enum": words}}})
    small = ToolSpec(
        name="small", parameters={"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}
    )
    grammar = tool_call_grammar([small, huge])
    assert grammar.relaxed == (
        f"huge: its grammar would pass {MAX_TOOL_GRAMMAR_CHARS} characters; its arguments are any JSON object",
    )
    assert len(grammar.text) < 5_000
    assert accepts(grammar.text, json.dumps({"name": "huge", "arguments": {"anything": [1]}}))
    assert not accepts(grammar.text, json.dumps({"name": "small", "arguments": {"n": 4}}))


def test_integer_bounds_past_twenty_digits_are_left_to_the_check():
    double = {"type": "integer", "minimum": -1.7976931348623157e308, "maximum": 1.7976931348623157e308}
    long_low = {"type": "integer", "minimum": -(10**30), "maximum": 10**6}
    spec = [ToolSpec(name="t", parameters={"type": "object", "properties": {"n": double, "m": long_low}})]
    grammar = tool_call_grammar(spec)
    assert len(grammar.text) < 2_000  # was 26 KB for the double's range alone (seconds of xgrammar compile)
    assert grammar.relaxed == (
        "t.n: integer bounds of more than 20 digits not enforced",
        "t.m: integer bounds of more than 20 digits not enforced",
    )
    assert accepts(grammar.text, json.dumps({"name": "t", "arguments": {"n": 10**40, "m": -(10**40)}}))
    assert not accepts(grammar.text, json.dumps({"name": "t", "arguments": {"m": 10**6 + 1}}))  # still held
    int64 = [
        ToolSpec(
            name="t",
            parameters={
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}},
            },
        )
    ]
    assert tool_call_grammar(int64).relaxed == ()
