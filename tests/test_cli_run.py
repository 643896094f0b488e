"""`qwq-agent run` and `qwq-agent trace show` as a user runs them: a subprocess, real HTTP, real sandbox."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qwq_agent.testing.scripted_server import ScriptedModelServer

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]


def tool_call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_without_a_model_server_says_what_to_do_and_does_not_hang():
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [*CLI, "run", "hello", "--model-url", url], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3
    err = proc.stdout + proc.stderr
    assert "qwq-agent serve" in err and "--model-url" in err and url in err
    assert "Traceback" not in err


@pytest.mark.docker
def test_run_streams_events_as_json_and_writes_a_trace(sandbox_image, tmp_path):
    turns = [
        "Count with Python.\n</think>\n\n" + tool_call("python", code="sum(range(10))"),
        "It is 45.\n</think>\n\nThe sum is 45.",
    ]
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("numbers 0..9\n")
    trace = tmp_path / "run.jsonl"
    with ScriptedModelServer(turns) as server:
        proc = subprocess.run(
            [
                *CLI,
                "run",
                "Add the numbers 0 to 9.",
                "--model-url",
                server.url,
                "--tools",
                "python,shell",
                "--workspace",
                str(workspace),
                "--json",
                "--trace",
                str(trace),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["type"] == "run_started" and events[0]["sandbox_id"]
    results = [e for e in events if e["type"] == "tool_result"]
    assert results and "Out: 45" in results[0]["text"]
    assert events[-1]["type"] == "final" and events[-1]["answer"] == "The sum is 45."
    assert trace.exists()

    shown = subprocess.run([*CLI, "trace", "show", str(trace)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    assert "The sum is 45." in shown.stdout and "Out: 45" in shown.stdout


def test_trace_show_reports_an_unreadable_file(tmp_path):
    missing = Path(tmp_path / "nope.jsonl")
    proc = subprocess.run([*CLI, "trace", "show", str(missing)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot read trace" in proc.stderr and "Traceback" not in proc.stderr


def test_version_flag_prints_the_package_version():
    import subprocess
    import sys

    import qwq_agent

    done = subprocess.run(
        [sys.executable, "-m", "qwq_agent.cli.main", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == f"qwq-agent {qwq_agent.__version__}"


@pytest.mark.docker
def test_run_json_stream_has_tool_started_and_output_deltas_before_the_result(sandbox_image, tmp_path):
    command = "for i in 1 2 3; do echo tick $i; sleep 0.3; done"
    turns = ["Count.\n</think>\n\n" + tool_call("shell", command=command), "Done.\n</think>\n\nCounted."]
    trace = ["--trace", str(tmp_path / "run.jsonl")]
    with ScriptedModelServer(turns) as server:
        proc = subprocess.run(
            [*CLI, "run", "Count to three.", "--model-url", server.url, "--tools", "shell", "--json", *trace],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert (
        kinds.index("tool_call")
        < kinds.index("tool_started")
        < kinds.index("tool_output")
        < kinds.index("tool_result")
    )
    streamed = "".join(e["text"] for e in events if e["type"] == "tool_output")
    assert streamed == "tick 1\ntick 2\ntick 3\n"
    assert {e["call_id"] for e in events if e["type"] in ("tool_started", "tool_output", "tool_result")} == {
        events[kinds.index("tool_result")]["call_id"]
    }


@pytest.mark.docker
def test_sandbox_run_saves_figures_where_a_terminal_opens_them(sandbox_image, tmp_path):
    code = "import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [0, 1, 4])\nprint('drawn')"
    env_run = dict(capture_output=True, text=True, timeout=120, cwd=tmp_path)
    saved = subprocess.run([*CLI, "sandbox", "run", "--python", code, "--images", "plots"], **env_run)
    assert saved.returncode == 0, saved.stderr[-2000:]
    assert saved.stdout == "drawn\n"
    png = (tmp_path / "plots" / "image-1.png").resolve()
    saved_png = png.read_bytes()
    assert saved_png.startswith(b"\x89PNG\r\n\x1a\n")
    assert f"image saved: {png}" in saved.stderr  # absolute, from a relative --images
    again = subprocess.run([*CLI, "sandbox", "run", "--python", code, "--images", "plots"], **env_run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert png.read_bytes() == saved_png  # the first figure stays; the second gets a name of its own
    assert f"image saved: {png.with_name('image-1-2.png')}" in again.stderr
    plain = subprocess.run([*CLI, "sandbox", "run", "--python", code], **env_run)
    assert plain.returncode == 0 and "1 figure(s) not saved: pass --images DIR" in plain.stderr


@pytest.mark.docker
def test_sandbox_run_skips_a_figure_that_is_not_base64_and_saves_the_rest(sandbox_image, tmp_path):
    # Code in the sandbox controls the image strings (here: its own base64 encoder, patched); one bad
    # figure was exit 70 ("a bug of ours") and the figures after it were never written.
    code = (
        "import base64, matplotlib.pyplot as plt\n"
        "good, calls = base64.b64encode, []\n"
        "def enc(b):\n"
        "    calls.append(1)\n"
        "    return b'abc' if len(calls) == 1 else good(b)\n"
        "base64.b64encode = enc\n"
        "plt.figure(); plt.plot([0, 1]); plt.figure(); plt.plot([1, 0])\n"
    )
    proc = subprocess.run(
        [*CLI, "sandbox", "run", "--python", code, "--images", "plots"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(image 1 not saved: its data is not valid base64)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["image-2.png"]
    assert (tmp_path / "plots" / "image-2.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
