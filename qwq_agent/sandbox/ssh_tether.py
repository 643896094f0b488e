"""The tether of an ssh tunnel: runs `ssh` and ends it when the process that owns the tunnel goes.

`SSHTunnel` runs this file by path (`python -I -S ssh_tether.py FOLDER ssh ARGS...`, stdlib only) in a
session of its own, with a pipe on stdin whose write end only the owner holds. The owner writes `q` to
stop the tunnel (the folder stays: the next ssh binds its socket there). Any other way the owner ends —
SIGKILL, the OOM killer, a SIGTERM that skips atexit — closes the pipe: on that EOF this stops ssh and
removes FOLDER (the forwarded socket and ssh's log), so no authenticated connection to the Docker host
outlives its owner. A parent-death signal (PR_SET_PDEATHSIG) would not do: it follows the thread that
forked, and the tunnel is started from a worker thread that ends long before its owner.

When ssh exits on its own (the host went away), this exits with ssh's status, so the owner reads it as
ssh's own. SIGTERM stops ssh first, too.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys

STOP_WAIT_S = 4.0  # how long ssh may take to exit on SIGTERM before it is killed


def _stop(ssh: subprocess.Popen[bytes]) -> None:
    if ssh.poll() is None:
        ssh.terminate()
        try:
            ssh.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            ssh.kill()
            ssh.wait()


def _status(code: int) -> int:
    """A shell's exit status for ssh's return code (killed by signal N: 128 + N)."""
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    folder, command = argv[0], argv[1:]
    # Signals (SIGCHLD: ssh exited; SIGTERM) wake the select below through this pipe.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    terminated = []
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda signum, _: terminated.append(signum))
    ssh = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    owner = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([owner, wake_r], [], [])
        if owner in ready:
            said = os.read(owner, 1)
            _stop(ssh)
            if not said:  # the owner is gone: so is what it would have removed
                shutil.rmtree(folder, ignore_errors=True)
            return 0
        os.read(wake_r, 512)
        if terminated:
            _stop(ssh)
            return 128 + terminated[0]
        code = ssh.poll()
        if code is not None:
            # The owner may have gone at the same moment: then nobody is left to remove the folder.
            if select.select([owner], [], [], 0)[0] and not os.read(owner, 1):
                shutil.rmtree(folder, ignore_errors=True)
            return _status(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
