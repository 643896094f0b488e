"""A root-filesystem build's folder, `$TMPDIR/qwq-image-*`, marked with its owner; and the removal of
those left by owners that died.

A build that is stopped removes its folder itself; one SIGKILLed (the OOM killer, `kill -9`, a CI job's
timeout) runs no clean-up: its process group is stopped by its watchdog (`qwq_agent.group_watchdog`),
and its folder is left. The folder holds `owner` (pid, start time, boot id, PID namespace), written as
soon as it exists, and the next build, holding the build lock, removes the folders whose owner is dead.
Never one whose owner lives: another build of another cache (another user's, a CI job's own) holds
another lock and may share `$TMPDIR`. A folder whose owner cannot be told (no owner file: an older
qwq-agent's or one just made; another boot or PID namespace, whose pids are not ours to look up; an
owner file that is not what `build_dir` writes: torn, corrupt, not a regular file) is left. Clean-up is
never the build's failure: what cannot be looked at or removed is logged, and the build goes on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from qwq_agent.process_identity import BOOT_ID, PID_NS, is_decimal, is_gone, same_pid_space, start_ticks

PREFIX = "qwq-image-"
OWNER_FILE = "owner"
# An owner file is one short line (pid, start ticks, a boot id, a namespace inode): anything longer is
# not one `build_dir` wrote.
MAX_OWNER_BYTES = 256
# The kernel's largest pid (PID_MAX_LIMIT): a bigger number names no process, which is not "dead".
MAX_PID = 1 << 22


@contextlib.contextmanager
def build_dir() -> Iterator[Path]:
    """A new build folder in `$TMPDIR`, marked as this process's, removed with all it holds at the end."""
    with tempfile.TemporaryDirectory(prefix=PREFIX) as tmp:
        path = Path(tmp)
        pid = os.getpid()
        (path / OWNER_FILE).write_text(f"{pid} {start_ticks(pid) or '-'} {BOOT_ID} {PID_NS or '-'}\n")
        yield path


def remove_abandoned(log: Callable[[str], None]) -> None:
    """Remove the build folders in `$TMPDIR` whose owner process is dead; say which went (or could not).

    Call it holding the build lock: a folder this removes is no build's of this lock any more.
    """
    base = Path(tempfile.gettempdir())
    try:
        found = [p for p in base.iterdir() if p.name.startswith(PREFIX)]
    except OSError:
        return  # no $TMPDIR to look in: the build itself will say so
    for path in found:
        owner: int | None = None
        try:
            owner = _dead_owner(path)
            if owner is None:
                continue
            shutil.rmtree(path)
        except Exception as exc:  # another build's leftovers are never this build's failure
            whose = f", left by a build that died (pid {owner})" if owner is not None else ""
            log(f"could not remove {path}{whose}: {exc}")
        else:
            log(f"removed {path}, left by a build that died (pid {owner})")


def _dead_owner(path: Path) -> int | None:
    """The pid of the dead process that owned build folder `path`; None while it may live (or when
    `path` is no build folder of this user's, or its owner file is not one `build_dir` wrote)."""
    fields = _owner_fields(path)
    if fields is None or len(fields) != 4:
        return None
    pid_text, ticks, boot, pid_ns = fields
    if not is_decimal(pid_text) or not is_decimal(ticks):
        return None
    pid = int(pid_text)
    if not 0 < pid <= MAX_PID or not same_pid_space(boot, pid_ns):
        return None
    return pid if is_gone(pid, ticks) else None  # `ticks` is digits: the start time is compared


def _owner_fields(path: Path) -> list[str] | None:
    """The words of `path`'s owner file; None when `path` is no folder of this user's or the file is
    missing, not a regular file, too long or not ASCII (what a crash mid-write or anyone else left)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        folder = os.open(path, flags | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        st = os.fstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return None
        # O_NONBLOCK: a FIFO named `owner` opens at once (and is refused below) instead of hanging here.
        fd = os.open(OWNER_FILE, flags | os.O_NONBLOCK, dir_fd=folder)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.read(fd, MAX_OWNER_BYTES + 1)
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        os.close(folder)
    if len(data) > MAX_OWNER_BYTES or not data.isascii():
        return None
    return data.decode("ascii").split()
