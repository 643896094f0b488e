"""HTML parsed by BeautifulSoup on libxml2's HTML parser (lxml), in time linear in the page.

Every place that parses HTML we did not write (fetched pages, indexed documents) goes through
`parse_html`, so none of them can pick a slower parser.

Why not `html.parser`: CPython 3.11.7's HTMLParser rescans to the end of the page from every construct
that does not close (hours for 2 MB), and it never closes an element by itself, so ordinary pages that
leave out optional end tags (`<li>a<li>b`, `<p>a<p>b`) nest every item in the one before, and
BeautifulSoup's tree builder walks all of those ancestors for each string it adds: quadratic again. A
guard that escaped the unclosed constructs (round 1) had its own end marker leak into the text (at a
`&#` that is no reference, HTMLParser dumps the rest of the page as raw text). libxml2 tokenizes in C,
in one pass, and closes implied end tags as browsers do.

What is still bounded here: nesting. Markup nested thousands deep on purpose (`<div>` after `<div>`)
costs BeautifulSoup O(depth) a string; past `MAX_DEPTH` open elements, a new element closes the
deepest one and takes its place, as its next sibling, which keeps the cost linear. Browsers cap it the
same way (Chromium: 512). Dropping those start tags instead (round 2) turned a `<script>`'s code and a
`<style>`'s rules behind a few hundred unclosed `<font>`s into page text, and its headings into words.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from qwq_agent.surrogates import replace_surrogates

if TYPE_CHECKING:
    from bs4 import BeautifulSoup

__all__ = ["MAX_DEPTH", "decode_html", "parse_html", "unify_line_ends"]

MAX_DEPTH = 256


def unify_line_ends(text: str) -> str:
    """`text` with each `\\r\\n` and each lone `\\r` as `\\n`: what the HTML standard does to a page's
    text before it tokenizes it, and the lines editors, `grep -n` and the indexer (`extract._lines`)
    count. Source lines are counted in `\\n`s, so a page with lone-`\\r` line ends was all "line 1"."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def decode_html(html: bytes) -> str:
    """`html`'s text, decoded as BeautifulSoup decodes bytes (BOM, `<meta charset>`, then guesses).

    A charset `charsets.known_charset` refuses (punycode, utf-7...) is passed over, whatever name the
    page gives it: the page is then read as one that names no charset. Raises bs4's
    `ParserRejectedMarkup` when nothing decodes it, as BeautifulSoup would.
    """
    from bs4.exceptions import ParserRejectedMarkup

    text = _dammit_class()(html, is_html=True).unicode_markup
    if text is None:
        raise ParserRejectedMarkup("could not decode the page to text")
    return text


@functools.cache
def _dammit_class() -> Any:
    from bs4 import UnicodeDammit

    from qwq_agent.charsets import known_charset

    class Dammit(UnicodeDammit):
        """bs4's decoder, with the codecs `known_charset` refuses taken out after bs4 has resolved the
        name: `exclude_encodings` matches names as written, and bs4 also reads `puny-code` (dashes
        dropped) and Python `utf--7` as codecs it would not have excluded."""

        def find_codec(self, charset: str) -> str | None:
            codec = super().find_codec(charset)
            return codec if known_charset(codec) else None

    return Dammit


@functools.cache
def _builder_class() -> Any:
    from bs4.builder._lxml import LXMLTreeBuilder
    from bs4.exceptions import ParserRejectedMarkup
    from lxml import etree

    class Builder(LXMLTreeBuilder):
        """bs4's lxml builder, with source lines (`Tag.sourceline`) and nesting capped at MAX_DEPTH
        (an element that would go deeper is the next sibling of the deepest one instead).

        lxml's parser target hears of elements, not of where they are, so the page is fed a line at a
        time (up to a `>`, the earliest a start tag can be reported): a tag's line is that of its `>`,
        where its text starts.
        """

        def feed(self, markup: Any) -> None:
            assert self.soup is not None  # set by BeautifulSoup before it feeds
            if not isinstance(markup, str):
                markup = markup.decode("utf-8", "replace")  # prepare_markup's fallback; decoded above
            markup = unify_line_ends(markup)  # lines are counted in "\n"s below
            self._line = 1
            # One entry for each element libxml2 has open: its tag while it is open here too, None
            # once it was closed to make room at the cap (its end, when it comes, is then a no-op).
            self._opened: list[Any] = []
            self._depth = 0
            try:
                parser = self.parser_for(self.soup.original_encoding)
                start, size = 0, len(markup)
                while start < size:
                    gt = markup.find(">", start)
                    stop = size if gt < 0 else markup.find("\n", gt) + 1 or size
                    self._line_of_gt = self._line + markup.count("\n", start, gt if gt >= 0 else stop)
                    parser.feed(markup[start:stop])
                    self._line += markup.count("\n", start, stop)
                    start = stop
                try:
                    parser.close()
                except etree.XMLSyntaxError:
                    pass  # a page with no element at all ("no element found"): an empty tree
            except (UnicodeDecodeError, LookupError, etree.ParserError) as exc:
                raise ParserRejectedMarkup(exc) from exc

        def start(self, tag: Any, attrib: Any, nsmap: Any = None) -> None:
            if self._depth >= MAX_DEPTH:
                # At the cap the deepest open element is always libxml2's innermost (the last entry):
                # only an open element's start brings the depth to the cap, and its end leaves it.
                super().end(self._opened[-1])
                self._opened[-1] = None
                self._depth -= 1
            self._opened.append(tag)
            self._depth += 1
            super().start(tag, attrib, nsmap or {})
            opened = self.soup.currentTag if self.soup is not None else None
            if opened is not None:
                opened.sourceline = self._line_of_gt

        def end(self, tag: Any) -> None:
            # libxml2 reports an end for every start, implied ones included
            if self._opened and self._opened.pop() is not None:
                self._depth -= 1
                super().end(tag)

    return Builder


def parse_html(html: str | bytes) -> BeautifulSoup:
    """`html` parsed by libxml2 into a BeautifulSoup tree whose tags know their source line.

    Bytes are decoded first (`decode_html`, which honours `<meta charset>`). Lone surrogates (a page
    decoded with a codec that makes them) become U+FFFD: libxml2 reads UTF-8, which has none.
    """
    from bs4 import BeautifulSoup

    text = decode_html(html) if isinstance(html, bytes) else html
    return BeautifulSoup(replace_surrogates(text), builder=_builder_class()())
