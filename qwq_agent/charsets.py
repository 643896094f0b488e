"""Which of the charsets a document names it may be decoded with.

A page names its charset (a `Content-Type` header, a `<meta charset>`), and Python has codecs under
those names that no page is in: decoding with them is slow or yields text nothing can encode again.
Every place that decodes bytes by a name the bytes' author chose goes through `known_charset`:
fetch_url, web_search's error replies and `html_parse.decode_html` (fetched pages, indexed documents).
"""

from __future__ import annotations

import codecs

# Codecs Python has that are no page encoding: utf-7 and the escape codecs decode to lone surrogates
# (text nothing can encode again), punycode is quadratic in the input (a 300 KB page took 29 s), idna
# and `undefined` raise whatever the error handler. Compared by the codec's own name, so every alias
# and spelling that reaches it (`UTF7`, `u7`, `utf--7`) is refused alike.
_REFUSED_CODECS = frozenset(
    {"utf-7", "unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined"}
)


def known_charset(charset: str | None) -> str | None:
    """`charset` if it names a text encoding a page can be in, else None (the caller then reads the
    bytes as it would bytes that name no charset)."""
    if not charset:
        return None
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):  # ValueError: a name with a NUL in it
        return None
    # bytes-to-bytes codecs (base64, zlib) are no text encodings; str.decode refuses them anyway
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED_CODECS:
        return None
    return charset


__all__ = ["known_charset"]
