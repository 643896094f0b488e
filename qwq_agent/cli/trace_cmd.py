"""`qwq-agent trace show FILE`: a trace, readable."""

from __future__ import annotations

import argparse
from pathlib import Path

from qwq_agent.cli.reasoning_view import REASONING_MODES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="inspect run traces")
    tsub = p.add_subparsers(dest="trace_command", required=True)
    show = tsub.add_parser("show", help="print a trace readably")
    show.add_argument("file", help="a JSONL trace written by `run` (traces/<run id>.jsonl)")
    show.add_argument("--prompts", action="store_true", help="also print the exact prompts sent")
    show.add_argument("--run-id", help="the run to show from an old trace file that holds several")
    show.add_argument(
        "--images", type=Path, metavar="DIR", help="write the images (PNG) the trace holds into DIR, and print their paths"
    )
    show.add_argument(
        "--reasoning", choices=REASONING_MODES, default="full", help="show each step's reasoning in full, its last lines, or not"
    )
    show.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from qwq_agent.cli.preflight import load_trace
    from qwq_agent.cli.render import EventRenderer

    console = Console()
    events = load_trace(Path(args.file), run_id=args.run_id)
    renderer = EventRenderer(
        console, show_prompts=args.prompts, replaying=True, image_dir=args.images, reasoning=args.reasoning
    )
    for ev in events:
        renderer.handle(ev)
    return 0
