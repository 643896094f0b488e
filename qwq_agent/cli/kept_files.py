"""Keeping what a run produced when the place asked for cannot take it: beside the trace, else in the
temporary folder, in a file that did not exist before.

By then the sandbox is gone (or about to be) and the bytes exist only in memory: a patch `--patch FILE`
could not hold, the archive of a workspace `--copy-back DIR` could not hold. Losing them loses the
agent's work, so they go to a new file named after the run's trace (`<trace stem><suffix>`, a random
part added when that exists), and the caller names where.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path


def keep(data: bytes, trace: Path | None, suffix: str, stem: str) -> Path | None:
    """`data` in a new file beside `trace` (`<trace stem><suffix>`), or else in the temporary folder
    (`qwq-agent-<trace stem or stem><suffix>`); where it went, or None when neither could take it."""
    places = [(Path(tempfile.gettempdir()), f"qwq-agent-{trace.stem if trace else stem}")]
    if trace is not None:
        places.insert(0, (trace.parent, trace.stem))
    for folder, name in places:
        with contextlib.suppress(OSError):
            return write_new(folder, name, suffix, data)
    return None


def write_new(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """`data` in a file of `folder` that did not exist before: `stem + suffix`, else with a random part."""
    target = folder / f"{stem}{suffix}"
    try:
        write_exclusive(target, data)
    except FileExistsError:
        target = folder / f"{stem}.{secrets.token_hex(4)}{suffix}"
        write_exclusive(target, data)
    return target


def write_exclusive(path: Path, data: bytes) -> None:
    """`data` in the new file `path` (never one that exists), synced; on failure none is left."""
    # 0o666 less the umask, as any file the user's tools write (mkstemp's would be 0o600).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)  # a part of it is no copy to point anyone at
        raise
