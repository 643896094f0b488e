"""`FileOps`: the editor, search, upload and download calls of a sandbox."""

from __future__ import annotations

import asyncio
import base64
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qwq_agent.deadline import Deadline
from qwq_agent.sandbox.archive_extract import _extract_counted
from qwq_agent.sandbox.calls import SandboxCalls, _checked
from qwq_agent.sandbox.errors import (
    DeadlineTooNear,
    DestinationExists,
    DownloadNotWritten,
    InvalidRequest,
    UnsafeArchive,
)
from qwq_agent.sandbox.packing import fits_in_request, pack
from qwq_agent.sandbox.protocol import (
    CreateRequest,
    DownloadRequest,
    DownloadResult,
    FileResult,
    InsertRequest,
    PingResult,
    Request,
    SearchRequest,
    SearchResult,
    StrReplaceRequest,
    UndoEditRequest,
    UploadRequest,
    UploadResult,
    ViewRequest,
)
from qwq_agent.sandbox.surrogates import clean_text

# The entries an upload's result names, as the supervisor names what it skips (the rest are counted).
_MAX_SKIPPED_SHOWN = 50

# What an editor command is given in the sandbox (it has no time limit there: it edits one file of at most
# 10 MB); its reply is awaited this long plus the config's graces, or until just before a deadline.
EDIT_TIMEOUT_S = 60.0
# The least of a deadline an editor command starts with. The reply wait is the editor's only bound and
# a missed one kills the container (an unresponsive supervisor is not trusted again), so a command that
# a healthy sandbox could not answer in time (a 10 MB file, half a second left) is refused instead:
# this leaves its reply at least 1.5 s, several times what such an edit takes on a busy machine.
EDIT_MIN_LEFT_S = 2.0


