"""Ctrl-C, SIGTERM, SIGHUP and SIGQUIT during `qwq-agent run`: the summary and trace path are printed, the
trace ends with `final`.

The CLI runs as a real subprocess against the scripted model server over real HTTP; the signal is sent
once the run is observably under way (the model request arrived, or a tool call was printed).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from qwq_agent.testing.scripted_server import ScriptedModelServer, Turn

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
DEADLINE_S = 120.0


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll `condition` until it holds; fail naming `what` after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def start(argv: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("QWQ_MODEL_URL", "QWQ_DEBUG")}
    return subprocess.Popen(
        [*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )


def trace_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# SIGHUP: the SSH session or terminal went away; SIGQUIT: Ctrl-\\. Either killed the run outright before.
STOPPING = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]


@pytest.mark.parametrize("signum", STOPPING, ids=[s.name for s in STOPPING])
def test_signal_while_the_model_streams_prints_the_summary_and_closes_the_trace(signum, tmp_path):
    # The model starts writing, then holds the stream open: the run is under way and would not end.
    turn = Turn(text="Let me think about this for a long time. " * 20, hold_after=4, hold_timeout=300)
    trace = tmp_path / "run.jsonl"
    with ScriptedModelServer([turn]) as server:
        proc = start(
            ["run", "think", "--model-url", server.url, "--tools", "fetch_url", "--trace", str(trace)],
            tmp_path,
        )
        try:
            wait_for(
                lambda: any(r.path == "/generate" for r in server.requests) or proc.poll() is not None,
                "the model request",
            )
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=DEADLINE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
        aborted = list(server.aborted_rids)
    assert proc.returncode == 128 + signum, err
    assert aborted, "the held model request was not aborted"
    assert "Traceback" not in out + err
    name = signal.Signals(signum).name
    assert f"{name}: the run was stopped" in out
    assert "cancelled" in out and "wall time" in out  # the summary table
    assert f"trace: {trace}" in out.replace("\n", "")
    events = trace_events(trace)
    assert events[0]["type"] == "run_started"
    assert events[-1]["type"] == "final" and events[-1]["status"] == "cancelled"


# Run as the session leader with the pty as its controlling terminal, as a login shell's command is.
WITH_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def test_the_terminal_going_away_stops_the_run_cleanly(tmp_path):
    """The SSH session drops: the kernel sends SIGHUP and every write to the terminal fails (EIO) from
    then on. The run still stops as on SIGTERM (model request aborted, trace ended, 128 + SIGHUP),
    though neither the notice nor the summary can be shown any more."""
    import pty
    import select

    turn = Turn(text="Let me think about this for a long time. " * 20, hold_after=4, hold_timeout=300)
    trace = tmp_path / "run.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("QWQ_MODEL_URL", "QWQ_DEBUG")}
    argv = ["run", "think", "--model-url", "URL", "--tools", "fetch_url", "--trace", str(trace)]
    master, slave = pty.openpty()
    try:
        with ScriptedModelServer([turn]) as server:
            argv[3] = server.url
            proc = subprocess.Popen(
                [sys.executable, "-c", WITH_TERMINAL, *CLI[1:], *argv],
                stdin=slave, stdout=slave, stderr=slave, env=env, cwd=tmp_path, start_new_session=True,
            )  # fmt: skip
            os.close(slave)
            slave = -1

            shown = bytearray()

            def generating() -> bool:
                # Drained, so the live view never blocks; EIO once the child's side is closed (it exited).
                with contextlib.suppress(OSError):
                    while select.select([master], [], [], 0)[0]:
                        shown.extend(os.read(master, 65536))
                return any(r.path == "/generate" for r in server.requests) or proc.poll() is not None

            try:
                wait_for(generating, "the model request")
                assert proc.poll() is None, shown.decode(errors="replace")
                os.close(master)  # hang-up: SIGHUP to the session leader
                master = -1
                proc.wait(timeout=DEADLINE_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
            aborted = list(server.aborted_rids)
    finally:
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
    assert proc.returncode == 128 + signal.SIGHUP
    assert aborted, "the held model request was not aborted"
    events = trace_events(trace)
    assert events[-1]["type"] == "final" and events[-1]["status"] == "cancelled"


@pytest.mark.parametrize("json_out", [True, False], ids=["json", "live-view"])
def test_output_to_a_terminal_that_hung_up_without_a_sighup_lets_the_run_finish(json_out, tmp_path):
    """A terminal hung up, but no SIGHUP reached the run (a background job the shell did not signal, a
    process without that terminal as its controlling one): every write to it fails with EIO. The live
    view went quiet and the run finished; `--json` failed on its next event line, the run ended as an
    error with its trace cut short."""
    import pty
    import select
    import urllib.request

    answer = "The answer is plainly four, as two and two make four.\n</think>\n\nThe answer is 4."
    released: list[int] = []

    def turns(request):  # the run's request is held until the test sends one more
        if released:
            return "unused"
        released.append(len(server.requests) + 1)
        return Turn(text=answer, hold_after=4, hold_until_requests=released[0], hold_timeout=DEADLINE_S)

    trace = tmp_path / "run.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("QWQ_MODEL_URL", "QWQ_DEBUG")}
    argv = [
        "run",
        "what is 2+2",
        "--tools",
        "fetch_url",
        "--trace",
        str(trace),
        *(["--json"] if json_out else []),
    ]
    master, slave = pty.openpty()
    err_path = tmp_path / "stderr.txt"
    try:
        with ScriptedModelServer(turns) as server, open(err_path, "w") as err:
            # Its own session and no controlling terminal: the pty's hang-up sends it no SIGHUP.
            proc = subprocess.Popen(
                [*CLI, *argv, "--model-url", server.url],
                stdin=slave, stdout=slave, stderr=err, env=env, cwd=tmp_path, start_new_session=True,
            )  # fmt: skip
            os.close(slave)
            slave = -1

            def generating() -> bool:
                with contextlib.suppress(OSError):  # drained, so the output never blocks
                    while select.select([master], [], [], 0)[0]:
                        os.read(master, 65536)
                return bool(released) or proc.poll() is not None

            try:
                wait_for(generating, "the model request")
                assert proc.poll() is None, err_path.read_text()
                generating()
                os.close(master)  # hang-up: from now on every write to the terminal fails with EIO
                master = -1
                release = urllib.request.Request(
                    f"{server.url}/generate",
                    data=json.dumps({"text": "go", "sampling_params": {"max_new_tokens": 4}}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                urllib.request.urlopen(release, timeout=DEADLINE_S).read()
                proc.wait(timeout=DEADLINE_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
    stderr = err_path.read_text()
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 0, stderr
    events = trace_events(trace)
    assert events[-1]["type"] == "final" and events[-1]["status"] == "completed", events[-1]
    assert "The answer is 4." in events[-1]["answer"]


@pytest.mark.docker
def test_sigterm_during_a_sandbox_tool_call_ends_the_json_stream_with_final_and_removes_the_sandbox(
    sandbox_image, tmp_path
):
    call = (
        '<tool_call>\n{"name": "python", "arguments": {"code": "import time; time.sleep(600)"}}\n</tool_call>'
    )
    turns = ["I will wait.\n</think>\n\n" + call, "Done.\n</think>\n\nDone."]
    trace = tmp_path / "run.jsonl"
    with ScriptedModelServer(turns) as server:
        proc = start(
            ["run", "wait", "--model-url", server.url, "--tools", "python", "--json", "--trace", str(trace)],
            tmp_path,
        )
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
        reader.start()
        seen: list[dict] = []
        try:

            def tool_call_printed() -> bool:
                while not lines.empty():
                    seen.append(json.loads(lines.get()))
                return any(e["type"] == "tool_call" for e in seen) or proc.poll() is not None

            wait_for(tool_call_printed, "the tool call event")
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            sandbox_id = seen[0]["sandbox_id"]
            assert sandbox_id
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=DEADLINE_S)
            reader.join(timeout=DEADLINE_S)
            err = proc.stderr.read()  # type: ignore[union-attr]
        finally:
            if proc.poll() is None:
                proc.kill()
        while not lines.empty():
            seen.append(json.loads(lines.get()))
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert seen[-1]["type"] == "final" and seen[-1]["status"] == "cancelled"
    assert "SIGTERM: the run was stopped" in err and f"trace: {trace}" in err.replace("\n", "")
    events = trace_events(trace)
    assert events[-1]["type"] == "final" and events[-1]["status"] == "cancelled"
    assert not any(e["type"] == "tool_result" for e in seen)  # the sleep never finished
    # The run's own container is gone (removed on the way out, not left to the janitor).
    ps = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"id={sandbox_id}"], capture_output=True, text=True
    )
    assert ps.returncode == 0 and ps.stdout.strip() == "", ps.stdout


def test_signal_before_the_run_started_says_so(tmp_path):
    """SIGTERM while the model server is being probed: no run, no trace, and the output says so."""
    import socket

    accepted = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        held: list[socket.socket] = []

        def accept() -> None:  # accept and never answer, like a wedged server
            conn, _ = listener.accept()
            held.append(conn)
            accepted.set()

        threading.Thread(target=accept, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        proc = start(["run", "hi", "--model-url", url, "--tools", "fetch_url"], tmp_path)
        try:
            wait_for(lambda: accepted.is_set() or proc.poll() is not None, "the probe's connection")
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=DEADLINE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
            for conn in held:
                conn.close()
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "Traceback" not in out + err
    assert "stopped before the run started; no trace was written" in out
    assert not list(tmp_path.glob("traces/*.jsonl"))  # the folder may exist (checked at start-up), no trace


def test_signal_during_branches_ends_the_exploration_trace_and_names_it(tmp_path):
    """Ctrl-C while `run --branches` waits on its branches: the branches run as child agents, so the
    exploration's own trace must be ended (and named) too, not only each branch's."""

    def model(req) -> str | Turn:
        if req.sampling_params.get("max_new_tokens") == 1:  # the shared prefix's warm-up
            return "x"
        return Turn(text="thinking " * 40, hold_after=3, hold_timeout=300)  # never ends by itself

    def branch_requests() -> int:
        return sum(1 for r in server.requests if r.sampling_params.get("max_new_tokens") != 1)

    trace = tmp_path / "explore.jsonl"
    with ScriptedModelServer(model) as server:
        options = ["--tools", "fetch_url", "--branches", "2", "--json", "--trace", str(trace)]
        proc = start(["run", "Go.", "--model-url", server.url, *options], tmp_path)
        try:
            wait_for(lambda: branch_requests() >= 2 or proc.poll() is not None, "both branches' requests")
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=DEADLINE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in out + err
    assert "no trace was written" not in err
    assert "SIGINT: the exploration was stopped" in err
    assert f"trace: {trace} (one file per branch beside it)" in err.replace("\n", "")
    events = trace_events(trace)
    assert [e["type"] for e in events][:2] == ["run_started", "branches"]
    assert events[-1]["type"] == "final" and events[-1]["status"] == "cancelled"
    assert json.loads(out.splitlines()[-1]) == events[-1]  # --json: the final event is the last line
    for i in range(2):  # and each branch's own run ended too
        branch = trace_events(tmp_path / f"explore.branch-{i}.jsonl")
        assert branch[-1]["type"] == "final" and branch[-1]["status"] == "cancelled"
