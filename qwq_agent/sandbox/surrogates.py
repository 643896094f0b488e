"""Text from the sandbox made encodable: lone surrogates (file names that were not UTF-8) become escapes.

Python hands a non-UTF-8 file name back with lone surrogates (surrogateescape); such a string survives
JSON but nothing can encode it as UTF-8, so the first thing that sends it on (the request to the model,
a trace, `model_dump_json`) fails far from where it came in. Here they become `\\xNN` (or `\\udNNN` for
a surrogate that does not stand for a byte), as the supervisor itself writes them.
"""

from __future__ import annotations

import re
from typing import Any

from qwq_agent.surrogates import SURROGATE, map_strings


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def clean_text(text: str) -> str:
    """`text` with each lone surrogate replaced by a backslash escape (unchanged when there is none)."""
    return SURROGATE.sub(_escape, text) if SURROGATE.search(text) else text


def clean(obj: Any) -> Any:
    """`obj` (decoded JSON) with every string, keys included, passed through `clean_text`."""
    return map_strings(obj, clean_text)