class FileOps(SandboxCalls):
    """Files in the sandbox: view and edit them, search them, copy them in and out."""

    # The last `upload`'s result: what it left out is shown by whoever opened the sandbox (the CLI).
    last_upload: UploadResult | None = None

    async def view(
        self, path: str, view_range: list[int] | None = None, *, deadline: Deadline | None = None
    ) -> FileResult:
        """`cat -n` of a file (optionally lines [start, end], end -1 = to the end) or a 2-level listing.

        With `deadline` (on every editor command), the reply is awaited until just before it, as for
        python and shell: a sandbox that has not answered by then is killed and `SandboxTimeout` raised.
        With less than `EDIT_MIN_LEFT_S` of it left the command is not sent (`DeadlineTooNear`): the
        editor has no time limit in the sandbox to end it early, as python and shell have.
        """
        with _checked():
            req = ViewRequest(path=path, view_range=view_range)
        return await self._call(req, FileResult, self._edit_grace(req.op, deadline))

    async def create_file(self, path: str, file_text: str, *, deadline: Deadline | None = None) -> FileResult:
        """Create a new file (refuses to overwrite)."""
        with _checked():
            req = CreateRequest(path=path, file_text=file_text)
        return await self._call(req, FileResult, self._edit_grace(req.op, deadline))

    async def str_replace(
        self, path: str, old_str: str, new_str: str = "", *, deadline: Deadline | None = None
    ) -> FileResult:
        """Replace the one occurrence of `old_str`; zero or several matches raise `ToolError`."""
        with _checked():
            req = StrReplaceRequest(path=path, old_str=old_str, new_str=new_str)
        return await self._call(req, FileResult, self._edit_grace(req.op, deadline))

    async def insert(
        self, path: str, insert_line: int, new_str: str, *, deadline: Deadline | None = None
    ) -> FileResult:
        """Insert `new_str` after line `insert_line` (0: at the top)."""
        with _checked():
            req = InsertRequest(path=path, insert_line=insert_line, new_str=new_str)
        return await self._call(req, FileResult, self._edit_grace(req.op, deadline))

    async def undo_edit(self, path: str, *, deadline: Deadline | None = None) -> FileResult:
        """Revert the last `str_replace` or `insert` on `path`."""
        with _checked():
            req = UndoEditRequest(path=path)
        return await self._call(req, FileResult, self._edit_grace(req.op, deadline))

    def _edit_grace(self, op: str, deadline: Deadline | None) -> float:
        """How long an editor command's reply is awaited; `DeadlineTooNear` when `deadline` leaves too
        little for it."""
        left = deadline.left() if deadline is not None else None
        if left is not None and left < EDIT_MIN_LEFT_S:
            raise DeadlineTooNear(
                f"the editor command {op!r} was not run: {left:.1f} s of the time limit were left, less "
                f"than the {EDIT_MIN_LEFT_S:g} s an editor command is started with; nothing was changed"
            )
        return self._grace(EDIT_TIMEOUT_S, deadline)

    async def search(self, pattern: str, **options: Any) -> SearchResult:
        """ripgrep over the workspace; options are `SearchRequest` fields (literal, globs, context_lines...)."""
        with _checked():
            req = SearchRequest(pattern=pattern, **options)
        return await self._call(req, SearchResult, self._grace(req.timeout))

    async def ping(self) -> PingResult:
        return await self._call(Request.model_construct(op="ping"), PingResult, self._grace(10))

    async def upload_archive(self, data: bytes, dest: str = "/workspace") -> UploadResult:
        """Extract a tar archive under `dest`; unsafe entries make the whole archive refused (`UnsafeArchive`),
        except symlinks that are absolute or lead out of `dest`: those are left out and named in `skipped`."""
        with _checked():
            req = UploadRequest(dest=dest, data=base64.b64encode(data).decode("ascii"))
        return await self._call(req, UploadResult, self._grace(120))

    async def upload(
        self,
        local: str | os.PathLike[str],
        dest: str = "/workspace",
        *,
        contents: bool = False,
        exclude: Sequence[str] = (),
    ) -> UploadResult:
        """Copy a local file or folder into the directory `dest` (like `docker cp local dest/`).

        With `contents`, a folder's entries land directly in `dest` (like `docker cp local/. dest/`).
        Paths with a component named in `exclude` (e.g. `.git`, `__pycache__`) are left out; so are
        sockets, FIFOs and devices, named in the result's `skipped` (by their paths in the archive).
        """
        path = Path(local)
        left_out: list[str] = []

        def checked_pack() -> bytes:
            if not path.exists():
                raise InvalidRequest(f"{local} does not exist")
            if contents and not path.is_dir():
                raise InvalidRequest(f"{local} is not a directory")
            return pack(path, contents=contents, exclude=exclude, left_out=left_out)

        data = await asyncio.to_thread(checked_pack)
        if not fits_in_request(len(data), self.config.max_request_bytes):
            raise InvalidRequest(
                f"{local} packs to {len(data)} bytes, over the request limit; nothing was sent"
            )
        done = await self.upload_archive(data, dest)
        self.last_upload = done.model_copy(
            update={
                "skipped": (left_out + done.skipped)[:_MAX_SKIPPED_SHOWN],
                "skipped_count": len(left_out) + max(done.skipped_count, len(done.skipped)),
            }
        )
        return self.last_upload

    async def download(self, src: str, local_dir: str | os.PathLike[str]) -> DownloadResult:
        """Copy a workspace file or folder into the local directory `local_dir` (created if missing).

        The archive comes from an untrusted sandbox, so it is checked in full before anything is written:
        absolute paths, `..`, special files and entries beside `src`'s own name raise `UnsafeArchive`. A
        symlink that is absolute or leaves the copy of `src` (a venv's `bin/python3 -> /usr/bin/python3`;
        `notes.md -> ../otherproject/x`, beside it in `local_dir`) is not written; it is named in `skipped`,
        as are FIFOs, sockets and unreadable entries, which the sandbox leaves out of the archive, and
        entries whose path under `local_dir` would be too long for this host (PATH_MAX, NAME_MAX).
        A file that shrank or was written to while it was sent (something in the sandbox still wrote it:
        what came may mix old and new contents) is not written and is named in `skipped`; one that grew
        is written cut, and named in `cut`.
        Something already at a path the archive holds raises `DestinationExists`, and an archive that does
        not read as the entries the reply counts raises `UnsafeArchive`; nothing is written then. When the
        host's disk fails the writing (full), what was written is removed and `DownloadNotWritten` (an
        `OSError`) is raised. Each holds the archive as it came (`archive`) for the caller to keep.
        What git would run commands from (a git folder's `hooks/`, `commondir`, a `.git` file: see
        `sandbox.git_files`), judged on disk once all is written, is removed again and named in
        `git_left_out`; a git config is written with only its safe settings, and those dropped are
        named in `git_settings_dropped`.
        """
        with _checked():
            req = DownloadRequest(path=src)
        chunks = _Chunks(self.config.max_download_bytes)
        raw, replaced = await self._call_raw(req, self._grace(120), chunks)
        if chunks.problem:
            raise UnsafeArchive(f"the sandbox sent a broken download: {chunks.problem}; nothing was written")
        data = b"".join(chunks.parts)
        limit = self.config.max_download_bytes
        entries = raw.get("entries")
        if not isinstance(entries, int) or isinstance(entries, bool):
            raise UnsafeArchive("the sandbox's download reply has no entry count; nothing was written")
        try:
            done = await asyncio.to_thread(
                _extract_counted,
                data,
                Path(local_dir),
                limit,
                top=_top_name(src),
                entries=entries,
                changed=_numbers(raw.get("changed")),
            )
        except OSError as exc:  # the host's disk: the archive goes with the error, not lost with it
            raise DownloadNotWritten(exc, data) from exc
        except (UnsafeArchive, DestinationExists) as exc:  # so do the archive's own failures
            exc.archive = data
            raise
        named, count = _left_out(raw)
        cut, cut_count = _left_out(raw, "cut")
        return DownloadResult(
            paths=done.paths,
            bytes=done.written,
            skipped=named + done.skipped,
            skipped_count=count + len(done.skipped),
            git_left_out=done.git_left_out,
            git_settings_dropped=done.git_settings,
            cut=cut,
            cut_count=cut_count,
            sandbox_replaced=replaced,
            state_lost=replaced,
        )


