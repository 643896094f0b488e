"""Typed requests and results of the supervisor channel (plain JSON inside the container).

Every result carries `sandbox_replaced` / `state_lost` so a caller can tell that the container it was
talking to died and a fresh one answered.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Request(BaseModel):
    """Base of every request; `op` names the supervisor operation."""

    model_config = ConfigDict(extra="forbid")
    op: str


class PythonRequest(Request):
    op: Literal["python"] = "python"
    code: str
    timeout: float = Field(gt=0)
    stream_limit: int | None = Field(
        None, gt=0, description="stream up to this many bytes of output while it runs"
    )


class ShellRequest(Request):
    op: Literal["shell"] = "shell"
    command: str = Field(min_length=1)
    timeout: float = Field(gt=0)
    cwd: str | None = None
    stream_limit: int | None = Field(
        None, gt=0, description="stream up to this many bytes of output while it runs"
    )


class PythonResetRequest(Request):
    """Stop the interpreter and all it started (threads, processes; a running cell) and start a fresh one."""

    op: Literal["python_reset"] = "python_reset"
    restart: bool = Field(
        True, description="start a fresh interpreter now; False: none until the next python call"
    )
    timeout: float = Field(
        60.0, gt=0, description="seconds the reset may take, ending a running cell included"
    )


class ViewRequest(Request):
    op: Literal["view"] = "view"
    path: str
    view_range: list[int] | None = None


class CreateRequest(Request):
    op: Literal["create"] = "create"
    path: str
    file_text: str


class StrReplaceRequest(Request):
    op: Literal["str_replace"] = "str_replace"
    path: str
    old_str: str
    new_str: str = ""


class InsertRequest(Request):
    op: Literal["insert"] = "insert"
    path: str
    insert_line: int
    new_str: str


class UndoEditRequest(Request):
    op: Literal["undo_edit"] = "undo_edit"
    path: str


class SearchRequest(Request):
    op: Literal["search"] = "search"
    pattern: str = Field(min_length=1)
    path: str = "/workspace"
    literal: bool = False
    globs: list[str] = Field(default_factory=list)
    context_lines: int = Field(0, ge=0, le=20)
    case: Literal["smart", "sensitive", "insensitive"] = "smart"
    include_hidden: bool = Field(
        True, description="search dotfiles and dot-folders too; `.git` only when it is the path searched"
    )
    max_results: int = Field(100, ge=1, le=10_000)
    timeout: float = Field(30.0, gt=0)


class UploadRequest(Request):
    op: Literal["upload"] = "upload"
    dest: str
    data: str = Field(description="tar archive, base64")


class DownloadRequest(Request):
    op: Literal["download"] = "download"
    path: str


class OutputChunk(BaseModel):
    """Output of a running `python`/`shell` call, streamed before its result (which still holds it all)."""

    stream: Literal["stdout", "stderr"]
    text: str
    capped: bool = Field(
        False, description="the call's streaming limit is reached: the rest is in the result only"
    )


class Result(BaseModel):
    """Common fields: whether the call ran in a replacement sandbox and whether earlier state is gone."""

    sandbox_replaced: bool = False
    state_lost: bool = False


class PythonError(BaseModel):
    ename: str
    evalue: str
    traceback: str


class PythonResult(Result):
    """A notebook-style cell result: captured output, the last expression's repr, error, figures."""

    stdout: str = ""
    stderr: str = ""
    value: str | None = None
    error: PythonError | None = None
    images: list[str] = Field(default_factory=list, description="PNG figures, base64")
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    timed_out: bool = False
    cancelled: bool = Field(False, description="the host cancelled the call and the cell was interrupted")
    duration_s: float = 0.0
    interpreter: str | None = Field(
        None,
        description="the id of the interpreter that holds what the cell did (each interpreter started "
        "gets a new one); None when the cell did not run, or cost its interpreter (`state_lost`)",
    )

    @property
    def ok(self) -> bool:
        return self.error is None


class ShellResult(Result):
    """Exit code (negative: killed by that signal) and head+tail of each stream."""

    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    timed_out: bool = False
    cancelled: bool = Field(False, description="the host cancelled the call and its processes were killed")
    duration_s: float = 0.0


