"""Text from the sandbox made encodable: lone surrogates (file names that were not UTF-8) become escapes.

Python hands a non-UTF-8 file name back with lone surrogates (surrogateescape); such a string survives
JSON but nothing can encode it as UTF-8, so the first thing that sends it on (the request to the model,
a trace, `model_dump_json`) fails far from where it came in. Here they become `\\xNN` (or `\\udNNN` for
a surrogate that does not stand for a byte), as the supervisor itself writes them.
"""

from __future__ import annotations

from typing import Any

from qwq_agent.surrogates import escape_surrogates, map_strings


def clean_text(text: str) -> str:
    """`text` with each lone surrogate replaced by a backslash escape (unchanged when there is none)."""
    return escape_surrogates(text)


def clean(obj: Any) -> Any:
    """`obj` (decoded JSON) with every string, keys included, passed through `clean_text`."""
    return map_strings(obj, clean_text)
