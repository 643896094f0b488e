"""Tool calls that are always well formed: generate the body of a `<tool_call>` under a grammar.

Once the model has written `<tool_call>`, what follows must be `{"name": ..., "arguments": ...}` for one of
the tools, arguments valid against that tool's schema. SGLang's `/generate` (xgrammar) accepts a
`json_schema`, `regex` or `ebnf` constraint; this module builds one from the union of the tools and runs
the call under it, stopping at `</tool_call>`. The loop then continues unconstrained.

Two constraint forms:
- `"json_schema"`: `{"anyOf": [{"properties": {"name": {"const": f}, "arguments": <schema>}}, ...]}`. Any
  schema xgrammar understands, but JSON whitespace is free, and a weak model can wander in it.
- `"ebnf"` (default): a grammar written here for a JSON-Schema subset (object/properties/required, string
  with maxLength/pattern-free, integer/number with bounds, boolean, null, enum, const, array, anyOf/oneOf,
  empty schema = any JSON). Whitespace is fixed to `json.dumps`' style, so every token is content.
  Schemas outside the subset raise `UnsupportedSchema`; use `"json_schema"` for those.

On SGLang 0.5.17 with random weights (benchmarks/results/gpu_constrained.md), 200 of 200 EBNF-constrained
calls validated, 4 of 200 json_schema-constrained ones (the rest wandered in free whitespace until the
token limit) and 0 of 200 unconstrained ones. Under a grammar SGLang did not apply stop strings; the call
ends because the grammar does (only EOS is allowed after the closing brace).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import jsonschema
import jsonschema.exceptions

from qwq_agent.agent.messages import ToolSpec
from qwq_agent.protocols import Completion, PromptModel, SamplingParams
from qwq_agent.tools.schema_refs import LOCAL_ONLY

Mode = Literal["ebnf", "json_schema"]

_STRING_CHAR = r'[^"\\\x00-\x1f] | "\\" ["\\/bfnrt]'
_GENERIC_JSON = r"""
json_value ::= json_object | json_array | json_string | json_number | "true" | "false" | "null"
json_object ::= "{" ( json_string ": " json_value ( ", " json_string ": " json_value )* )? "}"
json_array ::= "[" ( json_value ( ", " json_value )* )? "]"
json_string ::= "\"" json_char REPS "\""
json_char ::= STRING_CHAR
json_number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
""".replace("STRING_CHAR", _STRING_CHAR)


class UnsupportedSchema(ValueError):
    """The schema uses a feature the EBNF writer does not cover."""


def tool_call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """JSON Schema of one call of any of `tools`: `{"name": const, "arguments": <its parameters>}`."""
    if not tools:
        raise ValueError("no tools to call")
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in tools
        ]
    }


class _EbnfWriter:
    def __init__(self, max_string_length: int | None) -> None:
        self.rules: list[str] = []
        self.max_string_length = max_string_length
        self.generic = False
        self._count = 0

    def rule(self, body: str, hint: str = "r") -> str:
        self._count += 1
        name = f"{hint}_{self._count}"
        self.rules.append(f"{name} ::= {body}")
        return name

    def value(self, schema: Any) -> str:
        """A grammar expression for values valid against `schema`."""
        if schema is True or schema == {}:
            self.generic = True
            return "json_value"
        if not isinstance(schema, dict):
            raise UnsupportedSchema(f"schema {schema!r}")
        if "$ref" in schema or "allOf" in schema or "not" in schema or "if" in schema:
            raise UnsupportedSchema("$ref/allOf/not/if are not supported by the EBNF writer")
        if "const" in schema:
            return _literal(schema["const"])
        if "enum" in schema:
            return "( " + " | ".join(_literal(v) for v in schema["enum"]) + " )"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return "( " + " | ".join(self.value(s) for s in schema[key]) + " )"
        kind = schema.get("type")
        if isinstance(kind, list):
            return "( " + " | ".join(self.value({**schema, "type": k}) for k in kind) + " )"
        if kind is None:
            kind = "object" if "properties" in schema else None
        if kind == "object":
            return self._object(schema)
        if kind == "array":
            return self._array(schema)
        if kind == "string":
            return self._string(schema)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return '( "true" | "false" )'
        if kind == "null":
            return '"null"'
        self.generic = True
        return "json_value"

    def _object(self, schema: dict[str, Any]) -> str:
        props: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        if not props:
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict) and extra:
                self.generic = True
                return "json_object"
            return '"{}"'  # a tool without parameters is called with none
        names = list(props)
        values = {n: self.value(props[n]) for n in names}
        # seq(i, first): the properties from i on; `first` says no property has been written yet, so
        # no comma is due. Optional properties may be skipped without leaving a stray comma.
        memo: dict[tuple[int, bool], str] = {}

        def seq(i: int, first: bool) -> str:
            if i == len(names):
                return '""'
            if (i, first) in memo:
                return memo[(i, first)]
            name = names[i]
            item = ("" if first else '", " ') + f'{_literal(name)} ": " {values[name]} {seq(i + 1, False)}'
            body = item if name in required else f"( {item} ) | {seq(i + 1, first)}"
            memo[(i, first)] = self.rule(body, "obj")
            return memo[(i, first)]

        return f'"{{" {seq(0, True)} "}}"'

    def _array(self, schema: dict[str, Any]) -> str:
        item = self.value(schema.get("items", {}))
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        if high is not None and int(high) == 0:
            return '"[]"'
        more_low = max(low - 1, 0)
        more = (
            f'( ", " {item} ){{{more_low},{int(high) - 1}}}'
            if high is not None
            else (f'( ", " {item} ){{{more_low},}}' if more_low else f'( ", " {item} )*')
        )
        items = f"{item} {more}"
        return f'"[" {items} "]"' if low > 0 else f'"[" ( {items} )? "]"'

    def _string(self, schema: dict[str, Any]) -> str:
        if "pattern" in schema or "format" in schema:
            raise UnsupportedSchema("string pattern/format: use the json_schema mode")
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength", self.max_string_length)
        char = self._char()
        reps = f"{{{low},{int(high)}}}" if high is not None else (f"{{{low},}}" if low else "*")
        return f'"\\"" {char}{reps} "\\""'

    def _char(self) -> str:
        if not any(r.startswith("str_char ::=") for r in self.rules):
            self.rules.append(f"str_char ::= {_STRING_CHAR}")
        return "str_char"

    def _integer(self, schema: dict[str, Any]) -> str:
        low, high = _bounds(schema)
        if low is not None and high is not None and high - low <= 256:
            return "( " + " | ".join(f'"{n}"' for n in range(int(low), int(high) + 1)) + " )"
        if low is not None or high is not None:
            raise UnsupportedSchema("integer bounds over a wide range: use the json_schema mode")
        return '( "-"? ( "0" | [1-9] [0-9]{0,17} ) )'

    def _number(self, schema: dict[str, Any]) -> str:
        if any(
            k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
        ):
            raise UnsupportedSchema("number bounds: use the json_schema mode")
        return '( "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? )'


def _bounds(schema: dict[str, Any]) -> tuple[float | None, float | None]:
    low = schema.get("minimum")
    high = schema.get("maximum")
    if "exclusiveMinimum" in schema:
        low = schema["exclusiveMinimum"] + 1
    if "exclusiveMaximum" in schema:
        high = schema["exclusiveMaximum"] - 1
    return low, high


def _literal(value: Any) -> str:
    """A grammar string literal matching `json.dumps(value)` exactly."""
    return json.dumps(json.dumps(value, ensure_ascii=False), ensure_ascii=False)


def tool_call_ebnf(tools: Sequence[ToolSpec], *, max_string_length: int | None = None) -> str:
    """An xgrammar EBNF for one call of any of `tools`, in `json.dumps`' spacing.

    `max_string_length` bounds strings whose schema gives no `maxLength` (None: unbounded).
    """
    if not tools:
        raise ValueError("no tools to call")
    writer = _EbnfWriter(max_string_length)
    calls = []
    for t in tools:
        args = writer.value(t.parameters)
        body = f'"{{\\"name\\": " {_literal(t.name)} ", \\"arguments\\": " {args} "}}"'
        calls.append(writer.rule(body, "call"))
    lines = [f"root ::= {' | '.join(calls)}", *writer.rules]
    if writer.generic:
        reps = "*" if max_string_length is None else f"{{0,{max_string_length}}}"
        lines.append(_GENERIC_JSON.strip().replace("REPS", reps))
    return "\n".join(lines) + "\n"


def constraint_params(
    tools: Sequence[ToolSpec],
    params: SamplingParams,
    *,
    mode: Mode = "ebnf",
    max_string_length: int | None = None,
) -> SamplingParams:
    """`params` with the tool-call constraint set, stopping at `</tool_call>`."""
    update: dict[str, Any] = {"json_schema": None, "regex": None, "ebnf": None, "stop": ["</tool_call>"]}
    if mode == "ebnf":
        update["ebnf"] = tool_call_ebnf(tools, max_string_length=max_string_length)
    else:
        update["json_schema"] = json.dumps(tool_call_schema(tools))
    return params.model_copy(update=update)


async def constrained_tool_call(
    client: PromptModel,
    prompt_so_far: str,
    tools: Sequence[ToolSpec],
    params: SamplingParams | None = None,
    *,
    mode: Mode = "ebnf",
    max_string_length: int | None = None,
) -> str:
    """Generate the rest of a tool call under a grammar; returns the text to append to the output.

    `prompt_so_far` is the prompt plus the model's output up to and including `<tool_call>`. The returned
    text is `"\\n" + call JSON + "\\n</tool_call>"` (without the leading newline when `prompt_so_far`
    already ends with one), so `output + returned` is a complete call in QwQ's format; the caller continues
    unconstrained from there. A `mode="ebnf"` schema outside the supported subset falls back to the
    json_schema constraint.
    """
    text, _ = await constrained_tool_call_completion(
        client, prompt_so_far, tools, params, mode=mode, max_string_length=max_string_length
    )
    return text


async def constrained_tool_call_completion(
    client: PromptModel,
    prompt_so_far: str,
    tools: Sequence[ToolSpec],
    params: SamplingParams | None = None,
    *,
    mode: Mode = "ebnf",
    max_string_length: int | None = None,
) -> tuple[str, Completion]:
    """`constrained_tool_call`, also returning the server's completion (prompt sent, usage)."""
    prompt = call_prompt(prompt_so_far)
    lead = prompt[len(prompt_so_far) :]
    try:
        constrained = constraint_params(
            tools, params or SamplingParams(), mode=mode, max_string_length=max_string_length
        )
    except UnsupportedSchema:
        constrained = constraint_params(tools, params or SamplingParams(), mode="json_schema")
    done = await client.generate(prompt, constrained)
    return f"{lead}{done.text.strip()}\n</tool_call>", done


