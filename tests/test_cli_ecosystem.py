"""`qwq-agent run --mcp/--mcp-url/--otel` as a user runs it: a subprocess, real servers, a real sandbox."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mcp")
pytest.importorskip("opentelemetry.sdk")

from mcp_helpers import http_server, stdio_command

from qwq_agent.testing.otlp_receiver import OTLPReceiver
from qwq_agent.testing.scripted_server import ScriptedModelServer

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]


def tool_call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def test_an_mcp_server_that_cannot_start_is_a_clear_error_not_a_traceback():
    with ScriptedModelServer([]) as server:
        proc = subprocess.run(
            [*CLI, "run", "hi", "--model-url", server.url, "--mcp", "definitely-not-a-command-xyz --flag"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "definitely-not-a-command-xyz" in out and "could not be started" in out
    assert "Traceback" not in out
    # Through the one error path, like every other bad input: the command named, and a fix line.
    assert proc.stderr.startswith("qwq-agent run: ") and "\n  fix: check the --mcp command" in proc.stderr


def test_a_run_that_used_mcp_tools_replays_with_the_same_servers_and_says_so_without(tmp_path):
    turns = ["add\n</think>\n\n" + tool_call("add", a=20, b=22), "ok\n</think>\n\nThe answer is 42."]
    mcp = ["--mcp", shlex.join(stdio_command("cli"))]
    original = tmp_path / "run.jsonl"

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, "run", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)

    with ScriptedModelServer(turns) as server:
        rec = cli("Add 20 and 22.", "--model-url", server.url, "--tools", "fetch_url", "--json",
                  "--trace", str(original), *mcp)  # fmt: skip
    assert rec.returncode == 0, rec.stderr
    started = json.loads(original.read_text().splitlines()[0])
    assert "add" in started["tools"] and "add" in started["tool_options"]["mcp_tools"]
    assert "fetch_url" not in started["tool_options"]["mcp_tools"]

    def replay(trace: Path, *argv: str) -> subprocess.CompletedProcess[str]:
        return cli(
            "--replay",
            str(trace),
            "--json",
            "--trace",
            str(tmp_path / f"{trace.stem}-{len(argv)}.jsonl"),
            *argv,
        )

    same = replay(original, *mcp)
    assert same.returncode == 0, same.stderr
    events = [json.loads(line) for line in same.stdout.splitlines()]
    assert events[-1]["answer"] == "The answer is 42."
    assert not [e for e in events if e.get("kind") == "replay_divergence"]
    assert (
        json.loads((tmp_path / "run-2.jsonl").read_text().splitlines()[0])["tool_options"]
        == started["tool_options"]
    )

    without = replay(original)
    assert without.returncode == 2 and "Traceback" not in without.stderr
    assert "the recorded run used tools of MCP servers (add," in without.stderr
    assert "pass the same --mcp" in without.stderr

    # A trace that does not say which tools were MCP servers' (written before that was recorded).
    old = tmp_path / "old.jsonl"
    lines = original.read_text().splitlines()
    first = json.loads(lines[0])
    del first["tool_options"]["mcp_tools"]
    old.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    assert replay(old, *mcp).returncode == 0
    unknown = replay(old)
    assert unknown.returncode == 2 and "unknown tool 'add'" in unknown.stderr
    assert "pass the same --mcp" in unknown.stderr


def test_a_tool_image_that_cannot_be_saved_is_a_note_and_the_run_goes_on(tmp_path):
    # The live view saves images under ./qwq-agent-images/: here that name is a file, so it cannot
    # (as in a folder the user cannot write). The OSError used to escape the event loop and end the run.
    (tmp_path / "qwq-agent-images").write_text("not a folder")
    turns = ["Draw.\n</think>\n\n" + tool_call("picture"), "Done.\n</think>\n\nHere is the picture."]
    trace = tmp_path / "run.jsonl"
    with ScriptedModelServer(turns) as server:
        proc = subprocess.run(
            [
                *CLI,
                "run",
                "Draw.",
                "--model-url",
                server.url,
                "--tools",
                "fetch_url",
                "--trace",
                str(trace),
                "--mcp",
                shlex.join(stdio_command("cli")),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 0, out
    assert "(image 1 not saved: " in out and "qwq-agent-images" in out
    assert "Traceback" not in out
    final = json.loads(trace.read_text().splitlines()[-1])
    assert final["type"] == "final" and final["status"] == "completed"
    assert final["answer"] == "Here is the picture."


@pytest.mark.docker
def test_run_with_mcp_servers_on_both_transports_and_otel_spans_to_a_real_receiver(sandbox_image, tmp_path):
    turns = [
        "Use the servers.\n</think>\n\n"
        + tool_call("cli__add", a=20, b=22)
        + "\n"
        + tool_call("web__picture"),
        "42 and a picture.\n</think>\n\nThe answer is 42.",
    ]
    with OTLPReceiver() as rx, http_server("web") as (url, _), ScriptedModelServer(turns) as server:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_SERVICE_NAME": "cli-test"}
        proc = subprocess.run(
            [
                *CLI,
                "run",
                "Add 20 and 22.",
                "--model-url",
                server.url,
                "--tools",
                "python",
                "--json",
                "--trace",
                str(tmp_path / "run.jsonl"),
                "--mcp",
                shlex.join(stdio_command("cli")),
                "--mcp-url",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        spans = rx.wait_for(lambda got: any(s.name.startswith("invoke_agent") for s in got))
    started = events[0]
    assert started["type"] == "run_started" and {"python", "cli__add", "web__add"} <= set(started["tools"])
    results = {e["name"]: e for e in events if e["type"] == "tool_result"}
    assert results["cli__add"]["text"] == "42" and results["web__picture"]["images"]
    assert events[-1]["answer"] == "The answer is 42."

    run = next(s for s in spans if s.name.startswith("invoke_agent"))
    assert run.resource["service.name"] == "cli-test"
    assert run.attributes["qwq_agent.sandbox_id"] == started["sandbox_id"]
    assert run.attributes["qwq_agent.run_id"] == started["run_id"]
    tool_spans = {s.attributes["gen_ai.tool.name"]: s for s in spans if s.name.startswith("execute_tool")}
    assert set(tool_spans) == {"cli__add", "web__picture"}
    assert "gen_ai.tool.call.result" not in tool_spans["cli__add"].attributes  # no content unless asked


async def test_otel_is_off_by_default_and_on_with_the_flag_or_the_standard_variable(monkeypatch):
    from rich.console import Console

    from qwq_agent.cli.ecosystem import open_extras
    from qwq_agent.cli.main import build_parser

    console = Console(stderr=True)
    for var in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
    ):
        monkeypatch.delenv(var, raising=False)

    async def extras_for(*argv: str):
        extras = await open_extras(build_parser().parse_args(["run", "task", *argv]), [], console)
        assert extras is not None
        await extras.aclose()
        return extras

    off = await extras_for()
    assert off._recorder is None and off._export is None

    flag = await extras_for("--otel", "http://127.0.0.1:4999")
    assert flag._export.endpoint == "http://127.0.0.1:4999/v1/traces"
    assert flag._recorder.capture_content is False and flag._recorder.provider == "sglang"

    content = await extras_for("--otel", "--otel-content", "--api", "openai")
    assert content._recorder.capture_content is True and content._recorder.provider == "openai"

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4888")
    env = await extras_for()
    assert env._export.endpoint == "http://127.0.0.1:4888/v1/traces"


def test_server_specs_from_the_command_line():
    from qwq_agent.mcp import MCPServerSpec

    assert MCPServerSpec.parse("python 'my server.py' --x 1").command == [
        "python",
        "my server.py",
        "--x",
        "1",
    ]
    assert MCPServerSpec.parse(" https://example.org/mcp").url == "https://example.org/mcp"
    assert MCPServerSpec.parse(["a", "b"]).command == ["a", "b"]
    with pytest.raises(ValueError, match="exactly one"):
        MCPServerSpec(command=["a"], url="http://x")
    with pytest.raises(ValueError, match="empty"):
        MCPServerSpec.parse("   ")


@pytest.mark.parametrize("debug", [False, True])
def test_a_stray_line_on_an_mcp_servers_stdout_is_one_log_line_not_a_traceback(tmp_path, debug):
    # The stdio transport logs it with its traceback; with no logging configured, Python's last-resort
    # handler printed the whole traceback in a run that worked.
    script = str(Path(__file__).parent / "raw_mcp_server.py")
    tools = json.dumps([{"name": "echo", "inputSchema": {"type": "object"}}])
    turns = ["Call it.\n</think>\n\n" + tool_call("echo"), "Called.\n</think>\n\nDone."]
    with ScriptedModelServer(turns) as server:
        proc = subprocess.run(
            [*CLI, "run", "hi", "--model-url", server.url, "--tools", "fetch_url", "--mcp"]
            + [shlex.join([sys.executable, script, "chatty", tools])]
            + ["--trace", str(tmp_path / "run.jsonl")]
            + (["--debug"] if debug else []),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    assert "Unknown tool" not in proc.stdout, proc.stdout
    noted = [line for line in proc.stderr.splitlines() if "Failed to parse JSONRPC message" in line]
    assert len(noted) == 1, proc.stderr
    if debug:
        assert "Traceback" in proc.stderr
    else:
        assert "Traceback" not in proc.stdout + proc.stderr
        assert "ValidationError" in noted[0] and "qwq_agent.mcp" in noted[0]
