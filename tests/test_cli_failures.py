"""Failures outside our control, command by command: one or two lines with a cause and a fix, no traceback.

Every case runs the CLI as a real subprocess, against real things: a Docker socket path that does not
exist, a real unix socket that accepts connections and never answers (a hung daemon), the real engine
without the named image, a real HTTP model server (scripted), real files that are not what they claim.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qwq_agent.testing.scripted_server import ScriptedModelServer

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
# Variables that would configure the very things these tests take away.
CLEARED = (
    "QWQ_MODEL_URL",
    "QWQ_API",
    "QWQ_SANDBOX_IMAGE",
    "QWQ_DEBUG",
    "QWQ_SEARCH_PROVIDER",
    "QWQ_SEARXNG_URL",
    "BRAVE_API_KEY",
    "TAVILY_API_KEY",
    "QWQ_OPENAI_API_KEY",
    "OPENAI_API_KEY",
    "DASHSCOPE_API_KEY",
)
ANSWER = "Done.\n</think>\n\nThe answer is 42."
NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent.sock"}
HUNG = {"DOCKER_HOST": "unix://{hung}", "QWQ_DOCKER_PING_TIMEOUT": "2"}


@dataclass
class Case:
    """One failure: the command line, its environment, and words its message must hold."""

    argv: list[str]
    expect: list[str]  # the cause and the fix, lower-cased
    env: dict[str, str] = field(default_factory=dict)
    before_model: bool = False  # found at start-up: the model server must not have been asked anything


class HungDocker:
    """A unix socket that accepts every connection and never answers, like a wedged Docker daemon."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(64)
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer([ANSWER], when_exhausted="repeat") as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer([ANSWER], when_exhausted="repeat", api_key="sk-test-key") as srv:
        yield srv


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("cli-failures")
    (root / "garbage.jsonl").write_text('{"type": "run_started", "task": 3}\nnot json at all\n{}\n')
    (root / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x81" * 64)
    (root / "empty.jsonl").write_text("")
    os.mkfifo(root / "fifo.jsonl")  # opening it for I/O waits for its other end: forever
    from qwq_agent.agent.config import AgentConfig
    from qwq_agent.agent.events import RunStarted

    started = json.loads(RunStarted(task="hi", model="m", tools=["fetch_url"], run_id="r1").model_dump_json())
    started["config"] = AgentConfig().model_dump(mode="json")
    started["config"]["budget"]["max_steps"] = "lots"  # edited by hand, or an incompatible version
    (root / "config-edited.jsonl").write_text(json.dumps(started) + "\n")
    (root / "garbage.db").write_bytes(b"this is not an SQLite database" * 100)
    with sqlite3.connect(root / "other.db") as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    (root / "a-file").write_text("not a folder\n")
    (root / "big").mkdir()
    with (root / "big" / "data.bin").open("wb") as fh:
        fh.truncate(60 * 2**20)  # sparse: 60 MiB to the upload, nothing on disk
    (root / "docs").mkdir()
    (root / "docs" / "notes.md").write_text("# notes\nradix caches\n")
    # Short: the path of a unix socket is limited to ~100 bytes.
    hung = HungDocker(Path(f"/tmp/qwq-hung-{os.getpid()}.sock"))
    try:
        yield {"tmp": str(root), "hung": str(hung.path)}
    finally:
        hung.close()
        hung.path.unlink(missing_ok=True)


def _run(argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in CLEARED} | env
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=timeout, env=full_env)


SANDBOX_COMMANDS = [
    ["sandbox", "run", "--python", "1"],
    ["sandbox", "ls"],
    ["sandbox", "prune"],
    ["sandbox", "build"],
    ["run", "hi", "--model-url", "{model}", "--tools", "python"],
]

CASES: dict[str, Case] = {}
for cmd in SANDBOX_COMMANDS:
    name = "-".join(cmd[:2]) if cmd[0] == "sandbox" else "run"
    CASES[f"docker-unreachable/{name}"] = Case(
        cmd, ["no socket at /nonexistent.sock", "docker_host"], NO_DOCKER
    )
    CASES[f"docker-hung/{name}"] = Case(cmd, ["did not answer within 2 s", "restart the docker daemon"], HUNG)
