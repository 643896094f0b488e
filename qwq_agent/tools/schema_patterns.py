"""The validator of tools' arguments: JSON Schema 2020-12 whose regular expressions run under a time
limit, and whose `uniqueItems` is linear.

jsonschema matches `pattern`, `patternProperties`, the property names `additionalProperties` and
`unevaluatedProperties` check with Python's `re`, which backtracks without end (`^(a|a)*$` against
40 characters: longer than the universe) and holds the GIL all along, so not even a worker thread
leaves the event loop free. Schemas come from MCP servers and arguments from a model that reads web
pages, so neither can be trusted to keep that cheap.

Why the `regex` module: its syntax and semantics are Python's `re` (what these schemas were always
enforced with, and what pydantic's checks of a local tool read `\\w` and `\\d` as), it takes a
`timeout=` per match, and `concurrent=True` lets other threads run meanwhile. A match that runs out
of time is never taken as a pass: it stops the check (`PatternTimeout`) and the call is refused.
RE2 (before) was linear but not Python's dialect: it skipped non-ASCII text, its `\\s` has no `\\v`,
and it could not compile `\\uXXXX` or `{1,4096}`, so those `pattern`s were silently not enforced.

Patterns are JSON Schema's, i.e. ECMA-262: its `\\u{...}` and `\\cX` escapes are rewritten to Python's
spelling, and its `$` (end of text; Python's also matches before a final newline, so `^[a-z]+$` let
`"ok\\n"` through) to `\\Z` (`to_python`). A pattern that still does not compile makes the schema
invalid at load (`check_schema`): the tool is refused, never offered with a check that cannot run.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import regex
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError

__all__ = [
    "MATCH_TIMEOUT_S",
    "ArgumentValidator",
    "CheckStopped",
    "PatternTimeout",
    "check_budget",
    "check_schema",
    "pattern_search",
    "search_in_time",
    "to_python",
]

# One match's limit. Real patterns take microseconds on real arguments; what needs more is backtracking.
MATCH_TIMEOUT_S = 0.25
# `uniqueItems` and the walks look at the budget every this many items.
_CHECK_EVERY = 1024


class PatternTimeout(Exception):
    """A value (or a property name) could not be matched against a schema's pattern in time.

    Raised, not yielded as a `ValidationError`: under `not`, `anyOf` or `if`, a failure reads as a
    branch not taken, and a check that did not finish must refuse the call, never let it through.
    """

    def __init__(self, pattern: str, text: str, *, name: bool) -> None:
        super().__init__(pattern)
        self.pattern = pattern
        self.text = text
        self.name = name  # a property name, not a value


class CheckStopped(Exception):
    """The check's time is up (the call's limit passed, or its caller gave up on it)."""


class _Budget(threading.local):
    deadline: float | None = None
    stop: threading.Event | None = None


_budget = _Budget()


@contextmanager
def check_budget(deadline: float | None, stop: threading.Event | None = None) -> Iterator[None]:
    """Within it, this thread's checks end with `CheckStopped` once `time.monotonic()` passes
    `deadline` or `stop` is set; each match is also cut to what is left."""
    saved = _budget.deadline, _budget.stop
    _budget.deadline, _budget.stop = deadline, stop
    try:
        yield
    finally:
        _budget.deadline, _budget.stop = saved


def _time_left() -> float:
    """The time the next match may take; raises `CheckStopped` when there is none."""
    if _budget.stop is not None and _budget.stop.is_set():
        raise CheckStopped
    if _budget.deadline is None:
        return MATCH_TIMEOUT_S
    left = _budget.deadline - time.monotonic()
    if left <= 0:
        raise CheckStopped
    return min(MATCH_TIMEOUT_S, left)


def _stoppable(check: Any) -> Any:
    # Every keyword first looks at the budget: a check given up on (a combinatorial `anyOf` nest runs
    # for minutes) stops at its next keyword instead of holding one of the checks' threads.
    def checked(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _time_left()
        return check(validator, value, instance, schema)

    return checked


_BRACED = regex.compile(r"\{([0-9A-Fa-f]{1,6})\}")


def to_python(pattern: str) -> str:
    """An ECMA-262 `pattern` in Python's dialect: `\\u{1F600}` as `\\U0001f600`, `\\cJ` as `\\x0a`, and
    `$` outside a class as `\\Z` (ECMA's `$` is the end of the text; Python's is also before a final
    newline). `\\uXXXX` is the same in both."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            braced = _BRACED.match(pattern, i + 2) if nxt == "u" else None
            if braced is not None and int(braced.group(1), 16) <= 0x10FFFF:
                out.append(f"\\U{int(braced.group(1), 16):08x}")
                i = braced.end()
            elif nxt == "c" and i + 2 < n and pattern[i + 2].isascii() and pattern[i + 2].isalpha():
                out.append(f"\\x{ord(pattern[i + 2]) % 32:02x}")
                i += 3
            else:
                out.append(pattern[i : i + 2])
                i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            # Python reads a `]` right after `[` or `[^` as a member, not the end of the class.
            start = i + 2 if pattern.startswith("^", i + 1) else i + 1
            if pattern.startswith("]", start):
                out.append(pattern[i : start + 1])
                i = start + 1
                continue
        elif c == "$":
            c = "\\Z"
        out.append(c)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> Any:
    return regex.compile(to_python(pattern), regex.V0)


