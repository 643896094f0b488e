"""Turn a document into sections (chunks) that remember where they start, for `path:line` citations.

Every extractor produces `Block`s (a paragraph, a heading, a code fence...) with their source line;
`chunk_blocks` then groups them into sections under their heading path, cut to a bounded size so a
hit points near the text that matched.
"""

from __future__ import annotations

import codecs
import io
import re
import time
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, Field

# The version of what extraction makes of a file's bytes, stored in the index (`meta.extractor`).
# Bump it whenever a change here (or in what this module calls: decoding, HTML or PDF parsing, the
# sectioning) would store other sections, titles or errors for the same bytes: an index built by
# another version then reads every file again on its next `update`, though none changed on disk, and a
# query of it says it is outdated. Without the bump an upgraded index keeps the old extraction for good
# (a UTF-16 file indexed before its byte-order mark was read stayed an error entry).
# 1: every version before this number was stored (an index without it); 2: HTML decoded by its
# <meta charset>, text after a UTF-16/32 byte-order mark decoded strictly.
EXTRACTOR_VERSION = "2"

SUFFIXES: dict[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    ".rst": "text",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
}
TARGET_CHARS = 1200  # a section grows until about this size; big enough for context, small enough to cite
MAX_CHARS = 4000  # one block longer than this is cut up on its own
# A PDF's text is not bounded by its size: pages can share one compressed content stream, and a 4 KB
# file held 6 million characters (150 KB: hours and gigabytes). Its text is capped at
# PDF_CHARS_PER_BYTE characters per byte of the file (real papers and books hold a few), within
# [MIN_PDF_CHARS, MAX_PDF_CHARS], and its extraction stops after PDF_SECONDS; what was read by then
# is indexed, with a note.
PDF_CHARS_PER_BYTE = 50
MIN_PDF_CHARS = 1_000_000
MAX_PDF_CHARS = 20_000_000
PDF_SECONDS = 60.0
# HTML is parsed whole into a tree before any text comes out, so it is bounded before the parse:
# the markup is cut at MAX_HTML_CHARS characters (what the cut leaves unclosed the parser closes, as
# at the end of any page). The parse is linear (`html_parse`) but not cheap: dense tags take seconds
# and ~150 MB of tree a megabyte. A deadline cannot stop the parser mid-feed; this cap can.
MAX_HTML_CHARS = 8_000_000

# The title keeps its closing `#`s and blanks; they are stripped after the match (a lazy title before
# `[ \t#]*$` retried that class at every character: a 64 KB line of " #" took ~9 s).
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*)$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")


class ExtractError(Exception):
    """A document could not be read (corrupt PDF, undecodable bytes...)."""


class Block(BaseModel):
    """A piece of a document: text, the 1-based line (or PDF page) where it starts, heading level."""

    line: int
    text: str
    level: int = 0  # 1-6 for a heading, 0 otherwise
    page: int | None = None
    raw_lines: bool = True  # text keeps the source's line breaks, so offsets map to lines


class Section(BaseModel):
    """A chunk to index: its heading path, body and a map from body offsets to source lines."""

    line: int
    page: int | None = None
    heading: str = ""
    body: str
    # (offset in body, source line, whether lines inside the block can be counted from newlines)
    linemap: list[tuple[int, int, bool]] = Field(default_factory=list)

    def line_at(self, offset: int) -> int:
        """The source line of the character at `offset` in `body`."""
        start, line, raw = 0, self.line, True
        for block_offset, block_line, block_raw in self.linemap:
            if block_offset > offset:
                break
            start, line, raw = block_offset, block_line, block_raw
        return line + self.body.count("\n", start, offset) if raw else line


class Extracted(BaseModel):
    """A document's title and sections, and a note when only part of its text was read."""

    title: str = ""
    sections: list[Section] = Field(default_factory=list)
    note: str | None = None  # e.g. the text was cut at a cap
    # Cut by the deadline (PDF_SECONDS), not by a cap: a busy machine's outcome, so worth reading
    # again (a cap cuts the same text every time).
    timed_out: bool = False


def kind_of(path: str | PurePath) -> str | None:
    """The extractor kind for a file name, or None when it is not a supported document."""
    return SUFFIXES.get(PurePath(path).suffix.lower())


def extract(data: bytes, kind: str) -> tuple[str, list[Section]]:
    """Return (title, sections) of a document's bytes; raises `ExtractError` when unreadable.

    `extract_document` also says when only part of the text was read.
    """
    done = extract_document(data, kind)
    return done.title, done.sections


