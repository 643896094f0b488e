"""A command started with stdout closed (`>&-`) says so and exits 74, instead of printing into nothing.

Python starts such a process with `sys.stdout` None, and `print` then drops everything: `parse`, `trace
show`, `run --json` did their work and exited 0 with all of it lost. The servers, whose stdout only shows
progress, still run without it. Each case is the real CLI in a subprocess whose fd 1 is closed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
OLD_TRACE = Path(__file__).parent / "data" / "old-traces" / "cut_answer_at_9a26afa.jsonl"


def _close_stdout() -> None:
    os.close(1)


def run_without_stdout(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *argv],
        preexec_fn=_close_stdout,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["parse", "{input}"],
        ["trace", "show", str(OLD_TRACE)],
        # Refused before the model is asked: the unreachable URL is never tried.
        ["run", "--json", "--model-url", "http://127.0.0.1:9/v1", "--tools", "none", "what is 2+3?"],
        ["mcp-serve"],  # its answers to the client go to stdout
        ["serve", "--print-command"],
        ["sandbox", "ls"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_a_command_that_prints_its_result_refuses_a_closed_stdout(argv: list[str], tmp_path: Path) -> None:
    text = tmp_path / "completion.txt"
    text.write_text("<think>x</think>the answer")
    proc = run_without_stdout([a.replace("{input}", str(text)) for a in argv])
    assert proc.returncode == 74, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("qwq-agent ") and "standard output is closed" in lines[0]
    assert len(lines) == 2 and "Traceback" not in proc.stderr


def test_the_trace_viewer_serves_with_stdout_closed(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "t.jsonl").write_bytes(OLD_TRACE.read_bytes())
    proc = subprocess.Popen(
        [*CLI, "trace", "serve", str(tmp_path), "--port", str(port)],
        preexec_fn=_close_stdout,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the viewer never answered"
                time.sleep(0.1)  # waiting for the server to listen, not for a race to settle
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# What argparse itself prints (help, version, a usage error) came before the check above: with stdout
# closed, `--help` fell back to stderr and exited 0; with stderr closed, a usage error's line was lost.
@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["parse", "--help"], ["trace", "show", "-h"], ["serve", "--help"]]
)
def test_help_and_version_refuse_a_closed_stdout(argv: list[str]) -> None:
    proc = run_without_stdout(argv)
    assert proc.returncode == 74, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"qwq-agent{''.join(' ' + a for a in argv[:-1])}: standard output is closed")
    assert len(lines) == 2 and "usage:" not in proc.stderr and "Traceback" not in proc.stderr


def _close_stderr() -> None:
    os.close(2)


@pytest.mark.parametrize("argv", [[], ["parse", "--no-such-flag"], ["trace", "show"]])
def test_a_usage_error_with_stderr_closed_is_said_on_stdout(argv: list[str]) -> None:
    proc = subprocess.run(
        [*CLI, *argv],
        preexec_fn=_close_stderr,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("usage: qwq-agent")
    assert lines[-1].startswith("qwq-agent") and ": error: " in lines[-1]


@pytest.mark.parametrize("argv", [[], ["parse", "--no-such-flag"]])
def test_a_usage_error_with_stdout_closed_is_said_on_stderr(argv: list[str]) -> None:
    proc = run_without_stdout(argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("usage: qwq-agent") and ": error: " in proc.stderr.splitlines()[-1]
