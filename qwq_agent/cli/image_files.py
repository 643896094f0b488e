"""Image files the CLI writes into a folder the user named (`--images DIR`).

Never over an existing file: the same folder is often given to several runs or traces in turn, and a
figure written earlier (whose path was printed) must keep showing what it showed. Never a part of one
either: a file that could not be written in full (a full disk) is removed, so that the canonical name is
free for a later, whole copy and no broken picture sits under it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

# Enough for any folder a person looks through; past it the folder is not one to add to.
MAX_SUFFIX = 10_000


def write_new_png(folder: Path, number: int, data: bytes) -> Path:
    """Write `data` as `folder/image-N.png`, or `image-N-2.png`, ... when that name is taken; the
    absolute path (a terminal opens it from anywhere). `OSError` if it cannot be written, and then no
    file of ours is left behind."""
    folder.mkdir(parents=True, exist_ok=True)
    # The folder resolved, the file's own name not: a link planted at a taken name is not followed.
    base = folder.resolve()
    for suffix in range(1, MAX_SUFFIX + 1):
        name = f"image-{number}.png" if suffix == 1 else f"image-{number}-{suffix}.png"
        path = base / name
        try:
            out = path.open("xb")  # exclusive: an existing file (or a link planted there) is left
        except FileExistsError:
            continue
        # The file is ours from here: whatever stops the write or the close (ENOSPC, EIO, EDQUOT, ^C)
        # must not leave a truncated or empty image-N.png that looks like a saved one.
        try:
            with out:
                out.write(data)
        except BaseException:
            with contextlib.suppress(OSError):  # the write's error is the one to tell
                path.unlink()
            raise
        return path
    raise FileExistsError(f"{folder}: image-{number}.png and {MAX_SUFFIX - 1} variants of it exist")
