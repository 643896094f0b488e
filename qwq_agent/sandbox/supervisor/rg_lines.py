"""ripgrep's `--json` records, read bounded, as the lines a search result shows.

Each line keeps its real number and length, and a long one (minified code) is shown as a window of
`WINDOW` characters: around the line's first match for a match, its start for a context line. Offsets
and lengths are in characters of the line (bytes that are not UTF-8 count as the `\\xNN` shown for them).

rg writes one record per line, holding the whole line and one entry per match in it: a 4 MB minified
line matching `a` is a ~180 MB record (no --max-columns in JSON mode), whose parsing once took the
supervisor past the container's memory. Records past `MAX_RECORD` bytes are read in pieces, never held
whole (`_oversized`): the fields a result needs are picked out of them, and the window is read from the
file itself (`_from_file`), where the record says the line starts.
"""

import base64
import json
import os
import re
import time

from .files import open_regular
from .framing import RequestError, utf8_start, utf8_whole

MAX_RECORD = 256 * 1024
WINDOW = 2000  # characters of a line kept
LEAD = 500  # of which, at most, before the match
_CHUNK = 1 << 20
_CONTINUATION = bytes(range(0x80, 0xC0))
# In a record these can only be fields, never text: inside a JSON string every `"` is escaped.
_TAIL = re.compile(rb'"\},"line_number":(\d+),"absolute_offset":(\d+),"submatches":\[')
_SPAN = re.compile(rb'\},"start":(\d+),"end":(\d+)\}')


def text_of(obj):
    """A JSON `{"text"}` / `{"bytes"}` object of rg as text (bytes that are not UTF-8 as `\\xNN`)."""
    return raw_of(obj).decode("utf-8", "backslashreplace")


def raw_of(obj):
    """The bytes behind a JSON `{"text"}` / `{"bytes"}` object of rg."""
    if obj is None:
        return b""
    if "text" in obj:
        return obj["text"].encode("utf-8", "surrogatepass")
    return base64.b64decode(obj.get("bytes", ""))


def records(stdout, deadline):
    """rg's match and context records as `(kind, path, line_number, line)`, none held whole past
    `MAX_RECORD` bytes; other records are skipped. `line()` makes the line as `shown` does: only for
    those a result shows, as the window of a long line may have to be read from its file."""
    while raw := stdout.readline(MAX_RECORD):
        if raw.endswith(b"\n"):
            msg = json.loads(raw)
            if msg.get("type") in ("match", "context"):
                data = msg["data"]
                spans = data.get("submatches") or []
                span = (spans[0]["start"], spans[0]["end"]) if spans else None
                number, text = data.get("line_number"), raw_of(data["lines"]).rstrip(b"\n")
                yield msg["type"], data["path"], number, _once(shown, text, number, span)
            continue
        found = _oversized(raw, stdout)
        if found is not None:
            yield found[0], found[1], found[2], _once(_read_back, *found, deadline)


def _once(make, *args):
    """`make(*args)`, computed on the first call only."""
    made: list[dict] = []

    def line():
        if not made:
            made.append(make(*args))
        return made[0]

    return line


def _read_back(kind, path, number, offset, span, preview, deadline):
    """An oversized record's line from its file; the start of it, length unknown, when that fails."""
    if offset is not None and time.monotonic() < deadline:
        line = _from_file(os.fsdecode(raw_of(path)), offset, number, span, deadline)
        if line is not None:
            return line
    line = {"line_number": number, "text": preview, "start": 0, "length": None}
    if kind == "match":
        line.update(match_start=None, match_end=None)
    return line


def shown(raw, number, span):
    """The line (its bytes, `raw`) as a result shows it: `{line_number, text, start, length}`, and the
    first match's `match_start`/`match_end` when `span` (its byte offsets) is given."""
    text = raw.decode("utf-8", "backslashreplace")
    match = None if span is None else tuple(len(raw[:at].decode("utf-8", "backslashreplace")) for at in span)
    return window(text, 0, len(text), number, match)


def window(text, start, length, number, match):
    """`{line_number, text, start, length}` of a line of `length` characters of which `text` holds those
    from `start` on: at most `WINDOW` of them, around `match` (character offsets in the line) if any."""
    lo = start
    if match is not None:
        lo = max(start, min(match[0] - LEAD, start + len(text) - WINDOW))
    line = {
        "line_number": number,
        "text": text[lo - start : lo - start + WINDOW],
        "start": lo,
        "length": length,
    }
    if match is not None:
        line.update(match_start=match[0], match_end=match[1])
    return line


