"""An xgrammar EBNF for one tool call, written from the tools' JSON Schemas.

What a grammar cannot say is *relaxed* where it is, never for the whole tool set: that part of the schema
admits more than the schema allows (a string with a `pattern` is any string), never less, the rest stays
exact, and `ToolCallGrammar.relaxed` names each place. The argument check that runs before every call
(`ToolRegistry.argument_problems`) still refuses a call that breaks the schema there, and tells the model
why. An object is relaxed by opening it (any other keys, any values): beside keywords that admit keys it
does not list or that it does not write (`patternProperties`, `if`/`then`/`else`, `dependent*`,
`unevaluatedProperties`), and where an `allOf` (or a `$ref` or union beside other keywords) cannot be
merged and is written as its first part. `prefixItems` makes an array's items any JSON; integer bounds
past 20 digits are not written. A tool whose grammar would pass `MAX_TOOL_GRAMMAR_CHARS` takes any object.

Written exactly: `type` (and lists of types), `properties`/`required`/`additionalProperties`, `enum` and
`const` (the values their sibling keywords allow), `anyOf`, `oneOf` whose branches cannot overlap,
`allOf`, `$ref` beside other keywords and union branches beside their siblings where `ebnf_merge` merges
them, string `minLength`/`maxLength`, integer bounds up to 20 digits, number lower bounds of 0, array
`items`/`minItems`/`maxItems`, local `$ref`s (recursive ones as recursive rules) and the empty schema
(any JSON). `format` is ignored, as the argument check ignores it. Each subschema is written once, however
often it is met, so the grammar grows with the schema.

The grammar admits fewer spellings than JSON does, never fewer values: `json.dumps`' spacing, properties
in the schema's order, a schema that lists its `properties` and says nothing of others is called with
those alone (a free-form object, with no `properties`, takes any keys; an `allOf`'s parts together list
them), strings without `\\uXXXX` escapes or control characters. Extra keys that `additionalProperties`
allows may repeat a listed name; the argument check sees the value `json.loads` keeps (the last).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from qwq_agent.agent.ebnf_merge import ANNOTATIONS, merged
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
# Object keywords that admit keys the grammar does not list (or that are told apart by what it does not
# write): an object beside one of them takes any other keys, with any values (relaxed).
_OPENING = (
    "patternProperties",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "dependentRequired",
    "dependencies",
    "unevaluatedProperties",
)
_MAX_DEPTH = 64  # schemas nested deeper than this are any JSON below it (relaxed)
# One tool's rules past this many characters: that tool's arguments are any JSON object (relaxed). A
# real tool's grammar is a few KB; this bounds the time a hostile schema can take to write and compile.
MAX_TOOL_GRAMMAR_CHARS = 500_000
# Integer bounds longer than this are not written (a double's range, 309 digits, costs seconds of
# compile); no model writes such an integer, and the argument check still holds it to the bound.
_MAX_BOUND_DIGITS = 20
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


class _TooLarge(Exception):
    """A tool's grammar passed `MAX_TOOL_GRAMMAR_CHARS`."""


