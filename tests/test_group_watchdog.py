"""`GroupWatchdog` run for real: an owner process that starts a group and its watchdog, then is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import qwq_agent

DEADLINE_S = 60.0

# Starts a process group that ignores SIGTERM (so the watchdog's grace runs its whole length) and its
# watchdog, says their pids, and waits to be killed.
OWNER = textwrap.dedent(
    """
    import subprocess, sys
    from qwq_agent.group_watchdog import GroupWatchdog
    leader = subprocess.Popen(
        ["bash", "-c", "trap '' TERM; exec sleep 600"],
        start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    watchdog = GroupWatchdog(leader.pid, 600)
    print(leader.pid, watchdog.process.pid, flush=True)
    sys.stdin.read()
    """
)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture()
def reaper() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_watchdog_does_not_hold_its_dead_owners_stderr_open(reaper: list[int]) -> None:
    # A reader of the owner's stderr (a CI job, `subprocess.run(capture_output=True)`) waits for EOF:
    # the watchdog inherited the pipe and held it for the whole grace after the owner died.
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(qwq_agent.__file__).parent.parent)},
    )
    assert owner.stdout is not None and owner.stderr is not None
    try:
        line = owner.stdout.readline().split()
        assert len(line) == 2, (line, owner.stderr.read() if owner.poll() is not None else "")
        leader, watchdog = (int(p) for p in line)
        reaper.extend([leader, watchdog])
    finally:
        owner.kill()
        owner.wait()
    err: list[bytes] = []
    reading = threading.Thread(target=lambda: err.append(owner.stderr.read() if owner.stderr else b""))
    reading.daemon = True
    reading.start()
    reading.join(DEADLINE_S)
    at_eof = not reading.is_alive()
    watching = alive(watchdog) and alive(leader)  # the grace runs: the watchdog is still on duty
    for pid in reaper:  # ends the old code's hold on the pipe too
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    reading.join(DEADLINE_S)
    for stream in (owner.stdin, owner.stdout, owner.stderr):
        if stream is not None:
            stream.close()
    assert at_eof, "the owner's stderr stayed open after it died"
    assert watching and err == [b""]