class FileResult(Result):
    """The text a `str_replace_editor` command reports."""

    output: str


class SearchLine(BaseModel):
    """A context line of a search match: its own number, and the part of it shown.

    A long line (minified code) is not sent whole: `text` is a window of it (about 2,000 characters)
    that starts `start` characters into the line, and `length` is the whole line's.
    """

    line_number: int | None = None
    text: str
    start: int = Field(0, description="characters of the line before `text`")
    length: int | None = Field(None, description="the line's length in characters; None: not known")


class SearchMatch(BaseModel):
    """A matching line; of a long one `line` is the window around its first match (see `SearchLine`)."""

    path: str
    line_number: int | None
    line: str
    line_start: int = Field(0, description="characters of the line before `line`")
    line_length: int | None = Field(None, description="the line's length in characters; None: not known")
    match_start: int | None = Field(None, description="where the line's first match starts, in characters")
    match_end: int | None = Field(None, description="where the line's first match ends, in characters")
    before: list[SearchLine] = Field(default_factory=list)
    after: list[SearchLine] = Field(default_factory=list)

    @field_validator("before", "after", mode="before")
    @classmethod
    def _plain_lines(cls, lines: object) -> object:
        """Context lines given as bare strings (as results before line numbers were) are accepted."""
        if isinstance(lines, list):
            return [{"text": line} if isinstance(line, str) else line for line in lines]
        return lines


class SearchResult(Result):
    matches: list[SearchMatch] = Field(default_factory=list)
    total_matches: int = 0
    omitted: int = Field(0, description="matches found beyond max_results")
    complete: bool = Field(
        True,
        description="false when counting stopped early (time or volume), or large or unreadable files were skipped",
    )
    stopped_early: bool = Field(False, description="ripgrep was stopped before it finished (time or volume)")
    timed_out: bool = Field(
        False, description="the timeout stopped ripgrep: files it had not reached were not searched"
    )
    skipped_large: int = Field(0, description="files not searched because they are over 50 MB")
    unreadable: bool = Field(
        False, description="some files or folders could not be read, so were not searched"
    )
    path: str = "/workspace"


class UploadResult(Result):
    dest: str
    entries: int
    bytes: int
    skipped: list[str] = Field(
        default_factory=list,
        description="entries not written: links absolute or pointing out of the destination; sockets, "
        "FIFOs and devices (`upload` leaves them out of its archive)",
    )
    skipped_count: int = Field(0, description="entries not written, also those beyond the named ones")


class DownloadResult(Result):
    paths: list[str] = Field(default_factory=list, description="host paths written")
    bytes: int = Field(0, description="bytes actually written on the host (never the sandbox's own claim)")
    skipped: list[str] = Field(
        default_factory=list,
        description="entries not written: links absolute, leaving the destination or too deep; FIFOs, "
        "sockets, devices and unreadable entries (the sandbox names its first 50); files changed while "
        "copied; paths too long for the host",
    )
    skipped_count: int = Field(0, description="entries not written, also those beyond the named ones")
    git_left_out: list[str] = Field(
        default_factory=list,
        description="what was not copied back because git would run commands from it (a git folder's "
        "`config`, `hooks/`, a `.git` file; see `sandbox.git_files`); a folder ends in `/`; not in `skipped`",
    )
    git_settings_dropped: list[str] = Field(
        default_factory=list,
        description="a line per git config written with only its safe settings (remotes, branches, user, "
        "core basics), naming the settings dropped; or left out whole as too large to read, and why; and "
        "a line per git folder's `remotes/` or `branches/` (old-style remotes) left out",
    )
    cut: list[str] = Field(
        default_factory=list,
        description="files that grew while they were copied, written at the size they had when the copy "
        "reached them (the sandbox names its first 50); one that shrank or was written to as it was read is "
        "in `skipped`, not written",
    )
    cut_count: int = Field(0, description="files cut, also those beyond the named ones")


class PingResult(Result):
    pong: bool = True
    worker_pid: int | None = None


class PythonResetResult(Result):
    worker_pid: int | None = None
