"""Tool calls that are always well formed: generate the body of a `<tool_call>` under a grammar.

Once the model has written `<tool_call>`, what follows must be `{"name": ..., "arguments": ...}` for one of
the tools, arguments valid against that tool's schema. SGLang's `/generate` (xgrammar) accepts a
`json_schema`, `regex` or `ebnf` constraint; this module builds one from the union of the tools and runs
the call under it, stopping at `</tool_call>`. The loop then continues unconstrained.

Two constraint forms:
- `"ebnf"` (default): a grammar written from the tools' schemas (`ebnf_writer`), in `json.dumps`' spacing,
  so every token is content. What it cannot express (a string `pattern`, number bounds other than a
  sign, `patternProperties`, ...) is relaxed where it is (admitting more, never less), never for the
  whole tool set; the argument check before the call still refuses a call that breaks the schema there. `relaxation_warning` says where, and the agent
  warns of it once a run (`grammar_relaxed`). `tool_call_ebnf` is the strict form: it raises
  `UnsupportedSchema` instead of relaxing.
- `"json_schema"`: `{"anyOf": [{"properties": {"name": {"const": f}, "arguments": <schema>}}, ...]}` (each
  tool's `$defs` moved to the root). Any schema xgrammar understands, but JSON whitespace is free, and a
  weak model can wander in it.

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

from qwq_agent.agent.ebnf_writer import ToolCallGrammar, UnsupportedSchema, tool_call_grammar
from qwq_agent.agent.messages import ToolSpec
from qwq_agent.protocols import Completion, PromptModel, SamplingParams
from qwq_agent.tools.schema_refs import LOCAL_ONLY, relocated

Mode = Literal["ebnf", "json_schema"]

__all__ = [
    "CallOpenWatcher",
    "ToolCallGrammar",
    "UnsupportedSchema",
    "call_prompt",
    "constrained_tool_call",
    "constrained_tool_call_completion",
    "constraint_params",
    "grammar_ignored",
    "relaxation_warning",
    "tool_call_ebnf",
    "tool_call_grammar",
    "tool_call_schema",
    "validate_tool_call",
]

_RELAXATIONS_SHOWN = 6


def tool_call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """JSON Schema of one call of any of `tools`: `{"name": const, "arguments": <its parameters>}`.

    Each tool's parameters sit at `#/anyOf/<i>/properties/arguments`; their `$defs` move to the root
    (renamed `t<i>_<name>`) and their `$ref`s follow, so that a nested model's references still resolve.
    """
    if not tools:
        raise ValueError("no tools to call")
    branches, defs = [], {}
    for i, t in enumerate(tools):
        arguments, hoisted = relocated(t.parameters, f"/anyOf/{i}/properties/arguments", f"t{i}_")
        defs.update(hoisted)
        branches.append(
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = {"anyOf": branches}
    if defs:
        schema["$defs"] = defs
    return schema


def tool_call_ebnf(tools: Sequence[ToolSpec], *, max_string_length: int | None = None) -> str:
    """An xgrammar EBNF for one call of any of `tools`, exact for their schemas.

    Raises `UnsupportedSchema` (naming each place) where the grammar could only admit more than a schema
    does; `tool_call_grammar` relaxes those places instead. `max_string_length` bounds strings whose
    schema gives no `maxLength` (None: unbounded).
    """
    grammar = tool_call_grammar(tools, max_string_length=max_string_length)
    if grammar.relaxed:
        raise UnsupportedSchema("; ".join(grammar.relaxed))
    return grammar.text


def relaxation_warning(tools: Sequence[ToolSpec]) -> str | None:
    """What the `ebnf` constraint of `tools` does not enforce, in one line (None: it enforces it all)."""
    relaxed = tool_call_grammar(tools).relaxed if tools else ()
    if not relaxed:
        return None
    shown = "; ".join(relaxed[:_RELAXATIONS_SHOWN])
    more = len(relaxed) - _RELAXATIONS_SHOWN
    return (
        "the tool-call grammar does not enforce all of the tools' schemas; a call that breaks them there "
        f"is refused by the argument check, which tells the model why: {shown}"
        + (f"; and {more} more" if more > 0 else "")
    )


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
        update["ebnf"] = tool_call_grammar(tools, max_string_length=max_string_length).text
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
    unconstrained from there. Under `mode="ebnf"`, what the grammar cannot express is relaxed
    (`relaxation_warning` says where).
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
    constrained = constraint_params(
        tools, params or SamplingParams(), mode=mode, max_string_length=max_string_length
    )
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
    if not isinstance(call, dict):
        return "invalid: a call is a JSON object"
    names = {t.name: t for t in tools}
    if set(call) != {"name", "arguments"}:
        return f"invalid: a call has the keys name and arguments, not {sorted(call)}"
    spec = names.get(call["name"]) if isinstance(call["name"], str) else None
    if spec is None:
        return f"invalid: {str(call['name'])[:80]!r} is not one of the tools {sorted(names)}"
    # The arguments against the tool's own schema, as its root: its `$ref`s resolve as they were written.
    # LOCAL_ONLY: a `$ref` in a tool's schema must never make the host fetch a URL.
    validator = jsonschema.Draft202012Validator(spec.parameters, registry=LOCAL_ONLY)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(call["arguments"]))
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
