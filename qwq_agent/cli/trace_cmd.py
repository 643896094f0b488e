"""`qwq-agent trace show FILE`: a trace, readable."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="inspect run traces")
    tsub = p.add_subparsers(dest="trace_command", required=True)
    show = tsub.add_parser("show", help="print a trace readably")
    show.add_argument("file", help="a JSONL trace written by `run` (traces/<run id>.jsonl)")
    show.add_argument("--prompts", action="store_true", help="also print the exact prompts sent")
    show.add_argument("--run-id", help="the run to show from an old trace file that holds several")
    show.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from qwq_agent.cli.preflight import load_trace
    from qwq_agent.cli.render import EventRenderer

    console = Console()
    events = load_trace(Path(args.file), run_id=args.run_id)
    renderer = EventRenderer(console, show_prompts=args.prompts, replaying=True)
    for ev in events:
        renderer.handle(ev)
    return 0
