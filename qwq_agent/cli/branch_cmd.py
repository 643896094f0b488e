"""`qwq-agent run --branches N --select ...`: N parallel attempts from one state, one line per branch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwq_agent.agent.protected import DEFAULT_PROTECTED

if TYPE_CHECKING:
    from rich.console import Console

    from qwq_agent.agent.branch_result import BranchResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--branches",
        type=int,
        metavar="N",
        help="run N attempts at once, each in its own sandbox restored from the start state; one is selected",
    )
    p.add_argument(
        "--select",
        metavar="HOW",
        help="with --branches: 'tests:COMMAND' (the first branch where COMMAND exits 0, e.g. "
        "'tests:python3 -m pytest -q'), 'majority' (most common answer; the default) or 'first'",
    )
    p.add_argument(
        "--protect",
        action="append",
        metavar="GLOB",
        help="with --select tests:COMMAND: also protect these paths (repeatable; globs as in .gitignore). "
        "A branch's changes to protected paths are left out of what COMMAND is run on, so those files are "
        "as in your folder; by default the tests are protected: " + " ".join(DEFAULT_PROTECTED),
    )
    p.add_argument(
        "--no-protect",
        action="store_true",
        help="with --select tests:COMMAND: drop the default protected paths (only --protect ones remain)",
    )


def check(args: argparse.Namespace) -> Any:
    """The selector for `--select`, or None without --branches; a `CliError` for what cannot work."""
    from qwq_agent.agent.branches import MAX_BRANCHES
    from qwq_agent.agent.selection import SelectionError, parse_select
    from qwq_agent.cli.errors import CliError

    if args.branches is None:
        if args.select is not None:
            raise CliError("--select needs --branches", "add --branches N (e.g. --branches 4)")
        if args.protect or args.no_protect:
            raise CliError("--protect needs --branches and --select tests:COMMAND")
        return None
    if not 1 <= args.branches <= MAX_BRANCHES:
        raise CliError(f"--branches must be between 1 and {MAX_BRANCHES}, got {args.branches}")
    if args.replay or args.resume:
        raise CliError(
            "--branches cannot be combined with --replay/--resume",
            "replay one branch's own trace instead: qwq-agent run --replay traces/<id>.branch-<i>.jsonl",
        )
    select = args.select or "majority"
    tests = select.partition(":")[0] in ("tests", "verify") and ":" in select
    if not tests and (args.protect or args.no_protect):
        flag = "--protect" if args.protect else "--no-protect"
        raise CliError(f"{flag} needs --select tests:COMMAND (or verify:COMMAND)")
    protect = None
    if tests:
        from qwq_agent.agent.protected import PatternError, matcher

        protect = [*([] if args.no_protect else DEFAULT_PROTECTED), *(args.protect or [])]
        for pattern in args.protect or []:
            try:
                matcher([pattern])
            except PatternError as exc:
                raise CliError(f"--protect {pattern!r}: {str(exc).partition(': ')[2]}") from None
    try:
        return parse_select(select, protect=protect)
    except SelectionError as exc:
        raise CliError(str(exc)) from None


async def run(args: argparse.Namespace, agent: Any, task: str, selector: Any, console: Console) -> int:
    """Explore `task` in `args.branches` branches; print one line per branch and the winner."""
    from qwq_agent.cli.safe_text import plain

    if not args.json:
        console.print(
            f"[dim]running {args.branches} branches (select: {selector.label})[/dim]", soft_wrap=True
        )
    result = await agent.explore(
        task, n=args.branches, select=selector, on_event=_progress(console, args.json)
    )
    async with result:
        if args.json:
            from qwq_agent.cli.stdio import json_for_stdout, write_line

            write_line(json_for_stdout(result.model_dump_json(exclude={"branches": {"__all__": {"result"}}})))
        else:
            print_result(console, result)
        copied = True
        if args.copy_back is not None and result.sandbox is not None:
            traced = Path(result.trace_path) if result.trace_path else None
            copied = await copy_back(
                result.sandbox, args.copy_back, console, "the winner's workspace", traced
            )
    patched = _write_winners_patch(args.patch, result, console) if args.patch is not None else True
    if result.trace_path:
        console.print(
            plain(f"trace: {result.trace_path} (one file per branch beside it)", "dim"), soft_wrap=True
        )
    if result.winner is None and (waiting := awaiting_approval(result)):
        # Not a failure: the branches stopped for a person (no terminal), each resumable on its own.
        from qwq_agent.cli.approval_prompt import resume_command, unresumable
        from qwq_agent.cli.errors import EXIT_AWAITING_APPROVAL

        resumes = 0
        for b in waiting:
            assert b.trace_path is not None
            # A trace a full disk stopped before the wait was recorded offers no resume that could work.
            why = unresumable(b.trace_path, b.result.trace_error if b.result is not None else None)
            if why is None:
                resumes += 1
                line = f"branch {b.index} waits for approval; resume with: {resume_command(b.trace_path)}"
                console.print(plain(line, "magenta"), soft_wrap=True)
            else:
                line = f"branch {b.index} stopped to wait for approval, but {why}: it cannot be resumed"
                console.print(plain(line, "yellow"), soft_wrap=True)
        return EXIT_AWAITING_APPROVAL if resumes else 1
    return 0 if result.winner is not None and copied and patched else 1


def _write_winners_patch(path: Path, result: BranchResult, console: Console) -> bool:
    """The winner's patch into `path` (`patch_file.write_patch`); a line saying why when there is none
    (no winner, or its patch could not be collected). Whether `path` holds it."""
    from qwq_agent.agent.patch import patch_bytes
    from qwq_agent.cli.patch_file import report_missing, write_patch
    from qwq_agent.cli.safe_text import plain

    won = result.won
    if won is None:
        console.print(plain(f"no patch: no branch won; {path} not written", "yellow"), soft_wrap=True)
        return False
    if won.result is None or won.result.patch is None:
        report_missing(console, won.result, path)
        return False
    traced = Path(result.trace_path) if result.trace_path else None
    if not write_patch(console, patch_bytes(won.result.patch), path, traced):  # git's bytes
        return False
    console.print(plain(f"the winner's patch: {path.resolve()}", "dim"), soft_wrap=True)
    return True


def awaiting_approval(result: BranchResult) -> list[Any]:
    """The branches waiting for an approval (with a trace to resume), when none completed; else none."""
    if any(b.status == "completed" for b in result.branches):
        return []
    return [b for b in result.branches if b.status == "awaiting_approval" and b.trace_path]


async def copy_back(sandbox: Any, dest: Path, console: Console, what: str, trace: Path | None = None) -> bool:
    """Copy /workspace into `dest`, saying what was left out; a failure is one warning line and False,
    so the patch and the trace line, which do not depend on it, still come. What git would run
    commands from is left out (`sandbox.git_files`) and named on a line of its own; a git config
    comes back with only its safe settings, a line naming those dropped. When the copy fails with the
    archive the sandbox sent in hand (the host's disk full, `dest/workspace` made meanwhile, an archive
    refused), it is kept beside `trace` (`<trace stem>.workspace.tar`, else in the temporary folder) and
    the line names it: the sandbox, about to go, holds the only copy.

    The run has ended by now and the sandbox holds the only copy of its work, so a Ctrl-C, SIGTERM, SIGHUP
    or SIGQUIT (a cancellation) lets the copy finish first, then propagates; a second signal exits at once
    (`signals.Interrupts`), and the line before says that the copy is then abandoned.
    """
    import asyncio

    from qwq_agent.cli.safe_text import plain
    from qwq_agent.sandbox.errors import SandboxError
    from qwq_agent.sandbox.git_files import WHY

    download = asyncio.ensure_future(sandbox.download("/workspace", dest))
    cancelled: asyncio.CancelledError | None = None
    try:
        try:
            copied = await asyncio.shield(download)
        except asyncio.CancelledError as exc:
            cancelled = exc
            if not download.done():
                note = f"finishing the copy-back of {what} to {dest} first (again to abandon it)"
                console.print(plain(note, "yellow"), soft_wrap=True)
            copied = await download  # bounded: the download has its own deadline
    except (SandboxError, OSError) as exc:  # texts from the sandbox: printed literally
        note = f"{what} was not copied back to {dest}: {exc}"
        # The archive in hand (a full disk, `DIR/workspace` made since the run began by another run with
        # the same DIR, an archive refused): the sandbox, about to go, holds the only other copy.
        archive = getattr(exc, "archive", None)
        if isinstance(archive, bytes):
            note += _kept_archive(archive, dest, trace)
        console.print(plain(note, "yellow"), soft_wrap=True)
        if cancelled is not None:
            raise cancelled from None
        return False
    console.print(plain(f"{what} copied back to {dest}", "dim"), soft_wrap=True)
    show_left_out(console, copied.skipped, "copied back", copied.skipped_count)
    if copied.git_left_out:  # names from the sandbox: printed literally
        more = " ..." if len(copied.git_left_out) > 3 else ""
        note = (
            f"{len(copied.git_left_out)} entries were not copied back, as {WHY} on the host (a git "
            f"folder's hooks or todo lists, a .git file; git works without them): "
            f"{', '.join(copied.git_left_out[:3])}{more}"
        )
        console.print(plain(note, "yellow"), soft_wrap=True)
    configs = copied.git_settings_dropped  # a line per config, keys from the sandbox: printed literally
    for line in configs[:3]:
        console.print(plain(line, "yellow"), soft_wrap=True)
    if len(configs) > 3:
        note = f"and {len(configs) - 3} more git configs copied back without some of their settings"
        console.print(plain(note, "yellow"), soft_wrap=True)
    if copied.cut:  # names from the sandbox: printed literally
        more = " ..." if len(copied.cut) > 3 else ""
        note = (
            f"{max(copied.cut_count, len(copied.cut))} files grew while they were copied and are cut at the "
            f"size they had when the copy reached them: {', '.join(copied.cut[:3])}{more}"
        )
        console.print(plain(note, "yellow"), soft_wrap=True)
    if cancelled is not None:
        raise cancelled
    return True


def _kept_archive(archive: bytes, dest: Path, trace: Path | None) -> str:
    """The end of the copy-back's failure line: where the archive of the workspace was kept, or that it
    could not be."""
    from qwq_agent.cli.kept_files import keep

    kept = keep(archive, trace, ".workspace.tar", dest.name or "copy-back")
    if kept is None:
        return "; nor could the archive the sandbox sent be kept anywhere else: the work is lost"
    # The sandbox's archive as it came, none of copy-back's checks made: links out, git hooks.
    return (
        f"; the archive the sandbox sent was kept in {kept} (unchecked: list it with `tar tvf` "
        "before extracting it)"
    )


def show_left_out(console: Console, skipped: list[str], verb: str, count: int = 0) -> None:
    """One line naming the entries a copy left out (links leading out, FIFOs, unreadable entries)."""
    from qwq_agent.cli.safe_text import plain

    if skipped:  # names from the sandbox or the user's folder: printed literally, control characters shown
        more = " ..." if len(skipped) > 3 else ""
        n = max(count, len(skipped))
        console.print(
            plain(
                f"{n} entries were not {verb} (links leading out, special, unreadable or changing files): "
                f"{', '.join(skipped[:3])}{more}",
                "yellow",
            ),
            soft_wrap=True,
        )


def _progress(console: Console, quiet: bool) -> Any:
    """A dim line as each branch ends (they may take minutes; the verdicts come after all have ended)."""
    from qwq_agent.agent.events import Event, Final

    def on_event(index: int, ev: Event) -> None:
        if isinstance(ev, Final) and not quiet:
            steps = int(ev.totals.get("steps", 0) or 0)
            console.print(f"[dim]branch {index} ended: {ev.status} after {steps} steps[/dim]")

    return on_event


def describe(outcome: Any, winner: int | None) -> str:
    """One line for a branch: status, verdict or error, answer.

    Only the selected branch (`winner`) is "won"; another whose check passed is "passed" (several may
    pass, one wins: an operator reading or grepping the lines must find that one).
    """
    if outcome.index == winner:
        mark = "won"
    else:
        mark = "passed" if outcome.passed else outcome.status
    why = outcome.verdict or outcome.error or ""
    answer = (outcome.answer or "").strip().splitlines()
    text = f"branch {outcome.index} (seed {outcome.seed}): {mark}"
    if why:
        text += f" - {why}"
    if answer:
        text += f" - answer: {answer[0][:80]}"
    return text


def print_result(console: Console, result: BranchResult) -> None:
    """Each branch's line, the verdict and the winner's answer: model and sandbox text, so printed
    through `safe_text.plain` (never parsed as markup, control characters visible)."""
    from qwq_agent.cli.safe_text import plain

    for b in result.branches:
        style = "green" if b.index == result.winner else "dim"
        console.print(plain(describe(b, result.winner), style), soft_wrap=True)
    if result.winner is None:
        console.print(plain(f"no branch won: {result.reason}", "red"), soft_wrap=True)
    else:
        console.print(plain(f"branch {result.winner} won: {result.reason}", "bold green"), soft_wrap=True)
        changed = result.won.protected_changes if result.won is not None else []
        if changed:  # passed without them: a person decides whether the winner's edits to tests stand
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            note = (
                f"warning: the winner's patch also changes protected files (the tests, --protect): "
                f"{', '.join(changed[:3])}{more}. The check ran with them as in your folder; the patch "
                "still holds these changes: review them before applying it"
            )
            console.print(plain(note, "yellow"), soft_wrap=True)
        if result.answer:
            console.print(plain(result.answer), soft_wrap=True)
