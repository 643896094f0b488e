"""`qwq-agent run "TASK"`: one agent, live in the terminal, tools in a real sandbox."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from qwq_agent.cli import ecosystem

DEFAULT_URL = "http://127.0.0.1:30000"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an agent on a task")
    p.add_argument("task", nargs="?", help="the task (omit with --replay/--resume to reuse the trace's task)")
    p.add_argument("--model-url", default=os.environ.get("QWQ_MODEL_URL", DEFAULT_URL))
    p.add_argument("--api", choices=("native", "openai"), default=os.environ.get("QWQ_API", "native"))
    p.add_argument("--model", default=os.environ.get("QWQ_MODEL", "Qwen/QwQ-32B"), help="model name (openai)")
    p.add_argument("--tools", default="python,shell,str_replace_editor,search_code")
    p.add_argument("--workspace", type=Path, help="a folder copied into the sandbox's /workspace")
    p.add_argument(
        "--copy-back", type=Path, help="at the end, copy /workspace back into this folder (as DIR/workspace)"
    )
    p.add_argument("--docs-db", type=Path, help="document index for search_docs (see `qwq-agent index`)")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--max-new-tokens", type=int, default=8192)
    p.add_argument("--keep-reasoning", action="store_true", help="keep earlier reasoning in the prompt")
    p.add_argument(
        "--constrained",
        action="store_true",
        help="generate tool calls under a grammar of the tools' schemas (native SGLang API)",
    )
    p.add_argument("--trace", type=Path, help="JSONL trace path (default: ./traces/<run id>.jsonl)")
    p.add_argument("--replay", type=Path, help="replay a trace's completions instead of a model")
    p.add_argument("--resume", type=Path, help="replay a trace, then continue with the live model")
    p.add_argument("--json", action="store_true", help="print events as JSON lines instead of the live view")
    ecosystem.add_arguments(p)  # --mcp, --mcp-url, --otel
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from qwq_agent.agent.budgets import Budget
    from qwq_agent.agent.loop import Agent, AgentConfig
    from qwq_agent.agent.trace import ReplayModel, read_trace, task_of
    from qwq_agent.agent.workspace import open_sandbox
    from qwq_agent.cli.model_check import ModelUnavailable, connect_model
    from qwq_agent.cli.render import EventRenderer
    from qwq_agent.protocols import SamplingParams
    from qwq_agent.tools.catalog import build_tools

    console = Console(stderr=args.json)
    source = args.replay or args.resume
    task = args.task
    if task is None:
        if source is None:
            console.print("[red]give a task, or --replay/--resume a trace[/red]")
            return 2
        task = task_of(read_trace(source))

    live = None
    if args.replay is None:
        try:
            live = await connect_model(
                args.model_url, api=args.api, model=args.model, keep_reasoning=args.keep_reasoning
            )
        except ModelUnavailable as exc:
            console.print(f"[red]{exc}[/red]")
            return 3
    model = ReplayModel.from_trace(source, then=live) if source else live

    try:
        tools = build_tools(args.tools.split(","), docs_db=args.docs_db)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    extras = await ecosystem.open_extras(args, tools, console)
    if extras is None:
        await model.aclose()
        return 2
    tools = extras.tools
    config = AgentConfig(
        budget=Budget(max_steps=args.max_steps),
        sampling=SamplingParams(max_new_tokens=args.max_new_tokens),
        constrained_tool_calls=args.constrained,
    )
    trace_path = args.trace
    try:
        async with open_sandbox(workspace=args.workspace) as sandbox:
            agent = Agent(model, tools, sandbox=sandbox, config=config)
            trace_path = trace_path or Path("traces") / f"{agent.run_id}.jsonl"
            agent.trace_path = trace_path
            renderer = EventRenderer(console, image_dir=Path("qwq-agent-images") / agent.run_id)
            async for ev in extras.observe(agent.stream(task)):
                if args.json:
                    sys.stdout.write(ev.model_dump_json() + "\n")
                    sys.stdout.flush()
                else:
                    renderer.handle(ev)
            if args.copy_back is not None:
                await sandbox.download("/workspace", args.copy_back)
                console.print(f"[dim]workspace copied back to {args.copy_back}[/dim]")
    finally:
        await model.aclose()
        await extras.aclose()
    console.print(f"[dim]trace: {trace_path}[/dim]")
    result = agent.result
    return 0 if result is not None and result.status == "completed" else 1
