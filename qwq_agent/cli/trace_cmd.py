"""`qwq-agent trace show FILE`: a trace, readable; `qwq-agent trace serve [DIR]`: traces in the browser."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from qwq_agent.cli import arg_types
from qwq_agent.cli.reasoning_view import REASONING_MODES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="inspect run traces")
    tsub = p.add_subparsers(dest="trace_command", required=True)
    show = tsub.add_parser("show", help="print a trace readably")
    show.add_argument("file", help="a JSONL trace written by `run` (traces/<run id>.jsonl)")
    show.add_argument("--prompts", action="store_true", help="also print the exact prompts sent")
    show.add_argument("--run-id", help="the run to show from an old trace file that holds several")
    show.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="write the images (PNG) the trace holds into DIR, and print their paths",
    )
    show.add_argument(
        "--reasoning",
        choices=REASONING_MODES,
        default="full",
        help="show each step's reasoning in full, its last lines, or not",
    )
    show.add_argument(
        "--branches", action="store_true", help="for an exploration's trace: also show each branch's run"
    )
    show.set_defaults(func=_show)
    serve = tsub.add_parser("serve", help="browse traces in a local web page (live while runs write them)")
    serve.add_argument("dir", nargs="?", default="traces", help="folder of traces, searched recursively")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: local only)")
    serve.add_argument("--port", type=arg_types.port_or_zero, default=8765, help="port (0: any free one)")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from qwq_agent.cli.errors import CliError, listen_error
    from qwq_agent.viewer import TraceViewer

    try:
        viewer = TraceViewer(args.dir, host=args.host, port=args.port)
    except FileNotFoundError as exc:
        raise CliError(str(exc), "pass the folder your runs write traces to (default: ./traces)") from None
    except OSError as exc:  # the folder was found: binding --host:--port failed
        raise listen_error(exc, args.host, args.port) from None
    print(f"serving traces of {viewer.root} at {viewer.url} (Ctrl-C to stop)", flush=True)
    try:
        viewer.serve_forever()
    finally:
        viewer.close()
    return 0


def _show(args: argparse.Namespace) -> int:
    from qwq_agent.agent.events import Final
    from qwq_agent.agent.trace import restore_prompts
    from qwq_agent.cli.console import PipeConsole
    from qwq_agent.cli.preflight import load_trace
    from qwq_agent.cli.render import EventRenderer

    console = PipeConsole()
    held = writer_holds_trace(Path(args.file))  # before reading: see `trace.writer_holds`
    events = load_trace(Path(args.file), run_id=args.run_id)
    renderer = EventRenderer(
        console, show_prompts=args.prompts, replaying=True, image_dir=args.images, reasoning=args.reasoning
    )

    def show(run: list[Any], held: bool | None) -> None:
        # Prompts are made whole only to be printed, one at a time: a long run's, all whole, take GBs.
        for ev in restore_prompts(run) if args.prompts else run:
            renderer.handle(ev)
        if not isinstance(run[-1], Final):  # no summary was printed: say why there is none
            console.print(f"[yellow]{no_final_note(held)}[/yellow]", soft_wrap=True)

    show(events, held)
    if args.branches:
        from qwq_agent.agent.events import BranchEnded

        for ev in events:
            if isinstance(ev, BranchEnded) and ev.trace:
                console.rule(f"[bold]branch {ev.index}[/bold] · {ev.trace}")
                branch = branch_trace(Path(args.file), ev.trace)
                held = writer_holds_trace(branch)
                show(load_trace(branch, run_id=None), held)
    return 0


def writer_holds_trace(path: Path) -> bool | None:
    """`trace.writer_holds` of the trace at `path`; None when it cannot be opened (reading it says why)."""
    from qwq_agent.agent.trace import open_regular, writer_holds

    try:
        fd = open_regular(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return writer_holds(fd)
    finally:
        os.close(fd)


def no_final_note(held: bool | None) -> str:
    """What a trace without a final event means, by whether a writer held it (`writer_holds_trace`)
    before it was read: a run still being written, or a trace cut short (its writer stopped at a full
    disk, or its process was killed)."""
    if held:
        return "the trace has no final event yet: its run is still being written"
    if held is None:
        return "the trace has no final event: its run is still going, or its trace was cut short"
    return (
        "the trace ended without a final event (trace cut short: nothing writes it any more; its disk "
        "filled up, or its run's process was killed)"
    )


def branch_trace(trace: Path, recorded: str) -> Path:
    """Where a branch's trace is: `recorded` as the exploration wrote it, relative to the run's folder.

    The run knows its branch files by a path relative to the folder it ran in (`traces/<id>.branch-0.jsonl`
    with the default --trace), and writes them beside its own trace; so a relative one is looked for
    beside `trace` first, then from the current folder (a run with a --trace elsewhere).
    """
    path = Path(recorded)
    if path.is_absolute():
        return path
    beside = trace.parent / path.name
    return beside if beside.is_file() else path
