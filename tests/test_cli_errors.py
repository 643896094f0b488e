"""The central error mapping, fed with exceptions the real libraries raise (not hand-made look-alikes)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from qwq_agent.cli.errors import EXIT_BUG, EXIT_DOCKER, EXIT_MODEL, EXIT_USAGE, CliError, explain, report


def raised(fn) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        fn()
    except BaseException as exc:  # the point is to catch whatever it raises
        return exc
    raise AssertionError("expected an exception")


def test_docker_sdk_without_an_engine_maps_to_docker(monkeypatch):
    import docker

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    exc = raised(lambda: docker.from_env().ping())
    error = explain(exc)
    assert error is not None and error.code == EXIT_DOCKER
    assert "Docker failed" in error.what and "DOCKER_HOST" in error.fix


@pytest.mark.docker
def test_sandbox_start_with_a_missing_image_maps_to_build_advice(sandbox_image):
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    async def start() -> None:
        async with DockerSandbox.create(SandboxConfig(image="qwq-agent-sandbox:no-such-tag")):
            pass

    exc = raised(lambda: asyncio.run(start()))
    error = explain(exc)
    assert error is not None and error.code == EXIT_DOCKER
    assert "sandbox image is missing" in error.what and "qwq-agent sandbox build" in error.fix


def test_files_databases_and_models(tmp_path):
    garbage = tmp_path / "x.db"
    garbage.write_bytes(b"not sqlite" * 100)
    exc = raised(lambda: sqlite3.connect(garbage).execute("SELECT 1 FROM sqlite_master").fetchall())
    error = explain(exc)
    assert error is not None and error.code == EXIT_USAGE and "qwq-agent index" in error.fix

    exc = raised(lambda: open(tmp_path / "absent.txt"))
    error = explain(exc)
    assert error is not None and "absent.txt" in error.what and "No such file" in error.what

    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    exc = raised(lambda: (tmp_path / "bin").read_text("utf-8"))
    error = explain(exc)
    assert error is not None and "not UTF-8" in error.what

    from qwq_agent.agent.clients.errors import ModelConnectionError

    error = explain(ModelConnectionError("connection dropped"))
    assert error is not None and error.code == EXIT_MODEL and "connection dropped" in error.what


def test_docker_named_errors_from_the_sandbox_layer_are_recognised():
    """The sandbox layer's typed Docker errors (timeouts, unreachable engine) map without being listed here."""
    from qwq_agent.sandbox.errors import SandboxError

    class DockerTimeout(SandboxError):
        pass

    error = explain(DockerTimeout("the Docker engine did not answer POST /containers/create within 60 s"))
    assert error is not None and error.code == EXIT_DOCKER and "did not answer" in error.what


def test_an_unknown_error_is_reported_as_a_bug_in_one_line(capsys):
    assert explain(RuntimeError("boom")) is None
    assert report(RuntimeError("boom"), "run", debug=False) == EXIT_BUG
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "qwq-agent run: unexpected error: RuntimeError: boom",
        "  fix: this is a bug in qwq-agent: rerun with --debug and report the traceback",
    ]
    assert report(CliError("x failed", "do y", code=5), "index", debug=False) == 5
    assert capsys.readouterr().err == "qwq-agent index: x failed\n  fix: do y\n"


def test_error_text_from_a_peer_reaches_the_terminal_as_text(capsys):
    """An error's text can quote a server, a model or a file (a model server's error body, a log line):
    `render` shows control characters as escapes, whichever mapping (or none) built the message."""
    from qwq_agent.agent.clients.errors import ModelServerError

    clipboard = "\x1b]52;c;cHduZWQ=\x07"
    assert report(ModelServerError(f"500: {clipboard}\x1b[2J", status_code=500), "run", debug=False) == 3
    assert report(RuntimeError(f"boom\u202e{clipboard}"), "run", debug=False) == EXIT_BUG
    assert report(CliError(f"x failed {clipboard}", "read log (it ends: \x1b[31mERR)"), "serve", debug=False)
    err = capsys.readouterr().err
    assert not any(ch in err for ch in "\x1b\x07\u202e"), repr(err)
    assert "500: \\x1b]52;c;cHduZWQ=\\x07\\x1b[2J" in err and "boom\\u202e" in err
    assert (
        "qwq-agent serve: x failed \\x1b]52;c;cHduZWQ=\\x07\n  fix: read log (it ends: \\x1b[31mERR)\n" in err
    )


def test_socket_errors_get_host_advice_not_path_advice():
    import socket

    def bind_test_net() -> None:
        with socket.socket() as s:
            s.bind(("192.0.2.1", 0))  # TEST-NET-1: an address of no machine

    for exc in (raised(bind_test_net), raised(lambda: socket.getaddrinfo("no-such-host.invalid", 80))):
        error = explain(exc)
        assert error is not None and "--host" in error.fix and "path" not in error.fix, error.render("x")


def test_each_exit_code_has_one_meaning():
    """`awaiting_approval` exited with 3, the model server's code: a script could not tell them apart."""
    from qwq_agent.cli import approval_prompt, errors

    codes = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    codes["EXIT_AWAITING_APPROVAL"] = approval_prompt.EXIT_AWAITING_APPROVAL  # the code `run` returns
    assert len(set(codes.values())) == len(codes), codes


def test_a_missing_recipe_file_is_an_incomplete_install_not_a_bug(tmp_path):
    """`sandbox build` printed it as "error: ..." with exit 1; elsewhere it was reported as our bug."""
    from qwq_agent.sandbox.image import Recipe

    error = explain(raised(lambda: Recipe(directory=tmp_path).file("base.Dockerfile")))
    assert error is not None and error.code == EXIT_DOCKER
    assert "recipe file missing" in error.what and "reinstall" in error.fix


def test_a_trace_that_cannot_be_read_as_asked_is_bad_input_not_a_bug(tmp_path):
    """A `TraceError` that reaches the CLI unmapped (a trace of several runs read without its run id)
    was reported as our bug (exit 70)."""
    from qwq_agent.agent.events import Final, RunStarted
    from qwq_agent.agent.trace import read_trace

    path = tmp_path / "old.jsonl"
    runs = [RunStarted(run_id="r1", task="t", model="m", tools=[]), Final(run_id="r1", status="completed"),
            RunStarted(run_id="r2", task="t", model="m", tools=[]), Final(run_id="r2", status="completed")]  # fmt: skip
    path.write_text("".join(e.model_dump_json() + "\n" for e in runs))
    error = explain(raised(lambda: read_trace(path)))
    assert error is not None and error.code == EXIT_USAGE
    assert "holds 2 runs (r1, r2)" in error.what and "--run-id" in error.fix
