"""What every example shares: pick the model, open a real sandbox, run the agent live, check the outcome.

With `--model-url` (or QWQ_MODEL_URL) a live SGLang server drives the agent. Without one the example's
recorded completions are served by a local scripted model server over real HTTP, and the screen says
so: everything else (the client, the parser, the loop, the sandbox and the tools) runs for real.

Figures the python tool draws are saved as PNGs (`--images DIR`, by default next to the trace) and
their absolute paths printed, so a terminal opens them from wherever it is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from qwq_agent.agent.clients import SGLangClient
from qwq_agent.agent.loop import Agent, AgentConfig, RunResult
from qwq_agent.agent.workspace import open_sandbox
from qwq_agent.cli.render import EventRenderer
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.catalog import build_tools

Check = Callable[[RunResult, Any], Awaitable[list[str]]]


@dataclass
class Example:
    """One runnable example: a task, its tools, an optional workspace, recorded turns and a check."""

    name: str
    task: str
    tools: list[str]
    turns: list[str] | Callable[[dict[str, str]], list[str]]
    check: Check
    workspace: Path | None = None
    tool_options: dict[str, Any] = field(default_factory=dict)
    # Runs around the example (e.g. builds an index, serves pages) and yields a dict: its
    # "tool_options" go to `build_tools`, the rest is passed to `turns` when that is a callable.
    setup: Callable[[], AbstractAsyncContextManager[dict[str, Any]]] | None = None
    # Figures the run must save as PNGs (checked when it runs with an image folder).
    figures: int = 0


@asynccontextmanager
async def _no_setup():
    yield {}


@dataclass
class Outcome:
    result: RunResult
    problems: list[str]
    replayed: bool
    requests: int = 0
    images: list[Path] = field(default_factory=list)  # the PNGs saved, absolute paths


async def run(
    example: Example,
    *,
    model_url: str | None = None,
    console: Console | None = None,
    trace_path: Path | None = None,
    image_dir: Path | None = None,
) -> Outcome:
    """Run `example` end to end and check what it produced; figures are saved under `image_dir`."""
    console = console or Console()
    async with (example.setup or _no_setup)() as context:
        tool_options = {**example.tool_options, **context.pop("tool_options", {})}
        return await _run(example, context, tool_options, model_url, console, trace_path, image_dir)


async def _run(
    example: Example,
    context: dict[str, Any],
    tool_options: dict[str, Any],
    model_url: str | None,
    console: Console,
    trace_path: Path | None,
    image_dir: Path | None,
) -> Outcome:
    server: ScriptedModelServer | None = None
    if model_url:
        url = model_url
        console.print(f"[bold]live model[/bold] at {url}")
    else:
        turns = example.turns(context) if callable(example.turns) else example.turns
        server = ScriptedModelServer(list(turns))
        await server.start()
        url = server.url
        console.print(
            "[yellow]No model server given (QWQ_MODEL_URL unset): replaying this example's recorded "
            "completions through a local scripted model server.[/yellow]\n"
            "[dim]The client, parser, agent loop, sandbox and tools are all real.[/dim]"
        )
    try:
        tools = build_tools(example.tools, **tool_options)
        async with SGLangClient(url) as client, open_sandbox(workspace=example.workspace) as sandbox:
            agent = Agent(client, tools, sandbox=sandbox, config=AgentConfig(), trace_path=trace_path)
            renderer = EventRenderer(console, image_dir=image_dir)
            async for ev in agent.stream(example.task):
                renderer.handle(ev)
            assert agent.result is not None
            problems = await example.check(agent.result, sandbox)
            if image_dir is not None:
                problems += image_problems(renderer.saved_images, example.figures)
    finally:
        if server is not None:
            await server.stop()
    for p in problems:
        console.print(f"[red]check failed: {p}[/red]")
    if not problems:
        console.print(f"[bold green]✓ {example.name}: checked[/bold green]")
    if renderer.saved_images:
        folder = renderer.saved_images[0].parent
        console.print(f"images: {len(renderer.saved_images)} PNG(s) in {folder}", soft_wrap=True)
    return Outcome(
        agent.result,
        problems,
        replayed=server is not None,
        requests=len(server.requests) if server else 0,
        images=list(renderer.saved_images),
    )


def main(example: Example, argv: list[str] | None = None, *, one_of_several: bool = False) -> int:
    """Run `example` from the command line; the exit code (0 checked, 1 failed, 2 or more: could not run).

    `one_of_several`: the script runs several examples, so a `--trace FILE` names one file per example
    (FILE's name with `-NAME` added), not one they would all write to.
    """
    parser = argparse.ArgumentParser(description=f"qwq-agent example: {example.name}")
    parser.add_argument("--model-url", default=os.environ.get("QWQ_MODEL_URL"))
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        metavar="FILE",
        help="where the run's trace is written; an existing FILE is refused (default: "
        "traces/example-NAME.jsonl, replaced at each run)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="DIR",
        help="where figures are saved as PNGs (default: a folder next to the trace, named after it: "
        "TRACE-images/)",
    )
    args = parser.parse_args(argv)
    if args.trace is None:
        trace = Path("traces") / f"example-{example.name}.jsonl"
        trace.unlink(missing_ok=True)  # the example's own file, holding its last run
    else:
        trace = args.trace
        if one_of_several:
            trace = trace.with_name(f"{trace.stem}-{example.name}{trace.suffix or '.jsonl'}")
        if trace.exists():  # a file the user named may hold an earlier, real run: never replaced
            print(f"example {example.name}: {trace} already exists; give --trace a new file", file=sys.stderr)
            return 2
    images = args.images
    if images is None:
        # Named after the trace, so that a run to a new --trace never shares (and clears) the folder
        # of an earlier run's figures; the default trace's is example-NAME-images/.
        images = trace.with_name(f"{trace.stem}-images")
        if args.trace is None:
            for stale in images.glob("image-*.png"):  # our own folder: a shorter run leaves no old figures
                stale.unlink()
    try:
        outcome = asyncio.run(run(example, model_url=args.model_url, trace_path=trace, image_dir=images))
    except Exception as exc:
        # What the CLI explains in one line (Docker unreachable, no model server...) is said the same
        # way here; anything else is a bug, and its traceback is what to report.
        from qwq_agent.cli.errors import explain

        error = explain(exc)
        if error is None:
            raise
        print(error.render(f"example {example.name}"), file=sys.stderr)
        return error.code
    Console().print(f"[dim]trace: {trace} (view it with `qwq-agent trace show {trace}`)[/dim]")
    return 0 if outcome.result.status == "completed" and not outcome.problems else 1


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk; None when `data` is not a PNG."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def image_problems(saved: list[Path], expected: int) -> list[str]:
    """What is wrong with the PNGs a run saved: fewer than `expected`, or files that are not PNGs."""
    problems = [f"expected {expected} figure(s), {len(saved)} saved"] if len(saved) < expected else []
    for path in saved:
        size = png_size(path.read_bytes())
        if size is None or 0 in size:
            problems.append(f"{path} is not a PNG image")
    return problems


def tool_outputs(result: RunResult) -> list[str]:
    return [m.content for m in result.messages if m.role == "tool"]
