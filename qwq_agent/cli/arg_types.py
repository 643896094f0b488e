"""argparse `type=` converters that refuse a bad flag value at parse time.

A value argparse accepts travels far before it fails: `--timeout 1e10` overflowed deep in the sandbox
(reported as a Docker failure), `--port 70000` at `bind()` (reported as a bug), an unbalanced quote in
`--command` at `shlex.split` (a bug again). Refused here, it is `qwq-agent CMD: error: argument FLAG:
...` and exit 2, naming the flag, before anything starts.
"""

from __future__ import annotations

import argparse
import math
import shlex
from collections.abc import Callable

MAX_PORT = 65535


def port(text: str) -> int:
    """A TCP port, 1-65535."""
    value = _int(text)
    if not 1 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"a port is 1-{MAX_PORT}, got {value}")
    return value


def port_or_zero(text: str) -> int:
    """A TCP port, or 0 for any free one."""
    value = _int(text)
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"a port is 1-{MAX_PORT} (or 0: any free one), got {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number, 1 or more (a count or a limit that 0 would make meaningless)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def fraction(text: str) -> float:
    """A share of a whole: a finite number more than 0 and at most 1 (`nan` passes every comparison
    check written the other way round, and the program given it fails far later)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a share is more than 0 and at most 1, got {text}")
    return value


def seconds(most: float) -> Callable[[str], float]:
    """A converter for a duration in seconds: finite, more than 0 and at most `most`."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        # `nan` compares false with everything, so every deadline built on it is never reached.
        if not math.isfinite(value) or not 0 < value <= most:
            raise argparse.ArgumentTypeError(f"seconds must be more than 0 and at most {most:g}, got {text}")
        return value

    return convert


def command_line(text: str) -> str:
    """A shell-like command line that splits into words (balanced quotes, one word at least).

    Kept as text: `serve --dp` fills `{port}` and `{gpu}` into it before splitting.
    """
    try:
        words = shlex.split(text)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise argparse.ArgumentTypeError(f"cannot split {text!r} into words: {exc}") from None
    if not words:
        raise argparse.ArgumentTypeError("an empty command")
    return text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