def extract_document(data: bytes, kind: str) -> Extracted:
    """A document's title and sections, with a note when its text was cut (a PDF's cap or deadline,
    an HTML page's cap); raises `ExtractError` when unreadable."""
    try:
        return _extract(data, kind)
    except ExtractError:
        raise
    except Exception as exc:
        # The parsers raise what they like on hostile input (bs4 ParserRejectedMarkup, pypdf
        # LimitReachedError or a bare AttributeError, RecursionError): one bad document is reported,
        # it must not abort the build of the whole index.
        detail = " ".join(str(exc).split())[:200]  # one line in the list of errors
        raise ExtractError(f"unreadable {kind} ({type(exc).__name__}: {detail})") from None


def _extract(data: bytes, kind: str) -> Extracted:
    note, timed_out = None, False
    if kind == "pdf":
        title, blocks, note, timed_out = _pdf_blocks(data)
    else:
        text = _decode(data, kind)
        if kind == "markdown":
            blocks = list(_markdown_blocks(text))
        elif kind == "html":
            from qwq_agent.html_parse import unify_line_ends

            # as parse_html counts the lines: the cap's line below is then the one blocks are cited at
            text = unify_line_ends(text)
            if len(text) > MAX_HTML_CHARS:
                line = text.count("\n", 0, MAX_HTML_CHARS) + 1
                note = f"HTML cut at {MAX_HTML_CHARS:,} characters; indexed up to line {line}"
                text = text[:MAX_HTML_CHARS]
            title, blocks = _html_blocks(text)
        else:
            blocks = list(_text_blocks(text))
        if kind != "html":
            title = next((b.text for b in blocks if b.level), "")
    return Extracted(title=title, sections=chunk_blocks(blocks), note=note, timed_out=timed_out)


def chunk_blocks(blocks: Iterable[Block]) -> list[Section]:
    """Group blocks into sections of about `TARGET_CHARS`, starting a new one at each heading."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    parts: list[Block] = []

    def emit() -> None:
        if not parts:
            return
        body, linemap, offset = [], [], 0
        for b in parts:
            linemap.append((offset, b.line, b.raw_lines))
            body.append(b.text)
            offset += len(b.text) + 2
        sections.append(
            Section(
                line=parts[0].line,
                page=parts[0].page,
                heading=" > ".join(t for _, t in path),
                body="\n\n".join(body),
                linemap=linemap,
            )
        )
        parts.clear()

    size = 0
    for block in _split_long(blocks):
        if block.level:
            emit()
            size = 0
            path[:] = [(lvl, t) for lvl, t in path if lvl < block.level]
            path.append((block.level, block.text))
            parts.append(block)  # the heading's own words are searchable and cite its line
            size = len(block.text)
            continue
        if parts and (size + len(block.text) > TARGET_CHARS or block.page != parts[0].page):
            emit()
            size = 0
        parts.append(block)
        size += len(block.text) + 2
    emit()
    return sections


def _split_long(blocks: Iterable[Block]) -> Iterable[Block]:
    # Pieces that are only whitespace (the blank middle of a long code fence) are dropped: nothing in
    # them can be found, and each would be a section of its own. Every piece keeps its own line.
    for block in blocks:
        if len(block.text) <= MAX_CHARS:
            yield block
            continue
        lines = block.text.split("\n") if block.raw_lines else [block.text]
        if len(lines) == 1:
            text = lines[0]
            for i in range(0, len(text), MAX_CHARS):
                if not text[i : i + MAX_CHARS].isspace():
                    yield block.model_copy(update={"text": text[i : i + MAX_CHARS]})
            continue
        # A running size: re-summing the buffer for every line cost ~25 µs a line (10 s for 0.5 MB
        # of blank lines, a buffer holds up to TARGET_CHARS of them).
        buf: list[str] = []
        size = 0
        first = block.line
        for i, line in enumerate(lines):
            if buf and size + len(line) > TARGET_CHARS:
                yield from _piece(block, buf, first)
                buf, size, first = [], 0, block.line + i
            buf.append(line[:MAX_CHARS])
            size += len(buf[-1]) + 1
        yield from _piece(block, buf, first)


def _piece(block: Block, lines: list[str], line: int) -> Iterable[Block]:
    text = "\n".join(lines)
    if text.strip():
        yield block.model_copy(update={"text": text, "line": line})


# Longest first: a UTF-32LE mark starts with the UTF-16LE one. Each codec reads its mark and drops it.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _decode(data: bytes, kind: str) -> str:
    """A document's text: by its byte-order mark if it has one (UTF-16 and -32 text is full of NUL
    bytes, so the mark is read before they are taken for a binary file's) and what follows reads as
    text; else HTML as fetch_url reads a page (`html_parse.decode_html`: its `<meta charset>`, then a
    guess), other text as UTF-8, else cp1252, else latin-1."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            # Two bytes (FF FE) that any binary file may start with: what follows must be text too.
            text = _wide_text(data, codec) if codec != "utf-8-sig" else data.decode(codec, errors="replace")
            if text is None or not _reads_as_text(text[:8192]):
                raise ExtractError(
                    f"looks like a binary file (starts like {codec} text, but what follows is not text)"
                )
            return text
    if b"\x00" in data[:8192]:
        raise ExtractError("looks like a binary file (contains NUL bytes)")
    if kind == "html":
        from qwq_agent.html_parse import decode_html

        return decode_html(data)
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


