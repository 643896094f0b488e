"""The CLI's argument parser: what argparse itself prints (help, version, a usage error) obeys the same
rules for a closed stdout or stderr as the commands do.

argparse writes help and the version to stdout and a usage error to stderr, and with either closed at
start (`>&-`, `2>&-`; Python then sets the stream to None) it quietly fell back or gave up: `--help >&-`
wrote the help to stderr and exited 0, and `--bogus 2>&-` wrote the usage to stdout but lost the line
saying what was wrong. Now help and version refuse a closed stdout as every command that prints its
result does (`ClosedOutput`, exit 74, said on stderr), and a usage error goes to stdout when stderr is
closed, as the CLI's other errors do (`print(..., file=None)` in `errors.report`), still exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from qwq_agent.cli.errors import CliError, closed_stdout
from qwq_agent.cli.stdio import stdout_is_open


class ClosedOutput(CliError):
    """`--help` or `--version` with stdout closed; `command` is the sub-command asked about ("" for none)."""

    def __init__(self, prog: str, lost: str) -> None:
        error = closed_stdout(lost)
        super().__init__(error.what, error.fix, code=error.code)
        self.command = prog.partition(" ")[2]  # "qwq-agent trace show" -> "trace show"


def _stdout_closed() -> bool:
    # None is what argparse sees (and falls back to stderr on); the fd check is the commands' own test.
    return sys.stdout is None or not stdout_is_open()


class VersionAction(argparse._VersionAction):
    """`--version`, refused when stdout is closed (argparse would write it to stderr)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if _stdout_closed():
            raise ClosedOutput(parser.prog, "the version")
        super().__call__(parser, namespace, values, option_string)


class CliParser(argparse.ArgumentParser):
    """An `ArgumentParser` (sub-commands' parsers are made of the same class) that raises `ClosedOutput`
    out of `parse_args` for help asked with stdout closed, and says a usage error on stdout when stderr
    is closed."""

    def print_help(self, file: Any = None) -> None:
        """Help on `file`, by default stdout; `ClosedOutput` when that is stdout and it is closed."""
        if file is None and _stdout_closed():
            raise ClosedOutput(self.prog, "the help")
        super().print_help(file)

    def error(self, message: str) -> NoReturn:
        """The usage and `message` on stderr, or on stdout when stderr is closed; exit 2."""
        stream = sys.stderr if sys.stderr is not None else sys.stdout
        self.print_usage(stream)
        self._print_message(f"{self.prog}: error: {message}\n", stream)
        sys.exit(2)
