"""The tools that act inside the run's sandbox: `python`, `shell` and `str_replace_editor`.

Their outputs are written for the model: plain text, failures stated as such, and the facts it needs
to recover (a timeout that cost the interpreter's state, a sandbox that was replaced).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from qwq_agent.protocols import Sandbox, ToolContext, ToolOutput
from qwq_agent.sandbox.errors import SandboxError, ToolError
from qwq_agent.sandbox.protocol import PythonResult, Result, ShellResult
from qwq_agent.tools.base import FunctionTool, tool

DEFAULT_TIMEOUT_S = 60.0
# The loop bounds each tool call too; a model asking for more than this gets this.
MAX_TIMEOUT_S = 600.0


def _no_sandbox() -> ToolOutput:
    return ToolOutput(text="Error: this run has no sandbox, so this tool cannot run.", is_error=True)


def _failure(exc: SandboxError) -> ToolOutput:
    if isinstance(exc, ToolError):  # worded like str_replace_editor's own errors
        return ToolOutput(text=f"ERROR:\n{exc}", is_error=True)
    return ToolOutput(
        text=f"Error ({type(exc).__name__}): {exc}",
        is_error=True,
        metadata={"sandbox_error": type(exc).__name__},
    )


# What the model reads when the call found its sandbox dead (killed, crashed, its lifetime limit
# reached) and ran in a fresh one; the loop writes it for any tool whose own output does not say so.
SANDBOX_REPLACED_NOTE = "[the sandbox had died and was replaced by a fresh one: files and variables are gone]"


def _notes(result: Result) -> list[str]:
    notes = []
    if result.sandbox_replaced:
        notes.append(SANDBOX_REPLACED_NOTE)
    elif result.state_lost:
        notes.append("[the interpreter was restarted: earlier variables and imports are lost]")
    return notes


def _stream(label: str, text: str, dropped: int) -> list[str]:
    if not text and not dropped:
        return []
    out = [f"[{label}]", text.rstrip("\n")]
    if dropped:
        out.append(f"[... {dropped} bytes of {label} omitted from the middle ...]")
    return out


def format_python(result: PythonResult, timeout: float) -> ToolOutput:
    lines = _notes(result)
    lines += _stream("stdout", result.stdout, result.stdout_dropped)
    lines += _stream("stderr", result.stderr, result.stderr_dropped)
    if result.value is not None:
        lines.append(f"Out: {result.value}")
    if result.timed_out:
        lines.append(f"Execution timed out after {timeout:g} s.")
    if result.error is not None:
        lines.append(result.error.traceback.rstrip() or f"{result.error.ename}: {result.error.evalue}")
    if result.images:
        lines.append(f"[{len(result.images)} figure(s) rendered]")
    text = "\n".join(lines) if lines else "(no output)"
    return ToolOutput(
        text=text,
        images=result.images,
        is_error=result.error is not None or result.timed_out,
        metadata={"state_lost": result.state_lost, "sandbox_replaced": result.sandbox_replaced},
    )


def format_shell(result: ShellResult, timeout: float) -> ToolOutput:
    lines = _notes(result)
    lines += _stream("stdout", result.stdout, result.stdout_dropped)
    lines += _stream("stderr", result.stderr, result.stderr_dropped)
    if result.timed_out:
        lines.append(f"The command timed out after {timeout:g} s and was killed.")
    lines.append(f"[exit code: {result.exit_code}]")
    return ToolOutput(
        text="\n".join(lines),
        is_error=result.timed_out,
        metadata={"exit_code": result.exit_code, "sandbox_replaced": result.sandbox_replaced},
    )


def _limits(timeout: float, ctx: ToolContext) -> dict[str, Any]:
    """`timeout=`, `deadline=` and `on_output=` (the `Sandbox` protocol's keywords) for this call."""
    limits: dict[str, Any] = {"timeout": timeout, "deadline": ctx.deadline}
    if ctx.on_output is not None:
        hook = ctx.on_output
        limits["on_output"] = lambda chunk: hook(chunk.stream, chunk.text, chunk.capped)
    return limits


async def _timed(
    ctx: ToolContext,
    timeout: float,
    op: Callable[[Sandbox, float], Awaitable[Any]],
    render: Callable[[Any, float], ToolOutput],
) -> ToolOutput:
    """Run a timed sandbox operation, clamping the model's timeout and turning failures into text."""
    if ctx.sandbox is None:
        return _no_sandbox()
    timeout = min(max(timeout, 1.0), MAX_TIMEOUT_S)
    if ctx.deadline is not None:
        # Ends early enough that the sandbox interrupts the code and reports (with its partial output)
        # before the call's deadline, instead of the loop cancelling a call that goes on running.
        timeout = ctx.sandbox.clamp_timeout(timeout, ctx.deadline)
    try:
        return render(await op(ctx.sandbox, timeout), timeout)
    except SandboxError as exc:
        return _failure(exc)


@tool(name="python", uses_sandbox=True)
async def python_tool(ctx: ToolContext, code: str, timeout: float = DEFAULT_TIMEOUT_S) -> ToolOutput:
    """Run Python code in a persistent interpreter inside the sandbox (like a notebook cell).

    Variables and imports persist between calls. The value of the last expression is shown, as in a
    notebook. numpy, pandas, scipy, sympy and matplotlib are installed; matplotlib figures are captured
    as images. There is no network access. Processes the cell starts (subprocess, os.fork, daemons) are
    killed when the cell ends; threads of the interpreter keep running.

    Args:
        code: the Python source to run
        timeout: seconds before the cell is interrupted (the interpreter is restarted if it must be killed)
    """
    return await _timed(ctx, timeout, lambda sb, t: sb.python(code, **_limits(t, ctx)), format_python)


@tool(name="shell", uses_sandbox=True)
async def shell_tool(ctx: ToolContext, command: str, timeout: float = DEFAULT_TIMEOUT_S) -> ToolOutput:
    """Run a bash command in the sandbox's /workspace and return its output and exit code.

    Each call starts a fresh shell (cd and exports do not persist; chain with &&). There is no network
    access. Very long output keeps its beginning and end. When the command finishes, every process it
    started is killed, including background jobs (`&`, nohup, setsid, daemons): to use a server, start
    it and talk to it in the same command. `python` runs python3.

    Args:
        command: the bash command line
        timeout: seconds before the command and everything it started are killed
    """
    return await _timed(ctx, timeout, lambda sb, t: sb.shell(command, **_limits(t, ctx)), format_shell)


class EditorArgs(BaseModel):
    """Custom editing tool for viewing, creating and editing files in the sandbox.

    * State is persistent across command calls and discussions with the user.
    * If `path` is a file, `view` displays the result of applying `cat -n`. If `path` is a directory,
      `view` lists non-hidden files and directories up to 2 levels deep.
    * The `create` command cannot be used if the specified `path` already exists as a file.
    * If a `command` generates a long output, it will be truncated and marked with `<response clipped>`.
    * The `undo_edit` command will revert the last edit made to the file at `path` (history is limited in
      size; the oldest saved versions are dropped first, and the output says when).
    * Only regular text files up to 10 MB can be edited; FIFOs, sockets and devices are refused. Edits are
      atomic: if a write fails (e.g. the disk is full) the file is left unchanged.
    * The `old_str` parameter should match EXACTLY one or more consecutive lines from the original file.
      Be mindful of whitespaces! If `old_str` is not unique in the file (overlapping matches count: `aa`
      occurs twice in `aaa`), the replacement will not be performed. Include enough context in `old_str`
      to make it unique.
    """

    command: Literal["view", "create", "str_replace", "insert", "undo_edit"] = Field(
        description="The command to run: view, create, str_replace, insert or undo_edit."
    )
    path: str = Field(description="Absolute path to a file or directory, e.g. `/workspace/file.py`.")
    file_text: str | None = Field(None, description="Required for `create`: the content of the file.")
    old_str: str | None = Field(None, description="Required for `str_replace`: the text to replace.")
    new_str: str | None = Field(
        None, description="For `str_replace`: the replacement (empty if omitted). Required for `insert`."
    )
    insert_line: int | None = Field(
        None, description="Required for `insert`: `new_str` is inserted AFTER this line number."
    )
    view_range: list[int] | None = Field(
        None,
        description="Optional for `view` of a file: [start, end] line numbers, 1-based; end -1 means the end.",
    )


_REQUIRED = {"create": ("file_text",), "str_replace": ("old_str",), "insert": ("insert_line", "new_str")}


async def _edit(ctx: ToolContext, args: EditorArgs) -> ToolOutput:
    if ctx.sandbox is None:
        return _no_sandbox()
    for field in _REQUIRED.get(args.command, ()):
        if getattr(args, field) is None:
            return ToolOutput(
                text=f"ERROR:\nParameter `{field}` is required for command: {args.command}.", is_error=True
            )
    sb, deadline = ctx.sandbox, ctx.deadline
    # The `is not None` tests repeat the check above for the type checker; they are always true here.
    text, old, new, line = args.file_text, args.old_str, args.new_str, args.insert_line
    try:
        # With the call's deadline, like python and shell: an unresponsive sandbox is given up (and
        # killed) just before it, with a clear error, rather than left to the registry's backstop.
        if args.command == "view":
            result = await sb.view(args.path, view_range=args.view_range, deadline=deadline)
        elif args.command == "create" and text is not None:
            result = await sb.create_file(args.path, text, deadline=deadline)
        elif args.command == "str_replace" and old is not None:
            result = await sb.str_replace(args.path, old, new or "", deadline=deadline)
        elif args.command == "insert" and line is not None and new is not None:
            result = await sb.insert(args.path, line, new, deadline=deadline)
        else:
            result = await sb.undo_edit(args.path, deadline=deadline)
    except SandboxError as exc:
        return _failure(exc)
    return ToolOutput(
        text="\n".join([*_notes(result), result.output]),
        metadata={"sandbox_replaced": result.sandbox_replaced},
    )


editor_tool: FunctionTool = FunctionTool.from_model(
    EditorArgs, _edit, name="str_replace_editor", uses_sandbox=True
)
