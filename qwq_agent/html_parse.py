"""HTML parsed by BeautifulSoup's `html.parser`, guarded against CPython's quadratic rescan.

Every place that parses HTML we did not write (fetched pages, indexed documents) goes through
`parse_html`, so none of them can forget the guard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bs4 import BeautifulSoup

__all__ = ["escape_unclosed", "parse_html"]


def escape_unclosed(html: str | bytes) -> str | bytes:
    """`html` with each `<` after its last `>` written `&lt;`.

    Such a `<` can never complete a tag, and the parser ends up reading it as text all the same; but
    CPython's HTMLParser without the CVE-2025-6069 fix (3.11.7 here) rescans to the end of the page
    from each one: 64 KB of `<a "` took 18 s, a 2 MB page hours. Line breaks are untouched, so the
    parser's `sourceline`s still count the original lines. Bytes are left alone when the tail holds
    NUL bytes (UTF-16/32), where `<` is not one byte.
    """
    if isinstance(html, bytes):
        last = html.rfind(b">") + 1
        tail = html[last:]
        if b"<" not in tail or b"\x00" in tail:
            return html
        return html[:last] + tail.replace(b"<", b"&lt;")
    end = html.rfind(">") + 1
    rest = html[end:]
    return html if "<" not in rest else html[:end] + rest.replace("<", "&lt;")


def parse_html(html: str | bytes) -> BeautifulSoup:
    """`html` parsed with `html.parser` after `escape_unclosed`; bytes are decoded by the parser,
    which honours `<meta charset>`."""
    from bs4 import BeautifulSoup

    return BeautifulSoup(escape_unclosed(html), "html.parser")