def _compiles(pattern: object) -> bool:
    if not isinstance(pattern, str):
        return True  # the metaschema's `type` says what is wrong with it
    _compiled(pattern)  # raises regex.error
    return True


# The metaschema's `format: regex` (every `pattern` and `patternProperties` name) checked with the
# compiler the arguments are matched with; jsonschema's default checks it with `re`, which refuses
# `\p{L}` and ECMA's escapes that `to_python` reads. The other formats are jsonschema's own.
_SCHEMA_FORMATS = FormatChecker(formats=list(Draft202012Validator.FORMAT_CHECKER.checkers))
_SCHEMA_FORMATS.checks("regex", raises=(regex.error, ValueError, OverflowError))(_compiles)


def check_schema(schema: Any) -> None:
    """Raise jsonschema's `SchemaError` unless `schema` is a valid 2020-12 schema whose patterns all
    compile (`to_python`, then `regex`)."""
    Draft202012Validator.check_schema(schema, format_checker=_SCHEMA_FORMATS)


def schema_error_path(error: Any) -> str:
    """Where in a schema `check_schema`'s error is, as `$.a[0].b`."""
    return "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def pattern_search(pattern: str, text: str, *, name: bool = False) -> bool:
    """Whether `pattern` matches somewhere in `text` (JSON Schema's unanchored search).

    Raises `PatternTimeout` when the match takes longer than `MATCH_TIMEOUT_S` (`name`: the text is a
    property name), `CheckStopped` when the check's budget (`check_budget`) is spent, and
    `regex.error` for a pattern that does not compile (`check_schema` refuses those at load).
    """
    try:
        return search_in_time(_compiled(pattern), text)
    except TimeoutError:
        raise PatternTimeout(pattern, text, name=name) from None


def search_in_time(compiled: Any, text: str) -> bool:
    """Whether the compiled `regex` pattern `compiled` matches somewhere in `text`, under this thread's
    budget (`check_budget`), with the GIL released meanwhile.

    Raises `TimeoutError` when the match alone takes longer than `MATCH_TIMEOUT_S`, `CheckStopped` when
    the check's budget is spent. Never answers for a match that did not finish.
    """
    timeout = _time_left()
    try:
        return compiled.search(text, timeout=timeout, concurrent=True) is not None
    except TimeoutError:
        if timeout < MATCH_TIMEOUT_S:
            raise CheckStopped from None  # the check's own time ran out, not the match's
        raise


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not pattern_search(patrn, instance):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in patterns.items():
        for key, value in instance.items():
            if pattern_search(patrn, key, name=True):
                yield from validator.descend(value, subschema, path=key, schema_path=patrn)


