"""What an operator meets at the edges of a command: a used --copy-back folder, Ctrl-C during the
copy-back or while parsing, a closed stdout, bad flag values, a port already taken, branch traces read
from another folder. Each through the real CLI, as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qwq_agent.testing.scripted_server import ScriptedModelServer

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
ENV = {k: v for k, v in os.environ.items() if k not in ("QWQ_MODEL_URL", "QWQ_DEBUG", "QWQ_API")}
# `run` gives the model server 3 s to answer its start-up probe (/health). None of these tests is about
# that limit (tests/test_probe_deadlines.py is), and on a loaded CI machine the probe of the scripted
# server took longer: the run was refused before it began.
ENV["QWQ_MODEL_CONNECT_TIMEOUT"] = "60"


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=300)


def test_copy_back_into_a_used_folder_is_refused_before_the_model_is_asked(tmp_path: Path) -> None:
    """The copy-back overwrites nothing: found only after the run, the agent's work was lost."""
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "out" / "workspace").mkdir(parents=True)
    (tmp_path / "out" / "workspace" / "notes.txt").write_text("yesterday's copy-back\n")
    copy_back = ["--copy-back", str(tmp_path / "out"), "--trace", str(tmp_path / "t.jsonl")]
    with ScriptedModelServer(["x\n</think>\n\ndone"]) as server:
        proc = _run(
            ["run", "t", "--model-url", server.url, "--tools", "python", "--workspace", str(src), *copy_back],
            tmp_path,
        )
        generated = [r for r in server.requests if r.path == "/generate"]
    assert proc.returncode == 2, proc.stderr
    assert "already exists" in proc.stderr and "--copy-back" in proc.stderr
    assert generated == []
    # An empty folder there is fine: the copy-back writes into it.
    (tmp_path / "out" / "workspace" / "notes.txt").unlink()
    from qwq_agent.cli.preflight import check_workspace

    check_workspace(src, tmp_path / "out", sandbox=True)


MAKE_FILES = (
    '<tool_call>\n{"name": "shell", "arguments": {"command": "cd /workspace && for i in $(seq 1 3000); '
    'do head -c 10000 /dev/urandom > f$i.bin; done; echo made"}}\n</tool_call>'
)