def call_prompt(prompt_so_far: str) -> str:
    """The prompt `constrained_tool_call_completion` sends: the JSON starts on a line of its own."""
    return prompt_so_far if prompt_so_far.endswith("\n") else prompt_so_far + "\n"


def validate_tool_call(text: str, tools: Sequence[ToolSpec]) -> str | None:
    """Check one call's JSON (with or without the `<tool_call>` tags); None when valid, else why not."""
    body = text.strip()
    body = body.removeprefix("<tool_call>").removesuffix("</tool_call>").strip()
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg}"
    except (ValueError, RecursionError) as exc:  # an integer past 4300 digits; nesting too deep
        return f"not JSON: {exc}"
    # LOCAL_ONLY: a `$ref` in a tool's schema must never make the host fetch a URL.
    validator = jsonschema.Draft202012Validator(tool_call_schema(tools), registry=LOCAL_ONLY)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(call))
    except Exception as exc:  # a schema that cannot be checked (an unresolvable `$ref`, endless nesting)
        return f"invalid: the tool's schema could not be checked ({type(exc).__name__})"
    return None if error is None else f"invalid: {error.message[:200]}"


def grammar_ignored(text: str, tools: Sequence[ToolSpec], finish_reason: str | None) -> str | None:
    """Why a constrained generation shows that the server ignored the grammar, or None if it did not.

    Under the grammar the output is a JSON object naming one of `tools`, or a prefix of one when the
    token limit cut it (`finish_reason="length"`, which the parser reports as a cut-off call). Anything
    else means the constraint was not applied (a server without a grammar backend, or a proxy dropping
    the field): repeating the request cannot help.
    """
    if finish_reason == "length":
        return None
    body = text.strip()
    try:
        call = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, an integer past 4300 digits, nesting too deep
        call = None
    names = {t.name for t in tools}
    if isinstance(call, dict) and call.get("name") in names:
        return None
    shown = body[:80] + ("…" if len(body) > 80 else "")
    return (
        f"the model server ignored the tool-call grammar: asked for one call of {sorted(names)}, it returned "
        f"{shown!r}. Use an SGLang server with a grammar backend (xgrammar), or run without --constrained"
    )


class CallOpenWatcher:
    """Finds, in streamed output, where a tool call opens after the reasoning: the point to constrain from.

    `feed(delta)` returns the index in `delta` just past `<tool_call>` when the tag completes inside it
    (after `</think>`), else None. `prior` is output already in the turn (a continuation's prefix).
    """

    TAG = "<tool_call>"
    THINK_END = "</think>"

    def __init__(self, prior: str = "") -> None:
        self._tail = prior[-32:]
        self._closed = self.THINK_END in prior

    def feed(self, delta: str) -> int | None:
        start = len(self._tail)
        text = self._tail + delta
        self._tail = text[-32:]
        search_from = 0
        if not self._closed:
            end = text.find(self.THINK_END)
            if end < 0:
                return None
            self._closed = True
            search_from = end + len(self.THINK_END)
        # Only a tag that ends inside this delta is new: one wholly in the carried tail was seen before.
        at = text.find(self.TAG, max(search_from, start - len(self.TAG) + 1))
        if at < 0:
            return None
        return at + len(self.TAG) - start