CASES |= {
    # The model server.
    "model-unreachable/run": Case(
        ["run", "hi", "--model-url", "http://127.0.0.1:{dead_port}", "--tools", "fetch_url"],
        ["no model server answers at http://127.0.0.1:", "qwq-agent serve"],
    ),
    "model-unreachable/serve": Case(
        ["serve", "--model-url", "http://127.0.0.1:{dead_port}"], ["no healthy server", "qwq-agent serve"]
    ),
    "server-crashes/serve": Case(
        [
            "serve",
            "--port",
            "{dead_port}",
            "--timeout",
            "60",
            "--command",
            f"{sys.executable} -c \"import sys; print('CUDA out of memory, on purpose'); sys.exit(3)\"",
        ],
        ["exited with status 3", "read the server's log", "cuda out of memory, on purpose"],
    ),
    "model-no-scheme/run": Case(
        ["run", "hi", "--model-url", "127.0.0.1:30000", "--tools", "fetch_url"],
        ["not an http:// or https:// url", "--model-url http://127.0.0.1:30000"],
    ),
    "model-invalid-ipv6/run": Case(
        ["run", "hi", "--model-url", "http://[::1", "--tools", "fetch_url"],
        ["not a valid url (invalid ipv6 url)", "http://[::1]:30000"],
    ),
    "model-wrong-scheme/run": Case(
        ["run", "hi", "--model-url", "ftp://127.0.0.1:30000", "--tools", "fetch_url"],
        ["not an http:// or https:// url", "--model-url http://"],
    ),
    "model-https-to-http/run": Case(
        ["run", "hi", "--model-url", "{model_https}", "--tools", "fetch_url"],
        ["no model server answers", "speaks plain http, use http://"],
    ),
    "model-no-scheme/serve": Case(
        ["serve", "--model-url", "127.0.0.1:30000"],
        ["not an http:// or https:// url", "http://127.0.0.1:30000"],
    ),
    "model-key-missing/run": Case(
        ["run", "hi", "--api", "openai", "--model-url", "{keyed_model}", "--tools", "fetch_url"],
        ["refused the api key (http 401", "openai_api_key"],
    ),
    # Environment variables holding what cannot be a URL of their kind: found before the model is asked.
    "docker-host-scheme/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "python"],
        ["docker_host=ftp://x", "unix:///", "ssh://", "tcp://"],
        {"DOCKER_HOST": "ftp://x"},
        before_model=True,
    ),
    "searxng-not-a-url/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "web_search"],
        [
            "web_search cannot work: qwq_searxng_url=notaurl is not an http:// or https:// url",
            "qwq_searxng_url",
        ],
        {"QWQ_SEARXNG_URL": "notaurl"},
        before_model=True,
    ),
    # The workspace.
    "workspace-missing/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "python", "--workspace", "{tmp}/absent"],
        ["workspace", "does not exist", "pass an existing folder"],
        before_model=True,
    ),
    "workspace-is-a-file/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "python", "--workspace", "{tmp}/a-file"],
        ["is not a folder", "pass a folder to --workspace"],
        before_model=True,
    ),
    "workspace-too-big/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "python", "--workspace", "{tmp}/big"],
        ["packs to more than 48 mib", "only what the agent needs"],
        before_model=True,
    ),
    "copy-back-under-a-file/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "python", "--copy-back", "{tmp}/a-file/out"],
        ["a-file is not a folder", "pass a folder"],
        before_model=True,
    ),
    "workspace-without-sandbox-tool/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "fetch_url", "--workspace", "{tmp}/docs"],
        ["need a tool that works in the sandbox", "add one of python"],
        before_model=True,
    ),
    # Traces.
    "trace-missing/run": Case(
        ["run", "--replay", "{tmp}/absent.jsonl", "--tools", "fetch_url"],
        ["cannot read trace", "no such file", "qwq-agent run"],
    ),
    "trace-garbage/run": Case(
        ["run", "--replay", "{tmp}/garbage.jsonl", "--tools", "fetch_url"],
        ["not a qwq-agent event", "qwq-agent run"],
    ),
    "trace-config-edited/run": Case(
        ["run", "--replay", "{tmp}/config-edited.jsonl", "--tools", "fetch_url"],
        ["config-edited.jsonl", "recorded config is not valid", "budget.max_steps", "'lots'"],
    ),
    "trace-binary/run-resume": Case(
        ["run", "--resume", "{tmp}/binary.jsonl", "--model-url", "{model}", "--tools", "fetch_url"],
        ["not utf-8", "qwq-agent run"],
        before_model=True,
    ),
    "trace-fifo/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "fetch_url", "--trace", "{tmp}/fifo.jsonl"],
        ["fifo.jsonl is a fifo", "pass --trace a new file"],
        before_model=True,
    ),
    "trace-fifo/run-replay": Case(
        ["run", "--replay", "{tmp}/fifo.jsonl", "--tools", "fetch_url"], ["it is a fifo", "qwq-agent run"]
    ),
    "trace-fifo/trace-show": Case(["trace", "show", "{tmp}/fifo.jsonl"], ["it is a fifo", "qwq-agent run"]),
    "trace-missing/trace-show": Case(
        ["trace", "show", "{tmp}/absent.jsonl"], ["no such file", "qwq-agent run"]
    ),
    "trace-folder/trace-show": Case(["trace", "show", "{tmp}"], ["it is a folder", "qwq-agent run"]),
    "trace-garbage/trace-show": Case(["trace", "show", "{tmp}/garbage.jsonl"], ["not a qwq-agent event"]),
    "trace-empty/trace-show": Case(["trace", "show", "{tmp}/empty.jsonl"], ["holds no events"]),
    "raw-output-missing/parse": Case(
        ["parse", "{tmp}/absent.txt"], ["absent.txt", "no such file", "pass a raw model output"]
    ),
    "raw-output-binary/parse": Case(["parse", "{tmp}/binary.jsonl"], ["not utf-8"]),
    # The document index.
    "docs-db-not-given/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "search_docs"],
        ["search_docs needs a document index", "qwq-agent index dir"],
        before_model=True,
    ),
    "docs-db-missing/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "search_docs", "--docs-db", "{tmp}/absent.db"],
        ["no document index at", "qwq-agent index dir"],
        before_model=True,
    ),
    "docs-db-garbage/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "search_docs", "--docs-db", "{tmp}/garbage.db"],
        ["not a usable document index", "file is not a database", "qwq-agent index dir"],
        before_model=True,
    ),
    "docs-db-other-sqlite/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "search_docs", "--docs-db", "{tmp}/other.db"],
        ["not a document index built by qwq-agent", "qwq-agent index dir"],
        before_model=True,
    ),
    "docs-db-garbage/index": Case(
        ["index", "{tmp}/docs", "--db", "{tmp}/garbage.db"], ["not a document index", "pass another --db"]
    ),
    "docs-db-other-sqlite/index": Case(
        ["index", "{tmp}/docs", "--db", "{tmp}/other.db"],
        ["sqlite database of something else", "another --db"],
    ),
    "docs-db-folder-missing/index": Case(
        ["index", "{tmp}/docs", "--db", "{tmp}/absent/ix.db"],
        ["is not a folder", "--db in an existing folder"],
    ),
    "docs-folder-missing/index": Case(["index", "{tmp}/absent"], ["is not a folder", "folder of documents"]),
    # Search providers.
    "search-provider-missing/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "web_search"],
        ["web_search cannot work", "no web search provider", "brave_api_key"],
        before_model=True,
    ),
    "search-provider-key-missing/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "web_search"],
        ["'brave' needs brave_api_key", "set qwq_searxng_url"],
        env={"QWQ_SEARCH_PROVIDER": "brave"},
        before_model=True,
    ),
    "unknown-tool/run": Case(
        ["run", "hi", "--model-url", "{model}", "--tools", "python,telepathy"],
        ["unknown tool 'telepathy'", "choose from python"],
        before_model=True,
    ),
    # mcp-serve and sandbox build: found before Docker is asked anything (it is unreachable here).
    "unknown-tool/mcp-serve": Case(
        ["mcp-serve", "--tools", "python,telepathy"],
        ["unknown tool 'telepathy'", "choose from python"],
        NO_DOCKER,
    ),
    "docs-db-not-given/mcp-serve": Case(
        ["mcp-serve", "--tools", "python,search_docs"],
        ["search_docs needs a document index", "choose from python"],
        NO_DOCKER,
    ),
    "workspace-missing/mcp-serve": Case(
        ["mcp-serve", "--workspace", "{tmp}/absent"], ["does not exist", "pass an existing folder"], NO_DOCKER
    ),
    "workspace-is-a-file/mcp-serve": Case(
        ["mcp-serve", "--workspace", "{tmp}/a-file"],
        ["is not a folder", "pass a folder to --workspace"],
        NO_DOCKER,
    ),
    "build-mode-unknown/sandbox-build": Case(
        ["sandbox", "build"],
        ["qwq_sandbox_build='weird'", "auto, debian, dockerfile", "unset"],
        NO_DOCKER | {"QWQ_SANDBOX_BUILD": "weird"},
    ),
    "bad-variable/sandbox-ls": Case(
        ["sandbox", "ls"],
        ["qwq_docker_ping_timeout", "'abc'", "qwq-agent --help"],
        {"QWQ_DOCKER_PING_TIMEOUT": "abc"},
    ),
}
# Bad input of the user's, each with the fix that fits the command it was given to: exit 2.
BAD_INPUT = [
    "unknown-tool/mcp-serve",
    "docs-db-not-given/mcp-serve",
    "workspace-missing/mcp-serve",
    "workspace-is-a-file/mcp-serve",
    "build-mode-unknown/sandbox-build",
    "bad-variable/sandbox-ls",
]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_failure_is_one_clear_line(case_id: str, server, keyed_server, files) -> None:
    case = CASES[case_id]
    values = files | {
        "model": server.url,
        "model_https": server.url.replace("http://", "https://"),
        "keyed_model": keyed_server.url,
        "dead_port": str(_dead_port()),
    }
    asked = len(server.requests)
    proc = _run([_fill(a, values) for a in case.argv], {k: _fill(v, values) for k, v in case.env.items()})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    message = proc.stderr.strip().splitlines()
    assert 1 <= len(message) <= 2, out
    assert message[0].startswith("qwq-agent "), out
    assert message[-1].startswith("  fix: ") or len(message) == 1, out
    for word in case.expect:
        assert word in proc.stderr.lower(), f"{word!r} not in: {proc.stderr}"
    if case.before_model:
        assert len(server.requests) == asked, "the model was asked before the failure was found"