@pytest.mark.docker
def test_ctrl_c_during_the_copy_back_finishes_it_and_writes_one_final(sandbox_image, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    env = ENV | {"QWQ_SANDBOX_IMAGE": sandbox_image}
    turns = ["make files\n</think>\n\n" + MAKE_FILES, "done\n</think>\n\nok"]
    copy_back = ["--copy-back", str(tmp_path / "out"), "--json", "--trace", str(tmp_path / "t.jsonl")]
    with ScriptedModelServer(turns) as server:
        proc = subprocess.Popen(
            [
                *CLI,
                "run",
                "t",
                "--model-url",
                server.url,
                "--tools",
                "shell",
                "--workspace",
                str(src),
                *copy_back,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # the run's `final` comes just before the 30 MB copy-back starts
            lines.append(line)
            if json.loads(line)["type"] == "final":
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=240)
    finals = [json.loads(x) for x in [*lines, *out.splitlines()] if json.loads(x)["type"] == "final"]
    assert [(f["status"], f["error"]) for f in finals] == [("completed", None)], err
    assert (tmp_path / "out" / "workspace" / "f3000.bin").is_file(), err
    assert "copied back" in err and "Traceback" not in err
    assert proc.returncode == 130


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "live-view"])
def test_a_closed_stdout_is_one_line_not_a_traceback(as_json: bool, tmp_path: Path) -> None:
    """`qwq-agent run ... | head -1`: the reader goes away after one line."""
    turns = ["think\n</think>\n\n" + "line\n" * 2000 + "the answer"]
    trace = ["--trace", str(tmp_path / "t.jsonl"), *(["--json"] if as_json else [])]
    with ScriptedModelServer(turns) as server:
        read, write = os.pipe()
        proc = subprocess.Popen(
            [*CLI, "run", "t", "--model-url", server.url, "--tools", "fetch_url", *trace],
            cwd=tmp_path,
            env=ENV,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(write)
        with os.fdopen(read) as reader:
            reader.readline()
        _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and "permissions" not in err, err
    assert err.strip().splitlines() == [
        "qwq-agent run: stdout was closed before the output ended (its reader, e.g. `head`, exited)"
    ]
    assert proc.returncode == 141
    # The run was stopped through its stream: the trace still ends with a final event.
    last = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "final"


def test_stdout_and_stderr_to_one_closed_pipe_exit_141(tmp_path: Path) -> None:
    """`qwq-agent run --json ... 2>&1 | head -1`: the one line saying so cannot be written either (stderr
    is the same closed pipe); the exit status still says what happened."""
    turns = ["think\n</think>\n\n" + "line\n" * 2000 + "the answer"]
    argv = ["run", "t", "--tools", "fetch_url", "--json", "--trace", str(tmp_path / "t.jsonl")]
    with ScriptedModelServer(turns) as server:
        read, write = os.pipe()
        proc = subprocess.Popen(
            [*CLI, *argv, "--model-url", server.url], cwd=tmp_path, env=ENV, stdout=write, stderr=write
        )
        os.close(write)
        with os.fdopen(read) as reader:
            reader.readline()
        proc.wait(timeout=120)
    assert proc.returncode == 141


def test_ctrl_c_while_the_arguments_are_parsed_is_an_interruption(tmp_path: Path) -> None:
    """Parsing imports the settings (pydantic) and every command: a Ctrl-C then is not a traceback."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from qwq_agent.cli.main import main

        def interrupt_once(event, args):
            # The signal comes as the settings module is imported, in the middle of the parsing.
            if event == "import" and args[0] == "qwq_agent.settings" and not sent:
                sent.append(1)
                os.kill(os.getpid(), signal.SIGINT)

        sent = []
        sys.addaudithook(interrupt_once)
        sys.exit(main(["parse", "/dev/null"]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "qwq-agent parse: interrupted"
    assert proc.returncode == 130


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["serve", "--command", 'python -c "print(1)', "--port", "30123"], "--command"),
        (["serve", "--command", "sleep 60", "--port", "70000"], "--port"),
        (["serve", "--command", "sleep 60", "--timeout", "nan"], "--timeout"),
        (["serve", "--command", "sleep 60", "--timeout", "inf"], "--timeout"),
        (["trace", "serve", ".", "--port", "70000"], "--port"),
        # before: passed to SGLang as given (or, for --context-length 0, the flag silently left out)
        (["serve", "--print-command", "--tp", "0"], "--tp"),
        (["serve", "--print-command", "--tp", "-1"], "--tp"),
        (["serve", "--print-command", "--context-length", "0"], "--context-length"),
        (["serve", "--print-command", "--context-length", "-4096"], "--context-length"),
        (["serve", "--print-command", "--mem-fraction-static", "nan"], "--mem-fraction-static"),
        (["serve", "--print-command", "--mem-fraction-static", "0"], "--mem-fraction-static"),
        (["serve", "--print-command", "--mem-fraction-static", "1.5"], "--mem-fraction-static"),
        (["serve", "--print-command", "--mem-fraction-static", "inf"], "--mem-fraction-static"),
        (["sandbox", "run", "--python", "1", "--timeout", "1e10"], "--timeout"),
        (["sandbox", "run", "--python", "1", "--timeout", "-1"], "--timeout"),
        (["sandbox", "run", "--python", "1", "--timeout", "nan"], "--timeout"),
        # before: taken as given, and a run with 0 "completed" with an empty answer
        (["run", "t", "--model-url", "http://127.0.0.1:9", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["run", "t", "--model-url", "http://127.0.0.1:9", "--max-new-tokens", "-1"], "--max-new-tokens"),
        (["run", "t", "--model-url", "http://127.0.0.1:9", "--max-steps", "0"], "--max-steps"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_a_bad_flag_value_is_refused_at_parse_time(argv: list[str], flag: str, tmp_path: Path) -> None:
    proc = _run(argv, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"error: argument {flag}" in proc.stderr.splitlines()[-1], proc.stderr
    assert "bug in qwq-agent" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("value", ["inf", "nan", "1e300"])
def test_a_timeout_variable_must_be_finite(value: str, tmp_path: Path) -> None:
    proc = _run(["sandbox", "ls"], tmp_path, ENV | {"QWQ_DOCKER_PING_TIMEOUT": value})
    assert proc.returncode == 2, proc.stderr
    assert "QWQ_DOCKER_PING_TIMEOUT" in proc.stderr and "bug" not in proc.stderr


def test_trace_show_finds_the_branch_traces_from_another_folder(tmp_path: Path) -> None:
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    elsewhere.mkdir()
    with ScriptedModelServer(["x\n</think>\n\n42"], when_exhausted="repeat") as server:
        proc = _run(
            ["run", "q", "--model-url", server.url, "--tools", "fetch_url", "--branches", "2"], run_dir
        )
    assert proc.returncode == 0, proc.stderr
    main = next(p for p in (run_dir / "traces").glob("*.jsonl") if ".branch" not in p.name)
    shown = _run(["trace", "show", str(main), "--branches"], elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert "branch 0" in shown.stdout and "branch 1" in shown.stdout


def test_serve_refuses_a_port_another_server_answers_on(tmp_path: Path) -> None:
    """Another server on the port used to answer /health for a launch that served nothing: "ready"."""
    with ScriptedModelServer(["x"], model="some-other-model") as other:
        port = other.url.rsplit(":", 1)[1]
        proc = _run(["serve", "--command", "sleep 60", "--port", port, "--timeout", "20"], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ready" not in proc.stdout and "starting" not in proc.stdout
    assert f"--port {port}: the port is already in use" in proc.stderr


@pytest.mark.parametrize(
    ("host", "said", "fix"),
    [
        # 192.0.2.1: TEST-NET-1 (RFC 5737), an address of no machine
        ("192.0.2.1", "192.0.2.1 is not an address of this machine", "pass --host"),
        ("no-such-host.invalid", "no-such-host.invalid does not resolve", "pass --host"),
    ],
)
def test_trace_serve_on_an_address_it_cannot_listen_on_says_which_flag(
    host: str, said: str, fix: str, tmp_path: Path
) -> None:
    """It said "cannot use: Cannot assign requested address / fix: check the path and its permissions"."""
    proc = _run(["trace", "serve", str(tmp_path), "--host", host, "--port", "0"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and said in lines[0] and lines[1].startswith(f"  fix: {fix}"), proc.stderr
    assert "path" not in proc.stderr


def test_trace_serve_on_a_privileged_port_says_so(tmp_path: Path) -> None:
    import shutil

    namespace = ["unshare", "--user", "--map-user=54321", "--map-group=54321"]  # a user without privileges
    if shutil.which("unshare") is None or subprocess.run([*namespace, "true"], timeout=60).returncode != 0:
        pytest.skip("no unprivileged user namespaces here")
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start <= 1:
        pytest.skip("every port can be bound without privileges here")
    proc = subprocess.run(
        [*namespace, *CLI, "trace", "serve", str(tmp_path), "--port", "1"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and "port 1 needs privileges" in lines[0], proc.stderr
    assert lines[1].startswith("  fix: pass --port"), proc.stderr


def test_trace_serve_on_a_port_in_use_says_which_flag(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = _run(["trace", "serve", str(tmp_path), "--port", str(port)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and f"port {port} is already in use on 127.0.0.1" in lines[0], proc.stderr
    assert lines[1].startswith("  fix: pass another --port"), proc.stderr


def test_a_run_with_a_relative_docs_db_replays_from_another_folder(tmp_path: Path) -> None:
    """The trace recorded `--docs-db` as given (`docs.db`): a replay elsewhere found no index there."""
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (run_dir / "docs").mkdir(parents=True)
    elsewhere.mkdir()
    (run_dir / "docs" / "notes.md").write_text("# notes\nRadix caches share prompt prefixes.\n")
    built = _run(["index", "docs", "--db", "docs.db"], run_dir)
    assert built.returncode == 0, built.stderr
    search = '<tool_call>\n{"name": "search_docs", "arguments": {"query": "radix"}}\n</tool_call>'
    turns = ["look\n</think>\n\n" + search, "ok\n</think>\n\nThey share prefixes."]
    with ScriptedModelServer(turns) as server:
        proc = _run(["run", "q", "--model-url", server.url, "--tools", "search_docs", "--docs-db", "docs.db",
                     "--trace", "t.jsonl"], run_dir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    started = json.loads((run_dir / "t.jsonl").read_text().splitlines()[0])
    assert started["tool_options"]["docs_db"] == str(run_dir / "docs.db")

    replayed = _run(["run", "--replay", str(run_dir / "t.jsonl"), "--trace", "r.jsonl"], elsewhere)
    assert replayed.returncode == 0, replayed.stderr
    assert "--replay overrides" not in replayed.stdout
    # The same path given again, relative to where it is now, is no override either.
    again = _run(
        ["run", "--replay", "run/t.jsonl", "--docs-db", "run/docs.db", "--trace", "a.jsonl"], tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "overrides" not in again.stdout, again.stdout
    source = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])["replay_of"]
    assert source["path"] == str(run_dir / "t.jsonl")
