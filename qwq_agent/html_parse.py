"""HTML parsed by BeautifulSoup's `html.parser`, guarded against CPython's quadratic rescan.

Every place that parses HTML we did not write (fetched pages, indexed documents) goes through
`parse_html`, so none of them can forget the guard.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bs4 import BeautifulSoup

__all__ = ["decode_html", "escape_unclosed", "parse_html"]

# Where the last of each closer html.parser looks for starts (3.11.7's `_markupbase` patterns): the
# greedy `.*` backs off from the end, so the first match is the one that starts last. Anchored with
# `match`, it backs off once (linear); `search` would start over from every position.
_LAST_COMMENT_CLOSE = re.compile(r"(?s:.*)(--\s*>)")
_LAST_SECTION_CLOSE = re.compile(r"(?s:.*)(\]\s*\]\s*>)")  # <![CDATA[ ... ]]> and its kin
_LAST_MS_SECTION_CLOSE = re.compile(r"(?s:.*)(\]\s*>)")  # <![if ...]> ... <![endif]>
_SECTION_OPEN = re.compile(r"<!\[([a-zA-Z][-_.a-zA-Z0-9]*)")
_SECTION_NAMES = frozenset({"temp", "cdata", "ignore", "include", "rcdata"})
_MS_SECTION_NAMES = frozenset({"if", "else", "endif"})
# After text, an empty comment. Inside a start tag it is more of the tag and ends it with its `>`,
# wherever the tag stopped: in its name or an attribute's (the characters are allowed there), after
# `=` (a bare value: it starts with `<`, not a quote), in a value quoted with `'` or `"` (a quote
# closes it, the rest is an attribute name) or one whose quote never closed.
_TERMINATOR = "<!--'\"'\"-->"


def decode_html(html: bytes) -> str:
    """`html`'s text, decoded as BeautifulSoup decodes bytes (BOM, `<meta charset>`, then guesses).

    Raises bs4's `ParserRejectedMarkup` when nothing decodes it, as BeautifulSoup would.
    """
    from bs4 import UnicodeDammit
    from bs4.exceptions import ParserRejectedMarkup

    text = UnicodeDammit(html, is_html=True).unicode_markup
    if text is None:
        raise ParserRejectedMarkup("could not decode the page to text")
    return text


def escape_unclosed(html: str) -> str:
    """`html` made safe for CPython's HTMLParser: every construct in it has an end to find.

    The parser without the CVE-2025-6069 fix (3.11.7 here) looks ahead from each `<` for the end of
    what it opens: `>` for a tag, `-->` for `<!--`, `]]>` for `<![CDATA[` (`]>` for `<![if`). When
    the end is not there it reads the construct as text up to the next `>` and tries again at the
    next opener, so each one rescans to the end of the page: 64 KB of `<a "` took 18 s, 140 KB of
    `<!--<a>` 3 s, a 2 MB page hours. So:

    - the `<` of each opener whose end never comes is written `&lt;`: it is the text the parser
      would have made of it, at once;
    - `_TERMINATOR` is appended: a start tag's look-ahead crosses `>`s inside quoted values, and
      one that ran into the end of the page (or into a quote never closed) failed far away, again
      for every tag of the chain. The terminator ends such a tag whatever state it stopped in
      (the tag then holds the rest of the page, as in a browser); after text it is an empty comment.

    Only `<` is replaced, never a closer, so what did close still closes. Line breaks are untouched:
    the parser's `sourceline`s still count the original lines.
    """
    escape: list[int] = []
    comment_close = _last_start(_LAST_COMMENT_CLOSE, html)
    start = max(0, comment_close - 3)  # the parser looks for `--` from 4 past the `<` of `<!--`
    while (found := html.find("<!--", start)) >= 0:
        escape.append(found)
        start = found + 4
    section_close = _last_start(_LAST_SECTION_CLOSE, html)
    ms_section_close = _last_start(_LAST_MS_SECTION_CLOSE, html)
    for opener in _SECTION_OPEN.finditer(html, max(0, min(section_close, ms_section_close) - 2)):
        name = opener.group(1).lower()
        close = section_close if name in _SECTION_NAMES else ms_section_close
        # Other names make the parser raise at once (bs4's ParserRejectedMarkup): no rescan to stop.
        if (name in _SECTION_NAMES or name in _MS_SECTION_NAMES) and close < opener.start() + 3:
            escape.append(opener.start())
    last_gt = html.rfind(">")
    start = last_gt + 1
    while (found := html.find("<", start)) >= 0:  # nothing after the last `>` can close
        escape.append(found)
        start = found + 1
    pieces: list[str] = []
    done = 0
    for at in sorted(set(escape)):
        pieces += (html[done:at], "&lt;")
        done = at + 1
    pieces += (html[done:], _TERMINATOR)
    return "".join(pieces)


def _last_start(last: re.Pattern[str], html: str) -> int:
    """Where the last match of a closer starts, or -1."""
    found = last.match(html)
    return found.start(1) if found else -1


def parse_html(html: str | bytes) -> BeautifulSoup:
    """`html` parsed with `html.parser` after `escape_unclosed`.

    Bytes are decoded first (`decode_html`, which honours `<meta charset>`), so the guard sees the
    text the parser will: it used to skip bytes holding a NUL (UTF-16 pages, where `<` is not one
    byte), and one NUL byte in a UTF-8 page switched it off.
    """
    from bs4 import BeautifulSoup

    text = decode_html(html) if isinstance(html, bytes) else html
    return BeautifulSoup(escape_unclosed(text), "html.parser")