@pytest.mark.docker
@pytest.mark.parametrize(
    "argv",
    [["sandbox", "run", "--python", "1"], ["run", "hi", "--model-url", "{model}", "--tools", "python,shell"]],
    ids=["sandbox-run", "run"],
)
def test_missing_sandbox_image_says_how_to_build_it(argv, sandbox_image, server) -> None:
    asked = len(server.requests)
    proc = _run(
        [_fill(a, {"model": server.url}) for a in argv],
        {"QWQ_SANDBOX_IMAGE": "qwq-agent-sandbox:no-such-tag"},
    )
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 2
        and "qwq-agent-sandbox:no-such-tag" in lines[0]
        and "is not in the local Docker" in lines[0]
    )
    assert "qwq-agent sandbox build" in lines[1]
    assert len(server.requests) == asked


def test_debug_shows_the_traceback_and_still_the_message(files) -> None:
    for argv in (
        ["--debug", "trace", "show", f"{files['tmp']}/absent.jsonl"],
        ["trace", "show", f"{files['tmp']}/absent.jsonl", "--debug"],
    ):
        proc = _run(argv, {})
        assert proc.returncode == 2
        assert "Traceback" in proc.stderr and "load_trace" in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("  fix: ")
    proc = _run(["trace", "show", f"{files['tmp']}/absent.jsonl"], {"QWQ_DEBUG": "1"})
    assert "Traceback" in proc.stderr