class _Writer:
    def __init__(self, max_string_length: int | None) -> None:
        self.rules: list[str] = []
        self.relaxed: list[str] = []
        self.max_string_length = max_string_length
        self.generic = False  # the generic JSON rules are needed
        self._count = 0
        self._size = 0  # characters in `rules`
        self._budget = MAX_TOOL_GRAMMAR_CHARS  # `_size` past which the tool being written is too large
        self._one_resource = True  # the tool's schema has no nested `$id`: its `$ref`s resolve alike anywhere
        # (id of a schema, written open) -> its expression: each subschema is written once however often it
        # is met (`$ref`s, union branches merged with their siblings), and a recursive one as a recursive rule.
        self._memo: dict[tuple[int, bool], str] = {}
        self._root: Any = None  # the schema of the tool being written
        self._used: set[str] = set()  # memo names met again while being written (recursion)
        self._targets: list[Any] = []  # keeps memoized schemas alive, so that their ids stay theirs

    def rule(self, body: str, hint: str = "r") -> str:
        name = self.name(hint)
        self._add(name, body)
        return name

    def _add(self, name: str, body: str) -> None:
        line = f"{name} ::= {body}"
        self.rules.append(line)
        self._size += len(line) + 1
        if self._size > self._budget:
            raise _TooLarge

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
        saved = (len(self.rules), len(self.relaxed), dict(self._memo), self._size)
        self._budget = self._size + MAX_TOOL_GRAMMAR_CHARS
        try:
            root = DRAFT202012.create_resource(tool.parameters)
            resolver = LOCAL_ONLY.with_resource("", root).resolver(base_uri="")
            self._one_resource = not _nested_ids(tool.parameters)
            self._root = tool.parameters
            return self.value(tool.parameters, tool.name, resolver, 0)
        except Exception as exc:  # the run goes on without this tool's schema in the grammar
            del self.rules[saved[0] :], self.relaxed[saved[1] :]
            self._memo, self._size = saved[2], saved[3]
            why = (
                f"its grammar would pass {MAX_TOOL_GRAMMAR_CHARS} characters"
                if isinstance(exc, _TooLarge)
                else f"its schema could not be written ({type(exc).__name__})"
            )
            self.relaxed.append(f"{tool.name}: {why}; its arguments are any JSON object")
            self.generic = True
            return "json_object"

    def value(self, schema: Any, path: str, resolver: Any, depth: int, open_: bool = False) -> str:
        """A grammar expression for the values valid against `schema` (or more, where relaxed).

        `open_`: an object it describes takes other keys than those it lists, with any values (the
        schema is written as one part of a conjunction the writer could not merge).
        """
        if schema is True or schema == {}:
            return self.any()
        if not isinstance(schema, dict):
            return self.relax(path, f"schema {str(schema)[:40]} is not written")
        if depth > _MAX_DEPTH:
            return self.relax(path, f"nested more than {_MAX_DEPTH} levels")
        key = (id(schema), open_)
        if key in self._memo:
            self._used.add(self._memo[key])
            return self._memo[key]
        # Named before it is written, so that a recursive reference meets the rule being written.
        name = self.name("v")
        self._memo[key] = name
        self._targets.append(schema)
        body = self._write(schema, path, resolver, depth, open_)
        if name not in self._used and len(body) <= 80:
            self._memo[key] = body if _grouped(body) else f"( {body} )"  # small: written in place
            return self._memo[key]
        self._add(name, body)
        return name

    def _write(self, schema: dict[str, Any], path: str, resolver: Any, depth: int, open_: bool) -> str:
        if isinstance(schema.get("$id"), str) and depth:
            resolver = resolver.in_subresource(DRAFT202012.create_resource(schema))
        unwritten = [k for k in _NOT_WRITTEN if k in schema]
        if unwritten:
            self.relaxed.append(f"{path}: {', '.join(unwritten)} not enforced")
        beside_ref = "$ref" in schema and any(k != "$ref" and k not in ANNOTATIONS for k in schema)
        if "allOf" in schema or beside_ref:
            what = "allOf" if "allOf" in schema else "$ref beside other keywords"
            return self._conjunction([(schema, resolver)], what, path, depth, open_)
        if "$ref" in schema:
            return self._ref(schema, path, resolver, depth, open_)
        if "const" in schema or "enum" in schema:
            return self._literals(schema, path, resolver)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._union(schema, key, path, resolver, depth, open_)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                return self.relax(path, "an empty type list is not written")
            kinds = [self.value({**schema, "type": k}, path, resolver, depth, open_) for k in kind]
            return "( " + " | ".join(kinds) + " )"
        if kind is None:
            # Keywords of one kind of value only: the schema's author meant that kind.
            if any(k in schema for k in ("properties", "additionalProperties", "required")):
                kind = "object"
            elif any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
                kind = "array"
        if kind == "object":
            return self._object(schema, path, resolver, depth, open_)
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

    def _ref(self, schema: dict[str, Any], path: str, resolver: Any, depth: int, open_: bool) -> str:
        ref = schema["$ref"]
        if not isinstance(ref, str):
            return self.relax(path, "a $ref that is not a string")
        try:
            resolved = resolver.lookup(ref)
        except Unresolvable:
            return self.relax(path, f"$ref {ref[:60]!r} does not resolve within the schema")
        return self.value(resolved.contents, path, resolved.resolver, depth + 1, open_)

    def _conjunction(
        self, parts: list[tuple[Any, Any]], what: str, path: str, depth: int, open_: bool
    ) -> str:
        """The values valid against all of `parts` (schema, resolver): merged into one schema where
        `ebnf_merge` can, else the first part, open to other properties (every valid value is valid
        against it)."""
        flat: list[tuple[dict[str, Any], Any]] = []
        if not all(self._flatten(s, r, flat, frozenset()) for s, r in parts):
            return self.relax(
                path, f"{what} is not written (a $ref that does not resolve or refers to itself)"
            )
        if not flat:
            return self.any()
        if len(flat) == 1:
            return self.value(flat[0][0], path, flat[0][1], depth + 1, open_)
        one = merged([s for s, _ in flat]) if self._one_resource else None
        if one is not None:
            self._targets.append(one)
            return self.value(one, path, flat[0][1], depth + 1, open_)
        self.relaxed.append(f"{path}: {what} is written as its first part, open to other properties")
        return self.value(flat[0][0], path, flat[0][1], depth + 1, True)

    def _flatten(
        self, schema: Any, resolver: Any, out: list[tuple[dict[str, Any], Any]], seen: frozenset[int]
    ) -> bool:
        """Append to `out` the parts of `schema` that all must hold, with `$ref`s and `allOf`s resolved
        into them; False where it cannot (a reference that does not resolve, or a cycle)."""
        if schema is True:
            return True
        if not isinstance(schema, dict) or id(schema) in seen:
            return False
        seen = seen | {id(schema)}
        if isinstance(schema.get("$id"), str) and schema is not self._root:
            resolver = resolver.in_subresource(DRAFT202012.create_resource(schema))
        if "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str):
                return False
            try:
                resolved = resolver.lookup(ref)
            except Unresolvable:
                return False
            if not self._flatten(resolved.contents, resolved.resolver, out, seen):
                return False
        if "allOf" in schema:
            if not isinstance(schema["allOf"], list):
                return False
            if not all(self._flatten(p, resolver, out, seen) for p in schema["allOf"]):
                return False
        rest = {k: v for k, v in schema.items() if k not in ("$ref", "allOf")}
        if any(k not in ANNOTATIONS for k in rest):
            self._targets.append(rest)
            out.append((rest, resolver))
        return True

    def _literals(self, schema: dict[str, Any], path: str, resolver: Any) -> str:
        """`const` or `enum`: the values it lists that the schema's other keywords allow."""
        own = "const" if "const" in schema else "enum"
        values = [schema["const"]] if own == "const" else schema["enum"]
        if not isinstance(values, list) or not values:
            return self.relax(path, "an enum without values is not written")
        rest = {k: v for k, v in schema.items() if k != own}
        if any(k not in ANNOTATIONS for k in rest):
            kept = _allowed(values, rest, resolver)
            if kept is None:
                self.relaxed.append(f"{path}: the keywords beside {own} could not be checked; not enforced")
            elif not kept:
                self.relaxed.append(f"{path}: no value of its {own} satisfies the keywords beside it")
            else:
                values = kept
        return "( " + " | ".join(_literal(v) for v in values) + " )"

    def _union(
        self, schema: dict[str, Any], key: str, path: str, resolver: Any, depth: int, open_: bool
    ) -> str:
        branches = schema[key] if isinstance(schema[key], list) else []
        if not branches:
            return self.relax(path, f"an empty {key} is not written")
        rest = {k: v for k, v in schema.items() if k != key and k not in ANNOTATIONS}
        if rest:
            self._targets.append(rest)
        if key == "oneOf" and not _disjoint(branches, resolver):
            self.relaxed.append(f"{path}: oneOf is written as anyOf (a value may match more than one branch)")
        written = []
        for i, branch in enumerate(branches):
            where = f"{path}|{i}" if len(branches) > 1 else path
            if rest:  # a branch beside other keywords must satisfy both
                what = f"{key} beside other keywords"
                written.append(
                    self._conjunction([(rest, resolver), (branch, resolver)], what, where, depth, open_)
                )
            else:
                written.append(self.value(branch, where, resolver, depth + 1, open_))
        return "( " + " | ".join(written) + " )"

    def _object(self, schema: dict[str, Any], path: str, resolver: Any, depth: int, open_: bool) -> str:
        listed = schema.get("properties")
        props: dict[str, Any] = dict(listed) if isinstance(listed, dict) else {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        extra: Any = schema.get("additionalProperties", _ABSENT)
        if open_ or any(k in schema for k in _OPENING):
            extra = True  # keys the grammar does not list may be valid: any, with any value (relaxed)
        elif extra is _ABSENT:
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
        if "prefixItems" in schema:  # `items` holds only after the prefix, which is not written
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
            self._add("str_char", STRING_CHAR)
        return "str_char"

    def _integer(self, schema: dict[str, Any], path: str) -> str:
        low, high = integer_bounds(schema)
        if any(b is not None and len(str(abs(b))) > _MAX_BOUND_DIGITS for b in (low, high)):
            self.relaxed.append(
                f"{path}: integer bounds of more than {_MAX_BOUND_DIGITS} digits not enforced"
            )
            low = None if low is not None and len(str(abs(low))) > _MAX_BOUND_DIGITS else low
            high = None if high is not None and len(str(abs(high))) > _MAX_BOUND_DIGITS else high
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


def _grouped(body: str) -> bool:
    """Whether the expression `body` is one item (a name, a literal, one parenthesized group)."""
    if " " not in body:
        return True
    if not body.startswith("("):
        return False
    depth, i = 0, 0
    while i < len(body):
        c = body[i]
        if c in '"[':  # a literal or a character class: skipped, escapes included
            close = '"' if c == '"' else "]"
            i += 1
            while body[i] != close:
                i += 2 if body[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i == len(body) - 1
        i += 1
    return False


def _nested_ids(schema: Any) -> bool:
    """Whether a subschema of `schema` has its own `$id` (a data value that looks like one counts too)."""
    stack = [v for v in schema.values()] if isinstance(schema, dict) else []
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("$id"), str):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _allowed(values: list[Any], schema: dict[str, Any], resolver: Any) -> list[Any] | None:
    """The `values` valid against `schema` (its `$ref`s resolved by `resolver`); None if it cannot say."""
    try:
        # `_resolver`: jsonschema's own hook for a referencing resolver; never a network fetch.
        check = jsonschema.Draft202012Validator(schema, registry=LOCAL_ONLY, _resolver=resolver)
        return [v for v in values if check.is_valid(v)]
    except Exception:  # a schema the validator cannot use; the argument check reports it
        return None


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
