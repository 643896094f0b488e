"""Turn the text inside one `<tool_call>` block into a name and arguments, repairing what can be.

Reasoning models get the JSON of a call slightly wrong in a handful of recurring ways (trailing commas,
Python literals, code fences, arguments given as a string, a missing closing brace). Each repair applied
is named, so the loop and the user can see what was changed; what cannot be repaired gets a message
precise enough for the model to fix its own call.

Repairs only ever add or drop punctuation around values that are complete. A string left open is never
closed: the text after it is missing, and "repairing" it would run a call with half of its argument
(an edit that writes half a file). `ends_inside_string` lets the parser report such a call as cut off.
"""

from __future__ import annotations

import ast
import io
import json
import math
import tokenize
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from qwq_agent.surrogates import replace_surrogates, replace_surrogates_in

# Beyond this size we do not attempt the costlier repairs (Python parsing); a real call is far smaller.
_MAX_REPAIR_CHARS = 200_000
_FENCE = "```"
# Real arguments nest a few levels; far deeper ones cannot be recorded (pydantic refuses to serialise
# past ~255 levels) and are no honest call. Refused here, the model reads why and can retry.
MAX_ARGUMENT_DEPTH = 100


class RepairedCall(BaseModel):
    """A call decoded from a `<tool_call>` body: its name, arguments and the repairs applied."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    repairs: list[str] = Field(default_factory=list)


class CallDecodeError(ValueError):
    """The body of a `<tool_call>` block could not be turned into a call; `str(exc)` is for the model."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


def decode_call(body: str) -> RepairedCall:
    """Decode the text between `<tool_call>` and `</tool_call>` into a `RepairedCall`.

    Raises `CallDecodeError` (and nothing else) when the text cannot be repaired.
    """
    try:
        return _decode_call(body)
    except CallDecodeError:
        raise
    except Exception as exc:  # RecursionError, MemoryError from pathological nesting, or a bug here
        raise CallDecodeError(f"could not read the tool call ({type(exc).__name__}: {exc})") from None


def _decode_call(body: str) -> RepairedCall:
    repairs: list[str] = []
    text = body.strip()
    # The template writes "<tool_call>\n{...}\n</tool_call>"; only other spacing is worth reporting.
    if text and body not in (text, f"\n{text}\n", f"\n{text}", f"{text}\n"):
        repairs.append("removed extra whitespace around the JSON")
    if not text:
        raise CallDecodeError(
            'empty <tool_call> block: expected a JSON object {"name": <tool name>, "arguments": {...}}'
        )
    text, fenced = _strip_fence(text)
    if fenced:
        repairs.append("removed a code fence around the JSON")
    value = decode_json_lenient(text, repairs, what="the tool call")
    return _to_call(value, repairs)


def _strip_fence(text: str) -> tuple[str, bool]:
    if not text.startswith(_FENCE):
        return text, False
    first_newline = text.find("\n")
    if first_newline < 0:
        return text, False
    inner = text[first_newline + 1 :]
    inner = inner.rstrip()
    if inner.endswith(_FENCE):
        inner = inner[: -len(_FENCE)]
    return inner.strip(), True


