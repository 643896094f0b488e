"""Uids and capabilities: the supervisor's own identity and what user processes are left with.

The container starts as root holding only SETUID, SETGID, KILL and SETPCAP (`SandboxConfig.cap_add`).
`become_supervisor` moves to a uid of its own, keeping exactly those: user code (another uid, no
capabilities) then can neither signal the supervisor nor open anything under /proc/<supervisor>/.
"""

import ctypes
import os

from .settings import SUPERVISOR_GID, SUPERVISOR_UID, USER_GID, USER_UID

_libc = ctypes.CDLL(None, use_errno=True)

PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP = 5, 6, 7, 8
KEPT_CAPS = (CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP)
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(ret):
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def prctl(option, arg=0):
    return _check(
        _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    )


def _last_cap():
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


LAST_CAP = _last_cap()


def become_supervisor():
    """From root, switch to the supervisor uid keeping only `KEPT_CAPS`; True if it switched.

    Not root (an image or config that starts the container as the user) means no split is possible:
    the caller reports it in hello so the host can refuse such a sandbox.
    """
    if os.getuid() != 0:
        return False
    prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setresgid(SUPERVISOR_GID, SUPERVISOR_GID, SUPERVISOR_GID)
    os.setresuid(SUPERVISOR_UID, SUPERVISOR_UID, SUPERVISOR_UID)
    mask = sum(1 << cap for cap in KEPT_CAPS)
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = mask
    _check(_libc.capset(ctypes.byref(header), data))
    prctl(PR_SET_KEEPCAPS, 0)
    prctl(PR_SET_DUMPABLE, 0)  # /proc/<supervisor>/* then belongs to root, not even to our own uid
    return True


def act_on_files_as_user():
    """Make this thread's file accesses those of the user (fsuid is per thread), so the editor, uploads and
    downloads can do exactly what user code could, and files they create belong to the user."""
    _libc.setfsgid(USER_GID)
    _libc.setfsuid(USER_UID)


def act_on_files_as_self():
    """Undo `act_on_files_as_user` (in a child forked by a request thread): file accesses are made with
    the process's own uid again."""
    _libc.setfsgid(os.getegid())
    _libc.setfsuid(os.geteuid())


def drop_to_user():
    """In a forked child about to exec user code: empty the bounding set, then become the user.

    With non-root uids on both sides and no file capabilities, execve leaves the process no capabilities;
    the emptied bounding set and no-new-privileges mean it can never gain any.
    """
    for cap in range(LAST_CAP + 1):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            pass  # no SETPCAP (not split) or an unknown cap number
    os.setgroups([])
    os.setresgid(USER_GID, USER_GID, USER_GID)
    os.setresuid(USER_UID, USER_UID, USER_UID)
