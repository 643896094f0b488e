"""`qwq-agent run --approve`: the prompt driven through a real terminal (tmux), and deferred approval.

The CLI runs as its own process against a scripted model server, with the real shell tool in a real
sandbox; the test types at the prompt like a user would.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwq_agent.agent.approval import pending_approval, recorded_decisions
from qwq_agent.agent.events import ToolCallEvent, ToolResultEvent
from qwq_agent.agent.trace import read_trace
from qwq_agent.testing.scripted_server import ScriptedModelServer

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "qwq_agent.cli.main"]


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


TURNS = [
    "first\n</think>\n\n" + call("shell", command="echo one"),
    "second\n</think>\n\n" + call("shell", command="echo two"),
    "third\n</think>\n\n" + call("shell", command="echo three"),
    "done\n</think>\n\nAll done.",
]


class Tmux:
    """One tmux server of our own (its own socket), one window running a command."""

    def __init__(self, name: str) -> None:
        self.socket = f"qwq-approval-{os.getpid()}-{name}"

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True, timeout=20
        ).stdout

    def start(self, command: str) -> None:
        self._tmux("new-session", "-d", "-s", "t", "-x", "180", "-y", "60", command)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-5000")

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            time.sleep(0.2)  # polling the pane: tmux has no way to wait for text
        raise AssertionError(f"{text!r} (x{count}) did not appear within {timeout} s:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=20)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_prompt_allows_denies_with_a_reason_and_edits_with_validation(sandbox_image, tmp_path):
    trace, rc = tmp_path / "t.jsonl", tmp_path / "rc"
    term = Tmux("prompt")
    with ScriptedModelServer(TURNS) as server:
        argv = [*CLI, "run", "Echo things.", "--model-url", server.url, "--tools", "shell",
                "--approve", "ask", "--trace", str(trace)]  # fmt: skip
        command = f"cd {shlex.quote(str(ROOT))} && {shlex.join(argv)}; echo $? > {shlex.quote(str(rc))}"
        try:
            term.start(f"bash -c {shlex.quote(command)}")
            screen = term.wait_for("[a]llow, [d]eny, [e]dit")
            assert "approve tool call shell (call_1_0)?" in screen and '"echo one"' in screen
            term.send("d", "Enter")
            term.wait_for("reason (the model reads it)")
            term.send("not now please", "Enter")

            term.wait_for("approve tool call shell (call_2_0)?")
            term.send("e", "Enter")
            term.wait_for("new arguments (JSON)")
            term.send("-l", '{"command": 5}')
            term.send("Enter")
            screen = term.wait_for("invalid arguments")
            assert "command" in screen.split("invalid arguments")[-1]
            term.wait_for("[a]llow, [d]eny, [e]dit", count=3)
            term.send("e", "Enter")
            term.wait_for("new arguments (JSON)", count=2)
            term.send("-l", '{"command": "echo edited"}')
            term.send("Enter")

            term.wait_for("approve tool call shell (call_3_0)?")
            term.send("a", "Enter")
            deadline = time.monotonic() + 120
            while not rc.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert rc.exists(), term.screen()
            assert rc.read_text().strip() == "0", term.screen()
        finally:
            term.kill()
        prompts = [r.prompt for r in server.requests]
    assert len(prompts) == 4
    assert "the user denied it: not now please" in prompts[1]
    assert "edited" in prompts[2] and "three" in prompts[3]
    decisions = recorded_decisions(trace)
    assert {k: v.action for k, v in decisions.items()} == {
        "call_1_0": "deny",
        "call_2_0": "edit",
        "call_3_0": "allow",
    }
    assert decisions["call_2_0"].arguments == {"command": "echo edited"}
    outputs = [e.text for e in read_trace(trace) if isinstance(e, ToolResultEvent)]
    assert len(outputs) == 2 and "edited" in outputs[0] and "three" in outputs[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "run", *args], capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, cwd=ROOT
    )


def test_without_a_terminal_the_run_waits_and_resumes_later_with_the_decision(sandbox_image, tmp_path):
    trace = tmp_path / "waiting.jsonl"
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps({"rules": [{"tool": "shell", "action": "ask", "arguments": {"command": ["two"]}}]})
    )
    with ScriptedModelServer(TURNS[1:2]) as server:
        proc = run_cli("Echo two.", "--model-url", server.url, "--tools", "shell", "--approve", str(policy),
                       "--trace", str(trace))  # fmt: skip
    assert proc.returncode == 5, proc.stdout + proc.stderr  # its own code: 3 is the model server's
    assert "waiting for approval of shell" in proc.stdout and "--decide" in proc.stdout
    assert pending_approval(trace).call.arguments == {"command": "echo two"}

    resumed = tmp_path / "resumed.jsonl"
    with ScriptedModelServer(TURNS[3:]) as server:
        proc = run_cli("--resume", str(trace), "--model-url", server.url, "--decide", "deny:use echo 2",
                       "--trace", str(resumed))  # fmt: skip
        assert len(server.requests) == 1  # the recorded turn was replayed, not asked again
        assert "the user denied it: use echo 2" in server.requests[0].prompt
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert recorded_decisions(resumed)["call_1_0"].action == "deny"

    proc = run_cli("--replay", str(resumed), "--decide", "allow")
    assert proc.returncode != 0 and "not awaiting approval" in proc.stdout + proc.stderr


def test_a_resume_keeps_the_recorded_decisions_whatever_the_new_policy(sandbox_image, tmp_path):
    """`--resume TRACE --approve auto` replayed the recorded turns under `auto`: a call the user had
    denied ran after all, an edited call ran with the model's arguments, and a call still waiting for a
    decision ran undecided. The recorded part is history; only the turns after it follow the new policy."""
    ws, back = tmp_path / "ws", tmp_path / "back"
    ws.mkdir()
    turns = [
        "one\n</think>\n\n" + call("shell", command="touch denied.txt"),
        "two\n</think>\n\n" + call("shell", command="touch as-written.txt"),
        "three\n</think>\n\n" + call("shell", command="touch waited.txt"),
        "four\n</think>\n\n" + call("shell", command="touch live.txt"),
        "done\n</think>\n\nDone.",
    ]
    traces = [tmp_path / f"{n}.jsonl" for n in range(5)]
    steps: list[tuple[list[str], list[str]]] = [
        (["Touch files.", "--tools", "shell", "--workspace", str(ws), "--approve", "ask"], turns[0:1]),
        (["--resume", str(traces[0]), "--decide", "deny:not that one"], turns[1:2]),
        (["--resume", str(traces[1]), "--decide", 'edit:{"command": "touch edited.txt"}'], turns[2:3]),
        # Under `auto` now, and no decision given for the call the run waits on: it waits still.
        (["--resume", str(traces[2]), "--approve", "auto"], []),
        (["--resume", str(traces[2]), "--approve", "auto", "--decide", "allow", "--copy-back", str(back)],
         turns[3:]),
    ]  # fmt: skip
    for n, (args, live) in enumerate(steps):
        with ScriptedModelServer(live or ["unused"]) as server:
            proc = run_cli(*args, "--model-url", server.url, "--trace", str(traces[n]))
            prompts = [r.prompt for r in server.requests]
        assert proc.returncode == (0 if n == 4 else 5), proc.stdout + proc.stderr
        assert len(prompts) == len(live)  # the recorded turns were replayed, not asked again
    assert pending_approval(traces[3]).call.arguments == {"command": "touch waited.txt"}
    assert "the user denied it: not that one" in prompts[0]
    assert sorted(p.name for p in (back / "workspace").iterdir()) == ["edited.txt", "live.txt", "waited.txt"]
    ran = [e.call.arguments["command"] for e in read_trace(traces[4]) if isinstance(e, ToolCallEvent)]
    assert ran == ["touch edited.txt", "touch waited.txt", "touch live.txt"]