def decode_json_lenient(text: str, repairs: list[str], *, what: str) -> Any:
    """Parse `text` as JSON, falling back to repairs that are appended to `repairs`.

    Raises `CallDecodeError` with the strict parser's line/column and a pointer when nothing works.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        first_error = exc
    except RecursionError:
        raise CallDecodeError(f"{what} is nested too deeply to read") from None

    if len(text) <= _MAX_REPAIR_CHARS:
        for attempt in (_fix_commas_and_brackets, _python_literal, _python_literal_json_constants):
            try:
                value, note = attempt(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, tokenize.TokenError):
                continue
            if note is not None:
                repairs.extend(note)
                return value
    message = json_error_message(text, first_error, what=what)
    if ends_inside_string(text):
        # Seen when a string holds "</tool_call>" itself: the block ended there, mid-string.
        message += '\n(a string is left open; write "</tool_call>" inside a string as "<\\/tool_call>")'
    raise CallDecodeError(message)


def ends_inside_string(text: str) -> bool:
    """Whether `text`, read as JSON, ends inside a string (an opening `"` with no closing one)."""
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
    return in_string


def json_error_message(text: str, exc: json.JSONDecodeError, *, what: str) -> str:
    """Describe a JSON error with its line and column and a caret under the offending text."""
    line_start = text.rfind("\n", 0, exc.pos) + 1
    line_end = text.find("\n", exc.pos)
    line = text[line_start : line_end if line_end >= 0 else len(text)]
    col = exc.pos - line_start
    # Keep the excerpt short for long single-line JSON, centred on the error.
    start = max(0, col - 40)
    excerpt = line[start : start + 80]
    prefix = "…" if start > 0 else ""
    caret = " " * (len(prefix) + col - start) + "^"
    return (
        f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}\n"
        f"    {prefix}{excerpt}\n    {caret}"
    )


def _fix_commas_and_brackets(text: str) -> tuple[Any, list[str] | None]:
    """Drop trailing commas, close unclosed brackets/strings at the end, drop surplus closers."""
    out: list[str] = []
    stack: list[str] = []
    notes: set[str] = set()
    in_string = False
    escaped = False
    pending_comma: int | None = None  # index in `out` of a comma that a closer may make trailing
    for ch in text:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
            pending_comma = None
            out.append(ch)
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            pending_comma = None
            out.append(ch)
        elif ch in "}]":
            if not stack or stack[-1] != ch:
                # A surplus closer after the value (e.g. "}}}"): only safe to drop when at the end.
                notes.add("removed a surplus closing bracket")
                continue
            if pending_comma is not None:
                out[pending_comma] = ""
                notes.add("removed a trailing comma")
                pending_comma = None
            stack.pop()
            out.append(ch)
        elif ch == ",":
            pending_comma = len(out)
            out.append(ch)
        else:
            if not ch.isspace():
                pending_comma = None
            out.append(ch)
    if in_string:
        return None, None  # the rest of the string is missing: nothing to repair (see module doc)
    if stack:
        if pending_comma is not None:
            return None, None  # "[1, 2," ends where a value should follow: it is unfinished, not complete
        out.extend(reversed(stack))
        notes.add("added missing closing bracket(s) at the end")
    if not notes:
        return None, None
    value = json.loads("".join(out))
    order = [
        "removed a trailing comma",
        "removed a surplus closing bracket",
        "added missing closing bracket(s) at the end",
    ]
    return value, [n for n in order if n in notes]


def _python_literal(text: str) -> tuple[Any, list[str] | None]:
    value = ast.literal_eval(text)
    return _jsonable(value), ["read a Python literal (single quotes / True / False / None) as JSON"]


def _python_literal_json_constants(text: str) -> tuple[Any, list[str] | None]:
    """Python literal that mixes in JSON's true/false/null (e.g. single quotes and `true`)."""
    mapping = {"true": "True", "false": "False", "null": "None"}
    if not any(word in text for word in mapping):
        # Nothing to map: skip the tokenizer, pure Python at ~2.5 µs a character (64 KB of "(": 0.17 s).
        return None, None
    tokens = []
    changed = False
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME and tok.string in mapping:
            tok = tok._replace(string=mapping[tok.string])
            changed = True
        tokens.append(tok)
    if not changed:
        return None, None
    value = ast.literal_eval(tokenize.untokenize(tokens))
    return _jsonable(value), ["read a Python literal (single quotes / True / False / None) as JSON"]


