"""An ssh tunnel to a remote Docker engine: `ssh -N -L <local socket>:/var/run/docker.sock user@host`.

One OpenSSH client process per host forwards a private local unix socket to the remote engine's
socket; the engine client and docker-py both connect to the local end. Keepalives (ServerAlive*) make
ssh exit when the host stops answering, which closes every attach stream through it: the sandboxes
there see EOF and exit, and calls on them fail as `SandboxHostLost`. A tunnel that exited is started
again on the next connection, so a host that comes back is used again.

ssh runs under a tether (`ssh_tether`): a small process watching a pipe that only this process holds
open, which stops ssh and removes the tunnel's folder when this process ends in a way that runs no
clean-up of its own (SIGKILL, the OOM killer), so no authenticated connection to a Docker host and no
/tmp/qwq-ssh-* folder outlives it. Only this process: a child forked from it (a fork-mode
`multiprocessing` worker) closes its copy of that pipe at once (`os.register_at_fork`), else the tunnel
lived on until the last such child exited too; the child's copy of a tunnel holds no ssh of its own,
and starts one in a folder of its own if it is used there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from qwq_agent.sandbox.connector import STREAM_LIMIT, UnixConnector
from qwq_agent.sandbox.errors import DockerUnreachable, SandboxError

REMOTE_SOCKET = "/var/run/docker.sock"
CONNECT_TIMEOUT_S = 10.0
# ssh gives up on a silent host after ALIVE_INTERVAL_S * ALIVE_COUNT seconds.
ALIVE_INTERVAL_S, ALIVE_COUNT = 5, 3
_POLL_S = 0.02
TETHER = Path(__file__).with_name("ssh_tether.py")
# How long the tether may take to stop ssh when asked (its own wait for ssh is shorter).
STOP_WAIT_S = 8.0


class SSHTunnel:
    """A connector to the Docker engine of `ssh://user@host[:port][?socket=/path]` through OpenSSH.

    `ssh_config` is passed as `ssh -F` (the test suite's own keys and known hosts); without it ssh
    reads the user's configuration. Host keys are checked strictly (`BatchMode`: never a prompt).
    """

    def __init__(self, url: str, ssh_config: str | os.PathLike[str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise SandboxError(f"not an ssh:// Docker host: {url!r}")
        self.url = url
        self.destination = f"{parts.username}@{parts.hostname}" if parts.username else parts.hostname
        self.port = parts.port
        self.remote_socket = parse_qs(parts.query).get("socket", [REMOTE_SOCKET])[0]
        self.ssh_config = str(ssh_config) if ssh_config else None
        self._new_dir()
        self._proc: subprocess.Popen[bytes] | None = None
        self._up = False  # the current process's forward is set up
        self._lock = threading.Lock()
        self.starts = 0
        atexit.register(self.close)
        _tunnels_here.add(self)

    def _new_dir(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="qwq-ssh-"))  # 0700: only we reach the local end
        self._dir_pid = os.getpid()  # the process that made it, and alone removes it or binds in it
        self.path = str(self._dir / "docker.sock")
        self._local = UnixConnector(self.path)

    def _after_fork_in_child(self) -> None:
        """In a child forked from the owner: let go of the owner's tether, keeping its folder intact.

        Closing our copy of the write end leaves the owner the only holder, so the tether still sees EOF
        when the owner dies, whatever children it forked. The owner's ssh is none of the child's: it
        must not ask it to stop, nor unlink its socket; used here, the tunnel starts one of its own.
        """
        proc, self._proc, self._up = self._proc, None, False
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        # Another thread of the owner may have held it at the fork: it would never be released here.
        self._lock = threading.Lock()

    # -- the ssh process ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        ssh = shutil.which("ssh")
        if ssh is None:
            raise DockerUnreachable(
                f"{self.url}: the OpenSSH client (`ssh`) is not installed (apt-get install openssh-client)"
            )
        cmd = [ssh]
        if self.ssh_config:
            cmd += ["-F", self.ssh_config]
        cmd += [
            "-N",  # no remote command: the connection only carries the forward
            "-T",
            "-o", "BatchMode=yes",
            "-o", "ExitOnForwardFailure=yes",
            "-o", "StreamLocalBindUnlink=yes",
            "-o", f"ConnectTimeout={int(CONNECT_TIMEOUT_S)}",
            "-o", f"ServerAliveInterval={ALIVE_INTERVAL_S}",
            "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
            "-o", "ControlMaster=no",
            "-o", "ControlPath=none",
            "-L", f"{self.path}:{self.remote_socket}",
        ]  # fmt: skip
        if self.port:
            cmd += ["-p", str(self.port)]
        return [*cmd, self.destination]

    @property
    def alive(self) -> bool:
        """True while the ssh process (its tether) whose forward `ensure` saw set up still runs."""
        return self._up and self._proc is not None and self._proc.poll() is None

    def ensure(self, timeout: float) -> str:
        """Start the tunnel unless it runs; returns the local socket. Blocking: call it in a thread.

        Raises `DockerUnreachable` with ssh's own words when it exits (refused, bad key, unknown host
        key) or the forward is not up within `timeout` s.
        """
        with self._lock:
            if self.alive:
                return self.path
            if self._dir_pid != os.getpid():  # forked from the owner: its socket is not ours to unlink
                self._new_dir()
            self._stop()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            log = self._dir / "ssh.log"
            command = [sys.executable, "-I", "-S", str(TETHER), str(self._dir), *self.command()]
            with open(log, "wb") as err:
                # Its own session: a Ctrl-C meant for this process reaches neither; the tether follows it.
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    bufsize=0,
                    start_new_session=True,
                )
            self.starts += 1
            # ssh creates the local socket once it is authenticated and the forward is set up.
            give_up = time.monotonic() + max(0.0, timeout)
            while not os.path.exists(self.path):
                code = self._proc.poll()
                if code is not None:
                    said = log.read_text(errors="replace").strip().splitlines()[-3:]
                    raise DockerUnreachable(
                        f"cannot reach the Docker engine at {self.url}: ssh exited with code {code}: "
                        + (" / ".join(said) or "no message")
                    )
                if time.monotonic() >= give_up:
                    self._stop()
                    raise DockerUnreachable(
                        f"cannot reach the Docker engine at {self.url}: the ssh tunnel was not up within {timeout:g} s"
                    )
                time.sleep(_POLL_S)
            self._up = True
            return self.path

    def _stop(self) -> None:
        """Ask the tether to stop ssh (keeping the folder) and wait for it; kill both if it hangs."""
        self._up = False
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):  # the tether exited already (ssh did): nothing to ask
                proc.stdin.write(b"q")
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its session: the tether and ssh
            proc.wait()

    def close(self) -> None:
        """Stop the ssh process and remove the local socket (idempotent)."""
        with self._lock:
            self._stop()
            if self._dir_pid == os.getpid():  # not a forked child's atexit: the owner's tunnel lives on
                shutil.rmtree(self._dir, ignore_errors=True)

    # -- Connector ---------------------------------------------------------------------------------

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not self.alive:  # exited (host gone, or never started): start it again
            await asyncio.to_thread(self.ensure, CONNECT_TIMEOUT_S + 5)
        return await asyncio.open_unix_connection(self.path, limit=STREAM_LIMIT)

    def docker_client(self, timeout: float) -> Any:
        self.ensure(timeout)
        return self._local.docker_client(timeout)


_tunnels: dict[tuple[str, str | None], SSHTunnel] = {}
_tunnels_lock = threading.Lock()
# Every tunnel of this process, for the fork hook below (weak: a closed, dropped tunnel is forgotten).
_tunnels_here: weakref.WeakSet[SSHTunnel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _tunnels_lock
    _tunnels_lock = threading.Lock()
    for tunnel in list(_tunnels_here):
        tunnel._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def shared_tunnel(url: str, ssh_config: str | os.PathLike[str] | None = None) -> SSHTunnel:
    """The process's tunnel to `url` (one ssh connection per host, whatever uses it)."""
    key = (url, str(ssh_config) if ssh_config else None)
    with _tunnels_lock:
        tunnel = _tunnels.get(key)
        if tunnel is None:
            tunnel = _tunnels[key] = SSHTunnel(url, ssh_config)
        return tunnel
