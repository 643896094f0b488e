"""What every example shares: pick the model, open a real sandbox, run the agent live, check the outcome.

With `--model-url` (or QWQ_MODEL_URL) a live SGLang server drives the agent. Without one the example's
recorded completions are served by a local scripted model server over real HTTP, and the screen says
so: everything else (the client, the parser, the loop, the sandbox and the tools) runs for real.

Figures the python tool draws are saved as PNGs (`--images DIR`, by default next to the trace) and
their absolute paths printed, so a terminal opens them from wherever it is. Each run has a trace and a
figure folder of its own: `traces/example-NAME.jsonl`, or when that holds a run already (an earlier one,
or one still running) a new file next to it (`example-NAME.<run id>.jsonl`), and the folder named after
it; two runs of one example, at once or one after the other, never delete or share each other's files.

Ctrl-C, SIGTERM, SIGHUP and SIGQUIT stop a run as they stop `qwq-agent run` (`cli.signals.Interrupts`):
the trace ends with `final`, the sandbox is removed, two lines say so, and the exit status is 128 + the
signal's number.
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
    images_beside_trace: bool = False,
    on_agent: Callable[[Agent], None] | None = None,
) -> Outcome:
    """Run `example` end to end and check what it produced; figures are saved under `image_dir`, or with
    `images_beside_trace` in a folder named after the file the trace went to (`TRACE-images/`).

    `on_agent` is called with the agent once it exists: a caller that cancels the run (on a signal)
    still reaches its result and trace.
    """
    console = console or Console()
    if images_beside_trace and image_dir is None and trace_path is None:
        raise ValueError("images_beside_trace needs a trace_path")
    async with (example.setup or _no_setup)() as context:
        tool_options = {**example.tool_options, **context.pop("tool_options", {})}
        return await _run(
            example,
            context,
            tool_options,
            model_url,
            console,
            trace_path,
            image_dir,
            images_beside_trace,
            on_agent,
        )


async def _run(
    example: Example,
    context: dict[str, Any],
    tool_options: dict[str, Any],
    model_url: str | None,
    console: Console,
    trace_path: Path | None,
    image_dir: Path | None,
    images_beside_trace: bool,
    on_agent: Callable[[Agent], None] | None,
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
            if on_agent is not None:
                on_agent(agent)
            renderer = EventRenderer(console, image_dir=image_dir)
            async for ev in agent.stream(example.task):
                if images_beside_trace and renderer.image_dir is None and trace_path is not None:
                    # Known from the first event on: the file the trace went to, not the one asked for,
                    # which a run still going (or an earlier one) may hold, with its figures beside it.
                    renderer.image_dir = images_beside(agent.trace_file or trace_path)
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
    """Run `example` from the command line; the exit code (0 checked, 1 failed, 2 or more: could not run,
    128 + N: stopped by signal N, see `stopped_by_signal`).

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
        "traces/example-NAME.jsonl, or when that holds a run already, a new file next to it: "
        "example-NAME.<run id>.jsonl; the path is printed at the end)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="DIR",
        help="where figures are saved as PNGs, never over an existing file (default: a folder next to "
        "the file the trace went to, named after it: TRACE-images/)",
    )
    args = parser.parse_args(argv)
    if args.trace is None:
        # Asked for, not cleared: when it holds a run (an earlier one, or one still being written) the
        # trace writer takes a new file next to it, and the path printed at the end is that one.
        trace = Path("traces") / f"example-{example.name}.jsonl"
    else:
        trace = args.trace
        if one_of_several:
            trace = trace.with_name(f"{trace.stem}-{example.name}{trace.suffix or '.jsonl'}")
        if trace.exists():  # a file the user named may hold an earlier, real run: never replaced
            print(f"example {example.name}: {trace} already exists; give --trace a new file", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_main(example, args.model_url, trace, args.images))
    except Exception as exc:
        # What the CLI explains in one line (Docker unreachable, no model server...) is said the same
        # way here; anything else is a bug, and its traceback is what to report.
        from qwq_agent.cli.errors import explain

        error = explain(exc)
        if error is None:
            raise
        print(error.render(f"example {example.name}"), file=sys.stderr)
        return error.code


def main_each(examples: list[Example], argv: list[str] | None = None) -> int:
    """Run several examples one after the other (`main` for each); the worst exit code. A signal that
    stops one stops them all: the rest are not started."""
    codes: list[int] = []
    for example in examples:
        codes.append(main(example, argv, one_of_several=len(examples) > 1))
        if stopped_by_signal(codes[-1]):
            return codes[-1]
    return max(codes)


def images_beside(trace: Path) -> Path:
    """The folder for the figures of the run traced in `trace`: `TRACE-images/` next to it."""
    return trace.with_name(f"{trace.stem}-images")


def stopped_by_signal(code: int) -> bool:
    """Whether `main`'s exit code says a signal stopped the run (128 + its number)."""
    return code > 128


async def _main(example: Example, model_url: str | None, trace: Path, images: Path | None) -> int:
    """`run` under the CLI's signal handling: a signal cancels it, and the run ends as a cancelled one."""
    from qwq_agent.cli.signals import Interrupts

    console = Console()
    agents: list[Agent] = []
    outcome: Outcome | None = None
    with Interrupts() as interrupts:
        outcome = await run(
            example,
            model_url=model_url,
            console=console,
            trace_path=trace,
            image_dir=images,
            # Figures are only ever added to a folder (`image_files.write_new_png`): one given with
            # --images keeps what it holds, and by default each trace file has a folder of its own.
            images_beside_trace=images is None,
            on_agent=agents.append,
        )
    if interrupts.signum is not None:
        _say_stopped(console, agents[0] if agents else None, interrupts.name)
        return interrupts.exit_code
    assert outcome is not None
    _say_trace(console, outcome.result)
    return 0 if outcome.result.status == "completed" and not outcome.problems else 1


def _say_stopped(console: Console, agent: Agent | None, signal_name: str) -> None:
    """The two lines after a signal stopped the run: how it ended, and where its trace is."""
    # The loop wrote its `final` as the cancellation unwound; should it not have, this writes it.
    result = agent.end_run("interrupted", f"interrupted by {signal_name}") if agent is not None else None
    if result is None:
        console.print(f"[yellow]{signal_name}: stopped before the run started; no trace was written[/yellow]")
        return
    steps = int(result.totals.get("steps", 0) or 0)
    after = f"after {steps} step{'' if steps == 1 else 's'}"
    console.print(f"[yellow]{signal_name}: the run was stopped ({result.status} {after})[/yellow]")
    _say_trace(console, result)


def _say_trace(console: Console, result: RunResult) -> None:
    """Where the run's trace really is (`RunResult.trace_path`: the file its writer claimed)."""
    if result.trace_path is None:
        why = f": {result.trace_error}" if result.trace_error else ""
        console.print(f"no trace was written{why}", style="yellow", markup=False, soft_wrap=True)
        return
    path = result.trace_path
    line = f"trace: {path} (view it with `qwq-agent trace show {path}`)"
    console.print(line, style="dim", markup=False, highlight=False, soft_wrap=True)


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
