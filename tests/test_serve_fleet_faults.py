"""`serve` and `serve --dp` under faults: huge logs, hung or crashing replicas, odd `/server_info`
answers, ports already taken, a CLI killed outright.

The servers are the scripted model server, tests/stubborn_sglang_server.py (ignores SIGTERM) and the real
`sglang-router`, all real processes on 127.0.0.1. A stubborn server is always SIGKILLed by the test's
own clean-up, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from pid_reuse import start_with_pid
from router_helpers import (
    READY_POLL_S,
    SCRIPTED,
    free_ports,
    gone,
    sigint_as_a_terminal_sends_it,
    stop_serve_cli,
)

from qwq_agent.cli.serve_dp import last_log_line
from qwq_agent.serve import ServeConfig, ServerExited, ServerProcess, launcher
from qwq_agent.serve.fleet import Fleet, FleetConfig, WorkerSpec, probe_router, worker_specs
from qwq_agent.testing.scripted_server import ScriptedModelServer

DEAF = (
    "import signal\n"
    "signal.signal(signal.SIGTERM, lambda *_: print('got SIGTERM', flush=True))\n"
    "print('deaf', flush=True)\n"
    "while True:\n"
    "    signal.pause()\n"
)
"""A replica that notes every SIGTERM and carries on (a hung SGLang); only SIGKILL ends it."""


def _wait_for_text(path: Path, text: str, timeout: float = 30.0) -> bool:
    """Poll a log another process writes until it holds `text` (nothing of ours to wait on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


def test_log_tail_gives_the_last_lines_of_a_log_larger_than_its_window(tmp_path):
    log = tmp_path / "server.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(100_000)))  # ~1 MB, many LOG_CHUNKs
    tail = ServerProcess(["true"], "http://127.0.0.1:1", log).log_tail(3)
    assert tail == "line 99997\nline 99998\nline 99999"
    # one huge line: the window's fragment is dropped, never returned as a line of its own
    log.write_bytes(b"x" * (3 * launcher.LOG_CHUNK) + b"\nCUDA error\n")
    assert ServerProcess(["true"], "http://127.0.0.1:1", log).log_tail(5) == "CUDA error"


def test_log_tail_of_a_huge_log_reads_only_its_end(tmp_path):
    """SGLang logs every batch: after days the log is gigabytes. The tail read must not load it: here in a
    process whose address space cannot hold the (sparse, 512 MB) log, the last line still comes back."""
    log = tmp_path / "server.log"
    with open(log, "wb") as f:
        f.truncate(512 * 1024 * 1024)  # sparse: no disk used
        f.seek(0, 2)
        f.write(b"\nRuntimeError: CUDA error: an illegal memory access was encountered\n")
    code = textwrap.dedent(
        f"""
        import resource
        from qwq_agent.serve import ServerProcess
        server = ServerProcess(["true"], "http://127.0.0.1:1", {str(log)!r})
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + 256 * 2**20, resource.RLIM_INFINITY))
        print(server.log_tail(1))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "RuntimeError: CUDA error: an illegal memory access was encountered"


def test_fleet_stop_sigterms_every_process_before_waiting_out_any_grace(tmp_path):
    """Hung replicas share one grace: all are SIGTERMed at once, not one after another's full grace."""
    specs = [
        WorkerSpec(i, str(i), [sys.executable, "-c", DEAF], f"http://127.0.0.1:{1 + i}", dict(os.environ))
        for i in range(3)
    ]
    fleet = Fleet(FleetConfig(dp=3), specs, tmp_path)
    fleet.start_workers()
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    stopper = threading.Thread(target=fleet.stop, kwargs={"grace": 600})
    try:
        assert all(_wait_for_text(log, "deaf") for log in logs)  # their SIGTERM handler is in place
        stopper.start()
        told = [_wait_for_text(log, "got SIGTERM") for log in logs]
        assert told == [True, True, True]
    finally:
        for worker in fleet.workers:
            worker.kill()  # ends the stop's grace at once
        stopper.join(timeout=60)
    assert not stopper.is_alive()


def test_a_worker_that_dies_after_answering_health_ends_the_wait_at_once(tmp_path):
    """Worker 1 is ready at once and crashes 2 s later, while worker 0 still loads: the wait names worker 1
    then, instead of waiting out the whole timeout and blaming worker 0 (or the router)."""
    base = free_ports(3)
    fleet_config = FleetConfig(dp=2, router_port=base)
    specs = worker_specs(ServeConfig(), fleet_config, f"{SCRIPTED} --port {{port}} --model {tmp_path}")
    specs[0].command += ["--unready-for", "600"]  # loads for longer than the test's deadline
    specs[1].command += ["--exit-after", "2"]
    fleet = Fleet(fleet_config, specs, tmp_path / "logs")
    fleet.start_workers()
    progress: list[str] = []
    try:
        with pytest.raises(
            ServerExited, match=rf"worker 1 \(http://127.0.0.1:{base + 2}, GPU 1\) exited"
        ) as info:
            fleet.wait_ready(timeout=300, poll_interval=0.2, on_progress=progress.append)
    finally:
        fleet.stop(5)
    if f"worker 1 ready: http://127.0.0.1:{base + 2}" in progress:
        assert "after it answered /health" in str(info.value)
    assert "crashing on purpose" in info.value.log_tail
    assert not fleet.router.alive()


def test_the_hint_shows_the_router_logs_last_line_without_terminal_escapes():
    tail = "start\n\x1b[2m2025-01-01T00:00:00Z\x1b[0m \x1b[31mERROR\x1b[0m \x1b]0;x\x07port in use\n\x1b[0m\n"
    assert last_log_line(tail) == "2025-01-01T00:00:00Z ERROR port in use"


def _lines(stream) -> queue.Queue[str]:
    """The lines of `stream` as a reader thread gets them (so each wait for one can have a deadline)."""
    got: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            got.put(line)
        got.put("")  # end of output

    threading.Thread(target=pump, daemon=True).start()
    return got


def _until(lines: queue.Queue[str], prefix: str, seen: list[str], timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        seen.append(line)
        if line.startswith(prefix):
            return line
        assert line, f"output ended before {prefix!r}: {''.join(seen)}"


def test_serve_dp_keeps_serving_when_one_replica_dies_and_stops_when_none_is_left(tmp_path):
    base = free_ports(3)
    cli = subprocess.Popen(
        [
            *(sys.executable, "-m", "qwq_agent.cli.main", "serve", "--dp", "2", "--port", str(base)),
            *("--command", f"{SCRIPTED} --port {{port}} --model {tmp_path}", "--timeout", "60"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_a_terminal_sends_it,
    )
    pids: list[int] = []
    try:
        assert cli.stdout is not None and cli.stderr is not None
        lines, seen = _lines(cli.stdout), []
        pids = [int(p) for p in _until(lines, "pids: ", seen).split()[1:]]
        router_pid = int(_until(lines, "router pid: ", seen).split()[2])
        _until(lines, "Ctrl-C stops", seen)
        os.killpg(pids[1], signal.SIGKILL)  # replica 1 crashes (the OOM killer, a CUDA error)
        warning = _until(lines, "warning: worker 1", seen)
        assert "exited with status -9; 1 of 2 workers still serve" in warning
        assert cli.poll() is None and not gone(pids[0]) and not gone(router_pid)
        router = f"http://127.0.0.1:{base}"
        deadline = time.monotonic() + 60
        while (info := probe_router(router)) is None or [w.healthy for w in info.workers] != [True, False]:
            assert time.monotonic() < deadline, info
            time.sleep(0.2)  # the router's own health check takes the dead worker out of rotation

        # The router's health view can show the dead worker out before its routing stops picking it: a
        # request may still fail there once ("error sending request for url"). The fleet must come to
        # serve, then keep serving.
        def generate() -> httpx.Response:
            body = {"text": "hi", "sampling_params": {"max_new_tokens": 8}}
            return httpx.post(router + "/generate", json=body, timeout=30)

        while (answer := generate()).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.2)
        assert [generate().status_code for _ in range(4)] == [200] * 4
        os.killpg(pids[0], signal.SIGKILL)  # the last replica: nothing is left to serve
        assert cli.wait(timeout=60) == 1
        assert "every worker has exited" in cli.stderr.read()
        assert gone(router_pid)  # the CLI stopped the router on its way out
    finally:
        stop_serve_cli(cli)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _serve_dp(base: int, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "qwq_agent.cli.main", "serve", "--dp", "2", "--port", str(base)),
            *("--command", f"{SCRIPTED} --port {{port}} --model {tmp_path}", "--timeout", "60", *extra),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_dp_refuses_a_worker_port_another_server_answers_on(tmp_path):
    """A foreign server on worker 1's port would pass its /health and go behind the router as worker 1."""
    base = free_ports(3)
    foreign = ScriptedModelServer(["unused"], port=base + 2)
    with foreign:
        done = _serve_dp(base, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot serve: worker 1's port {base + 2} is already in use" in done.stderr
    assert "pids:" not in done.stdout and "ready" not in done.stdout  # nothing was started


def test_serve_dp_refuses_worker_ports_that_overlap_the_routers(tmp_path):
    base = free_ports(3)
    done = _serve_dp(base + 1, tmp_path, "--worker-base-port", str(base))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"worker 1's port {base + 1} is the router's too" in done.stderr
    assert "pids:" not in done.stdout


STUBBORN = [sys.executable, str(Path(__file__).with_name("stubborn_sglang_server.py"))]


def test_a_hung_server_is_killed_when_its_parent_is_sigkilled(tmp_path):
    """PDEATHSIG only SIGTERMs the server, which a hung one ignores; its watchdog SIGKILLs it after a grace."""
    port = free_ports(1)
    parent_code = (
        "import sys\n"
        "from qwq_agent.serve import ServerProcess\n"
        f"server = ServerProcess({[*STUBBORN, str(port)]!r}, 'http://127.0.0.1:{port}', {str(tmp_path / 'log')!r})\n"
        "server.start()\n"
        f"server.wait_ready(timeout=60, poll_interval={READY_POLL_S})\n"
        "print(server.pid, server.watchdog.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    server_pid = watchdog_pid = None
    try:
        assert parent.stdout is not None
        server_pid, watchdog_pid = map(int, parent.stdout.readline().split())
        parent.kill()  # no clean-up of its own runs
        parent.wait(timeout=10)
        deadline = time.monotonic() + 60
        while not (gone(server_pid) and gone(watchdog_pid)) and time.monotonic() < deadline:
            time.sleep(0.05)  # other processes' exits: nothing of ours to wait on
        assert gone(server_pid) and gone(watchdog_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in (server_pid, watchdog_pid):
            if pid is not None and not gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def test_a_stopped_server_leaves_no_watchdog(tmp_path):
    port = free_ports(1)
    server = ServerProcess([*STUBBORN, str(port)], f"http://127.0.0.1:{port}", tmp_path / "log")
    server.start()
    try:
        server.wait_ready(timeout=60, poll_interval=READY_POLL_S)
        assert server.watchdog is not None and server.watchdog.poll() is None
        server.stop(grace=0.5)  # ignores the SIGTERM: killed after the grace
    finally:
        server.kill()
    assert server.watchdog.poll() == 0  # told to stand down, and reaped


@pytest.mark.skipif(
    not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK), reason="placing a process at a pid needs root"
)
def test_stopping_a_fleet_never_signals_the_group_of_a_worker_that_died_earlier(tmp_path):
    """A worker dies (the OOM killer) and is reported; hours later its pid, hence its group id, belongs to
    another program's process group. Stopping the fleet must not SIGKILL that stranger."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    specs = [WorkerSpec(i, str(i), sleeper, f"http://127.0.0.1:{i + 1}", dict(os.environ)) for i in range(2)]
    fleet = Fleet(FleetConfig(dp=2), specs, tmp_path)
    fleet.start_workers()
    stranger = None
    try:
        dead = fleet.workers[1].pid
        assert dead is not None
        os.killpg(dead, signal.SIGKILL)
        assert fleet.workers[1].wait_exit(30)
        assert fleet.exited() == (f"worker 1 ({specs[1].url})", -signal.SIGKILL)  # reported, and reaped
        stranger = start_with_pid(dead, ["sleep", "600"])
        if stranger is None:
            pytest.skip(f"pid {dead} could not be reused here")
        assert os.getpgid(stranger.pid) == dead
        fleet.stop(grace=5)
        fleet.workers[1].kill()  # again, as the CLI's `finally` does: still nothing sent to the stranger
        assert stranger.poll() is None, f"the stranger's group was signalled (status {stranger.poll()})"
        assert fleet.workers[0].process is not None and fleet.workers[0].process.returncode is not None
    finally:
        for process in (fleet.router, *fleet.workers):
            process.kill()
        if stranger is not None:
            stranger.kill()
            stranger.wait()


def test_a_servers_leftover_processes_are_killed_before_it_is_reaped(tmp_path):
    """SGLang's scheduler processes can outlive its main process: the first look that finds the leader
    ended kills the rest of its group (while the group's id is still surely its own)."""
    leftover = tmp_path / "leftover.pid"
    command = ["sh", "-c", f"sleep 600 & echo $! > {leftover}; exit 7"]
    server = ServerProcess(command, "http://127.0.0.1:1", tmp_path / "log")
    server.start()
    child = None
    try:
        assert server.wait_exit(30)
        assert _wait_for_text(leftover, "\n")
        child = int(leftover.read_text())
        assert not server.alive()
        assert server.process is not None and server.process.returncode == 7
        deadline = time.monotonic() + 30
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)  # a SIGKILLed process of another session: nothing of ours to wait on
        assert gone(child)
    finally:
        server.kill()
        if child is not None and not gone(child):
            os.kill(child, signal.SIGKILL)


def test_the_watchdog_works_with_a_pipe_fd_above_select_s_limit(tmp_path):
    """A CLI with many files open hands its watchdog a fd >= 1024 (FD_SETSIZE); the watchdog still
    SIGKILLs a hung server (one that ignores SIGTERM) once the CLI is gone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = 1100
    if hard != resource.RLIM_INFINITY and hard <= high:
        pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} is too low for fd {high}")
    hung = subprocess.Popen([*DEAF_COMMAND], stdout=subprocess.PIPE, text=True, start_new_session=True)
    read_end, write_end = os.pipe()
    watchdog = None
    try:
        assert hung.stdout is not None and hung.stdout.readline() == "deaf\n"  # its SIGTERM handler is set
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, high + 1), hard))
        os.dup2(read_end, high)
        watchdog = subprocess.Popen(
            [sys.executable, str(launcher.WATCHDOG), str(high), str(hung.pid), "0.2"],
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=(high,),
            start_new_session=True,
        )
        os.close(high)
        os.close(write_end)  # the CLI dies: the watchdog reads EOF
        write_end = -1
        assert hung.wait(timeout=60) == -signal.SIGKILL
        _, err = watchdog.communicate(timeout=30)
        assert watchdog.returncode == 0 and "Traceback" not in err, err
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
        if hung.poll() is None:
            os.killpg(hung.pid, signal.SIGKILL)
            hung.wait()
        if watchdog is not None and watchdog.poll() is None:
            watchdog.kill()
            watchdog.wait()


DEAF_COMMAND = [sys.executable, "-c", DEAF]


def _port_problems_as(user_id: int | None, fleet: FleetConfig) -> list[str]:
    """`port_problems(fleet)`, run as `user_id` (a privileged port is refused only to an unprivileged user)."""
    if user_id is None:
        from qwq_agent.serve.fleet import port_problems

        return port_problems(fleet)
    code = (
        "import json, sys\n"
        "from qwq_agent.serve.fleet import FleetConfig, port_problems\n"
        f"print(json.dumps(port_problems(FleetConfig(dp={fleet.dp}, host={fleet.host!r}, "
        f"router_port={fleet.router_port}, worker_base_port={fleet.worker_base_port}))))\n"
    )
    done = subprocess.run(
        ["setpriv", f"--reuid={user_id}", f"--regid={user_id}", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_port_problems_say_what_a_bind_failure_is_not_always_in_use():
    from qwq_agent.serve.fleet import port_problems

    base = free_ports(3)
    (problem,) = port_problems(FleetConfig(dp=2, host="192.0.2.1", router_port=base))  # TEST-NET-1
    assert "192.0.2.1 is not one of this machine's" in problem and "in use" not in problem
    unprivileged = 65534 if os.geteuid() == 0 else None
    (problem,) = _port_problems_as(unprivileged, FleetConfig(dp=2, router_port=81, worker_base_port=base))
    assert "port 81 needs privileges" in problem and "in use" not in problem
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", base + 1))
        listener.listen()
        assert port_problems(FleetConfig(dp=2, router_port=base)) == [
            f"worker 0's port {base + 1} is already in use on 127.0.0.1"
        ]


def test_a_dp_command_template_keeps_braces_of_its_own(tmp_path):
    """SGLang's `--json-model-override-args '{"rope_scaling": ...}'` in a `--dp` template: only `{port}`
    and `{gpu}` are filled in, the JSON is passed on as written."""
    override = '{"rope_scaling":{"factor":4.0,"type":"yarn"}}'
    flags = f"--json-model-override-args '{override}' --port {{port}} --x {{gpu}}"
    template = f"python -m sglang.launch_server {flags}"
    specs = worker_specs(ServeConfig(), FleetConfig(dp=2, router_port=7000), template=template)
    assert [s.command[4:] for s in specs] == [
        [override, "--port", "7001", "--x", "0"],
        [override, "--port", "7002", "--x", "1"],
    ]
    cli = [sys.executable, "-m", "qwq_agent.cli.main", "serve", "--dp", "2"]
    done = subprocess.run(
        [*cli, "--command", template, "--print-command"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert f"--json-model-override-args '{override}' --port 30002 --x 1" in done.stdout
