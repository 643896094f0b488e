"""`qwq-agent serve`: the launch command, the prerequisites check, readiness and shutdown.

The server processes here are the scripted model server started as a subprocess (our test double for the
model); the same readiness code is pointed at real SGLang in tests/test_gpu_sglang.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from router_helpers import READY_POLL_S, gone

from qwq_agent.cli.main import main
from qwq_agent.serve import (
    ServeConfig,
    ServerExited,
    ServerProcess,
    ServerStartTimeout,
    build_command,
    check_prerequisites,
    launcher,
    probe,
)
from qwq_agent.testing.scripted_server import ScriptedModelServer

SCRIPTED = [sys.executable, "-m", "qwq_agent.testing.scripted_server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_has_qwq_flags_and_passes_extra_args():
    cmd = build_command(
        ServeConfig(
            model_path="/models/qwq",
            tp=2,
            context_length=16384,
            mem_fraction_static=0.85,
            port=31000,
            extra_args=["--enable-torch-compile"],
        )
    )
    joined = " ".join(cmd)
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    for flag in (
        "--model-path /models/qwq",
        "--tp 2",
        "--context-length 16384",
        "--mem-fraction-static 0.85",
        "--schedule-policy lpm",
        "--enable-metrics",
        "--enable-cache-report",
        "--reasoning-parser deepseek-r1",
        "--tool-call-parser qwen25",
        "--host 127.0.0.1",
        "--port 31000",
    ):
        assert flag in joined
    assert cmd[-1] == "--enable-torch-compile"


def test_print_command_starts_nothing(capsys):
    assert main(["serve", "--print-command", "--port", "31001", "--", "--log-level", "warning"]) == 0
    out = capsys.readouterr().out
    assert (
        "sglang.launch_server" in out
        and "--port 31001" in out
        and out.strip().endswith("--log-level warning")
    )


def test_missing_gpu_and_sglang_give_a_clear_message(monkeypatch, capsys):
    monkeypatch.setattr(launcher.shutil, "which", lambda name: None)
    monkeypatch.setattr(launcher.importlib.util, "find_spec", lambda name: None)
    assert len(check_prerequisites()) == 2
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "nvidia-smi" in err and "pip install -e '.[serve]'" in err and "--model-url" in err
    assert "Traceback" not in err


def test_waits_for_health_then_reports_capacity_and_stops(tmp_path):
    port = free_port()
    server = ServerProcess(
        [*SCRIPTED, "--port", str(port), "--unready-for", "0.5", "--max-total-num-tokens", "4242"],
        f"http://127.0.0.1:{port}",
        tmp_path / "log",
    )
    server.start()
    try:
        info = server.wait_ready(timeout=60, poll_interval=READY_POLL_S)
        assert info.max_total_num_tokens == 4242 and info.model == "Qwen/QwQ-32B"
        assert info.url == f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=10)
    assert not server.alive()
    assert probe(server.url, timeout=1) is None


def test_a_server_that_exits_shows_its_log(tmp_path):
    port = free_port()
    server = ServerProcess(
        [*SCRIPTED, "--port", str(port), "--unready-for", "600", "--exit-after", "0.3"],
        f"http://127.0.0.1:{port}",
        tmp_path / "log",
    )
    server.start()
    try:
        with pytest.raises(ServerExited) as info:
            server.wait_ready(timeout=60, poll_interval=READY_POLL_S)
    finally:
        server.stop(grace=10)
    assert "crashing on purpose" in info.value.log_tail and "status 3" in str(info.value)


def test_a_server_that_never_gets_ready_times_out(tmp_path):
    port = free_port()
    server = ServerProcess(
        [*SCRIPTED, "--port", str(port), "--unready-for", "600"], f"http://127.0.0.1:{port}", tmp_path / "log"
    )
    server.start()
    try:
        with pytest.raises(ServerStartTimeout):
            server.wait_ready(timeout=0.5, poll_interval=0.05)
        assert server.alive()
    finally:
        server.stop(grace=10)
    assert not server.alive()


def sigint_as_a_terminal_sends_it() -> None:
    """In the child: SIGINT handled by default, even when the test runner was started in the background
    (a non-interactive shell starts background jobs with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def serve_cli(command: str, port: int, timeout: int = 60, **popen: object) -> subprocess.Popen[str]:
    """`qwq-agent serve --command COMMAND --port PORT` as a child process (text mode, SIGINT default)."""
    argv = [sys.executable, "-m", "qwq_agent.cli.main", "serve", "--command", command, "--port", str(port)]
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [*argv, "--timeout", str(timeout)], text=True, preexec_fn=sigint_as_a_terminal_sends_it, **popen
    )


