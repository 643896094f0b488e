"""The `fetch_url` tool: download a web page on the host and hand the model its readable text."""

from __future__ import annotations

import asyncio
import html
import json
import re
import ssl
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from qwq_agent.charsets import known_charset
from qwq_agent.protocols import ToolContext, ToolOutput
from qwq_agent.tools.base import ModelTool
from qwq_agent.tools.netguard import AddressPolicy, AddressRefused
from qwq_agent.tools.web.fetch import FetchedPage, FetchError, FetchLimits, guarded_get
from qwq_agent.tools.web.readable import Link, html_to_readable

_HTML = {"text/html", "application/xhtml+xml"}
_JSON_SUFFIX = "+json"
# `max_chars` cuts the page's text; its title and the URLs of the links shown come on top of it, so
# each is capped on its own: a 300 KB <title> or href was added whole, on every offset of the page.
MAX_TITLE_CHARS = 300
MAX_URL_CHARS = 2_000
_LINK_MARKER = re.compile(r"\[([1-9][0-9]*)\]")


class FetchUrlArgs(BaseModel):
    """Arguments of `fetch_url`."""

    model_config = ConfigDict(extra="forbid")  # a misspelt argument is an error, not silently ignored

    url: str = Field(description="The http(s) URL to fetch.")
    offset: int = Field(
        default=0, ge=0, description="Character offset into the page text, to read past a previous cut."
    )
    max_chars: int = Field(
        default=12_000, ge=200, le=100_000, description="Most characters of text to return."
    )


