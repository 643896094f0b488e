"""A root-filesystem build's folder, `$TMPDIR/qwq-image-*`, marked with its owner; and the removal of
those left by owners that died.

A build that is stopped removes its folder itself; one SIGKILLed (the OOM killer, `kill -9`, a CI job's
timeout) runs no clean-up: its process group is stopped by its watchdog (`qwq_agent.group_watchdog`),
and its folder is left. The folder holds `owner` (pid, start time, boot id, PID namespace), written as
soon as it exists, and the next build, holding the build lock, removes the folders whose owner is dead.
Never one whose owner lives: another build of another cache (another user's, a CI job's own) holds
another lock and may share `$TMPDIR`. A folder whose owner cannot be told (no owner file: an older
qwq-agent's or one just made; another boot or PID namespace, whose pids are not ours to look up) is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from qwq_agent.process_identity import BOOT_ID, PID_NS, start_ticks

PREFIX = "qwq-image-"
OWNER_FILE = "owner"


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
        owner = _dead_owner(path)
        if owner is None:
            continue
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log(f"could not remove {path}, left by a build that died (pid {owner}): {exc}")
        else:
            log(f"removed {path}, left by a build that died (pid {owner})")


def _dead_owner(path: Path) -> int | None:
    """The pid of the dead process that owned build folder `path`; None while it may live (or when
    `path` is no build folder of this user's)."""
    try:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return None
        fields = (path / OWNER_FILE).read_text().split()
    except OSError:
        return None
    if len(fields) != 4 or not fields[0].isdigit():
        return None
    pid, ticks, boot, pid_ns = fields
    if ticks == "-" or boot != BOOT_ID or not PID_NS or pid_ns != PID_NS:
        return None
    now = start_ticks(int(pid))
    return int(pid) if now is None or now != ticks else None
