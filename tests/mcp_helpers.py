"""Starting the test MCP server (tests/mcp_server.py) as a real process, over stdio or streamable HTTP."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

SERVER = str(Path(__file__).parent / "mcp_server.py")


def stdio_command(name: str) -> list[str]:
    return [sys.executable, SERVER, "--name", name]


def start_with_pid(pid: int, argv: list[str], tries: int = 50) -> subprocess.Popen[bytes] | None:
    """Start `argv` as a session (and process group) leader whose pid is `pid`, through the kernel's
    `ns_last_pid` (root only); None when that pid is not free or another process keeps taking it first."""
    for _ in range(tries):
        if os.path.exists(f"/proc/{pid}"):
            return None  # a zombie or a process still holds it: not free for reuse
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        stranger = subprocess.Popen(argv, start_new_session=True)
        if stranger.pid == pid:
            return stranger
        stranger.kill()  # another process on the machine took the pid in between: try again
        stranger.wait()
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the MCP test server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the MCP test server did not listen on {port} within {deadline_s} s")


@contextlib.contextmanager
def http_server(name: str, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """A server on 127.0.0.1; yields (its /mcp URL, its process)."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--name", name, "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
