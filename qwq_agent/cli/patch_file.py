"""`run --patch FILE`: the patch written whole or not at all, and kept elsewhere when FILE cannot take it.

By the time the patch is written the sandbox is gone and the trace does not hold it: the patch exists
only in memory. A write that fails (a full disk after a long run) must neither lose the agent's work
nor leave a truncated patch where `git apply` would be pointed at it. So it is written to a temporary
file beside FILE and renamed over it (FILE is left as it was when that fails), and on failure kept in
a new file beside the run's trace, or else in the temporary folder; the caller names where.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwq_agent.cli.kept_files import keep, write_exclusive


@dataclass
class SavedPatch:
    """Where a patch went: `path` (FILE, a fallback, or None when nowhere could take it) and, when FILE
    could not, `error`, why not."""

    path: Path | None
    error: str | None = None


def save_patch(data: bytes, path: Path, trace: Path | None) -> SavedPatch:
    """Write `data` to `path`; if that fails, keep it in a new file beside `trace`, named after it
    (`<trace stem>.patch`, `<trace stem>.<random>.patch` when that exists), or in the temporary folder."""
    try:
        write_atomically(path, data)
        return SavedPatch(path)
    except OSError as exc:
        error = exc.strerror or str(exc)
    return SavedPatch(keep(data, trace, ".patch", path.stem), error)


def write_patch(console: Any, data: bytes, path: Path, trace: Path | None) -> bool:
    """`save_patch`, and a warning line when `path` could not take the patch: where it is kept instead,
    or that it is lost. Whether it is in `path`."""
    from qwq_agent.cli.safe_text import plain

    saved = save_patch(data, path, trace)
    if saved.error is None:
        return True
    where = f"it was kept in {saved.path} instead" if saved.path else "nor kept anywhere else: it is lost"
    note = f"the patch could not be written to {path} ({saved.error}); {where}"
    console.print(plain(note, "yellow"), soft_wrap=True)
    return False


def report_missing(console: Any, result: Any, path: Path) -> None:
    """One warning line for a `--patch FILE` the run gave no patch for: why (`RunResult.patch_error`,
    or the run ended before its changes were taken), and that FILE was not written (it is as it was)."""
    from qwq_agent.cli.safe_text import plain

    why = getattr(result, "patch_error", None) if result is not None else None
    if why is None:
        status = getattr(result, "status", None)
        why = f"the run ended {status or 'early'} before its changes were collected"
    console.print(plain(f"no patch: {why}; {path} not written", "yellow"), soft_wrap=True)


def write_atomically(path: Path, data: bytes) -> None:
    """`data` into `path`, whole or not at all (a temporary file beside it, synced, renamed over it).

    Raises OSError; the temporary file is removed then, and `path` is as it was.
    """
    temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    write_exclusive(temporary, data)
    try:
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
