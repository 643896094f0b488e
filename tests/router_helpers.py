"""Shared by the tests of `serve --dp` and of routing: the real router in front of scripted workers.

The router is the real `sglang-router` binary (`python -m sglang_router.launch_router`); the workers are
scripted model servers (real HTTP on 127.0.0.1, SGLang's `/generate`, `/health`, `/server_info`), as
processes or in the test's process (so a test can count which worker served which request). The workers
report a local, empty model folder so the router looks for no tokenizer on a model hub.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

from qwq_agent.serve import ServerProcess
from qwq_agent.serve.fleet import FleetConfig, router_command, wait_router
from qwq_agent.testing.scripted_server import ScriptedModelServer

SCRIPTED = f"{sys.executable} -m qwq_agent.testing.scripted_server"
ANSWER = "thinking\n</think>\n\nok"
# The poll interval of a test's readiness wait on one server (`ServerProcess.wait_ready`). Each /health
# probe may take twice that (`launcher.probe`): at 0.05 s a probe had 0.1 s, which one takes (~35 ms
# here) overran every time on a loaded machine, and a server up in a second was never seen ready in
# 60 s. 1 s, as `qwq-agent serve` polls.
READY_POLL_S = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """A base port with `n` free ports above it (checked now; the tests bind them moments later)."""
    for _ in range(50):
        base = free_port()
        if base + n < 65535 and all(_free(base + i) for i in range(1, n + 1)):
            return base
    raise RuntimeError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def sigint_as_a_terminal_sends_it() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Router:
    """The real router in front of in-process scripted servers."""

    def __init__(self, servers: list[ScriptedModelServer], policy: str, log_dir: Path) -> None:
        self.servers = servers
        self.config = FleetConfig(dp=len(servers), router_port=free_port(), policy=policy)
        self.process = ServerProcess(
            router_command(self.config, [s.url for s in servers]),
            self.config.router_url,
            log_dir / "router.log",
        )

    def __enter__(self) -> Router:
        self.process.start()
        try:
            wait_router(self.process, len(self.servers), timeout=60)
        except BaseException:
            self.process.stop(5)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop(5)

    @property
    def url(self) -> str:
        return self.config.router_url

    def workers_of(self, tag: str) -> set[int]:
        """Indexes of the servers that received a request whose prompt contains `tag`."""
        return {
            i for i, s in enumerate(self.servers) if any(tag in (r.prompt or "") for r in list(s.requests))
        }


def scripted(tmp_path: Path, capacity: int = 18391) -> ScriptedModelServer:
    return ScriptedModelServer(
        lambda r: ANSWER, when_exhausted="repeat", max_total_num_tokens=capacity, model=str(tmp_path)
    )


def stop_serve_cli(cli: subprocess.Popen) -> None:
    """End a `serve --dp` CLI a test started, if it still runs: SIGINT first (the CLI stops its router
    and workers; a kill would orphan them), a kill if it does not end within a minute."""
    if cli.poll() is None:
        cli.send_signal(signal.SIGINT)
        try:
            cli.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cli.kill()
            cli.wait()


def gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
