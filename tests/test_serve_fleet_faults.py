"""`serve` and `serve --dp` under faults: huge logs, hung or crashing replicas, odd `/server_info`
answers, ports already taken, a CLI killed outright.

The servers are the scripted model server, tests/stubborn_sglang_server.py (ignores SIGTERM) and the real
`sglang-router`, all real processes on 127.0.0.1. A stubborn server is always SIGKILLed by the test's
own clean-up, whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from router_helpers import SCRIPTED, free_ports

from qwq_agent.cli.serve_dp import last_log_line
from qwq_agent.serve import ServeConfig, ServerExited, ServerProcess, launcher
from qwq_agent.serve.fleet import Fleet, FleetConfig, WorkerSpec, worker_specs

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
