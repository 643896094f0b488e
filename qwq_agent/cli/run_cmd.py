"""`qwq-agent run "TASK"`: one agent, live in the terminal, tools in a real sandbox."""

from __future__ import annotations

import argparse
import asyncio
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from qwq_agent.agent.events import Event
    from qwq_agent.cli.interrupted import Started

from qwq_agent.cli import approval_prompt, arg_types, branch_cmd, ecosystem
from qwq_agent.cli.reasoning_view import REASONING_MODES

DEFAULT_URL = "http://127.0.0.1:30000"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an agent on a task", epilog=tools_epilog())
    p.add_argument("task", nargs="?", help="the task (omit with --replay/--resume to reuse the trace's task)")
    p.add_argument(
        "--model-url",
        help=f"model server URL (default: $QWQ_MODEL_URL, or with --api openai $OPENAI_BASE_URL, else {DEFAULT_URL})",
    )
    p.add_argument(
        "--api",
        choices=("native", "openai"),
        help="SGLang's native API or an OpenAI-compatible one (default: $QWQ_API or native)",
    )
    p.add_argument(
        "--model",
        help="model name for --api openai (default: $QWQ_OPENAI_MODEL, $OPENAI_MODEL, else $QWQ_MODEL or Qwen/QwQ-32B)",
    )
    p.add_argument(
        "--tools",
        help="comma-separated tools (default: python,shell,str_replace_editor,search_code; "
        "with --replay/--resume: the recorded ones)",
    )
    p.add_argument("--workspace", type=Path, help="a folder copied into the sandbox's /workspace")
    p.add_argument(
        "--copy-back", type=Path, help="at the end, copy /workspace back into this folder (as DIR/workspace)"
    )
    p.add_argument(
        "--patch",
        type=Path,
        help="at the end, write the patch of what the agent changed in --workspace to this file (git diff; "
        "new files included; `git apply FILE` in the original folder applies it). Written whole or not at "
        "all: when FILE cannot take it (a full disk), it is kept beside the trace and the run exits 1",
    )
    p.add_argument("--docs-db", type=Path, help="document index for search_docs (see `qwq-agent index`)")
    p.add_argument(
        "--max-steps",
        type=arg_types.positive_int,
        help="step budget (default 30; with --replay/--resume: recorded)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=arg_types.positive_int,
        help="tokens per model call (default 8192; with --replay/--resume: recorded)",
    )
    p.add_argument(
        "--keep-reasoning",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep earlier reasoning in the prompt (default: off; with --replay/--resume: recorded)",
    )
    p.add_argument(
        "--constrained",
        action="store_true",
        default=None,
        help="generate tool calls under a grammar of the tools' schemas (native SGLang API)",
    )
    p.add_argument(
        "--trace", type=Path, help="JSONL trace path, new or empty (default: ./traces/<run id>.jsonl)"
    )
    p.add_argument(
        "--replay",
        type=Path,
        help="replay a trace's completions (and its tools and config) instead of a model",
    )
    p.add_argument(
        "--resume", type=Path, help="replay a trace, then continue with the live model (into a new trace)"
    )
    p.add_argument("--run-id", help="with --replay/--resume: the run to use from an old multi-run trace")
    p.add_argument("--json", action="store_true", help="print events as JSON lines instead of the live view")
    p.add_argument(
        "--reasoning",
        choices=REASONING_MODES,
        default="full",
        help="in the live view, show the reasoning in full, only its last lines (updated in place), or not at all",
    )
    branch_cmd.add_arguments(p)  # --branches, --select
    ecosystem.add_arguments(p)  # --mcp, --mcp-url, --otel
    approval_prompt.add_arguments(p)  # --approve, --decide
    p.set_defaults(func=_run)


def tools_epilog() -> str:
    """`run --help`'s list of the tools."""
    from qwq_agent.tools.catalog import TOOL_NAMES, TOOL_SUMMARIES

    width = max(map(len, TOOL_NAMES))
    return "tools:\n" + "\n".join(f"  {n:<{width}}  {TOOL_SUMMARIES[n]}" for n in TOOL_NAMES)


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    """Run the agent; Ctrl-C, SIGTERM, SIGHUP or SIGQUIT stops it cleanly and shows how far it got."""
    from qwq_agent.cli.console import PipeConsole
    from qwq_agent.cli.interrupted import Started, print_interrupted
    from qwq_agent.cli.signals import Interrupts

    console = PipeConsole(stderr=args.json)
    started = Started()
    with Interrupts() as interrupts:
        code = await _run_agent(args, console, started)
    if interrupts.signum is not None:
        print_interrupted(console, started, interrupts.name, as_json=args.json)
        return interrupts.exit_code
    return code