def test_cli_serves_until_sigint_then_stops_the_server():
    port = free_port()
    cmd = " ".join([*SCRIPTED, "--port", str(port)])
    cli = serve_cli(cmd, port, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = []
        for line in cli.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        out = "".join(lines)
        assert f"ready: http://127.0.0.1:{port}" in out and "KV capacity: 18391 tokens" in out
        server_pid = int(next(line for line in lines if line.startswith("pid: ")).split()[1])
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=30) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)
    assert probe(f"http://127.0.0.1:{port}", timeout=1) is None


def test_model_url_checks_a_running_server(capsys):
    with ScriptedModelServer(max_total_num_tokens=777) as server:
        assert main(["serve", "--model-url", server.url]) == 0
    assert "KV capacity: 777 tokens" in capsys.readouterr().out
    assert main(["serve", "--model-url", server.url]) == 1  # stopped now


def test_cli_shows_the_servers_log_tail_and_elapsed_time_while_waiting_for_health(tmp_path):
    """On a terminal (a real pty), `serve` shows a live status with the log's last lines until /health."""
    import pty
    import select
    import time

    port = free_port()
    trigger = tmp_path / "go"
    fake = os.path.join(os.path.dirname(__file__), "fake_sglang_server.py")
    cmd = f"{sys.executable} {fake} {trigger} {port}"
    leader, follower = pty.openpty()
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qwq_agent.cli.main",
            "serve",
            "--command",
            cmd,
            "--port",
            str(port),
            "--timeout",
            "120",
        ],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
        preexec_fn=sigint_as_a_terminal_sends_it,
    )
    os.close(follower)
    screen = b""

    def read_until(needle: bytes, limit: float = 60.0) -> None:
        nonlocal screen
        deadline = time.monotonic() + limit
        while needle not in screen:
            ready, _, _ = select.select([leader], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"{needle!r} did not appear; screen so far: {screen[-2000:]!r}"
            screen += os.read(leader, 65536)

    try:
        read_until(b"Loading safetensors checkpoint shards: 3/3")  # the log's tail, while /health fails
        waiting = screen.decode(errors="replace")
        assert f"waiting for http://127.0.0.1:{port}/health" in waiting
        assert re.search(r"· \d+s", waiting)  # the elapsed time
        assert "ready:" not in waiting
        trigger.touch()
        read_until(b"Ctrl-C stops the server.")
        assert f"ready: http://127.0.0.1:{port}".encode() in screen
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=30) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        os.close(leader)


def test_log_follower_reads_only_whats_new_and_bounds_a_flood(tmp_path):
    log = tmp_path / "server.log"
    follower = launcher.LogFollower(log)
    assert follower.read() == ""  # no log yet
    log.write_bytes(b"x" * 1_000_000 + b"\nlast line\n")
    first = follower.read()
    assert len(first) == launcher.LOG_CHUNK and first.endswith("last line\n")
    assert follower.read() == ""
    with open(log, "ab") as f:
        f.write(b"more\n")
    assert follower.read() == "more\n"


STUBBORN = [sys.executable, os.path.join(os.path.dirname(__file__), "stubborn_sglang_server.py")]


def _start_cli(server_command: list[str], port: int) -> tuple[subprocess.Popen[str], int]:
    """`qwq-agent serve --command ...` until it says the server is ready; returns it and the server's pid."""
    cli = serve_cli(" ".join(server_command), port, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert cli.stdout is not None
    lines = []
    for line in cli.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C stops"):
            break
    pid = next((line for line in lines if line.startswith("pid: ")), None)
    assert pid is not None, "".join(lines)
    return cli, int(pid.split()[1])


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM])
def test_cli_stops_the_server_when_its_terminal_goes_away(sig):
    """SIGHUP (the SSH session drops) and SIGQUIT stop the server like Ctrl-C: it runs in a session of its
    own, so only the CLI's clean-up can reach it."""
    port = free_port()
    cli, server_pid = _start_cli([*SCRIPTED, "--port", str(port)], port)
    try:
        cli.send_signal(sig)
        out, _ = cli.communicate(timeout=30)
        assert cli.returncode == 0, out
        assert "stopping the server" in out and "Traceback" not in out
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    with pytest.raises(ProcessLookupError):
        os.killpg(server_pid, 0)


