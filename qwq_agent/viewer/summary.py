"""What the viewer shows of a trace file: a one-row summary, and its events page by page from a byte on.

Read as plain JSON lines rather than typed events: the viewer must show traces written by newer or
older versions (unknown event types pass through) and a run still being written (a torn last line
is left for the next poll).

Traces of long runs reach gigabytes and the page polls a live one every second, so nothing here reads
a whole file at once: events are read from a byte offset, at most a page of them per answer, and a
summary is kept per file and continued from where it was last read (`SummaryCache`) while the file is
the same one. A line is held in memory one at a time, and one longer than `MAX_LINE` never is.

An offset is only meaningful in the file it was read from: a trace deleted and written again under the
same name (a run started over), or truncated, holds other lines there. So a place in a trace is a
`Cursor`, which carries what tells that file from another, and a page asked from a cursor of another file
starts over from the beginning, saying so (`reset`), instead of splicing two runs into one timeline.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from pydantic import BaseModel

from qwq_agent.agent.trace import (
    MixedTraceError,
    open_regular,
    several_runs_message,
    starts_new_run,
    writer_holds,
)

__all__ = [
    "CUT_SHORT",
    "MAX_LINE",
    "BadCursorError",
    "Cursor",
    "EventPage",
    "RunSummary",
    "SummaryCache",
    "open_trace",
    "read_events",
    "read_page",
    "summarize",
    "unreadable",
]

# Prompts are the bulk of a trace and the page does not show them; it gets the length of what the line
# stores instead (only what follows the prefix shared with the previous prompt: `prompt_shared_prefix_chars`).
_DROPPED = ("prompt",)

MAX_LINE = 64 << 20
"""A line longer than this (no trace writes one; a file that only looks like a trace may) is skipped."""

PAGE_BYTES = 4 << 20
PAGE_EVENTS = 5000

CUT_SHORT = "cut_short"
"""The status of a trace with no final event that no writer holds any more: it will get no more lines
(its writer stopped at a full disk, its process was killed)."""
_CUT_SHORT_NOTE = "ended without a final event (trace cut short)"

# The bytes at a trace's start that tell one file from another at the same path (its run_started line:
# the run id, the time): an inode number is reused as soon as a file is deleted.
_HEAD = 4096


class RunSummary(BaseModel):
    """One row of the run list."""

    file: str
    """The trace's path under the folder, to show (bytes that are not UTF-8 as `\\xE9`)."""
    ref: str = ""
    """The same path percent-encoded from its bytes: what `/api/events?file=` takes, as it is."""
    run_id: str = ""
    task: str = ""
    model: str = ""
    status: str = "running"
    """The final event's status; until there is one, "running" while a writer holds the trace, else
    `CUT_SHORT` (the page polls a running one every second, and only that)."""
    note: str = ""
    """What the status alone does not say (why a run is `CUT_SHORT`)."""
    steps: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    cached_share: float | None = None
    wall_s: float | None = None
    started: float | None = None
    warnings: int = 0
    modified: float = 0.0


class BadCursorError(ValueError):
    """A `from` that is no cursor this viewer gave (nor 0, the start)."""


@dataclass(frozen=True)
class Cursor:
    """A place in a trace (the start of a line) and what tells that file from another at its path.

    The inode alone would not do: a file deleted and written again is often given the same inode
    number. The hash of the first bytes (up to `_HEAD`, the run_started line with its run id and time)
    tells two runs apart; a file shorter than the offset was truncated. Written as
    `OFFSET.DEV.INODE.HEAD`, which a URL carries as it is.
    """

    offset: int
    dev: int
    ino: int
    head: str

    @classmethod
    def at(cls, f: IO[bytes], offset: int) -> Cursor:
        """The cursor at byte `offset` of the open file `f`."""
        st = os.fstat(f.fileno())
        return cls(offset, st.st_dev, st.st_ino, _head(f, offset))

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor `text` names; None for the start ("" or "0"), or for a bare number (a line number
        or offset from another version of the viewer, which names no file: the reader starts over).

        Raises `BadCursorError` for anything else.
        """
        if re.fullmatch(r"[0-9]{0,20}", text):
            return None if int(text or "0") == 0 else cls(int(text), -1, -1, "")  # -1: fits no file
        match = re.fullmatch(r"([0-9]{1,20})\.([0-9]{1,20})\.([0-9]{1,20})\.([0-9a-f]{16})", text)
        if match is None:
            raise BadCursorError("`from` must be the `next` of an earlier answer (or 0)")
        offset, dev, ino, head = match.groups()
        return cls(int(offset), int(dev), int(ino), head)

    def fits(self, f: IO[bytes]) -> bool:
        """Whether `f` is the file this cursor was taken in, grown or not, its offset still a line's start."""
        st = os.fstat(f.fileno())
        return (
            (st.st_dev, st.st_ino) == (self.dev, self.ino)
            and st.st_size >= self.offset
            and _head(f, self.offset) == self.head
            and (self.offset == 0 or os.pread(f.fileno(), 1, self.offset - 1) == b"\n")
        )

    def __str__(self) -> str:
        return f"{self.offset}.{self.dev}.{self.ino}.{self.head}"


