"""Putting a process at a given pid, as a recycled pid would be: for tests that show a stale pid or
process group is never signalled once it may be another's."""

from __future__ import annotations

import os
import subprocess


def start_with_pid(pid: int, argv: list[str], tries: int = 50) -> subprocess.Popen[bytes] | None:
    """Start `argv` as a session (and process group) leader whose pid is `pid`, through the kernel's
    `ns_last_pid` (root only); None when that pid is not free or another process keeps taking it first."""
    for _ in range(tries):
        if os.path.exists(f"/proc/{pid}"):
            return None  # a zombie or a process still holds it: not free for reuse
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        stranger = subprocess.Popen(argv, start_new_session=True)
        if stranger.pid == pid:
            return stranger
        stranger.kill()  # another process on the machine took the pid in between: try again
        stranger.wait()
    return None
