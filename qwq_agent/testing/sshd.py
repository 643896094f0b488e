"""A second Docker endpoint for tests: this machine's engine reached over ssh on 127.0.0.1.

`SSHDockerEndpoint` starts Debian's OpenSSH server as a non-daemon child with its own configuration,
host key and client key (all made in a private folder, nothing of the system's is used or changed) on
a free port. Its one user, `qwq-docker` (created by `scripts/bootstrap.sh`), is in the `docker` group
and has no shell: the connection can forward to the Docker socket and do nothing else. `url` and
`ssh_config` are what `DockerHost(url=..., ssh_config=...)` (or `DOCKER_HOST` plus
`QWQ_DOCKER_SSH_CONFIG`) take. `cut()` kills the server and every connection it serves, as when the
host goes away.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
USER = "qwq-docker"
START_TIMEOUT_S = 15.0


def unavailable() -> str | None:
    """Why an ssh endpoint cannot be started here (for a skip), or None."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (scripts/bootstrap.sh installs openssh-server; QWQ_SKIP_SSHD=1 skips it)"
    if shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        return "the OpenSSH client tools (ssh, ssh-keygen) are missing"
    if os.geteuid() != 0:
        return "starting an sshd that logs in as another user needs root"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"user {USER!r} is missing (scripts/bootstrap.sh creates it)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (sshd's per-connection processes), found through /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        out += kids
        frontier += kids
    return out


class SSHDockerEndpoint:
    """`with SSHDockerEndpoint() as ep: DockerHost(url=ep.url, ssh_config=ep.ssh_config)`."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self._own_dir = folder is None
        self.dir = Path(folder or tempfile.mkdtemp(prefix="qwq-sshd-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.ssh_config = self.dir / "ssh_config"

    @property
    def url(self) -> str:
        return f"ssh://{USER}@127.0.0.1:{self.port}"

    def _keys(self) -> None:
        for name in ("host_key", "client_key"):
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"qwq-test-{name}",
                    "-f",
                    str(self.dir / name),
                ],
                check=True,
            )
        shutil.copy(self.dir / "client_key.pub", self.dir / "authorized_keys")
        os.chmod(self.dir / "authorized_keys", 0o644)

    def _configs(self) -> None:
        d = self.dir
        (d / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile none\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n"
            f"AllowUsers {USER}\n"
            # Local forwards only (the Docker socket); no remote listeners, no tty, no X11, no agent.
            # (`PermitOpen none` would refuse unix-socket forwards too in OpenSSH 9.2.)
            "AllowStreamLocalForwarding local\nAllowTcpForwarding local\n"
            "PermitListen none\nPermitTTY no\nX11Forwarding no\nAllowAgentForwarding no\n"
            "LogLevel ERROR\n"
        )
        host_key = (d / "host_key.pub").read_text().split()[:2]
        (d / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(host_key)}\n")
        self.ssh_config.write_text(
            "Host 127.0.0.1\n"
            f"  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {d / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
            "  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        )

    def start(self) -> SSHDockerEndpoint:
        """Make the keys and configs, start sshd and wait (at most START_TIMEOUT_S) for its banner."""
        problem = unavailable()
        if problem:
            raise RuntimeError(problem)
        self.dir.mkdir(parents=True, exist_ok=True)
        # sshd reads authorized_keys as the logged-in user: it must be able to pass through (not list).
        os.chmod(self.dir, 0o711)
        if not (self.dir / "client_key").exists():
            self._keys()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        self.port = _free_port()
        self._configs()
        log = open(self.dir / "sshd.log", "ab")
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # a terminal's Ctrl-C reaches the tests, not the server
        )
        log.close()
        give_up = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                said = (self.dir / "sshd.log").read_text(errors="replace")[-500:]
                raise RuntimeError(f"sshd exited with code {self.proc.returncode}: {said}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1) as s:
                s.settimeout(max(0.1, give_up - time.monotonic()))
                if s.recv(4).startswith(b"SSH-"):
                    return self
            if time.monotonic() >= give_up:
                self.stop()
                raise RuntimeError(
                    f"sshd did not answer on 127.0.0.1:{self.port} within {START_TIMEOUT_S:g} s"
                )
            time.sleep(0.05)

    def cut(self) -> None:
        """The host goes away: kill the server and every connection it serves (SIGKILL, by pid)."""
        if self.proc is None:
            return
        for pid in [*_children(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """The host comes back (same keys, a new port: the URL changes)."""
        self.cut()
        self.start()

    def stop(self) -> None:
        self.cut()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SSHDockerEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
