"""Tool schemas' regular expressions matched by RE2, in time linear in the text.

jsonschema matches `pattern`, `patternProperties` and the property names `additionalProperties`
checks with Python's `re`, which backtracks: a schema's `^(\\w+\\s?)*$` (a common "words" pattern)
against 30 characters of a model's argument takes minutes, and holds the GIL all along, so not even a
worker thread leaves the event loop free. Schemas come from MCP servers and arguments from a model
that reads web pages, so neither can be trusted to keep that cheap.

Why RE2 (google-re2, Google's own bindings): it never backtracks, so its time is linear in the text
whatever the pattern; JSON Schema's patterns are ECMA-262, whose `\\d`, `\\w`, `\\s` and `$` RE2 reads
as ECMA does (ASCII classes, `$` at the very end only) where Python's `re` does not. What it leaves
out is what needs backtracking: lookaround and backreferences. A pattern RE2 cannot compile is not
checked here, nor is a non-ASCII text it does not match (`pattern_search`): never an error on their
account, as the tool, or its MCP server, still checks its own arguments. Python's `re` has no time
limit, and a thread cannot stop it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from qwq_agent.surrogates import replace_surrogates

__all__ = ["Re2Validator", "pattern_search"]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a pattern it cannot compile is expected, not worth a line on stderr


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error:  # lookaround, backreferences, a program past RE2's memory budget
        return None


def pattern_search(pattern: str, text: str) -> bool | None:
    """Whether `pattern` matches somewhere in `text` (JSON Schema's unanchored search); None when it
    cannot be told: RE2 cannot compile the pattern, or does not match a text that is not ASCII."""
    compiled = _compiled(pattern)
    if compiled is None:
        return None
    # RE2 reads UTF-8, and a lone surrogate (a JSON escape of half a pair) has none.
    if compiled.search(replace_surrogates(text)) is not None:
        return True
    # Its `\d`, `\w`, `\s` and `\b` are ASCII; Python's `re` (and pydantic, checking a local tool's
    # own arguments) reads them as Unicode. A miss on other text may be that difference: not an error.
    return False if text.isascii() else None


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and pattern_search(patrn, instance) is False:
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in patterns.items():
        for key, value in instance.items():
            if pattern_search(patrn, key):
                yield from validator.descend(value, subschema, path=key, schema_path=patrn)


def _additional_properties(
    validator: Any, extra: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    # jsonschema's own, with the names matched by RE2; one a pattern RE2 cannot run may cover is not extra.
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = [
        key
        for key in instance
        if key not in properties and not any(pattern_search(p, key) is not False for p in patterns)
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


# Draft 2020-12 with its regular expressions on RE2. Not covered: `unevaluatedProperties` next to
# `patternProperties` still matches names with jsonschema's `re` (deep inside its evaluation walk,
# which is not copied here); `format: regex` is not asserted at all (these validators have no format
# checker).
Re2Validator: Any = validators.extend(
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)
