"""`qwq-agent parse [FILE]`: show how a raw QwQ output is parsed (reasoning, content, calls, repairs)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `parse` sub-command."""
    p = subparsers.add_parser(
        "parse",
        help="parse a raw model output and print it as JSON",
        description=(
            "Parse a raw QwQ output (the completion after the generation prompt's '<think>\\n') into "
            "reasoning, content, tool calls, call errors and repairs, and print it as JSON. "
            "Useful to see why a prompt's tool calls are not picked up."
        ),
    )
    p.add_argument("file", nargs="?", default="-", help="file with the raw output; '-' or none for stdin")
    p.add_argument(
        "--events", action="store_true", help="print the stream events (deltas merged) instead of the result"
    )
    p.add_argument("--compact", action="store_true", help="one line of JSON instead of indented")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the output, parse it and print JSON; exit 2 when the file (or a closed stdin) cannot be read."""
    import json

    from qwq_agent.agent.parser import StreamParser, merge_deltas
    from qwq_agent.cli.errors import CliError
    from qwq_agent.cli.preflight import read_stdin_text, read_text
    from qwq_agent.cli.stdio import stdout_is_unicode

    # The exact text, from a file or stdin alike: a `\r` the model wrote is parsed as the run parsed it.
    what = "a raw model output (UTF-8 text)"
    if args.file != "-":
        text = read_text(args.file, what)
    elif sys.stdin is None:  # fd 0 closed (`<&-`): there is no stdin to read
        raise CliError("stdin is closed: no raw model output to read", "give a FILE, or pipe the output in")
    else:
        text = read_stdin_text(what)

    parser = StreamParser()
    events = parser.feed(text) + parser.close()
    payload: list[dict[str, Any]] | dict[str, Any]
    if args.events:
        payload = [e.model_dump(mode="json") for e in merge_deltas(events)]
    else:
        payload = parser.result().model_dump(mode="json")
    # Escaped where stdout's encoding (a non-UTF-8 locale) lacks a character: the same JSON, in ASCII.
    ascii_only = not stdout_is_unicode()
    print(json.dumps(payload, ensure_ascii=ascii_only, indent=None if args.compact else 2))
    return 0
