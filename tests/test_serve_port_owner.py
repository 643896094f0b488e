"""`serve` takes `/health` as its server's only when the server holds the port's listener.

SGLang binds its port only after loading the model (minutes), so the port check made before the launch
cannot keep another program from listening there meanwhile; that program's `/health` answer must not
make a still-loading server "ready". Our servers here are real processes that load forever (a sleep) or
serve (the scripted model server); the foreign server is a scripted model server (or the real router)
started by the test, outside the server's session, on the same port.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from router_helpers import (
    Router,
    free_port,
    free_ports,
    gone,
    scripted,
    sigint_as_a_terminal_sends_it,
    stop_serve_cli,
)

from qwq_agent.serve import ServerError, ServerProcess, launcher
from qwq_agent.serve.fleet import Fleet, FleetConfig, WorkerSpec, wait_router

SCRIPTED = [sys.executable, "-m", "qwq_agent.testing.scripted_server"]
LOADING = [
    sys.executable,
    "-c",
    "import time; print('Loading safetensors checkpoint shards', flush=True); time.sleep(600)",
]
"""A stand-in for SGLang loading the model: alive, logging, not listening yet."""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="who listens is read from /proc")


@pytest.fixture
def foreign() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Someone else's model servers: started by the test, each in the test's session, not the server's."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
        process.wait(30)


def start_foreign(started: list[subprocess.Popen[bytes]], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [*SCRIPTED, "--port", str(port), "--model", "someone-elses-model"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started.append(process)
    return process


def test_a_foreign_server_on_the_port_does_not_make_a_loading_server_ready(tmp_path, foreign):
    port = free_port()
    server = ServerProcess(LOADING, f"http://127.0.0.1:{port}", tmp_path / "log")
    server.start()
    try:
        other = start_foreign(foreign, port)
        with pytest.raises(ServerError) as error:
            server.wait_ready(timeout=60, poll_interval=0.05)
        assert isinstance(error.value, launcher.PortTaken)
        assert str(error.value) == (
            f"port {port} was taken by another process (pid {other.pid}) while the server loaded"
        )
        assert server.alive()  # refused at the foreign answer, not when our server gave up
    finally:
        server.stop(grace=10)


def test_a_server_whose_child_holds_the_listener_is_ready(tmp_path):
    """The listener may be any process of the server's session (SGLang's HTTP server is one of several)."""
    port = free_port()
    command = ["sh", "-c", f"{' '.join(SCRIPTED)} --port {port} --max-total-num-tokens 777; exit 0"]
    server = ServerProcess(command, f"http://127.0.0.1:{port}", tmp_path / "log")
    server.start()
    try:
        info = server.wait_ready(timeout=60, poll_interval=0.05)
        assert info.max_total_num_tokens == 777
    finally:
        server.stop(grace=10)


def test_cli_fails_in_one_line_when_another_server_takes_the_port_during_the_load(tmp_path, foreign):
    port = free_port()
    argv = [sys.executable, "-m", "qwq_agent.cli.main", "serve", "--command", shlex.join(LOADING)]
    cli = subprocess.Popen(
        [*argv, "--port", str(port), "--timeout", "120", "--log-file", str(tmp_path / "server.log")],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=sigint_as_a_terminal_sends_it,
    )
    lines: list[str] = []
    try:
        assert cli.stdout is not None
        for line in cli.stdout:
            lines.append(line)
            if line.startswith("pid: "):
                break
        server_pid = int(lines[-1].split()[1])
        other = start_foreign(foreign, port)
        for line in cli.stdout:  # to its end, or to the ready line it must not print
            lines.append(line)
            if line.startswith("ready:"):
                break
        out = "".join(lines)
        assert "ready:" not in out and "someone-elses-model" not in out, out
        assert cli.wait(30) == 1, out
        assert (
            f"qwq-agent serve: port {port} was taken by another process (pid {other.pid}) while the server "
            "loaded\n" in out
        )
        assert gone(server_pid)  # our loading server was stopped
    finally:
        stop_serve_cli(cli)


def test_a_fleet_refuses_a_worker_port_taken_while_the_worker_loaded(tmp_path, foreign):
    base = free_ports(1)
    specs = [
        WorkerSpec(0, "0", [*SCRIPTED, "--port", str(base)], f"http://127.0.0.1:{base}", dict(os.environ)),
        WorkerSpec(1, "1", LOADING, f"http://127.0.0.1:{base + 1}", dict(os.environ)),
    ]
    fleet = Fleet(FleetConfig(dp=2, router_port=free_port()), specs, tmp_path)
    fleet.start_workers()
    try:
        other = start_foreign(foreign, base + 1)
        with pytest.raises(ServerError) as error:
            fleet.wait_ready(timeout=60, poll_interval=0.05)
        assert isinstance(error.value, launcher.PortTaken)
        assert str(error.value) == (
            f"port {base + 1} was taken by another process (pid {other.pid}) while worker 1 loaded"
        )
        assert fleet.router.process is None  # no router was put in front of the stranger
    finally:
        fleet.stop(grace=10)


def test_the_router_is_not_taken_for_another_router_on_its_port(tmp_path: Path):
    """A router of someone else's fleet answers /readiness on our router's port before ours binds."""
    pytest.importorskip("sglang_router", reason="sglang-router is not installed")
    worker = scripted(tmp_path)
    with worker, Router([worker], "round_robin", tmp_path) as theirs:
        ours = ServerProcess(LOADING, theirs.url, tmp_path / "our-router.log")
        ours.start()
        try:
            with pytest.raises(ServerError) as error:
                wait_router(ours, 1, timeout=60, poll_interval=0.05)
            assert isinstance(error.value, launcher.PortTaken)
            assert f"(pid {theirs.process.pid}) while the router started" in str(error.value)
        finally:
            ours.stop(grace=10)