async def _run_agent(args: argparse.Namespace, console: Console, started: Started) -> int:
    import contextlib
    import uuid

    from rich.markup import escape

    from qwq_agent.agent.loop import Agent
    from qwq_agent.agent.recorded_settings import RecordedSettingsWarning
    from qwq_agent.agent.replay import ReplayModel
    from qwq_agent.agent.workspace import open_sandbox
    from qwq_agent.cli import preflight
    from qwq_agent.cli.endpoint import model_endpoint
    from qwq_agent.cli.errors import CliError
    from qwq_agent.cli.image_status import ensure_run_image
    from qwq_agent.cli.model_check import connect_model
    from qwq_agent.cli.render import EventRenderer
    from qwq_agent.cli.run_settings import fresh_settings, recorded_settings
    from qwq_agent.cli.stdio import StreamWriteError, write_line
    from qwq_agent.surrogates import SURROGATE
    from qwq_agent.tools.catalog import build_tools

    selector = branch_cmd.check(args)  # None unless --branches
    source = args.replay or args.resume
    recording = preflight.load_recording(source, run_id=args.run_id) if source else None
    with warnings.catch_warnings(record=True) as dropped:  # said as one plain line, not Python's warning
        warnings.simplefilter("always", RecordedSettingsWarning)
        settings = recorded_settings(args, recording) if recording else fresh_settings(args)
    for warning in dropped:
        if not issubclass(warning.category, RecordedSettingsWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            continue
        console.print(f"[yellow]{escape(str(warning.message))}[/yellow]", soft_wrap=True)
    for note in settings.overrides:
        flag = "--replay" if args.replay else "--resume"
        console.print(f"[yellow]{flag} overrides the recording: {note}[/yellow]", soft_wrap=True)
    task = args.task or (recording.task if recording else None)
    if task is None:
        raise CliError("no task given", "pass the task as an argument, or --replay/--resume a trace")
    if args.task and SURROGATE.search(args.task):  # argv bytes that are not UTF-8 (surrogateescape)
        console.print(
            "[yellow]the task is not valid UTF-8: the model is sent U+FFFD for each byte that cannot be "
            "decoded (convert the text first, e.g. with iconv -f latin1 -t utf-8)[/yellow]",
            soft_wrap=True,
        )
    run_id = uuid.uuid4().hex[:12]
    trace_path = args.trace or Path("traces") / f"{run_id}.jsonl"
    # What cannot work (tools, workspace, trace path, Docker) is found before a sandbox starts or the
    # model is asked anything; the recorded tools and workspace are the ones checked on a replay.
    plan = preflight.check_run(args, settings, trace_path)

    live = None
    if args.replay is None:
        endpoint = model_endpoint(args)
        live = await connect_model(
            endpoint.url,
            api=endpoint.api,
            model=endpoint.model,
            keep_reasoning=settings.prompt.keep_reasoning,
            profile=settings.prompt.profile,
            written_order=settings.prompt.written_order,
            exact_tokens=settings.prompt.exact_tokens,
            timeout=endpoint.connect_timeout_s,
            routing_key=run_id,  # session affinity behind SGLang's router
        )
    model = (
        ReplayModel.from_recording(recording, then=live, prompt_options=settings.prompt)
        if recording
        else live
    )
    assert model is not None

    tools = build_tools(settings.tools, **settings.build_options())
    try:
        extras = await ecosystem.open_extras(args, tools, console)  # MCP servers' tools, OpenTelemetry
    except BaseException:
        await model.aclose()
        raise
    tools = extras.tools
    agent = None
    copied = True
    try:
        preflight.check_mcp_tools(settings.mcp_tools, extras.mcp_tool_names)
        approver = approval_prompt.setup(args, settings.config, source, tools, console)
        workspace = Path(settings.workspace) if settings.workspace else None
        image = await ensure_run_image(console) if plan.sandbox else None  # a status while it builds
        sandbox_config = {"image": image} if image else {}
        async with (
            open_sandbox(workspace=workspace, **sandbox_config) if plan.sandbox else contextlib.nullcontext()
        ) as sandbox:
            uploaded = getattr(sandbox, "last_upload", None)
            if uploaded is not None:
                branch_cmd.show_left_out(
                    console, uploaded.skipped, "copied into the sandbox", uploaded.skipped_count
                )
            agent = Agent(
                model,
                tools,
                sandbox=sandbox,
                config=settings.config,
                run_id=run_id,
                trace_path=trace_path,
                tool_options=settings.recorded_options(mcp_tools=extras.mcp_tool_names),
                approver=approver,
            )
            started.agent, started.trace_path = agent, trace_path
            if selector is not None:
                return await branch_cmd.run(args, agent, task, selector, console)
            renderer = EventRenderer(
                console, image_dir=Path("qwq-agent-images") / agent.run_id, reasoning=args.reasoning
            )
            try:
                history = recording.history_messages() if recording else []
                continues = recording.continues if recording else False
                stream = agent.stream(task, history=history, continues=continues)
                # Closed here, before the sandbox: left to asyncio's shutdown (after a write to a closed
                # stdout raised), the stream was closed while still running and printed a traceback.
                async with contextlib.aclosing(stream):
                    try:
                        async for ev in extras.observe(stream):
                            if args.json:
                                write_line(_event_json(ev))
                            else:
                                renderer.handle(ev)
                    except StreamWriteError as exc:
                        # Output that cannot be written (a full disk) stops the run, as a closed
                        # stdout does; its trace's final says why, not just that it was stopped.
                        agent.end_run("interrupted", f"cannot write to {exc.stream}: {exc.strerror}")
                        raise
            finally:
                renderer.close()  # the live status goes before anything else is printed
            started.ended = True
            if args.copy_back is not None and sandbox is not None:
                ended = agent.result.trace_path if agent.result is not None else None
                copied = await branch_cmd.copy_back(
                    sandbox, args.copy_back, console, "the workspace", Path(ended) if ended else None
                )
    finally:
        await model.aclose()
        await extras.aclose()
    result = agent.result if agent is not None else None
    patched = True
    if args.patch is not None and result is not None and result.patch is None:
        from qwq_agent.cli.patch_file import report_missing

        # the run's answer stands, but an output it was asked for is missing: said, and exit 1
        report_missing(console, result, args.patch)
        patched = False
    elif args.patch is not None and result is not None and result.patch is not None:
        from qwq_agent.agent.patch import patch_bytes
        from qwq_agent.cli.patch_file import write_patch

        traced = Path(result.trace_path) if result.trace_path else None
        # git's bytes, those not UTF-8 too; kept elsewhere (and said where) if the file cannot take them
        patched = write_patch(console, patch_bytes(result.patch), args.patch, traced)
        if patched:
            changed = result.patch.count("\ndiff --git ") + result.patch.startswith("diff --git ")
            console.print(
                f"[dim]patch ({changed} files changed): {args.patch.resolve()}[/dim]", soft_wrap=True
            )
    if result is not None and result.trace_path:
        # The live view already showed why (a trace_failed warning); JSON output is on stdout.
        why = f": {result.trace_error}" if args.json else ""
        incomplete = f" (incomplete{why})" if result.trace_error else ""
        console.print(f"[dim]trace: {result.trace_path}{incomplete}[/dim]", soft_wrap=True)
    if result is not None and result.status == "awaiting_approval":
        return approval_prompt.report_pending(console, result)
    # 1 also for a completed run whose copy-back or patch did not reach the place asked for
    return 0 if result is not None and result.status == "completed" and copied and patched else 1


def _event_json(ev: Event) -> str:
    """`ev` as one JSON line (ASCII when stdout is not UTF-8, `stdio.json_for_stdout`); an event pydantic
    cannot serialise becomes a warning line in its place."""
    from qwq_agent.agent.events import Warning_
    from qwq_agent.cli.stdio import json_for_stdout

    try:
        return json_for_stdout(ev.model_dump_json())
    except ValueError as exc:  # e.g. nesting past pydantic's serialisation limit
        note = f"a {ev.type} event could not be written as JSON: {str(exc)[:200]}"
        warning = Warning_(kind="unserialisable_event", message=note, run_id=ev.run_id, step=ev.step)
        return json_for_stdout(warning.model_dump_json())