def _chars(data):
    """Characters in `data` as UTF-8 (lead and ASCII bytes; not exact for bytes that are not UTF-8)."""
    return len(data) if data.isascii() else len(data.translate(None, _CONTINUATION))


def _from_file(path, offset, number, span, deadline):
    """The line at byte `offset` of `path` as `shown` makes it, read in pieces (a line can be 50 MB):
    its length counted, the window's bytes kept. None when it cannot be read, or time runs out."""
    want = 0 if span is None else max(0, span[0] - 4 * LEAD)  # bytes: 4 per character at most
    upto = want + 4 * WINDOW
    try:
        fd = open_regular(path, path)
    except (RequestError, OSError):
        return None
    region, before, length, pos = bytearray(), 0, 0, offset
    try:
        while time.monotonic() < deadline:
            chunk = os.pread(fd, _CHUNK, pos)
            end = chunk.find(b"\n")
            if end >= 0:
                chunk = chunk[:end]
            at = pos - offset  # where the chunk starts in the line
            if at < want:
                before += _chars(chunk[: want - at])
            if at + len(chunk) > want and at < upto:
                region += chunk[max(0, want - at) : upto - at]
            length += _chars(chunk)
            pos += len(chunk)
            if end >= 0 or not chunk:
                break
        else:
            return None
    except OSError:
        return None
    finally:
        os.close(fd)
    # The region starts and ends between characters (a character cut at its start counts in `before`).
    skipped = utf8_start(region)
    whole = bytes(region[skipped : skipped + utf8_whole(region[skipped:])])
    text = whole.decode("utf-8", "backslashreplace")
    match = None
    if span is not None:
        match = tuple(
            before + len(whole[: max(0, at - want - skipped)].decode("utf-8", "backslashreplace"))
            for at in span
        )
    return window(text, before, length, number, match)


def _oversized(head, stdout):
    """A match or context record too long to parse, read from `head` on to its end (each piece dropped
    once read): `(kind, path, line_number, absolute_offset, first match's byte span, the line's start)`.
    None for any other record."""
    kind = (
        "match"
        if head.startswith(b'{"type":"match"')
        else "context"
        if head.startswith(b'{"type":"context"')
        else None
    )
    if kind is None:
        _skip_line(stdout)
        return None
    decoder = json.JSONDecoder()
    text = head.decode("utf-8", "replace")
    try:
        at = text.index('"path":') + len('"path":')
        path, end = decoder.raw_decode(text, at)
        at = text.index('"lines":{', end) + len('"lines":{')
    except ValueError:
        _skip_line(stdout)
        return None
    key = "text" if text.startswith('"text":"', at) else "bytes"
    opening = at + len(key) + 3
    try:
        # A short line whose record is long only for its many submatches: the string ends in the head.
        preview = decoder.raw_decode(text, opening)[0][: 4 * WINDOW]
    except ValueError:
        preview = _unterminated(text[opening + 1 : opening + 1 + 4 * WINDOW])
    if key == "bytes":
        preview = base64.b64decode(preview[: len(preview) // 4 * 4] or b"").decode(
            "utf-8", "backslashreplace"
        )
    preview = preview.rstrip("\n")[:WINDOW]
    number = offset = span = None
    piece, carry = head, b""
    while True:
        seen = carry + piece
        if offset is None and (found := _TAIL.search(seen)):
            number, offset = int(found.group(1)), int(found.group(2))
            seen = seen[found.end() :]
        if offset is not None and span is None and (found := _SPAN.search(seen)):
            span = (int(found.group(1)), int(found.group(2)))
        carry = seen[-128:]
        if piece.endswith(b"\n"):
            break
        piece = stdout.readline(MAX_RECORD)
        if not piece:
            break
    return kind, path, number, offset, span if kind == "match" else None, preview


def _unterminated(prefix):
    """The start of a JSON string cut off mid-way: cut back to where a closing quote parses."""
    for cut in range(len(prefix), max(-1, len(prefix) - 8), -1):
        try:
            return json.loads('"' + prefix[:cut] + '"')
        except ValueError:
            continue
    return ""


def _skip_line(stdout):
    while (piece := stdout.readline(MAX_RECORD)) and not piece.endswith(b"\n"):
        pass
