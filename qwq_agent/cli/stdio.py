"""stdout and stderr in any encoding, and a failed write to either named as such.

What a terminal cannot show is replaced, never fatal. Under a locale that is not UTF-8 (ISO-8859-1,
or ASCII where Python does not coerce the C locale), Python encodes stdout strictly: one character the
encoding lacks (a model's "✓", the renderer's own "·") raised `UnicodeEncodeError` in the middle of a
run, which ended it as a bug with its trace `interrupted`. Text is therefore written with
`errors="replace"` ("?"; one character for one, so rich's layout holds), and JSON with `\\uXXXX`
escapes for what the encoding lacks: still the same JSON.

A write to stdout that fails (`run --json > out.jsonl` on a full disk: ENOSPC, EIO, EDQUOT, EFBIG)
raised a bare OSError with no file name, which the CLI could only report as "cannot use: No space left
on device / check the path and its permissions", a bad input. `name_stream_errors` makes such a write
raise `StreamWriteError`, which says which stream it was, wherever in the CLI the write happened (rich's
console, `print`, the flush at the command's end).

A terminal that hung up fails every write with EIO: `--json` lines written to it (`write_line`) then go
to /dev/null, as the live view's console does (`console.PipeConsole`), and the run goes on. Only a
terminal: EIO on a file (a disk's I/O error) is a write that failed, and said so.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import io
import json
import os
import re
import sys
from typing import IO, Any

_NON_ASCII = re.compile(r"[^\x00-\x7f]")

STDOUT, STDERR = "standard output", "standard error"


class StreamWriteError(OSError):
    """A write to stdout or stderr failed for a reason other than a closed pipe (a full disk, an I/O
    error, a file size limit): `stream` is `STDOUT` or `STDERR`; `errno` and `strerror` are the cause's."""

    def __init__(self, stream: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.stream = stream


class _NamedStreamFile(io.FileIO):
    """File descriptor 1 or 2, whose failed writes raise `StreamWriteError`.

    EPIPE is left a `BrokenPipeError`: rich, `PipeConsole` and `errors` tell a reader that went away
    (`| head`) by that type."""

    def __init__(self, fd: int, stream: str) -> None:
        super().__init__(fd, "w", closefd=False)
        self.stream = stream
        # Known now: once a terminal is hung up, isatty() on it fails (EIO) like everything else.
        self.on_terminal = self.isatty()

    def write(self, data: Any, /) -> int:
        try:
            return super().write(data)
        except (BrokenPipeError, BlockingIOError):
            raise
        except OSError as exc:
            raise StreamWriteError(self.stream, exc) from exc


def name_stream_errors() -> None:
    """Rebuild `sys.stdout` and `sys.stderr` over `_NamedStreamFile`, as they were (encoding, error
    handler, buffering), so that a failed write raises `StreamWriteError` (at the CLI's start).

    A stream a caller replaced (pytest's capture, a test's `StringIO`) is left alone."""
    for name, fd, label in (("stdout", 1, STDOUT), ("stderr", 2, STDERR)):
        stream = getattr(sys, name)
        if (
            stream is None
            or stream is not getattr(sys, f"__{name}__")
            or not isinstance(stream, io.TextIOWrapper)
        ):
            continue
        try:
            if stream.fileno() != fd:
                continue
            stream.flush()
        except (OSError, ValueError):  # closed, or already failing: its own errors stand
            continue
        raw = _NamedStreamFile(fd, label)
        # `python -u` leaves the binary layer unbuffered: kept so.
        binary: Any = io.BufferedWriter(raw) if isinstance(stream.buffer, io.BufferedWriter) else raw
        rebuilt = io.TextIOWrapper(
            binary,
            encoding=stream.encoding,
            errors=stream.errors,
            line_buffering=stream.line_buffering,
            write_through=stream.write_through,
        )
        setattr(sys, name, rebuilt)


def stdout_is_open() -> bool:
    """Whether file descriptor 1 is open. Closed (`>&-`), Python sets `sys.stdout` to None and `print`
    drops everything silently."""
    try:
        fcntl.fcntl(1, fcntl.F_GETFD)
    except OSError as exc:
        return exc.errno != errno.EBADF
    return True


def tolerate_unencodable() -> None:
    """Make stdout and stderr replace what their encoding lacks instead of raising (at the CLI's start).

    A stream that already has an error handler other than `strict` (stderr's `backslashreplace`, or
    one set with PYTHONIOENCODING) keeps it.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is None or getattr(stream, "errors", None) != "strict":
            continue
        with contextlib.suppress(AttributeError, ValueError, OSError, io.UnsupportedOperation):
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]


def stdout_is_unicode() -> bool:
    """Whether stdout's encoding has a code for every character (a UTF codec)."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        return codecs.lookup(encoding).name.startswith("utf")
    except LookupError:
        return False


def json_for_stdout(text: str) -> str:
    """`text` (JSON) as stdout can carry it: as it is on a UTF-8 stdout, else each non-ASCII character
    escaped (`\\u00e9`; a pair of escapes beyond the BMP): the same JSON value, in ASCII."""
    if stdout_is_unicode():
        return text
    # Outside strings JSON is ASCII, so only characters inside strings are escaped: the value is unchanged.
    return _NON_ASCII.sub(lambda m: json.dumps(m.group())[1:-1], text)


def write_line(line: str) -> None:
    """`line` and a newline on stdout, flushed at once (an event of `run --json`, its result).

    A terminal that hung up (the SSH session dropped) fails every write with EIO. That is no failure of
    the run: as in the live view, it goes on to its end (or stops on the SIGHUP that may come with the
    hang-up), its trace complete; there is nobody left to read the lines, so stdout is pointed at
    /dev/null, which also takes what the failed write left buffered (else the exit's flush fails too).
    A closed pipe (`| head`) still raises `BrokenPipeError`: the CLI reports that stdout was closed.
    """
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError as exc:
        if exc.errno != errno.EIO or not _started_on_terminal(sys.stdout):
            raise
        with contextlib.suppress(OSError, ValueError, AttributeError):
            to_devnull(sys.stdout)
            sys.stdout.flush()


def _started_on_terminal(stream: IO[str]) -> bool:
    """Whether `stream` was a terminal when the CLI started (`name_stream_errors`); a stream that was
    not rebuilt then is taken to be one, so that EIO on it stays a hang-up as it always was."""
    raw = getattr(getattr(stream, "buffer", None), "raw", getattr(stream, "buffer", None))
    return raw.on_terminal if isinstance(raw, _NamedStreamFile) else True


def to_devnull(stream: IO[str]) -> None:
    """Point `stream`'s file descriptor at /dev/null: what is written to it from now on is dropped."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)
