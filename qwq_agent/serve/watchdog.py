"""A server's watchdog: SIGKILLs the server's process group when the CLI that started it dies.

PR_SET_PDEATHSIG only SIGTERMs the server, and the server that outlives a SIGKILLed CLI is typically a
hung one (a stuck CUDA call ignores SIGTERM), exactly the case where a supervisor escalated to SIGKILL:
it would keep the GPU and the port forever, with no owner. `ServerProcess.start` runs this file as a
process of its own (in a session of its own, so Ctrl-C on the terminal does not reach it), holding the
read end of a pipe whose write end only the CLI holds:

- the CLI stops the server itself: it writes a byte and closes the pipe; the watchdog exits;
- the CLI dies, however (SIGKILL, the OOM killer): the kernel closes its end, the watchdog reads EOF,
  SIGTERMs the group, gives it `grace` seconds, then SIGKILLs what is left;
- the group is gone on its own (and the CLI not yet told us): the watchdog exits, so it never signals a
  process group id the kernel has since given to someone else.

Run by path (`python watchdog.py FD PGID GRACE`), not as a module: it imports only the standard library.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

STAND_DOWN = b"x"
POLL_S = 1.0
"""How often the watchdog checks that the group still exists while the CLI lives."""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, though not ours to signal any more
        return True
    return True


def _signal(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def watch(fd: int, pgid: int, grace: float) -> None:
    """Wait for the CLI's word or its death on `fd`; on its death stop group `pgid` (SIGKILL after `grace`)."""
    # poll(), not select(): the fd keeps the number it had in the CLI, and a CLI with many files or
    # sockets open gives one >= FD_SETSIZE (1024), which select() refuses (the watchdog would die at once).
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        readable = poller.poll(POLL_S * 1000)
        if readable:  # POLLIN, or POLLHUP/POLLERR: the read below tells the word from EOF
            if os.read(fd, 1) == STAND_DOWN:
                return  # the CLI stopped the server itself
            break  # EOF: the CLI died without a word
        if not _group_alive(pgid):
            return
    _signal(pgid, signal.SIGTERM)  # PDEATHSIG sent one already; this reaches the whole group
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.1)  # another session's processes: nothing of ours to wait on
    _signal(pgid, signal.SIGKILL)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe decides when the watchdog acts
    watch(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