# C0 and C1 controls other than the whitespace ones (tab, line feed, vertical tab, form feed, return).
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def _wide_text(data: bytes, codec: str) -> str | None:
    """`data` (marked UTF-16 or UTF-32) decoded strictly, or None when it cannot be such text.

    A binary file that starts with FF FE passed a share-based check when it was short (a few odd
    characters in a few dozen stay under the share), so a wide encoding's own rules are enforced on
    the whole file: a length that is no whole number of code units, a lone surrogate, a NUL or a
    control character that is not whitespace is no text's.
    """
    try:
        text = data.decode(codec)  # strict: a cut code unit, a lone surrogate, a code point past U+10FFFF
    except UnicodeDecodeError:
        return None
    return None if _CONTROLS.search(text) else text


# Of a sample of decoded text, at most this share may be characters no text holds. Bytes that are not
# text, decoded as UTF-16, give about one in six (unassigned, private-use, surrogates, controls).
_MAX_NOT_TEXT = 0.05


def _reads_as_text(sample: str) -> bool:
    """Whether `sample` (decoded by a byte-order mark) is text: no NUL, and few characters that no text
    holds (controls other than whitespace, unassigned, private-use, lone surrogates, replaced bytes)."""
    if "\x00" in sample:
        return False
    odd = sum(
        1
        for ch in sample
        if ch == "\ufffd" or (ch not in "\t\n\r\f\v" and unicodedata.category(ch) in ("Cc", "Cn", "Co", "Cs"))
    )
    return odd <= len(sample) * _MAX_NOT_TEXT


def _lines(text: str) -> list[str]:
    """Lines as editors and `grep -n` number them: split at \n (with \r\n and \r folded in) only.

    `str.splitlines()` also breaks at form feeds, U+0085, U+2028 and more, which would shift every
    `path:line` citation after such a character.
    """
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _paragraphs(lines: list[str], first_line: int = 1) -> Iterable[Block]:
    buf: list[str] = []
    start = first_line
    for i, line in enumerate(lines, first_line):
        if line.strip():
            if not buf:
                start = i
            buf.append(line.rstrip())
        elif buf:
            yield Block(line=start, text="\n".join(buf))
            buf = []
    if buf:
        yield Block(line=start, text="\n".join(buf))


def _text_blocks(text: str) -> Iterable[Block]:
    return _paragraphs(_lines(text))


def _markdown_blocks(text: str) -> Iterable[Block]:
    lines = _lines(text)
    i = 0
    # YAML front matter is metadata, not content; skip it but keep line numbers right.
    if lines and lines[0].strip() == "---":
        for j in range(1, min(len(lines), 200)):
            if lines[j].strip() in ("---", "..."):
                i = j + 1
                break
    para: list[str] = []
    para_start = i + 1

    def flush() -> Iterable[Block]:
        if para:
            yield Block(line=para_start, text="\n".join(para))
            para.clear()

    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            yield from flush()
            start = i
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith(fence.group(1)):
                i += 1
            yield Block(line=start + 1, text="\n".join(lines[start : i + 1]))
            i += 1
            continue
        heading = _ATX.match(line)
        if heading:
            yield from flush()
            yield Block(
                line=i + 1,
                text=heading.group(2).rstrip(" \t#").strip() or "(untitled)",
                level=len(heading.group(1)),
            )
            i += 1
            continue
        if (
            para
            and len(para) == 1
            and _SETEXT.match(line)
            and not para[0].lstrip().startswith(("-", "*", ">"))
        ):
            title = para[0].strip()
            para.clear()
            yield Block(line=para_start, text=title, level=1 if line.strip().startswith("=") else 2)
            i += 1
            continue
        if line.strip():
            if not para:
                para_start = i + 1
            para.append(line.rstrip())
        else:
            yield from flush()
        i += 1
    yield from flush()