def _jsonable(value: Any) -> Any:
    """Check a literal_eval result is JSON data (dict keys str; no sets, bytes, complex)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("non-string key")
        return {k: _jsonable(v) for k, v in value.items()}
    raise ValueError(f"not JSON data: {type(value).__name__}")


_JSON_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _to_call(value: Any, repairs: list[str]) -> RepairedCall:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
        repairs.append("unwrapped a one-element array around the call")
    if not isinstance(value, dict):
        raise CallDecodeError(
            f'the tool call must be a JSON object {{"name": ..., "arguments": {{...}}}}, got a {_json_type(value)}'
        )
    if "name" not in value and isinstance(value.get("function"), dict):
        value = value["function"]
        repairs.append('unwrapped a "function" object around the call')

    name = value.get("name")
    if name is None:
        keys = ", ".join(repr(k) for k in value) or "none"
        raise CallDecodeError(f'the tool call has no "name" (keys given: {keys})')
    if not isinstance(name, str) or not name.strip():
        raise CallDecodeError(f'"name" must be a non-empty string, got {json.dumps(name)[:80]}')
    if name != name.strip():
        repairs.append("removed whitespace around the name")
        name = name.strip()

    if "arguments" in value:
        args = value["arguments"]
    elif "parameters" in value:
        args = value["parameters"]
        repairs.append('read "parameters" as "arguments"')
    else:
        args = {}
        repairs.append('no "arguments" given; used {}')

    if isinstance(args, str):
        if args.strip():
            try:
                args = decode_json_lenient(args.strip(), repairs, what='the "arguments" string')
            except CallDecodeError as exc:
                raise CallDecodeError(str(exc), name=name) from None
        else:
            args = {}
        repairs.append('"arguments" was given as a JSON string; decoded it')
    elif args is None:
        args = {}
        repairs.append('"arguments" was null; used {}')
    if not isinstance(args, dict):
        raise CallDecodeError(
            f'"arguments" must be a JSON object mapping parameter names to values, got a {_json_type(args)}',
            name=name,
        )
    if _depth_exceeds(args, MAX_ARGUMENT_DEPTH):
        raise CallDecodeError(
            f'"arguments" nest deeper than {MAX_ARGUMENT_DEPTH} levels of arrays and objects; '
            "pass deep data flattened or as a string",
            name=name,
        )
    # json.loads reads NaN, Infinity and 1e999 (literal_eval too), which JSON has no numbers for: the tool
    # would get them while the trace records null (and a NaN timeout never expires). The model is told.
    problem = non_finite_problem(args)
    if problem is not None:
        raise CallDecodeError(
            f"{problem}, so the call was not run. Give a finite number instead "
            "(or leave the argument out, if it is optional).",
            name=name,
        )
    # json.loads accepts "\ud83d" (half a pair) as a lone surrogate, which nothing can encode again:
    # the next request, the trace and the terminal would all fail on it.
    clean_name, clean_args = replace_surrogates(name), replace_surrogates_in(args)
    if clean_name is not name or clean_args is not args:
        repairs.append("replaced unpaired surrogate escape(s) (\\udXXX) with U+FFFD")
    return RepairedCall(name=clean_name, arguments=clean_args, repairs=repairs)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests deeper than `limit` containers (iterative: no recursion limit to hit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def non_finite_problem(arguments: Mapping[str, Any]) -> str | None:
    """The first NaN or infinity in `arguments`, named with where it is; None when there is none.

    JSON has no such numbers, though Python's `json` reads `NaN`, `Infinity` and numbers past a
    double's range (`1e999`). Iterative: no recursion limit to hit.
    """
    stack: list[tuple[str, Any]] = [(_key(k), v) for k, v in reversed(list(arguments.items()))]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            if math.isnan(value):
                return f"argument {path} is NaN, which is not a number JSON allows (numbers must be finite)"
            sign = "-" if value < 0 else ""
            return (
                f"argument {path} is {sign}Infinity (or a number too large for JSON, such as {sign}1e999), "
                "which is not a number JSON allows (numbers must be finite)"
            )
        if isinstance(value, dict):
            stack.extend((f"{path}[{_key(k)}]", v) for k, v in reversed(list(value.items())))
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def _key(key: Any) -> str:
    return json.dumps(key, ensure_ascii=False)