def _head(f: IO[bytes], offset: int) -> str:
    return hashlib.blake2b(os.pread(f.fileno(), min(offset, _HEAD), 0), digest_size=8).hexdigest()


class EventPage(BaseModel):
    """A trace's events from one place on, at most a page of them."""

    events: list[dict[str, Any]]
    next: str
    """Where the next page starts (a `Cursor`): after the last complete line read."""
    more: bool = False
    """Complete lines past `next` were left for another page."""
    reset: bool = False
    """The cursor asked from was taken in another file at this path (or this one before it was
    truncated): these events are from the start, and those shown before are not of this file."""


def open_trace(path: Path) -> IO[bytes]:
    """`path` open for reading, refusing (`NotATraceFileError`) what is no regular file.

    A FIFO would block the open forever, /dev/zero would be read until memory runs out.
    """
    return open(open_regular(path, os.O_RDONLY), "rb")


def _lines(f: IO[bytes], start: int, end: int) -> Iterator[tuple[int, bytes | None]]:
    """The complete lines between bytes `start` and `end`, each with the offset just after it.

    A line longer than `MAX_LINE` comes as None: it is read past, never held. A last line without its
    newline is still being written: it is not yielded (nor is anything after `end`, so a file that
    grows while it is read cannot keep one answer going).
    """
    f.seek(start)
    pos = start
    while pos < end:
        raw = f.readline(min(MAX_LINE, end - pos))
        if raw.endswith(b"\n"):
            pos += len(raw)
            yield pos, raw
            continue
        if len(raw) < MAX_LINE:  # torn at the end (or the file shrank under us)
            return
        skipped = pos + len(raw)  # a line too long: read past it, a piece at a time
        while not raw.endswith(b"\n"):
            raw = f.readline(min(MAX_LINE, end - skipped))
            if not raw or (not raw.endswith(b"\n") and skipped + len(raw) >= end):
                return  # torn at the end, still being written (or the file shrank)
            skipped += len(raw)
        pos = skipped
        yield pos, None


def _event(raw: bytes) -> dict[str, Any] | None:
    """The event a line holds (prompts dropped); None for a line that is not a JSON object."""
    try:
        ev = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return None
    if not isinstance(ev, dict):
        return None
    for key in _DROPPED:
        if isinstance(ev.get(key), str):
            ev[f"{key}_chars"] = len(ev.pop(key))
    return ev


def _too_long() -> dict[str, Any]:
    return {"type": "warning", "kind": "viewer", "message": f"a line over {MAX_LINE >> 20} MiB is not shown"}


def read_page(
    f: IO[bytes], cursor: Cursor | None = None, *, max_bytes: int = PAGE_BYTES, max_events: int = PAGE_EVENTS
) -> EventPage:
    """`read_events` of a trace already open (`open_trace`), from a parsed cursor (None: the start)."""
    end = os.fstat(f.fileno()).st_size
    reset = cursor is not None and not cursor.fits(f)
    start = 0 if cursor is None or reset else cursor.offset
    events: list[dict[str, Any]] = []
    pos, more = start, False
    for after, raw in _lines(f, start, end):
        ev = _too_long() if raw is None else _event(raw)
        if ev is not None:
            events.append(ev)
        pos = after
        if pos - start >= max_bytes or len(events) >= max_events:
            more = pos < end
            break
    return EventPage(events=events, next=str(Cursor.at(f, pos)), more=more, reset=reset)