def test_a_run_whose_tools_need_no_sandbox_starts_none(server, tmp_path) -> None:
    """fetch_url runs on the host: the run completes although Docker is unreachable."""
    trace = tmp_path / "t.jsonl"
    proc = _run(
        ["run", "hi", "--model-url", server.url, "--tools", "fetch_url", "--json", "--trace", str(trace)],
        NO_DOCKER,
    )
    assert proc.returncode == 0, proc.stderr
    assert "The answer is 42." in proc.stdout
    assert '"sandbox_id":null' in proc.stdout.splitlines()[0].replace(" ", "")


@pytest.mark.parametrize("suffix", ["", "/v1"])
def test_a_key_protected_openai_server_is_probed_with_the_key(keyed_server, tmp_path, suffix: str) -> None:
    """Before: the start-up probe of `/v1/models` went without the key, so a server that wants one
    refused every run ("refused the API key") although OPENAI_API_KEY held it; and a URL given with its
    `/v1` was probed at `/v1/v1/models`."""
    proc = _run(
        ["run", "hi", "--api", "openai", "--model-url", keyed_server.url + suffix, "--tools", "fetch_url"],
        NO_DOCKER | {"OPENAI_API_KEY": "sk-test-key"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "The answer is 42." in proc.stdout


def test_run_json_writes_an_unserialisable_event_as_a_warning_line():
    import json

    from qwq_agent.agent.events import ToolCallEvent
    from qwq_agent.agent.messages import ToolCall
    from qwq_agent.cli.run_cmd import _event_json

    deep: object = "x"
    for _ in range(300):  # past pydantic's serialisation recursion limit
        deep = [deep]
    line = json.loads(_event_json(ToolCallEvent(call=ToolCall(name="t", arguments={"a": deep}), run_id="r")))
    assert (line["type"], line["kind"], line["run_id"]) == ("warning", "unserialisable_event", "r")
    assert "tool_call event could not be written" in line["message"]


@pytest.mark.parametrize(
    ("case_id", "code"),
    [("model-invalid-ipv6/run", 3), ("trace-config-edited/run", 2), ("model-wrong-scheme/run", 3)],
)
def test_bad_input_exits_with_its_code_not_as_a_bug(case_id: str, code: int, files) -> None:
    proc = _run([_fill(a, files) for a in CASES[case_id].argv], {})
    assert proc.returncode == code, proc.stderr
    assert "bug" not in proc.stderr


@pytest.mark.parametrize("case_id", BAD_INPUT)
def test_bad_input_is_named_with_a_fix_for_that_command(case_id: str, files) -> None:
    """Through the one error path: the command's prefix, a fix line, exit 2 (not a raw line, not 1)."""
    case = CASES[case_id]
    proc = _run([_fill(a, files) for a in case.argv], {k: _fill(v, files) for k, v in case.env.items()})
    message = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(message) == 2 and message[1].startswith("  fix: "), proc.stderr
    command = " ".join(case.argv[:2]) if case.argv[0] == "sandbox" else case.argv[0]
    assert message[0].startswith(f"qwq-agent {command}: "), proc.stderr
    if case.argv[0] == "mcp-serve":
        assert "--copy-back" not in proc.stderr and "--docs-db" not in proc.stderr  # flags it does not have


def test_the_model_urls_password_is_never_printed(files) -> None:
    url = f"http://ops:Sup3rSecretPw@127.0.0.1:{_dead_port()}"
    for argv in (["run", "hi", "--tools", "fetch_url", "--model-url", url], ["serve", "--model-url", url]):
        proc = _run(argv, {})
        assert proc.returncode != 0 and "no" in proc.stderr, proc.stderr
        assert "Sup3rSecretPw" not in proc.stdout + proc.stderr
        assert "http://ops:***@127.0.0.1:" in proc.stderr


@pytest.mark.docker
@pytest.mark.parametrize(
    "argv",
    [["sandbox", "run", "--python", "1"], ["mcp-serve"]],
    ids=["sandbox-run", "mcp-serve"],
)
def test_a_bad_build_mode_found_by_a_sandbox_start_is_bad_input(argv: list[str]) -> None:
    """The image builder's SettingsError reached the CLI wrapped twice (SandboxStartError <- ImageBuildError):
    reported as a failed sandbox (exit 4), it had a fix about Docker."""
    proc = _run(argv, {"QWQ_SANDBOX_BUILD": "weird"})
    message = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "QWQ_SANDBOX_BUILD='weird'" in message[0] and message[-1].startswith("  fix: "), proc.stderr
    assert "Docker" not in proc.stderr and "bug" not in proc.stderr
