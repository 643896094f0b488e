"""A process group's watchdog: SIGKILLs the group when the process that started it dies.

Used for an SGLang server (`serve`) and for a sandbox image's root-filesystem build (mmdebstrap). Both
run in a session of their own, so that they can be stopped as one group, and so nothing ties them to
their parent: PR_SET_PDEATHSIG only SIGTERMs the leader, and what outlives a SIGKILLed CLI (the OOM
killer, `kill -9`, a CI job's timeout) is typically a hung server (a stuck CUDA call ignores SIGTERM)
or a half-done mmdebstrap, left running with no owner (the GPU and port held forever, a second build
started beside the first). `GroupWatchdog` runs this file as a process of its own (in a session of its
own, so Ctrl-C on the terminal does not reach it), holding the read end of a pipe whose write end only
the starting process holds:

- the owner stops the group itself: it writes a byte and closes the pipe (`stand_down`); the watchdog
  exits;
- the owner dies, however: the kernel closes its end, the watchdog reads EOF, SIGTERMs the group, gives
  it `grace` seconds, then SIGKILLs what is left;
- the group is gone on its own (and the owner not yet told us): the watchdog exits, so it never signals
  a process group id the kernel has since given to someone else.

The watchdog process runs this file by path (`python group_watchdog.py FD PGID GRACE`), not as a module:
it imports only the standard library.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

STAND_DOWN = b"x"
POLL_S = 1.0
"""How often the watchdog checks that the group still exists while its owner lives."""


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
    """Wait for the owner's word or its death on `fd`; on its death stop group `pgid` (SIGKILL after `grace`)."""
    # poll(), not select(): the fd keeps the number it had in the owner, and an owner with many files or
    # sockets open gives one >= FD_SETSIZE (1024), which select() refuses (the watchdog would die at once).
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        readable = poller.poll(POLL_S * 1000)
        if readable:  # POLLIN, or POLLHUP/POLLERR: the read below tells the word from EOF
            if os.read(fd, 1) == STAND_DOWN:
                return  # the owner stopped the group itself
            break  # EOF: the owner died without a word
        if not _group_alive(pgid):
            return
    # Each signal right after a look that the group still exists: once it is gone, its id may be given
    # to a stranger's new group (the poll above looks only once a second, the grace below ten times).
    if not _group_alive(pgid):
        return
    _signal(pgid, signal.SIGTERM)  # a server's PDEATHSIG sent one to its leader; this reaches the whole group
    deadline = time.monotonic() + grace
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            _signal(pgid, signal.SIGKILL)
            return
        time.sleep(0.1)  # another session's processes: nothing of ours to wait on


STAND_DOWN_WAIT_S = 5.0
"""How long `stand_down` waits for the told watchdog to exit (it exits at once unless it hangs)."""


class GroupWatchdog:
    """A watchdog process for process group `pgid`: SIGTERMs it (SIGKILL `grace_s` later) when this
    process dies without calling `stand_down`.

    Call `stand_down` once the group is stopped and *before* its leader is reaped: a watchdog outliving
    the reaping would watch an id that may no longer be the group's.
    """

    def __init__(self, pgid: int, grace_s: float) -> None:
        # os.pipe()'s ends are not inherited: the write end is this process's alone (no child of ours
        # holds it open), so the kernel closes it when this process dies, however it dies.
        read_end, write_end = os.pipe()
        try:
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), str(read_end), str(pgid), str(grace_s)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Not the owner's stderr: held open, a reader of it (a CI job, `capture_output`) would
                # wait out the whole grace after the owner died. The watchdog has nothing to say there.
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C on the terminal must not reach it
                pass_fds=(read_end,),
            )
        except OSError:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._pipe: int | None = write_end

    def stand_down(self) -> None:
        """Tell the watchdog the group is stopped (it exits), and reap it. Idempotent."""
        if self._pipe is None:
            return
        pipe, self._pipe = self._pipe, None
        try:
            os.write(pipe, STAND_DOWN)
        except OSError:  # the watchdog is gone already
            pass
        finally:
            os.close(pipe)
        try:
            self.process.wait(STAND_DOWN_WAIT_S)
        except subprocess.TimeoutExpired:  # cannot happen unless it hangs: it must not linger
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STAND_DOWN_WAIT_S)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe decides when the watchdog acts
    watch(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
