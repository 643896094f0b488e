"""Where the log records of our code and our libraries go when the `qwq-agent` command runs.

Without a handler, Python's last-resort handler prints any warning with its traceback: one non-JSON
line on an MCP server's stdout made the MCP SDK's `logger.exception` put a full traceback on the
operator's terminal, once per line, in a run that worked. Configured here: warnings and errors go to
stderr as one line each (the exception named, not its traceback), tracebacks only under `--debug`.
Record text can come from a server or a model, so it is printed through `safe`; it can quote a URL we
were given, credentials and all (the OTLP exporter names its endpoint, `?key=...` included, in its
warnings), so it is printed through `redact_secrets_in` too.
"""

from __future__ import annotations

import logging
import re
import sys

from qwq_agent.cli.safe_text import safe
from qwq_agent.urls import redact_secrets_in

__all__ = ["configure_logging"]

_MAX_LINE_CHARS = 500
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (a test's capture, a redirect), not the one of
    the moment the handler was made."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


class _OneLineFormatter(logging.Formatter):
    """`warning (mcp.client.stdio): Failed to parse ... (ValidationError: 1 validation error ...)`."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            detail = str(exc).strip().splitlines()
            text += f" ({type(exc).__name__}{': ' + detail[0] if detail else ''})"
        # Redacted before the cut: a URL cut before its `@` would show the password as a host name.
        text = redact_secrets_in(_LINE_BREAKS.sub(" / ", text.strip()))
        if len(text) > _MAX_LINE_CHARS:
            text = text[:_MAX_LINE_CHARS] + " [...]"
        return safe(f"{record.levelname.lower()} ({record.name}): {text}")


class _SafeFormatter(logging.Formatter):
    """The standard format, tracebacks included (`--debug`), with control characters made visible and
    credentials hidden."""

    def format(self, record: logging.LogRecord) -> str:
        return safe(redact_secrets_in(super().format(record)))


def configure_logging(debug: bool = False) -> None:
    """Send warnings and errors to stderr: one line each, or with their tracebacks when `debug`.

    Idempotent: a second call (in-process CLI runs, tests) replaces the handler of the first.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(
        _SafeFormatter("%(levelname)s (%(name)s): %(message)s") if debug else _OneLineFormatter()
    )
    root.addHandler(handler)