def _top_name(src: str) -> str:
    """The name the supervisor gives `src` in its archive: the last component of the workspace path."""
    return posixpath.basename(posixpath.normpath(posixpath.join("/workspace", src))) or "workspace"


def _left_out(raw: dict[str, Any], key: str = "skipped") -> tuple[list[str], int]:
    """What the supervisor did not put in the archive (FIFOs, sockets, unreadable entries), or with
    `key` "cut" the files it cut: the names it gave, as shown text, and how many there were in all
    (never fewer than it named)."""
    named = raw.get(key)
    shown = [clean_text(str(s))[:300] for s in named[:50]] if isinstance(named, list) else []
    count = raw.get(f"{key}_count")
    if not isinstance(count, int) or isinstance(count, bool):
        count = 0
    return shown, max(count, len(shown))


def _numbers(value: Any) -> set[int]:
    """The entry numbers in the supervisor's `changed` (files written to or shrunk while sent); anything
    else: none."""
    if not isinstance(value, list):
        return set()
    return {n for n in value if isinstance(n, int) and not isinstance(n, bool)}


class _Chunks:
    """The streamed pieces of one download, counted as they come: the sandbox's sizes are not trusted."""

    def __init__(self, max_bytes: int) -> None:
        # The supervisor counts headers and padding against the same limit; the slack is tar's last record.
        self.max_bytes = max_bytes + 16 * 1024
        self.parts: list[bytes] = []
        self.received = 0
        self.problem: str | None = None

    def __call__(self, frame: dict[str, Any]) -> None:
        if frame.get("event") != "download_chunk" or self.problem:
            return
        raw = frame.get("_blob")
        if not isinstance(raw, bytes):
            self.problem, self.parts = "a chunk without its bytes", []
            return
        self.received += len(raw)
        if self.received > self.max_bytes:
            self.problem, self.parts = f"more than the download limit of {self.max_bytes} bytes", []
            return
        self.parts.append(raw)