_HTML_BLOCKS = (
    "h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "dt", "dd", "td", "th",
    "caption", "figcaption", "summary",
)  # fmt: skip


def _outermost(root: Any, names: frozenset[str]) -> Iterator[Any]:
    """The tags named in `names` under `root` that no such tag holds, in document order: one walk
    (`find_all` and then `find_parent` for each cost a filter per tag and a climb per block)."""
    from bs4 import Tag

    stack = [iter(root.children)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
        elif isinstance(child, Tag):
            if child.name in names:
                yield child  # its text holds any block inside it
            else:
                stack.append(iter(child.children))


def _html_blocks(text: str) -> tuple[str, list[Block]]:
    from qwq_agent.html_parse import parse_html

    # fetch_url's parser (html_parse.py): linear in the page, where a hostile one stalled the build.
    soup = parse_html(text)
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup.find_all(("script", "style", "noscript", "template", "svg")):
        tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with(" ")  # a newline here would shift the line count against the source
    blocks: list[Block] = []
    for tag in _outermost(soup, frozenset(_HTML_BLOCKS)):
        level = int(tag.name[1]) if tag.name in ("h1", "h2", "h3", "h4", "h5", "h6") else 0
        # Text strings keep the source's newlines, so offsets in the block still map to lines.
        raw = tag.get_text("")
        lead = len(raw) - len(raw.lstrip("\n"))
        lines = raw.strip("\n").split("\n")
        if tag.name != "pre":
            lines = [" ".join(line.split()) for line in lines]
        if level:
            text, keep_lines = " ".join(" ".join(lines).split()), False
        else:
            text, keep_lines = "\n".join(lines).strip(" "), True
        if not text.strip():
            continue
        start = (tag.sourceline or 1) + raw.count("\n", 0, lead)
        blocks.append(Block(line=start, text=text, level=level, raw_lines=keep_lines))
    if not blocks:
        body = soup.body or soup
        blocks = [Block(line=1, text=" ".join(body.get_text(" ").split()), raw_lines=False)]
        blocks = [b for b in blocks if b.text]
    return title, blocks


class _StopExtraction(Exception):
    """Raised from pypdf's visitor callbacks to stop a page's extraction at the cap or deadline."""


def _pdf_blocks(data: bytes) -> tuple[str, list[Block], str | None, bool]:
    """The PDF's title and blocks (page by page), a note when its text was cut, and whether the
    deadline (not the cap) cut it.

    The cap and the deadline are checked at every text fragment and every content-stream operator,
    so a page stops mid-way; what is not bounded here is pypdf's parse of one page's content stream
    before its operators run (its own limits cap a decompressed stream at 75 MB).
    """
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        reader = PdfReader(io.BytesIO(data))
        title = ""
        if reader.metadata and reader.metadata.title:
            title = str(reader.metadata.title)
        cap = min(MAX_PDF_CHARS, max(MIN_PDF_CHARS, PDF_CHARS_PER_BYTE * len(data)))
        deadline = time.monotonic() + PDF_SECONDS
        pages = len(reader.pages)
        blocks: list[Block] = []
        used = 0
        for number, page in enumerate(reader.pages, 1):
            text, stopped = _page_text(page, cap - used, deadline)
            used += len(text)
            for block in _paragraphs(text.splitlines()):
                blocks.append(block.model_copy(update={"page": number}))
            if not stopped and number < pages:
                stopped = used >= cap or time.monotonic() > deadline
            if stopped:
                why = (
                    f"text cut at {cap:,} characters"
                    if used >= cap
                    else f"extraction stopped after {PDF_SECONDS:g} s"
                )
                return title, blocks, f"{why}; indexed up to page {number} of {pages}", used < cap
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise ExtractError(f"unreadable PDF: {exc}") from None
    return title, blocks, None, False


def _page_text(page: Any, budget: int, deadline: float) -> tuple[str, bool]:
    """A page's text, at most `budget` characters, and whether it was stopped (cap or deadline)."""
    fragments: list[str] = []
    size = 0

    def on_text(text: str, *_: Any) -> None:
        nonlocal size
        fragments.append(text)
        size += len(text)
        if size > budget:
            raise _StopExtraction

    def on_operator(*_: Any) -> None:
        if time.monotonic() > deadline:
            raise _StopExtraction

    try:
        text = page.extract_text(visitor_text=on_text, visitor_operand_before=on_operator) or ""
    except _StopExtraction:
        # What the page gave before the stop: the fragments are the pieces its text is made of.
        return "".join(fragments)[:budget], True
    return text[:budget], len(text) > budget