class FetchUrl(ModelTool[FetchUrlArgs]):
    """Fetch a URL and return its main content as text, links as numbered references.

    Runs on the host: the address policy (`AddressPolicy`) keeps it away from loopback, private,
    link-local and metadata addresses unless explicitly allowed.
    """

    name = "fetch_url"
    description = (
        "Download a web page (HTML, plain text or JSON) and return its readable text. Links are "
        "shown as [n] with the URL list at the end; cite the page URL. Long pages are cut: call "
        "again with `offset` to continue."
    )
    Args = FetchUrlArgs

    def __init__(
        self,
        *,
        policy: AddressPolicy | None = None,
        limits: FetchLimits | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.policy = policy or AddressPolicy()
        self.limits = limits or FetchLimits()
        self.verify = verify

    async def run(self, args: FetchUrlArgs, context: ToolContext) -> ToolOutput:
        try:
            page = await guarded_get(args.url, policy=self.policy, limits=self.limits, verify=self.verify)
        except AddressRefused as exc:
            return ToolOutput(
                text=f"fetch_url refused {args.url}: {exc}. Only public internet addresses may be fetched.",
                is_error=True,
                metadata={"refused": True},
            )
        except FetchError as exc:
            return ToolOutput(text=f"fetch_url failed: {exc}", is_error=True)
        # Parsing a 2 MB page takes a while: off the event loop, so deadlines and heartbeats still fire.
        # A call cancelled by the registry's timeout returns then; the thread finishes on its own.
        return await asyncio.to_thread(render_page, page, args.offset, args.max_chars)


def render_page(page: FetchedPage, offset: int, max_chars: int) -> ToolOutput:
    """Turn a fetched page into the observation text, cut to `max_chars` from `offset`."""
    meta: dict[str, Any] = {
        "url": page.url,
        "status": page.status,
        "content_type": page.content_type,
        "bytes": len(page.body),
        "body_truncated": page.truncated,
        "redirects": page.redirects,
    }
    kind = _kind(page)
    if kind is None:
        return ToolOutput(
            text=(
                f"fetch_url: {page.url} returned content type {page.content_type or 'unknown'!r}, which "
                "cannot be shown as text (HTML, plain text and JSON are supported)."
            ),
            is_error=True,
            metadata=meta,
        )
    charset = known_charset(page.charset)
    text = page.body.decode(charset or "utf-8", errors="replace")
    title, links, note = "", [], ""
    if kind == "html":
        try:
            # Without a (known) charset header, let the parser read <meta charset> from the bytes.
            readable = html_to_readable(text if charset else page.body, base_url=page.url)
        except Exception:  # markup the parser rejects (`<![x>`), nesting too deep: a browser shows it
            text, note = _strip_tags(text), "Note: the HTML could not be parsed; shown as plain text."
        else:
            title, text, links = readable.title, readable.text, readable.links
    elif kind == "json" and not page.truncated:
        text = _pretty_json(text)
    title = _capped(title, MAX_TITLE_CHARS, "title")
    header = [f"URL: {_capped(page.url, MAX_URL_CHARS, 'URL')}"]
    if note:
        header.append(note)
    if page.redirects:
        header.append(f"(redirected {len(page.redirects)} time(s))")
    if title:
        header.append(f"Title: {title}")
    if page.status >= 400:
        header.append(f"HTTP status: {page.status}")
    if page.truncated:
        header.append(
            f"Note: the download stopped at the {len(page.body)}-byte limit; the page is incomplete."
        )
    window = text[offset : offset + max_chars]
    parts = ["\n".join(header), window if window else "(no text at this offset)"]
    end = offset + len(window)
    if end < len(text):
        parts.append(f"[cut at character {end} of {len(text)}; call fetch_url with offset={end} for more]")
    if links:
        # Only the links whose markers appear in the shown window, to keep the observation short;
        # the window is read once (a search of it per link took 12 s on a page of 96,000 links).
        marked = {int(number) for number in _LINK_MARKER.findall(window)}
        shown = [link for link in links if link.number in marked]
        if shown:
            parts.append("Links:\n" + "\n".join(_link_lines(shown, max(max_chars, 2 * MAX_URL_CHARS))))
    meta.update(chars=len(text), title=title)
    return ToolOutput(text="\n\n".join(parts), is_error=page.status >= 400, metadata=meta)


def _link_lines(links: list[Link], budget: int) -> list[str]:
    """`[n] url` lines of `links`, as many as fit in `budget` characters (at least one): a window of
    500 characters can hold a hundred markers, each of a 2,000-character URL."""
    lines: list[str] = []
    used = 0
    for link in links:
        line = f"[{link.number}] {_capped(link.url, MAX_URL_CHARS, 'URL')}"
        if lines and used + len(line) > budget:
            left = len(links) - len(lines)
            lines.append(
                f"({left} more links of this part not listed: the list is cut at {budget:,} characters)"
            )
            break
        lines.append(line)
        used += len(line) + 1
    return lines


def _capped(text: str, limit: int, what: str) -> str:
    """`text`, or its first `limit` characters and a note that says it was cut (a cut URL is no URL)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{what} cut at {limit:,} of {len(text):,} characters]"


def _kind(page: FetchedPage) -> str | None:
    ct = page.content_type
    if ct in _HTML:
        return "html"
    if ct == "application/json" or ct.endswith(_JSON_SUFFIX):
        return "json"
    if ct.startswith("text/"):
        return "text"
    if not ct:
        head = page.body[:512].lstrip().lower()
        if head.startswith((b"<!doctype html", b"<html")):
            return "html"
        if b"\x00" not in page.body[:4096]:
            return "text"
    return None


# Re-indenting puts 2 spaces a level before every value: 600 levels around a million zeros (a 2 MB
# body) became 1.2 G characters before the window was cut. The pretty form is kept while it stays
# within this many times the body (plus some room for small documents), else the body is shown as it
# came. It depends on the body alone, so every `offset` pages through the same text.
_PRETTY_JSON_FACTOR = 4
_PRETTY_JSON_SLACK = 64 * 1024


def _pretty_json(text: str) -> str:
    """`text` indented if it is JSON whose indented form stays small, else `text` itself."""
    try:
        value = json.loads(text)
        limit = _PRETTY_JSON_FACTOR * len(text) + _PRETTY_JSON_SLACK
        pieces: list[str] = []
        size = 0
        for piece in json.JSONEncoder(indent=2, ensure_ascii=False).iterencode(value):
            size += len(piece)
            if size > limit:
                return text  # stopped before the rest is built
            pieces.append(piece)
    except (ValueError, RecursionError):
        return text  # show it as it came
    return "".join(pieces)


_TAG = re.compile(r"<[^<>]*>")  # not `<[^>]*>`: each unclosed `<` would rescan to the end
_INVISIBLE = re.compile(r"<(script|style)\b", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\f\v]+")
_BLANKS = re.compile(r" ?\r?\n\s*")


def _strip_tags(markup: str) -> str:
    """The text of HTML the parser cannot read: tags, scripts and styles dropped, entities decoded."""
    kept: list[str] = []
    pos = 0
    lower = markup.lower()
    while (found := _INVISIBLE.search(markup, pos)) is not None:
        kept.append(markup[pos : found.start()])
        end = lower.find(f"</{found.group(1).lower()}", found.end())
        if end < 0:
            pos = len(markup)
            break
        pos = end  # the closing tag itself goes with the other tags
    kept.append(markup[pos:])
    text = html.unescape(_TAG.sub(" ", "".join(kept)))
    return _BLANKS.sub("\n", _SPACES.sub(" ", text)).strip()
