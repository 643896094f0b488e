"""Lone surrogates (U+D800-U+DFFF) in untrusted text, replaced with U+FFFD where the text comes in.

Python strings may hold them (a JSON escape of half a pair, `"\\ud83d"`; a page decoded with a codec
that makes them), but nothing can encode such a string as UTF-8: the first thing that sends it on (the
next request to the model, the trace, the terminal) fails far from where it came in, and takes the run
or its trace with it. The boundaries that take in text (the model clients, the tool-call parser,
`ToolRegistry.call`, and `Agent.stream` for the user's task, history and system prompt: a command-line
argument that is not UTF-8 arrives with them) pass it through here once. Text from the sandbox has its
own, byte-preserving escapes (`qwq_agent.sandbox.surrogates`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "REPLACEMENT",
    "SURROGATE",
    "escape_surrogates",
    "map_strings",
    "may_decode_to_surrogates",
    "replace_surrogates",
    "replace_surrogates_in",
]

REPLACEMENT = "\ufffd"
SURROGATE = re.compile("[\ud800-\udfff]")
# A JSON escape that decodes to a surrogate: JSON text without one decodes to strings without them
# (when the text itself holds none), so only text with one needs the decoded value walked.
_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def may_decode_to_surrogates(json_text: str) -> bool:
    """Whether `json.loads(json_text)` can hold a lone surrogate (False is certain, True is a maybe)."""
    return _ESCAPE.search(json_text) is not None or SURROGATE.search(json_text) is not None


def replace_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (the same object when there is none)."""
    return SURROGATE.sub(REPLACEMENT, text) if SURROGATE.search(text) else text


def escape_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by a backslash escape: `\\xNN` for one that stands for a
    byte (`surrogateescape`), `\\udNNN` for any other; the same object when there is none."""
    return SURROGATE.sub(_escape, text) if SURROGATE.search(text) else text


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def replace_surrogates_in(obj: Any) -> Any:
    """`obj` (decoded JSON: dicts, lists, scalars) with `replace_surrogates` applied to every string,
    keys included; containers without one come back as they are."""
    return map_strings(obj, replace_surrogates)


def map_strings(obj: Any, fn: Callable[[str], str]) -> Any:
    """`obj` (decoded JSON) with `fn` applied to every string, keys included; a container in which `fn`
    changed nothing (returned each string itself) comes back as the same object."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        items = [(map_strings(k, fn), map_strings(v, fn)) for k, v in obj.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, obj.items(), strict=True)):
            return obj
        return dict(items)
    if isinstance(obj, list):
        values = [map_strings(v, fn) for v in obj]
        return obj if all(v is v0 for v, v0 in zip(values, obj, strict=True)) else values
    return obj
