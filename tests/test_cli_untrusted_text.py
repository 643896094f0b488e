"""What a sandbox or a model writes reaches the operator's terminal as text, never as terminal commands.

Before: an OSC 52 sequence in a tool's output wrote the operator's clipboard, `\\x1b[2J` cleared the
screen, and a model's answer mentioning ``[/workspace/out.txt]`` crashed the CLI with Rich's MarkupError
at the very end of a run (exit 70, the answer never shown).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qwq_agent.cli.safe_text import safe
from qwq_agent.testing.scripted_server import ScriptedModelServer

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]

CLIPBOARD = "\x1b]52;c;cHduZWQ=\x1b\\"  # OSC 52: "set the clipboard to 'pwned'"
HOSTILE_PRINT = (
    "import sys\n"
    "sys.stdout.write('\\x1b[2J\\x1b[H\\x1b]0;title\\x07' + '\\x1b]52;c;cHduZWQ=\\x1b\\\\' + '\\x9b31m"
    "shown\\u202eevil\\n')\n"
)
ANSWER = f"The result is in [/workspace/out.txt] and [bold]here[/]. {CLIPBOARD}\u202edone"


def _tool_call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def _no_control(text: str) -> None:
    bad = sorted({hex(ord(ch)) for ch in text if safe(ch) != ch and ch not in "\r"})
    assert not bad, f"control characters reached the terminal: {bad}"


def test_safe_makes_controls_visible_and_keeps_layout() -> None:
    assert safe("a\tb\nc\r\nd") == "a\tb\nc\nd"
    assert safe("\x1b[2J\x07\x9b\u202e\x00") == "\\x1b[2J\\x07\\x9b\\u202e\\x00"
    assert safe("plain [/x] ü 字") == "plain [/x] ü 字"


@pytest.mark.docker
def test_hostile_tool_output_and_answer_print_as_text_live_and_in_trace_show(sandbox_image, tmp_path) -> None:
    turns = [
        "Print it.\n</think>\n\n" + _tool_call("python", code=HOSTILE_PRINT),
        "Done.\n</think>\n\n" + ANSWER,
    ]
    trace = tmp_path / "run.jsonl"
    with ScriptedModelServer(turns) as server:
        argv = [
            "run",
            "Print [/etc] for me.",
            "--model-url",
            server.url,
            "--tools",
            "python",
            "--trace",
            str(trace),
        ]
        proc = subprocess.run(
            [*CLI, *argv],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "MarkupError" not in proc.stderr
    _no_control(proc.stdout)
    # What was hidden is shown, escaped, and the answer and the task are there in full, brackets and all.
    assert "\\x1b]52;c;cHduZWQ=" in proc.stdout and "\\x9b31m" in proc.stdout and "\\u202e" in proc.stdout
    assert "[/workspace/out.txt] and [bold]here[/]." in proc.stdout
    assert "Print [/etc] for me." in proc.stdout

    shown = subprocess.run([*CLI, "trace", "show", str(trace)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr[-2000:]
    _no_control(shown.stdout)
    assert "[/workspace/out.txt] and [bold]here[/]." in shown.stdout and "\\x1b[2J" in shown.stdout


HOSTILE_CELL = (
    "import sys\n"
    "sys.stdout.write('\\x1b]52;c;cHduZWQ=\\x07\\x1b[2Jout\\n')\n"
    "sys.stderr.write('\\x1b]0;title\\x07err\\n')\n"
    "raise ValueError('\\x1b]52;c;dHJhY2ViYWNr\\x07')\n"
)


def _on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal, as an operator would; its exit status and
    all it wrote there."""
    master, slave = os.openpty()
    proc = subprocess.Popen([*CLI, *argv], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    data = b""
    try:
        while True:
            # The pty ends (EIO) once the CLI exits; the select timeout only guards a hung CLI.
            if not select.select([master], [], [], 300)[0]:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(master)
        code = proc.wait(timeout=60)
    return code, data.decode("utf-8", "replace")


@pytest.mark.docker
def test_sandbox_run_shows_sandbox_output_as_text_on_a_terminal_and_as_is_in_a_pipe(sandbox_image) -> None:
    # Before: the cell's stdout, stderr and traceback reached the terminal raw (clipboard written, screen
    # cleared, window renamed).
    code, shown = _on_a_terminal(["sandbox", "run", "--python", HOSTILE_CELL])
    assert code == 1, shown[-2000:]
    _no_control(shown)
    assert "\\x1b]52;c;cHduZWQ=\\x07\\x1b[2Jout" in shown and "\\x1b]0;title\\x07err" in shown
    assert "ValueError: \\x1b]52;c;dHJhY2ViYWNr\\x07" in shown
    # Redirected, the output is the program's own, byte for byte (`--json` for a machine-readable form).
    piped = subprocess.run(
        [*CLI, "sandbox", "run", "--python", HOSTILE_CELL], capture_output=True, text=True, timeout=180
    )
    assert piped.returncode == 1, piped.stderr[-2000:]
    assert piped.stdout == "\x1b]52;c;cHduZWQ=\x07\x1b[2Jout\n"
    assert piped.stderr.startswith("\x1b]0;title\x07err\n") and "ValueError" in piped.stderr


def test_serve_model_url_prints_the_servers_model_name_as_text() -> None:
    # `serve --model-url` reports what the server says of itself: its /server_info is the server's text.
    with ScriptedModelServer(model=f"Qwen/QwQ-32B{CLIPBOARD}\x1b[2J\x07") as server:
        proc = subprocess.run(
            [*CLI, "serve", "--model-url", server.url], capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _no_control(proc.stdout + proc.stderr)
    assert "model: Qwen/QwQ-32B\\x1b]52;c;cHduZWQ=\\x1b\\\\x1b[2J\\x07" in proc.stdout


def test_serve_model_url_prints_a_routers_worker_urls_as_text() -> None:
    # A router's /workers names its workers: whatever answers on the URL chooses those strings.
    evil = f"http://127.0.0.1:9/{CLIPBOARD}\x1b[2J"
    body = json.dumps({"workers": [{"url": evil, "is_healthy": True}]}).encode()

    class Router(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            found = self.path == "/workers"
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Router)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.run(
            [*CLI, "serve", "--model-url", f"http://127.0.0.1:{server.server_address[1]}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _no_control(proc.stdout + proc.stderr)
    assert "worker 0: http://127.0.0.1:9/\\x1b]52;c;cHduZWQ=\\x1b\\\\x1b[2J UNHEALTHY" in proc.stdout


CHECK = "\u2713"  # not in Latin-1, nor in ASCII


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_text_the_terminal_cannot_encode_is_replaced_not_fatal(encoding, tmp_path) -> None:
    """Under a locale that is not UTF-8 (here forced with PYTHONIOENCODING), Python encodes stdout
    strictly: one character of a model's answer that the terminal has no code for raised
    UnicodeEncodeError in the live view or `--json` and ended the run as a bug (exit 70, trace
    `interrupted`); `trace show` and `parse` failed the same. The text is now shown with a replacement
    character, and `--json` escapes what the encoding lacks, so its lines stay exact JSON."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWQ_", "PYTHONUTF8"))}
    env["PYTHONIOENCODING"] = encoding
    answer = f"The answer is 42 {CHECK} (caf\u00e9)"

    def cli(*argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*CLI, *argv], capture_output=True, env=env, timeout=120, cwd=tmp_path)

    with ScriptedModelServer([f"Checked {CHECK}\n</think>\n\n{answer}"], when_exhausted="repeat") as server:
        for extra in ([], ["--json"]):
            trace = tmp_path / f"run{len(extra)}.jsonl"
            argv = [
                "run",
                "Answer.",
                "--model-url",
                server.url,
                "--tools",
                "fetch_url",
                "--trace",
                str(trace),
            ]
            proc = cli(*argv, *extra)
            assert proc.returncode == 0, proc.stderr.decode(encoding, "replace")
            final = json.loads(trace.read_text(encoding="utf-8").splitlines()[-1])
            assert final["type"] == "final" and final["status"] == "completed" and final["answer"] == answer
            out = proc.stdout.decode(encoding)  # strictly: every byte is in the encoding
            if extra:  # every line exact JSON, the answer whole
                events = [json.loads(line) for line in out.splitlines()]
                assert events[-1] == final
            else:
                assert "The answer is 42 ?" in out

    shown = cli("trace", "show", str(tmp_path / "run0.jsonl"))
    assert shown.returncode == 0, shown.stderr.decode(encoding, "replace")
    assert "The answer is 42 ?" in shown.stdout.decode(encoding)

    raw = tmp_path / "raw.txt"  # a file: stdin too is decoded in PYTHONIOENCODING's encoding
    raw.write_text(f"Checked {CHECK}\n</think>\n\n{answer}", encoding="utf-8")
    parsed = cli("parse", str(raw))
    assert parsed.returncode == 0, parsed.stderr.decode(encoding, "replace")
    assert json.loads(parsed.stdout.decode(encoding))["content"] == answer
