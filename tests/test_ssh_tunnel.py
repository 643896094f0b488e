"""The ssh tunnel's process lives no longer than the process that owns it.

No sshd is needed: `ssh` on PATH is a stand-in for OpenSSH's `ssh -N -L LOCAL:REMOTE host` that listens on
LOCAL and, like `ssh -N`, runs until it is stopped; it writes its pid where the test can read it. The
tunnel, its tether and the owner process are real.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qwq_agent.sandbox.ssh_tunnel import SSHTunnel

GUARD_S = 60.0

FAKE_SSH = """\
#!{python}
import os, signal, socket, sys
args = sys.argv[1:]
local = args[args.index("-L") + 1].split(":", 1)[0]
with open(os.environ["FAKE_SSH_PIDS"], "a") as f:
    f.write(f"{{os.getpid()}}\\n")
server = socket.socket(socket.AF_UNIX)
server.bind(local)
server.listen()
while True:
    signal.pause()
"""


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Puts the stand-in `ssh` first on PATH; returns the file it writes each pid to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(FAKE_SSH.format(python=sys.executable))
    ssh.chmod(0o755)
    pids = tmp_path / "ssh.pids"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_PIDS", str(pids))
    return pids


def ssh_pids(pids: Path) -> list[int]:
    return [int(line) for line in pids.read_text().split()]


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = GUARD_S) -> bool:
    """Whether the process `pid` (not necessarily our child) ended within `timeout` s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0]) or not running(pid)
    finally:
        os.close(fd)


def test_the_tunnel_and_its_folder_go_when_the_owner_is_killed(fake_ssh: Path) -> None:
    """ssh was a plain child: an owner killed without its atexit clean-up (SIGKILL, the OOM killer) left
    it running for ever, with its connection to the Docker host and its /tmp/qwq-ssh-* folder."""
    owner_code = textwrap.dedent("""
        import json, sys
        from qwq_agent.sandbox.ssh_tunnel import SSHTunnel
        tunnel = SSHTunnel("ssh://docker@gpu-box.invalid")
        tunnel.ensure(20)
        print(json.dumps({"tether": tunnel._proc.pid, "dir": str(tunnel._dir)}), flush=True)
        sys.stdin.read()  # until the test kills it
    """)
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        info = json.loads(owner.stdout.readline())
        (ssh,) = ssh_pids(fake_ssh)
        assert running(ssh) and running(info["tether"]) and os.path.exists(info["dir"])
        owner.send_signal(signal.SIGKILL)
        owner.wait(GUARD_S)
        assert wait_gone(ssh), "the ssh process outlived its owner"
        assert wait_gone(info["tether"])
        assert not os.path.exists(info["dir"])
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for pid in ssh_pids(fake_ssh) if fake_ssh.exists() else []:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_tunnel_whose_ssh_exited_starts_again_in_its_folder_and_close_removes_it(fake_ssh: Path) -> None:
    tunnel = SSHTunnel("ssh://docker@gpu-box.invalid")
    try:
        path = tunnel.ensure(20)
        (first,) = ssh_pids(fake_ssh)
        os.kill(first, signal.SIGKILL)  # the host went away: ssh exits on its own
        assert wait_gone(first)
        proc = tunnel._proc
        assert proc is not None and proc.wait(GUARD_S) != 0  # the tether ends with ssh, failing as it did
        assert not tunnel.alive
        assert tunnel.ensure(20) == path and os.path.exists(path)  # started again, same folder
        _, second = ssh_pids(fake_ssh)
        assert running(second) and tunnel.starts == 2
    finally:
        tunnel.close()
    assert wait_gone(second) and not tunnel._dir.exists()


def test_a_fork_child_of_the_owner_does_not_keep_the_tunnel_alive(fake_ssh: Path) -> None:
    """A fork-mode `multiprocessing` child inherited the owner's end of the tether's pipe: with the owner
    killed, the tether saw no EOF and ssh stayed connected until that child exited too."""
    owner_code = textwrap.dedent("""
        import json, multiprocessing, signal, sys
        from qwq_agent.sandbox.ssh_tunnel import SSHTunnel

        def child(tunnel, told):
            told.send({"alive": tunnel.alive})
            signal.pause()  # outlives the owner: the test kills it

        tunnel = SSHTunnel("ssh://docker@gpu-box.invalid")
        tunnel.ensure(20)
        ctx = multiprocessing.get_context("fork")
        ours, theirs = ctx.Pipe()
        worker = ctx.Process(target=child, args=(tunnel, theirs))
        worker.start()
        seen = ours.recv()
        info = {"tether": tunnel._proc.pid, "dir": str(tunnel._dir), "child": worker.pid, **seen}
        print(json.dumps(info), flush=True)
        sys.stdin.read()  # until the test kills it
    """)
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    child = None
    try:
        assert owner.stdout is not None
        info = json.loads(owner.stdout.readline())
        child = info["child"]
        (ssh,) = ssh_pids(fake_ssh)
        assert running(ssh) and running(info["tether"]) and running(child)
        assert info["alive"] is False  # the child's copy of the tunnel holds no ssh of its own
        owner.send_signal(signal.SIGKILL)
        owner.wait(GUARD_S)
        assert wait_gone(ssh), "the ssh process outlived its owner while a forked child ran"
        assert wait_gone(info["tether"])
        assert not os.path.exists(info["dir"])
        assert running(child)  # what ended the tunnel was the owner's death, not the child's
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if child is not None and running(child):
            os.kill(child, signal.SIGKILL)
        for pid in ssh_pids(fake_ssh) if fake_ssh.exists() else []:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_fork_child_closing_its_copy_leaves_the_owners_tunnel_alone(fake_ssh: Path) -> None:
    """The child's copy (closed by its atexit, or by code that uses it) must not stop the owner's ssh nor
    remove the folder it binds its socket in."""
    tunnel = SSHTunnel("ssh://docker@gpu-box.invalid")
    try:
        path = tunnel.ensure(20)
        pid = os.fork()
        if pid == 0:  # the child: close its copy and leave without the parent's clean-up
            code = 1
            try:
                tunnel.close()
                code = 0 if not tunnel.alive else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        (ssh,) = ssh_pids(fake_ssh)
        assert tunnel.alive and running(ssh) and os.path.exists(path)
    finally:
        tunnel.close()
    assert wait_gone(ssh) and not tunnel._dir.exists()
