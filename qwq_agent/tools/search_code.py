"""The `search_code` tool: ripgrep inside the run's sandbox, results as `path:line: text` groups.

The search runs in the sandbox (its `search` operation drives ripgrep there), so it sees exactly the
workspace the agent's code runs against; binary files are skipped by ripgrep. Paths are shown
relative to `/workspace` so they can be passed back to the editor tools as they are.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qwq_agent.protocols import ToolContext, ToolOutput
from qwq_agent.tools.base import ModelTool

WORKSPACE = "/workspace"
_MAX_LINE = 300  # long lines (minified code) would flood the observation
_LEAD = 100  # of a long matching line's window, at most this much comes before the match
_MAX_FILE_MB = 50  # files over this are not searched (MAX_FILESIZE in sandbox/supervisor/search.py)


class SearchCodeArgs(BaseModel):
    """Arguments of `search_code`."""

    model_config = ConfigDict(extra="forbid")  # a misspelt argument is an error, not silently ignored

    pattern: str = Field(
        min_length=1, description="Rust-regex (ripgrep) pattern, or plain text with literal=true."
    )
    path: str = Field(default=".", description="File or folder to search, relative to /workspace.")
    literal: bool = Field(default=False, description="Treat the pattern as plain text, not a regex.")
    globs: list[str] = Field(
        default_factory=list,
        description="Include/exclude file globs, e.g. ['*.py', '!tests/**'].",
    )
    context_lines: int = Field(
        default=0, ge=0, le=10, description="Lines of context before and after each match."
    )
    case: Literal["smart", "sensitive", "insensitive"] = Field(
        default="smart", description="'smart': case-insensitive unless the pattern has an upper-case letter."
    )
    max_results: int = Field(default=50, ge=1, le=500, description="Most matches to show.")


class SearchCode(ModelTool[SearchCodeArgs]):
    """Search the sandbox workspace with ripgrep."""

    name = "search_code"
    description = (
        "Search the files of /workspace with ripgrep (regex or literal text, file globs, context "
        "lines). Matches are shown as `path:line: text` (context lines as `path-line- text`), "
        "grouped by file; of a long line (minified code) the part around the match is shown, with "
        "how much of the line is not. Dotfiles and dot-folders (.github, .env.example) are searched, `.git` only "
        "when it is the path; binary files, files ignored by .gitignore and files over 50 MB are "
        "skipped (the answer says how many large files were)."
    )
    Args = SearchCodeArgs
    uses_sandbox = True  # a search must see the edits the model asked for before it

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s

    async def run(self, args: SearchCodeArgs, context: ToolContext) -> ToolOutput:
        sandbox = context.sandbox
        if sandbox is None:
            return ToolOutput(
                text="search_code: no sandbox with a workspace is attached to this run.", is_error=True
            )
        path = (
            args.path
            if args.path.startswith("/")
            else f"{WORKSPACE}/{args.path}".rstrip("/").removesuffix("/.")
        )
        try:
            result = await sandbox.search(
                pattern=args.pattern,
                path=path,
                literal=args.literal,
                globs=args.globs,
                context_lines=args.context_lines,
                case=args.case,
                max_results=args.max_results,
                timeout=self.timeout_s,
            )
        except Exception as exc:  # the sandbox's typed errors; their messages are written for the model
            return ToolOutput(text=_explain_failure(exc, args), is_error=True)
        return ToolOutput(text=format_matches(args, result), metadata=_metadata(result))


def format_matches(args: SearchCodeArgs, result: Any) -> str:
    """The observation: a summary line, then matches grouped by file with `--` between groups."""
    matches = list(result.matches)
    shown_where = args.path if args.path not in ("", ".") else "the workspace"
    timed_out = result.timed_out
    large = _large_note(result.skipped_large, shown_where)
    if result.unreadable:
        # ripgrep's own messages are off (see the supervisor's search): the model gets the fact, not a list.
        unread = "some files or folders there could not be read (permissions) and were not searched"
        large = f"{large}; {unread}" if large else unread
    if not matches:
        if timed_out:
            # Not "No matches": the files ripgrep had not reached yet were never searched.
            return (
                f"The search timed out before it finished: no matches for {args.pattern!r} in {shown_where} "
                "so far, but not every file was searched. Narrow `path` or `globs` and search again."
                + (f" Also, {large}." if large else "")
            )
        if large:
            return f"Search incomplete: {large}. No matches for {args.pattern!r} in the other files."
        hint = (
            " (try literal=true, case='insensitive' or fewer globs)" if not args.literal or args.globs else ""
        )
        return f"No matches for {args.pattern!r} in {shown_where}{hint}."
    files = list(dict.fromkeys(m.path for m in matches))
    head = f"{result.total_matches} matches"
    if timed_out:
        head = f"at least {result.total_matches} matches (the search timed out before it finished)"
    elif result.stopped_early:
        head = f"at least {result.total_matches} matches (counting stopped early)"
    head += f" for {args.pattern!r} in {shown_where}"
    if result.omitted:
        head += f"; showing the first {len(matches)} in {len(files)} files, {result.omitted} more not shown (narrow the pattern or globs)"
    else:
        head += f" in {len(files)} files"
    if large:
        head += f"; {large}"
    out = [head + ":"]
    prev_path, prev_last = None, -1
    for m in matches:
        path = _relative(m.path)
        number = m.line_number or 0
        # Each context line carries its own number (one may be missing from the list: an unreadable
        # record); counting by position is only for results that lack them.
        before = [(c.line_number or number - len(m.before) + i, c) for i, c in enumerate(m.before)]
        after = [(c.line_number or number + i, c) for i, c in enumerate(m.after, 1)]
        first = before[0][0] if before else number
        if prev_path != path:
            out.append("")
        elif first > prev_last + 1:
            out.append("--")
        for n, c in before:
            out.append(f"{path}-{n}- {_clip(c.text, c.start, c.length)}")
        out.append(f"{path}:{number}: {_clip(m.line, m.line_start, m.line_length, m.match_start)}")
        for n, c in after:
            out.append(f"{path}-{n}- {_clip(c.text, c.start, c.length)}")
        prev_path, prev_last = path, after[-1][0] if after else number
    return "\n".join(out)


def _large_note(count: int, where: str) -> str:
    """What to say about files ripgrep skipped for size ('' for none): how many, and how to search them."""
    if not count:
        return ""
    files = "1 file" if count == 1 else f"{count} files"
    return (
        f"{files} over {_MAX_FILE_MB} MB in {where} {'was' if count == 1 else 'were'} not searched (list them "
        f"with `find . -size +{_MAX_FILE_MB}M`, search them with grep in the shell)"
    )


def _metadata(result: Any) -> dict[str, Any]:
    return {
        "total_matches": result.total_matches,
        "shown": len(result.matches),
        "omitted": result.omitted,
        "complete": result.complete,
        "timed_out": result.timed_out,
        "skipped_large": result.skipped_large,
        "locations": [f"{_relative(m.path)}:{m.line_number}" for m in result.matches],
    }


def _explain_failure(exc: Exception, args: SearchCodeArgs) -> str:
    name = type(exc).__name__
    message = str(exc)
    if "regex parse error" in message:
        return (
            f"search_code: the pattern {args.pattern!r} is not a valid ripgrep regex:\n{message}\n"
            "Escape special characters or pass literal=true to search for the text as written."
        )
    if name == "PathOutsideWorkspace":
        return f"search_code: {args.path!r} is outside /workspace; search inside the workspace."
    return f"search_code failed ({name}): {message}"


def _relative(path: str) -> str:
    """The path shown for a match, on one line: a name holding a line break is JSON-quoted, so that it
    cannot forge `path:line: text` lines of its own."""
    path = path[len(WORKSPACE) + 1 :] if path.startswith(WORKSPACE + "/") else path
    return json.dumps(path, ensure_ascii=False) if _CONTROL.search(path) else path


_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def _clip(text: str, start: int = 0, length: int | None = None, match: int | None = None) -> str:
    """What is shown of a line, given `text`, the part of it from `start` on, and its `length` (None:
    not known): at most `_MAX_LINE` characters, around the `match` offset if any (else from the
    start), and how much of the line is not shown."""
    end = start + len(text)
    lo = start if match is None else max(start, min(match - _LEAD, end - _MAX_LINE))
    hi = min(end, lo + _MAX_LINE)
    if lo == 0 and hi == end and length in (None, end):
        return text
    shown = text[lo - start : hi - start]
    if length is None:
        return f"{'…' if lo else ''}{shown}… [at least {end - hi} more chars]"
    if lo == 0:
        return f"{shown}… [{length - hi} more chars]"
    return f"…{shown}{'…' if hi < length else ''} [chars {lo + 1}-{hi} of {length}]"
