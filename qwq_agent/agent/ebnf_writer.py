"""An xgrammar EBNF for one tool call, written from the tools' JSON Schemas.

What a grammar cannot say is *relaxed* where it is, never for the whole tool set: that part of the schema
admits more than the schema allows (a string with a `pattern` is any string, an `allOf` its first part),
the rest stays exact, and `ToolCallGrammar.relaxed` names each place. The argument check that runs before
every call (`ToolRegistry.argument_problems`) still refuses a call that breaks the schema there, and tells
the model why.

Written exactly: `type` (and lists of types), `properties`/`required`/`additionalProperties`, `enum`,
`const`, `anyOf`, `oneOf` whose branches cannot overlap, string `minLength`/`maxLength`, integer bounds of
any width, number lower bounds of 0, array `items`/`minItems`/`maxItems`, local `$ref`s (recursive ones as
recursive rules) and the empty schema (any JSON). `format` is ignored, as the argument check ignores it.

The grammar admits fewer spellings than JSON does, never fewer values: `json.dumps`' spacing, properties
in the schema's order, a schema that lists its `properties` and says nothing of others is called with
those alone (a free-form object, with no `properties`, takes any keys), strings without `\\uXXXX` escapes
or control characters. Extra keys that `additionalProperties` allows may repeat a listed name; the
argument check sees the value `json.loads` keeps (the last).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from qwq_agent.agent.ebnf_numbers import (
    INTEGER,
    NONNEGATIVE_NUMBER,
    NUMBER,
    POSITIVE_NUMBER,
    integer_bounds,
    integer_range,
)
from qwq_agent.agent.messages import ToolSpec
from qwq_agent.tools.schema_refs import LOCAL_ONLY

__all__ = ["ToolCallGrammar", "UnsupportedSchema", "tool_call_grammar"]

STRING_CHAR = r'[^"\\\x00-\x1f] | "\\" ["\\/bfnrt]'
_GENERIC_JSON = r"""
json_value ::= json_object | json_array | json_string | json_number | "true" | "false" | "null"
json_object ::= "{" ( json_string ": " json_value ( ", " json_string ": " json_value )* )? "}"
json_array ::= "[" ( json_value ( ", " json_value )* )? "]"
json_string ::= "\"" json_char REPS "\""
json_char ::= STRING_CHAR
json_number ::= NUMBER
""".replace("STRING_CHAR", STRING_CHAR).replace("NUMBER", NUMBER)

# Keywords that constrain nothing the grammar must follow (annotations, and what `$ref` resolution uses).
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$schema",
        "$id",
        "$anchor",
        "$dynamicAnchor",
        "$vocabulary",
        "$defs",
        "definitions",
        "format",  # not asserted by the argument check either
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
        "discriminator",  # OpenAPI's hint on a oneOf; the branches say the same
    }
)
# Keywords the grammar does not write: where one appears, the schema is relaxed (and it is said).
_NOT_WRITTEN = (
    "pattern",
    "multipleOf",
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "unevaluatedProperties",
    "unevaluatedItems",
    "prefixItems",
    "contains",
    "minContains",
    "maxContains",
    "uniqueItems",
    "$dynamicRef",
)
_MAX_DEPTH = 64  # schemas nested deeper than this are any JSON below it (relaxed)
_ABSENT = object()


class UnsupportedSchema(ValueError):
    """The schema uses a feature the EBNF writer cannot express exactly."""


@dataclass(frozen=True)
class ToolCallGrammar:
    """The grammar of one call of any of the tools, and where it admits more than their schemas do."""

    text: str
    relaxed: tuple[str, ...] = field(default=())


def tool_call_grammar(tools: Sequence[ToolSpec], *, max_string_length: int | None = None) -> ToolCallGrammar:
    """The EBNF for one call of any of `tools`, in `json.dumps`' spacing; never raises for a schema.

    `max_string_length` bounds strings whose schema gives no `maxLength` (None: unbounded).
    """
    if not tools:
        raise ValueError("no tools to call")
    writer = _Writer(max_string_length)
    calls = []
    for t in tools:
        args = writer.arguments(t)
        body = f'"{{\\"name\\": " {_literal(t.name)} ", \\"arguments\\": " {args} "}}"'
        calls.append(writer.rule(body, "call"))
    lines = [f"root ::= {' | '.join(calls)}", *writer.rules]
    if writer.generic:
        reps = "*" if max_string_length is None else f"{{0,{max_string_length}}}"
        lines.append(_GENERIC_JSON.strip().replace("REPS", reps))
    return ToolCallGrammar(text="\n".join(lines) + "\n", relaxed=tuple(dict.fromkeys(writer.relaxed)))


class _Writer:
    def __init__(self, max_string_length: int | None) -> None:
        self.rules: list[str] = []
        self.relaxed: list[str] = []
        self.max_string_length = max_string_length
        self.generic = False  # the generic JSON rules are needed
        self._count = 0
        self._refs: dict[int, str] = {}  # id of a `$ref`'s target -> its rule
        self._targets: list[Any] = []  # keeps those targets alive, so that their ids stay theirs

    def rule(self, body: str, hint: str = "r") -> str:
        name = self.name(hint)
        self.rules.append(f"{name} ::= {body}")
        return name

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def relax(self, path: str, why: str) -> str:
        """Any JSON value at `path`, and why."""
        self.relaxed.append(f"{path}: {why}")
        return self.any()

    def any(self) -> str:
        self.generic = True
        return "json_value"

    def arguments(self, tool: ToolSpec) -> str:
        """One tool's arguments; a schema that breaks the writer (it should not) is any JSON object."""
        saved = (len(self.rules), len(self.relaxed), dict(self._refs))
        try:
            root = DRAFT202012.create_resource(tool.parameters)
            resolver = LOCAL_ONLY.with_resource("", root).resolver(base_uri="")
            return self.value(tool.parameters, tool.name, resolver, 0)
        except Exception as exc:  # the run goes on without this tool's schema in the grammar
            del self.rules[saved[0] :], self.relaxed[saved[1] :]
            self._refs = saved[2]
            self.relaxed.append(f"{tool.name}: its schema could not be written ({type(exc).__name__})")
            self.generic = True
            return "json_object"

    def value(self, schema: Any, path: str, resolver: Any, depth: int) -> str:
        """A grammar expression for the values valid against `schema` (or more, where relaxed)."""
        if schema is True or schema == {}:
            return self.any()
        if not isinstance(schema, dict):
            return self.relax(path, f"schema {str(schema)[:40]} is not written")
        if depth > _MAX_DEPTH:
            return self.relax(path, f"nested more than {_MAX_DEPTH} levels")
        if isinstance(schema.get("$id"), str) and depth:
            resolver = resolver.in_subresource(DRAFT202012.create_resource(schema))
        unwritten = [k for k in _NOT_WRITTEN if k in schema]
        if unwritten:
            self.relaxed.append(f"{path}: {', '.join(unwritten)} not enforced")
        if "$ref" in schema:
            return self._ref(schema, path, resolver, depth)
        if "allOf" in schema:
            return self._all_of(schema, path, resolver, depth)
        if "const" in schema:
            return _literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"] if isinstance(schema["enum"], list) else []
            if not values:
                return self.relax(path, "an enum without values is not written")
            return "( " + " | ".join(_literal(v) for v in values) + " )"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._union(schema, key, path, resolver, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                return self.relax(path, "an empty type list is not written")
            return (
                "( "
                + " | ".join(self.value({**schema, "type": k}, path, resolver, depth) for k in kind)
                + " )"
            )
        if kind is None:
            # Keywords of one kind of value only: the schema's author meant that kind.
            if any(k in schema for k in ("properties", "additionalProperties", "required")):
                kind = "object"
            elif any(k in schema for k in ("items", "minItems", "maxItems")):
                kind = "array"
        if kind == "object":
            return self._object(schema, path, resolver, depth)
        if kind == "array":
            return self._array(schema, path, resolver, depth)
        if kind == "string":
            return self._string(schema)
        if kind == "integer":
            return self._integer(schema, path)
        if kind == "number":
            return self._number(schema, path)
        if kind == "boolean":
            return '( "true" | "false" )'
        if kind == "null":
            return '"null"'
        return self.any()

    def _ref(self, schema: dict[str, Any], path: str, resolver: Any, depth: int) -> str:
        ref = schema["$ref"]
        if not isinstance(ref, str):
            return self.relax(path, "a $ref that is not a string")
        try:
            resolved = resolver.lookup(ref)
        except Unresolvable:
            return self.relax(path, f"$ref {ref[:60]!r} does not resolve within the schema")
        others = [k for k in schema if k != "$ref" and k not in _ANNOTATIONS and k not in _NOT_WRITTEN]
        if others:
            # Both must hold; the grammar writes the reference alone (it admits every value that does).
            self.relaxed.append(f"{path}: {', '.join(sorted(others))} beside $ref not enforced")
        target = resolved.contents
        if id(target) not in self._refs:
            # Named before it is written, so that a recursive reference meets the rule being written.
            name = self.name("ref")
            self._refs[id(target)] = name
            self._targets.append(target)
            body = self.value(target, path, resolved.resolver, depth + 1)
            self.rules.append(f"{name} ::= {body}")
        return self._refs[id(target)]

    def _all_of(self, schema: dict[str, Any], path: str, resolver: Any, depth: int) -> str:
        parts = schema["allOf"] if isinstance(schema["allOf"], list) else []
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        constrained = [k for k in rest if k not in _ANNOTATIONS]
        if len(parts) == 1 and not constrained:
            return self.value(parts[0], path, resolver, depth + 1)
        # Every valid value satisfies each part: one of them, written alone, admits them all.
        self.relaxed.append(
            f"{path}: allOf is written as its {'first part' if not constrained else 'siblings'}"
        )
        if constrained:
            return self.value(rest, path, resolver, depth + 1)
        return self.value(parts[0], path, resolver, depth + 1) if parts else self.any()

    def _union(self, schema: dict[str, Any], key: str, path: str, resolver: Any, depth: int) -> str:
        branches = schema[key] if isinstance(schema[key], list) else []
        if not branches:
            return self.relax(path, f"an empty {key} is not written")
        rest = {k: v for k, v in schema.items() if k != key and k not in _ANNOTATIONS}
        if key == "oneOf" and not _disjoint(branches, resolver):
            self.relaxed.append(f"{path}: oneOf is written as anyOf (a value may match more than one branch)")
        written = []
        for i, branch in enumerate(branches):
            # A branch beside other keywords must satisfy both: merged, when they share no keyword.
            if rest and isinstance(branch, dict) and not set(rest) & set(branch):
                branch = {**rest, **branch}
            elif rest:
                self.relaxed.append(f"{path}: {', '.join(sorted(rest))} beside {key} not enforced")
            written.append(
                self.value(branch, f"{path}|{i}" if len(branches) > 1 else path, resolver, depth + 1)
            )
        return "( " + " | ".join(written) + " )"

    def _object(self, schema: dict[str, Any], path: str, resolver: Any, depth: int) -> str:
        listed = schema.get("properties")
        props: dict[str, Any] = dict(listed) if isinstance(listed, dict) else {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        extra: Any = schema.get("additionalProperties", _ABSENT)
        if extra is _ABSENT:
            # Listed properties mean those are the arguments; none listed means any object.
            extra = False if isinstance(listed, dict) else True
        for name in required:  # a required name not listed is listed, as `additionalProperties` has it
            if name not in props:
                props[name] = extra if extra is not False else True
        extra_value = None if extra is False else self.value(extra, f"{path}.*", resolver, depth + 1)
        if not props:
            if extra_value is None:
                return '"{}"'  # a tool without parameters is called with none
            if extra_value == "json_value":
                return "json_object"
        names = list(props)
        values = {n: self.value(props[n], f"{path}.{n}", resolver, depth + 1) for n in names}
        if extra_value is not None:
            self.generic = True  # for json_string, the extra keys
        # seq(i, first): the properties from i on; `first` says no property has been written yet, so
        # no comma is due. Optional properties may be skipped without leaving a stray comma.
        memo: dict[tuple[int, bool], str] = {}

        def seq(i: int, first: bool) -> str:
            if i == len(names):
                if extra_value is None:
                    return '""'
                pair = f'json_string ": " {extra_value}'
                return f'( {pair} ( ", " {pair} )* )?' if first else f'( ", " {pair} )*'
            if (i, first) in memo:
                return memo[(i, first)]
            name = names[i]
            item = ("" if first else '", " ') + f'{_literal(name)} ": " {values[name]} {seq(i + 1, False)}'
            body = item if name in required else f"( {item} ) | {seq(i + 1, first)}"
            memo[(i, first)] = self.rule(body, "obj")
            return memo[(i, first)]

        return f'"{{" {seq(0, True)} "}}"'

    def _array(self, schema: dict[str, Any], path: str, resolver: Any, depth: int) -> str:
        items = schema.get("items", {})
        if isinstance(items, list):  # draft-7's tuple form
            self.relaxed.append(f"{path}: items as a list not enforced")
            items = {}
        item = self.value(items, f"{path}[]", resolver, depth + 1)
        low = _count(schema.get("minItems")) or 0
        high = _count(schema.get("maxItems"))
        if high is not None and high == 0:
            return '"[]"'
        more_low = max(low - 1, 0)
        if high is not None:
            more = f'( ", " {item} ){{{more_low},{max(high, low, 1) - 1}}}'
        else:
            more = f'( ", " {item} ){{{more_low},}}' if more_low else f'( ", " {item} )*'
        body = f"{item} {more}"
        return f'"[" {body} "]"' if low > 0 else f'"[" ( {body} )? "]"'

    def _string(self, schema: dict[str, Any]) -> str:
        low = _count(schema.get("minLength")) or 0
        high = _count(schema.get("maxLength"))
        high = self.max_string_length if high is None else high
        if high is not None:
            high = max(high, low)
        reps = f"{{{low},{high}}}" if high is not None else (f"{{{low},}}" if low else "*")
        return f'"\\"" {self._char()}{reps} "\\""'

    def _char(self) -> str:
        if not any(r.startswith("str_char ::=") for r in self.rules):
            self.rules.append(f"str_char ::= {STRING_CHAR}")
        return "str_char"

    def _integer(self, schema: dict[str, Any], path: str) -> str:
        low, high = integer_bounds(schema)
        written = integer_range(low, high)
        if written is None:
            self.relaxed.append(f"{path}: no integer is within its bounds; they are not enforced")
            return INTEGER
        return written

    def _number(self, schema: dict[str, Any], path: str) -> str:
        minimum, ex_min = _bound(schema.get("minimum")), _bound(schema.get("exclusiveMinimum"))
        if schema.get("exclusiveMinimum") is True:  # draft-4: a modifier of `minimum`
            minimum, ex_min = None, minimum
        positive = ex_min is not None and ex_min >= 0
        nonnegative = positive or (minimum is not None and minimum >= 0)
        lower = [schema[k] for k in ("minimum", "exclusiveMinimum") if k in schema]
        # Exact for a lower bound of zero (or draft-4's flag); other bounds are left to the check.
        if any(k in schema for k in ("maximum", "exclusiveMaximum")) or not all(
            isinstance(v, bool) or _bound(v) == 0 for v in lower
        ):
            self.relaxed.append(f"{path}: number bounds not enforced (beyond the sign)")
        if positive:
            return POSITIVE_NUMBER
        return NONNEGATIVE_NUMBER if nonnegative else NUMBER


def _disjoint(branches: list[Any], resolver: Any) -> bool:
    """Whether no value can match two of `branches` (then oneOf is anyOf): told apart by their types, or
    by a required property's `const`/`enum` values (a discriminated union)."""
    shapes = [_shape(b, resolver) for b in branches]
    for i, a in enumerate(shapes):
        for b in shapes[i + 1 :]:
            if a is None or b is None:
                return False
            if not (a[0] & b[0]) or any(a[1][k].isdisjoint(b[1][k]) for k in a[1].keys() & b[1].keys()):
                continue
            return False
    return True


def _shape(schema: Any, resolver: Any) -> tuple[set[str], dict[str, set[str]]] | None:
    """A branch's possible JSON types and, per required property with fixed values, those values."""
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        try:
            schema = resolver.lookup(schema["$ref"]).contents
        except Unresolvable:
            return None
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    kinds = set(kind) if isinstance(kind, list) else ({kind} if isinstance(kind, str) else None)
    if kinds is None:
        return None
    if "integer" in kinds or "number" in kinds:
        kinds |= {"integer", "number"}  # 1 is both
    fixed: dict[str, set[str]] = {}
    listed = schema.get("properties")
    props: dict[str, Any] = listed if isinstance(listed, dict) else {}
    for name in schema.get("required") or []:
        sub = props.get(name) if isinstance(name, str) else None
        if isinstance(sub, dict) and ("const" in sub or isinstance(sub.get("enum"), list)):
            values = [sub["const"]] if "const" in sub else sub["enum"]
            fixed[name] = {json.dumps(v, sort_keys=True) for v in values}
    return kinds, fixed


def _bound(value: Any) -> float | None:
    """A numeric keyword's value; None for none, or for something that is not a number (a boolean)."""
    return None if isinstance(value, bool) or not isinstance(value, int | float) else value


def _count(value: Any) -> int | None:
    """A count keyword's value (`minLength`, `maxItems`, ...); None for none or a nonsensical one."""
    bound = _bound(value)
    return int(bound) if bound is not None and bound >= 0 else None


def _literal(value: Any) -> str:
    """A grammar string literal matching `json.dumps(value)` exactly."""
    return json.dumps(json.dumps(value, ensure_ascii=False), ensure_ascii=False)