def test_a_second_ctrl_c_during_the_grace_kills_a_hung_server_at_once():
    port = free_port()
    cli, server_pid = _start_cli([*STUBBORN, str(port)], port)
    assert cli.stdout is not None
    try:
        cli.send_signal(signal.SIGINT)
        for line in cli.stdout:
            if line.startswith("stopping the server"):
                break
        # the server ignores the SIGTERM: stop() now waits out its 20 s grace, unless told to hurry
        cli.send_signal(signal.SIGINT)
        out, _ = cli.communicate(timeout=15)
        assert cli.returncode == 130, out
        assert "Traceback" not in out
    finally:
        if cli.poll() is None:  # the test failed: leave no server behind (it ignores SIGTERM)
            cli.kill()
            cli.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server_pid, signal.SIGKILL)
    with pytest.raises(ProcessLookupError):
        os.killpg(server_pid, 0)


def test_an_interrupted_fleet_stop_still_kills_every_worker(tmp_path):
    """A second Ctrl-C while the first worker's grace runs: that worker and all the others are killed."""
    from qwq_agent.serve.fleet import Fleet, FleetConfig, WorkerSpec

    ports = [free_port(), free_port()]
    specs = [
        WorkerSpec(i, str(i), [*STUBBORN, str(p)], f"http://127.0.0.1:{p}", dict(os.environ))
        for i, p in enumerate(ports)
    ]
    fleet = Fleet(FleetConfig(dp=2), specs, tmp_path)
    fleet.start_workers()
    pids = [w.pid for w in fleet.workers]

    def second_ctrl_c(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, second_ctrl_c)
    try:
        for worker in fleet.workers:
            worker.wait_ready(timeout=60, poll_interval=READY_POLL_S)
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # lands in worker 0's 60 s grace
        with pytest.raises(KeyboardInterrupt):
            fleet.stop(grace=60)
        # checked before any clean-up of ours: the interrupted stop itself must have killed them all
        assert [w.process.poll() if w.process else None for w in fleet.workers] == [-signal.SIGKILL] * 2
        assert all(pid is not None and gone(pid) for pid in pids)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        for worker in fleet.workers:
            worker.kill()


def test_the_server_stops_when_its_parent_is_killed(tmp_path):
    """SIGKILL leaves the CLI no chance to clean up; the kernel then SIGTERMs the server (PDEATHSIG)."""
    port = free_port()
    parent_code = (
        "import sys\n"
        "from qwq_agent.serve import ServerProcess\n"
        f"server = ServerProcess({[*SCRIPTED, '--port', str(port)]!r}, {f'http://127.0.0.1:{port}'!r}, "
        f"{str(tmp_path / 'log')!r})\n"
        "server.start()\n"
        f"server.wait_ready(timeout=60, poll_interval={READY_POLL_S})\n"
        "print(server.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    server_pid = None
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        parent.kill()
        parent.wait(timeout=10)
        # the orphan is reparented to init (or a subreaper) and exits on its SIGTERM; poll its state
        deadline = time.monotonic() + 30
        while not gone(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # another process's exit: nothing of ours to wait on
        assert gone(server_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if server_pid is not None and not gone(server_pid):
            os.killpg(server_pid, signal.SIGKILL)


def test_cli_exits_1_naming_the_status_when_its_server_is_killed():
    """The server's own status is not the CLI's exit code: -9 would exit 247 (no documented code), a
    server's 70 would claim a bug of ours, its 2 bad input."""
    port = free_port()
    cli, server_pid = _start_cli([*SCRIPTED, "--port", str(port)], port)
    try:
        os.killpg(server_pid, signal.SIGKILL)  # the OOM killer
        out, _ = cli.communicate(timeout=60)
        assert cli.returncode == 1, out
        assert "qwq-agent serve: the server was killed by SIGKILL (status -9)" in out
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_the_url_of_an_ipv6_host_is_bracketed():
    from qwq_agent.serve.fleet import FleetConfig

    assert ServeConfig(host="::1", port=30000).url == "http://[::1]:30000"
    assert ServeConfig(host="::", port=30000).url == "http://127.0.0.1:30000"
    assert FleetConfig(dp=2, host="fe80::1", router_port=8000).router_url == "http://[fe80::1]:8000"
    assert probe("http://::1:1", timeout=1) is None  # not a URL httpx can parse: no answer, not a crash


def test_cli_serves_on_an_ipv6_host():
    port = free_port()
    cmd = " ".join([*SCRIPTED, "--host", "::1", "--port", str(port)])
    argv = [sys.executable, "-m", "qwq_agent.cli.main", "serve", "--host", "::1", "--command", cmd]
    cli = subprocess.Popen(
        [*argv, "--port", str(port), "--timeout", "60"],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=sigint_as_a_terminal_sends_it,
    )
    try:
        assert cli.stdout is not None
        lines = []
        for line in cli.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        assert f"ready: http://[::1]:{port}\n" in lines, "".join(lines)
        cli.send_signal(signal.SIGINT)
        out, _ = cli.communicate(timeout=30)
        assert cli.returncode == 0, "".join(lines) + out
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
