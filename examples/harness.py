"""What every example shares: pick the model, open a real sandbox, run the agent live, check the outcome.

With `--model-url` (or QWQ_MODEL_URL) a live SGLang server drives the agent. Without one the example's
recorded completions are served by a local scripted model server over real HTTP, and the screen says
so: everything else (the client, the parser, the loop, the sandbox and the tools) runs for real.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


@asynccontextmanager
async def _no_setup():
    yield {}


@dataclass
class Outcome:
    result: RunResult
    problems: list[str]
    replayed: bool
    requests: int = 0


async def run(
    example: Example,
    *,
    model_url: str | None = None,
    console: Console | None = None,
    trace_path: Path | None = None,
) -> Outcome:
    """Run `example` end to end and check what it produced."""
    console = console or Console()
    async with (example.setup or _no_setup)() as context:
        tool_options = {**example.tool_options, **context.pop("tool_options", {})}
        return await _run(example, context, tool_options, model_url, console, trace_path)


async def _run(
    example: Example,
    context: dict[str, Any],
    tool_options: dict[str, Any],
    model_url: str | None,
    console: Console,
    trace_path: Path | None,
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
            renderer = EventRenderer(console)
            async for ev in agent.stream(example.task):
                renderer.handle(ev)
            assert agent.result is not None
            problems = await example.check(agent.result, sandbox)
    finally:
        if server is not None:
            await server.stop()
    for p in problems:
        console.print(f"[red]check failed: {p}[/red]")
    if not problems:
        console.print(f"[bold green]✓ {example.name}: checked[/bold green]")
    return Outcome(
        agent.result, problems, replayed=server is not None, requests=len(server.requests) if server else 0
    )


def main(example: Example, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"qwq-agent example: {example.name}")
    parser.add_argument("--model-url", default=os.environ.get("QWQ_MODEL_URL"))
    parser.add_argument("--trace", type=Path, default=Path("traces") / f"example-{example.name}.jsonl")
    args = parser.parse_args(argv)
    if args.trace.exists():
        args.trace.unlink()
    outcome = asyncio.run(run(example, model_url=args.model_url, trace_path=args.trace))
    Console().print(f"[dim]trace: {args.trace} (view it with `qwq-agent trace show {args.trace}`)[/dim]")
    return 0 if outcome.result.status == "completed" and not outcome.problems else 1


def tool_outputs(result: RunResult) -> list[str]:
    return [m.content for m in result.messages if m.role == "tool"]