def read_events(
    path: Path, after: str = "", *, max_bytes: int = PAGE_BYTES, max_events: int = PAGE_EVENTS
) -> EventPage:
    """The events after the cursor `after` (the `next` of an earlier page; "" for the start), prompts
    dropped: a page of at most about `max_bytes` of lines (one line at least) and `max_events`
    events; `more` says whether another page follows. A cursor of another file at this path (the
    trace was deleted and written again, or truncated) starts over with `reset` set; one that is no
    cursor at all raises `BadCursorError`.

    A last line without its newline is still being written: it is not returned, and the next page
    starts at it. A line that is not JSON (a crash mid-write, long ago) is skipped. A path that is no
    regular file (a FIFO, a device, a link to one) raises `NotATraceFileError` instead of being opened.
    """
    cursor = Cursor.parse(after)
    with open_trace(path) as f:
        return read_page(f, cursor, max_bytes=max_bytes, max_events=max_events)


def _number(value: Any) -> float | None:
    """`value` as a finite number; None for anything else (a string, a list, a bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int:
    """`value` as a count of tokens or steps; 0 for anything that is not a number."""
    number = _number(value)
    return int(number) if number is not None else 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else json.dumps(value)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class _Runs:
    """The runs a file holds so far, told apart as `split_runs` does (`starts_new_run`: a second
    run_started, or another run id): one, unless an older version appended several runs to one `--trace` file."""

    ids: tuple[str, ...] = ()
    current_id: str = ""
    started: bool = False  # whether the current run has had its run_started

    def after(self, ev: dict[str, Any]) -> _Runs:
        """The runs once `ev` is read."""
        is_start = ev.get("type") == "run_started"
        run_id = _text(ev.get("run_id"))
        ids, started = self.ids, self.started
        if not ids or starts_new_run(
            is_start=is_start, run_id=run_id, started=started, current_id=self.current_id
        ):
            ids, started = (*ids, ""), False
        if run_id and not ids[-1]:
            ids = (*ids[:-1], run_id)
        return _Runs(ids, run_id or self.current_id, started or is_start)


@dataclass(frozen=True)
class _Scan:
    """A summary of a file up to `at`; `held`: whether a writer held it when this read began."""

    at: Cursor
    row: RunSummary  # never changed once in a _Scan: a continued scan works on a copy
    last_ts: float | None = None
    held: bool | None = None
    runs: _Runs = _Runs()


def _fold(row: RunSummary, ev: dict[str, Any], last_ts: float | None) -> float | None:
    """Count `ev` into `row`; the last timestamp seen so far."""
    kind = ev.get("type")
    ts = _number(ev.get("ts"))
    if kind == "run_started":
        row.run_id, row.task, row.model = (_text(ev.get(k)) for k in ("run_id", "task", "model"))
        row.started = ts
    elif kind == "model_call":
        usage = _mapping(ev.get("usage"))
        row.prompt_tokens += _count(usage.get("prompt_tokens"))
        row.cached_tokens += _count(usage.get("cached_tokens"))
        row.generated_tokens += _count(usage.get("completion_tokens"))
    elif kind == "warning":
        row.warnings += 1
    elif kind == "final":
        row.status = _text(ev.get("status")) or "?"
        row.wall_s = _number(_mapping(ev.get("totals")).get("wall_s"))
    row.steps = max(row.steps, _count(ev.get("step")))
    return ts if ts is not None else last_ts


def _scan(f: IO[bytes], earlier: _Scan | None) -> _Scan:
    """The summary of `f` up to its last complete line, continuing `earlier` when it is of this file."""
    if earlier is not None and not earlier.at.fits(f):
        earlier = None  # another file at this path (deleted and written again), or truncated
    row = earlier.row.model_copy() if earlier else RunSummary(file="")
    offset, last_ts = (earlier.at.offset, earlier.last_ts) if earlier else (0, None)
    runs = earlier.runs if earlier else _Runs()
    # Before reading: a writer free by now has written all it will, so what follows reads it all.
    held = writer_holds(f.fileno())
    for after, raw in _lines(f, offset, os.fstat(f.fileno()).st_size):
        offset = after
        ev = None if raw is None else _event(raw)
        if ev is not None:
            last_ts = _fold(row, ev, last_ts)
            runs = runs.after(ev)
    return _Scan(Cursor.at(f, offset), row, last_ts, held, runs)


def _row(scan: _Scan, f: IO[bytes], path: Path, root: Path) -> RunSummary:
    """The row of `scan`; `MixedTraceError` for a file holding several runs (see `_one_run`)."""
    file, ref = _names(path, root)
    _one_run(scan.runs, file)
    row = scan.row.model_copy(update={"file": file, "ref": ref, "modified": os.fstat(f.fileno()).st_mtime})
    if row.wall_s is None and row.started is not None and scan.last_ts is not None:
        row.wall_s = round(scan.last_ts - row.started, 3)
    if row.prompt_tokens:
        row.cached_share = round(row.cached_tokens / row.prompt_tokens, 4)
    # Asked at every read (`_scan`), since a writer lets go of the file at any time.
    if row.status == "running" and scan.held is False:
        row.status, row.note = CUT_SHORT, _CUT_SHORT_NOTE
    return row


def _one_run(runs: _Runs, file: str) -> None:
    """Refuse a file holding several runs, as `read_trace` does, with its message.

    Older versions appended each run to the `--trace` file given: summed into one row, the file read
    as one run, and its events as one timeline (two run_started, two final answers). Such a file is
    listed as unreadable, like any trace the viewer cannot show, and `trace show --run-id` shows each run.
    """
    if len(runs.ids) > 1:
        raise MixedTraceError(
            f"{several_runs_message(file, runs.ids)}: qwq-agent trace show {file} --run-id ID"
        )


def summarize(path: Path, root: Path) -> RunSummary:
    """The run list's row for the trace at `path` (named relative to `root`), read line by line.

    Fields are read defensively: a trace written by another version or tool, or edited by hand, may
    hold any JSON in any field; what is not of the expected type counts as absent. A file holding
    several runs (older versions appended them) raises `MixedTraceError`, as `read_trace` does.
    """
    with open_trace(path) as f:
        return _row(_scan(f, None), f, path, root)


class SummaryCache:
    """Summaries of the traces under a folder, each read on from where it was last read.

    A file that is no longer the one summarized (another inode, shorter, other first bytes) is read
    again from its start. Safe to use from several threads: a summary is computed outside the lock
    and the one stored last is kept (each is right for the file as it was read).
    """

    def __init__(self) -> None:
        self._scans: dict[Path, _Scan] = {}
        self._lock = threading.Lock()

    def summarize(self, path: Path, root: Path, f: IO[bytes] | None = None) -> RunSummary:
        """`summarize(path, root)`, reading only what was added since the last call (from `f` if given)."""
        return self.summarize_to(path, root, f)[0]

    def summarize_to(self, path: Path, root: Path, f: IO[bytes] | None = None) -> tuple[RunSummary, int]:
        """`summarize`, with the offset it has read up to (just after the last complete line it counted)."""
        if f is None:
            with open_trace(path) as opened:
                return self.summarize_to(path, root, opened)
        with self._lock:
            earlier = self._scans.get(path)
        scan = _scan(f, earlier)
        with self._lock:
            self._scans[path] = scan
        return _row(scan, f, path, root), scan.at.offset

    def keep_only(self, paths: set[Path]) -> None:
        """Forget the summaries of files not in `paths` (gone since)."""
        with self._lock:
            self._scans = {p: s for p, s in self._scans.items() if p in paths}


def _names(path: Path, root: Path) -> tuple[str, str]:
    """`file` and `ref` of the trace at `path`.

    A file name is bytes. One that is not UTF-8 (a Latin-1 `caf\\xe9.jsonl`) reaches Python as a str
    with lone surrogates, which JSON carries but the page cannot put in a URL; so the page is given
    the name's bytes percent-encoded, which the server decodes back to those bytes.
    """
    name = os.fsencode(path.relative_to(root).as_posix())
    return name.decode("utf-8", "backslashreplace"), quote(name, safe="/")


def unreadable(path: Path, root: Path, error: Exception) -> RunSummary:
    """The run list's row for a trace `summarize` could not read: listed, saying why."""
    try:
        modified = path.stat().st_mtime
    except OSError:
        modified = 0.0
    file, ref = _names(path, root)
    return RunSummary(
        file=file,
        ref=ref,
        status="unreadable",
        task=f"cannot read this trace: {type(error).__name__}: {error}"[:300],
        modified=modified,
    )