def _additional_properties(
    validator: Any, extra: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    # jsonschema's own, with the names matched here.
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = [
        key
        for key in instance
        if key not in properties and not any(pattern_search(p, key, name=True) for p in patterns)
    ]
    if validator.is_type(extra, "object"):
        for key in extras:
            yield from validator.descend(instance[key], extra, path=key)
    elif not extra and extras:
        names = ", ".join(repr(key) for key in sorted(extras))
        if patterns:
            verb = "does" if len(extras) == 1 else "do"
            listed = ", ".join(repr(p) for p in sorted(patterns))
            yield ValidationError(f"{names} {verb} not match any of the regexes: {listed}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


def _scope(validator: Any) -> tuple[str, tuple[str, ...]]:
    """What a walk's result depends on besides the subschema and the instance: the base URI its `$ref`s
    resolve against and the dynamic scope (`$dynamicRef`, in the validations the walk runs)."""
    resolver = validator._resolver
    return resolver._base_uri, tuple(uri for uri, _ in resolver.dynamic_scope())


def _evaluated_keys(
    validator: Any, instance: dict[str, Any], schema: Any, seen: dict[Any, set[str]] | None = None
) -> set[str]:
    """jsonschema's `find_evaluated_property_keys_by_schema` (4.26), with `patternProperties` names
    matched here (it calls `re.search` itself, deep in this walk), the budget looked at on every step,
    and each (subschema, scope) walked once.

    jsonschema's walk follows `$ref`, `dependentSchemas` and the passing `anyOf`/`allOf` branches
    afresh each time it meets them: a schema 40 levels deep whose levels reach the next one twice is
    2**40 steps, and with no keyword call on the way nothing stopped it when its call was given up on.
    `seen` (one walk's memory: the instance is the same throughout) makes it linear in the schema.
    """
    _time_left()
    if validator.is_type(schema, "boolean"):
        return set()
    if seen is None:
        seen = {}
    # `id`: subschemas are parts of the schema (or of the resolver's registry), alive throughout.
    memo_key = (id(schema), _scope(validator))
    if (known := seen.get(memo_key)) is not None:
        return known
    keys: set[str] = set()
    for ref_keyword in ("$ref", "$dynamicRef"):
        ref = schema.get(ref_keyword)
        if ref is not None:
            resolved = validator._resolver.lookup(ref)
            keys |= _evaluated_keys(
                validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                instance,
                resolved.contents,
                seen,
            )
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (subschema := schema.get(keyword)) is not None:
            keys |= {
                key
                for key, value in instance.items()
                if next(validator.descend(value, subschema), None) is None
            }
    for patrn in schema.get("patternProperties", ()):
        keys |= {key for key in instance if pattern_search(patrn, key, name=True)}
    for key, subschema in schema.get("dependentSchemas", {}).items():
        if key in instance:
            keys |= _evaluated_keys(validator, instance, subschema, seen)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if next(validator.descend(instance, subschema), None) is None:
                keys |= _evaluated_keys(validator, instance, subschema, seen)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"], seen)
            if "then" in schema:
                keys |= _evaluated_keys(validator, instance, schema["then"], seen)
        elif "else" in schema:
            keys |= _evaluated_keys(validator, instance, schema["else"], seen)
    seen[memo_key] = keys
    return keys


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    # jsonschema's own (4.26), on `_evaluated_keys`.
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    refused = [
        key
        for key in instance
        if key not in evaluated
        and next(validator.descend(instance[key], unevaluated, path=key, schema_path=key), None) is not None
    ]
    if refused:
        names = ", ".join(repr(key) for key in sorted(refused, key=str))
        verb = "was" if len(refused) == 1 else "were"
        if unevaluated is False:
            yield ValidationError(f"Unevaluated properties are not allowed ({names} {verb} unexpected)")
        else:
            yield ValidationError(
                f"Unevaluated properties are not valid under the given schema ({names} {verb} unevaluated and invalid)"
            )


def _json_key(value: Any) -> Any:
    """A hashable stand-in for a JSON value, equal for values jsonschema's `equal` calls equal: 1 and
    1.0 are (Python's numbers compare and hash so), True and 1 are not (tagged apart), and object keys
    are unordered."""
    if value is True or value is False:
        return ("bool", value)
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, Mapping):
        return ("object", frozenset((k, _json_key(v)) for k, v in value.items()))
    if isinstance(value, Sequence):
        return ("array", tuple(_json_key(v) for v in value))
    if isinstance(value, int | float) or value is None:
        return ("scalar", value)
    return ("other", id(value))  # not JSON: equal only to itself, like jsonschema's fallback


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    # jsonschema compares items pairwise when they do not sort (objects, mixed types): 6,000 rows of
    # `{"k": i}` took minutes. Each item's key goes into a set instead: linear.
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: dict[Any, int] = {}
    for number, item in enumerate(instance):
        if number % _CHECK_EVERY == 0:
            _time_left()
        first = seen.setdefault(_json_key(item), number)
        if first != number:
            # not jsonschema's message: it starts with the whole array, which can be megabytes
            yield ValidationError(f"has non-unique elements: item {number} equals item {first}")
            return


# Draft 2020-12 with the keywords above, each stoppable. `format` is not asserted (no format checker).
_KEYWORDS = {
    **Draft202012Validator.VALIDATORS,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "unevaluatedProperties": _unevaluated_properties,
    "uniqueItems": _unique_items,
}
ArgumentValidator: Any = validators.extend(
    Draft202012Validator, {keyword: _stoppable(check) for keyword, check in _KEYWORDS.items()}
)
