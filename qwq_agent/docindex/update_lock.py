"""One `DocIndex.update()` at a time per index file, across processes.

An update reads what the index holds once, then writes in batches, committing between them. A second
update running alongside read the index before the first committed a batch and then inserted the same
files again: the clash (`UNIQUE constraint failed`) was reported as an index that cannot be used, to be
rebuilt, of an index that was fine. SQLite's own locks cannot serialise whole updates (a commit releases
them), so an update holds an advisory lock (`flock`) on a file beside the index, `<index>-update.lock`,
for its whole length; another waits for it, at most its `wait_s`, then raises `IndexBusy`.

The lock is not taken on the index file itself: closing any descriptor of that file drops the POSIX
locks SQLite holds on it in this process. The lock file holds the holder's pid, for the waiter's
message, and is removed by its holder at the end; a waiter that then gets the lock of the removed file
tries again with the path's current one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["UPDATE_WAIT_S", "IndexBusy", "lock_path", "update_lock"]

# How long an update waits for another one to end before it gives up (`IndexBusy`).
UPDATE_WAIT_S = 60.0
# How often a waiting update tries the lock again (flock itself has no deadline).
_POLL_S = 0.1


class IndexBusy(Exception):
    """Another process kept updating the index for longer than this update would wait."""

    def __init__(self, db_path: Path, holder_pid: int | None, waited_s: float) -> None:
        who = f"pid {holder_pid}" if holder_pid is not None else "pid unknown"
        super().__init__(
            f"another process ({who}) is updating {db_path}; waited {waited_s:g} s (lock {lock_path(db_path)})"
        )
        self.db_path = db_path
        self.holder_pid = holder_pid
        self.waited_s = waited_s


def lock_path(db_path: str | os.PathLike[str]) -> Path:
    """The lock file of the index at `db_path`."""
    return Path(f"{os.fspath(db_path)}-update.lock")


@contextlib.contextmanager
def update_lock(
    db_path: str | os.PathLike[str],
    wait_s: float = UPDATE_WAIT_S,
    on_wait: Callable[[int | None], None] | None = None,
) -> Iterator[None]:
    """Hold the update lock of the index at `db_path` for the block.

    When another process holds it, `on_wait(holder_pid)` is called once and this waits for it at most
    `wait_s` seconds; raises `IndexBusy` when it is still held then.
    """
    path = lock_path(db_path)
    deadline: float | None = None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(fd)
            os.close(fd)
            if deadline is None:
                deadline = time.monotonic() + max(0.0, wait_s)
                if on_wait is not None:
                    on_wait(holder)
            left = deadline - time.monotonic()
            if left <= 0:
                raise IndexBusy(Path(db_path), holder, wait_s) from None
            time.sleep(min(_POLL_S, left))
            continue
        except BaseException:
            os.close(fd)
            raise
        if _still_at(fd, path):
            break
        os.close(fd)  # its holder removed that file as it finished: the lock is the path's new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Removed while still held: a waiter that locks the removed file sees it is no longer the path's.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _still_at(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder_pid(fd: int) -> int | None:
    """The pid the lock's holder wrote, None when there is none yet."""
    with contextlib.suppress(OSError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
    return None
