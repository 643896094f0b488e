"""stdout and stderr in any encoding: what a terminal cannot show is replaced, never fatal.

Under a locale that is not UTF-8 (ISO-8859-1, or ASCII where Python does not coerce the C locale),
Python encodes stdout strictly: one character the encoding lacks (a model's "✓", the renderer's own
"·") raised `UnicodeEncodeError` in the middle of a run, which ended it as a bug with its trace
`interrupted`. Text is therefore written with `errors="replace"` ("?"; one character for one, so
rich's layout holds), and JSON with `\\uXXXX` escapes for what the encoding lacks: still the same JSON.

A terminal that hung up fails every write with EIO: `--json` lines written to it (`write_line`) then go
to /dev/null, as the live view's console does (`console.PipeConsole`), and the run goes on.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import json
import os
import re
import sys
from typing import IO

_NON_ASCII = re.compile(r"[^\x00-\x7f]")


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
        if exc.errno != errno.EIO:
            raise
        with contextlib.suppress(OSError, ValueError, AttributeError):
            to_devnull(sys.stdout)
            sys.stdout.flush()


def to_devnull(stream: IO[str]) -> None:
    """Point `stream`'s file descriptor at /dev/null: what is written to it from now on is dropped."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)
