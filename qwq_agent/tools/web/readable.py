"""Readable text from HTML: the main content as plain text, links kept as numbered references.

A small main-content heuristic (``<main>``, ``<article>``, ``role=main``, else ``<body>``, with page
chrome such as navigation, headers, footers, scripts and forms dropped) is enough for documentation
and articles; the page is parsed by `html_parse.parse_html` (BeautifulSoup on lxml).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from urllib.parse import urljoin

from bs4 import BeautifulSoup, NavigableString, PageElement, Tag
from pydantic import BaseModel, Field

from qwq_agent.html_parse import parse_html

_DROP = ("script", "style", "noscript", "template", "svg", "canvas", "iframe", "form", "button", "select")
_CHROME = ("nav", "header", "footer", "aside")
_BLOCK = {
    "p", "div", "section", "article", "main", "blockquote", "pre", "table", "tr", "ul", "ol", "dl",
    "dt", "dd", "figure", "figcaption", "details", "summary", "address", "hr", "br",
}  # fmt: skip
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


class Link(BaseModel):
    """One numbered reference of a readable page."""

    number: int
    url: str
    text: str = ""


class ReadablePage(BaseModel):
    """The title, readable text (with `[n]` markers) and the links they refer to."""

    title: str = ""
    text: str
    links: list[Link] = Field(default_factory=list)


def html_to_readable(html: str | bytes, base_url: str = "") -> ReadablePage:
    """Extract `html`'s main content as text; relative links are resolved against `base_url`.

    Bytes are decoded by the parser, which honours `<meta charset>`.
    """
    soup = parse_html(html)  # linear in the page, whatever its markup (html_parse.py)
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup.find_all(_DROP):
        tag.decompose()
    root = _main_content(soup)
    for tag in root.find_all(_CHROME):
        tag.decompose()
    writer = _Writer(base_url)
    writer.walk(root)
    return ReadablePage(title=title, text=writer.finish(), links=writer.links)


def _main_content(soup: BeautifulSoup) -> Tag:
    for finder in (
        lambda: soup.find("main"),
        lambda: soup.select_one('[role="main"]'),
        lambda: _longest_article(soup),
        lambda: soup.body,
    ):
        found = finder()
        if isinstance(found, Tag) and found.get_text(strip=True):
            return found
    return soup


_MAX_ARTICLES = 64


def _longest_article(soup: BeautifulSoup) -> Tag | None:
    """The outermost `<article>` with the most text (of the first few).

    Measuring every article, nested ones included, read the text under each again: 10,000 nested
    `<article>`s (110 KB) took a minute. Outermost ones share no text, so this reads the page once.
    """
    found: list[Tag] = []
    stack: list[Tag] = [soup]
    while stack and len(found) < _MAX_ARTICLES:
        node = stack.pop()
        for child in reversed(node.contents):
            if isinstance(child, Tag):
                if child.name == "article":
                    found.append(child)
                else:
                    stack.append(child)
    return max(found, key=lambda t: len(t.get_text()), default=None)


class _Writer:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.lines: list[str] = []
        self.current: list[str] = []
        self.links: list[Link] = []
        self._by_url: dict[str, int] = {}

    def walk(self, node: Tag) -> None:
        # An explicit stack, not recursion: machine-made pages nest a few thousand tags deep.
        # Each entry: the children still to visit and what to do once they are done.
        stack: list[tuple[Iterator[PageElement], Callable[[], None] | None]] = [(iter(node.children), None)]
        while stack:
            children, after = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                if after is not None:
                    after()
                continue
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # skip comments, doctype, CDATA
                    self.current.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name
            if name in _HEADINGS:
                self.flush()
                text = _squash(child.get_text(" "))
                if text:
                    self.lines.append("#" * _HEADINGS[name] + " " + text)
            elif name == "pre":
                self.flush()
                self.lines.append(child.get_text().rstrip("\n"))
            elif name == "li":
                self.flush()
                self.current.append("- ")
                stack.append((iter(child.children), self.flush))
            elif name == "a":
                self.link(child)
            elif name == "img":
                alt = _squash(str(child.get("alt") or ""))
                if alt:
                    self.current.append(f"[image: {alt}]")
            elif name in ("td", "th"):
                stack.append((iter(child.children), lambda: self.current.append(" | ")))
            elif name in _BLOCK:
                self.flush()
                stack.append((iter(child.children), self.flush))
            else:
                stack.append((iter(child.children), None))

    def link(self, tag: Tag) -> None:
        text = _squash(tag.get_text(" "))
        href = str(tag.get("href") or "").strip()
        if not href or href.startswith(("#", "javascript:", "mailto:", "tel:", "data:")):
            self.current.append(text)
            return
        url = urljoin(self.base_url, href)
        number = self._by_url.get(url)
        if number is None:
            number = len(self.links) + 1
            self._by_url[url] = number
            self.links.append(Link(number=number, url=url, text=text))
        self.current.append(f"{text} [{number}]" if text else f"[{number}]")

    def flush(self) -> None:
        line = _squash("".join(self.current)).strip(" |")
        self.current = []
        if line and line != "-":
            self.lines.append(line)

    def finish(self) -> str:
        self.flush()
        out: list[str] = []
        for i, line in enumerate(self.lines):
            # Items of one list stay on consecutive lines; other blocks get a blank line between.
            if i and line.startswith("- ") and self.lines[i - 1].startswith("- "):
                out.append("\n" + line)
            else:
                out.append(("\n\n" if out else "") + line)
        return "".join(out)


def _squash(text: str) -> str:
    return _SPACES.sub(" ", text.replace("\n", " ")).strip()
