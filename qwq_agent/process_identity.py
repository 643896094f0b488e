"""Who a process is, beyond its pid: its start time, the boot and the PID namespace it was seen in.

A pid alone names a process only while it lives: once it is gone the kernel gives the number to any
new one. A record of (pid, start time) tells the owner it names from a stranger holding its pid now,
provided it is looked up on the same boot and in the same PID namespace, where those pids mean the same.
"""

from __future__ import annotations

import os

__all__ = ["BOOT_ID", "PID_NS", "is_decimal", "is_gone", "same_pid_space", "start_ticks"]


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None when there is no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _pid_namespace() -> str:
    """This process's PID namespace (the inode of /proc/self/ns/pid), or "" when it cannot be read.

    Unique per kernel boot: with the boot id it says whose pids `/proc` shows this process.
    """
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


BOOT_ID, PID_NS = _boot_id(), _pid_namespace()


def is_decimal(text: str) -> bool:
    """Whether `text` (a recorded pid or start time) is a decimal number in ASCII digits
    (`str.isdigit` also takes "²", which `int` refuses)."""
    return text.isascii() and text.isdigit()


def same_pid_space(boot: str | None, pid_ns: str | None) -> bool:
    """Whether a record made on boot `boot` in PID namespace `pid_ns` names its pids as this process
    sees them: the same boot and the same, known, namespace. Elsewhere a live owner would look dead."""
    return boot == BOOT_ID and bool(PID_NS) and pid_ns == PID_NS


def is_gone(pid: int, start: str) -> bool:
    """Whether the process recorded as (`pid`, `start` ticks) is gone: no process has `pid` now, or
    one started at another time holds it. An empty `start` (not recorded) asks only for the pid.

    Meaningful only for a record from `same_pid_space`.
    """
    now = start_ticks(pid)
    return now is None or (bool(start) and now != start)
