"""Whether a child and its process group still live, found without reaping the child.

A process group's id is its leader's pid. Once the leader is reaped (and the last member of the
group gone) the kernel may give that number to any new process, whose own group a signal to the old
id would reach. So a group is signalled only while its leader is unreaped, and these checks never
reap it: the caller does, once the group is dead.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

__all__ = ["exited", "group_lives"]

_DEAD = (b"Z", b"X")


def exited(process: subprocess.Popen[Any]) -> bool:
    """Whether the process has exited, found without reaping it."""
    if process.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped by the kernel (SIGCHLD ignored): let Popen record that
        process.poll()
        return True


def group_lives(process: subprocess.Popen[Any]) -> bool:
    """Whether a process of the group `process` leads still lives: any, found in /proc (Linux);
    elsewhere `process` itself."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return not exited(process)
    return any(_lives_in(name, process.pid) for name in names if name.isdigit())


def _lives_in(pid: str, pgid: int) -> bool:
    """Whether process `pid` is in group `pgid` and not dead. Its main thread may be a zombie while its
    other threads still die (the memory goes with the last), so those are looked at too."""
    stat = _stat(f"/proc/{pid}/stat")
    if stat is None or int(stat[2]) != pgid:
        return False
    if stat[0] not in _DEAD:
        return True
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any((t := _stat(f"/proc/{pid}/task/{tid}/stat")) and t[0] not in _DEAD for tid in tids)


def _stat(path: str) -> list[bytes] | None:
    """The fields after the command name (which may hold anything) of a /proc stat file: state, ppid,
    pgrp, ...; None when it is gone."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split(b" ", 3)
