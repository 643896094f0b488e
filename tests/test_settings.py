"""One settings object reads the environment; the CLI honours what the clients document."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from qwq_agent.agent.clients.openai_chat import OpenAIChatClient
from qwq_agent.settings import SettingsError, get_settings
from qwq_agent.testing.scripted_server import ScriptedModelServer

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
MODEL_VARS = (
    "QWQ_MODEL_URL",
    "QWQ_API",
    "QWQ_MODEL",
    "QWQ_OPENAI_BASE_URL",
    "OPENAI_BASE_URL",
    "QWQ_OPENAI_MODEL",
    "OPENAI_MODEL",
    "QWQ_OPENAI_API_KEY",
    "OPENAI_API_KEY",
    "DASHSCOPE_API_KEY",
)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MODEL_VARS}
    return {**env, **extra}


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_names_are_tried_in_order_and_empty_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in MODEL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://b.example/v1")
    monkeypatch.setenv("QWQ_OPENAI_BASE_URL", "")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-dash")
    s = get_settings()
    assert s.openai_base_url == "http://b.example/v1"
    assert s.openai_api_key is not None and s.openai_api_key.get_secret_value() == "sk-dash"
    assert "sk-dash" not in repr(s)
    monkeypatch.setenv("QWQ_OPENAI_BASE_URL", "http://a.example")
    assert get_settings().openai_base_url == "http://a.example"


def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWQ_DOCKER_PING_TIMEOUT", "soon")
    with pytest.raises(SettingsError, match=r"QWQ_DOCKER_PING_TIMEOUT.*'soon'"):
        get_settings()


def test_a_bad_variable_is_one_line_from_the_cli() -> None:
    proc = subprocess.run(
        [*CLI, "trace", "show", "x.jsonl"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(QWQ_MODEL_CONNECT_TIMEOUT="-1"),
    )
    assert proc.returncode == 2
    assert "QWQ_MODEL_CONNECT_TIMEOUT" in proc.stderr and "Traceback" not in proc.stderr


def test_openai_client_reads_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in MODEL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("QWQ_OPENAI_MODEL", "qwq-plus")
    client = OpenAIChatClient()
    assert (client.base_url, client.model) == ("http://127.0.0.1:9/v1", "qwq-plus")


def test_run_api_openai_honours_openai_base_url_and_the_model_variable(tmp_path) -> None:
    """Before: `--api openai` used QWQ_MODEL_URL's default and sent `Qwen/QwQ-32B` whatever was set."""
    trace = tmp_path / "run.jsonl"
    with ScriptedModelServer(["Easy.\n</think>\n\nHello there."], model="qwq-plus") as server:
        env = _clean_env(
            QWQ_MODEL_URL=_dead_url(),
            OPENAI_BASE_URL=server.url + "/v1",
            OPENAI_MODEL="qwq-plus",
            OPENAI_API_KEY="sk-test",
        )
        proc = subprocess.run(
            [
                *CLI,
                "run",
                "Say hello.",
                "--api",
                "openai",
                "--tools",
                "fetch_url",
                "--json",
                "--trace",
                str(trace),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Hello there." in proc.stdout
        chat = [r for r in server.requests if r.path == "/v1/chat/completions"]
        assert chat and chat[0].body["model"] == "qwq-plus"
        assert chat[0].headers.get("authorization") == "Bearer sk-test"


def test_every_variable_the_package_reads_is_a_setting_listed_in_help() -> None:
    """settings.py: "nothing else in the package reads os.environ" (but the in-container supervisor);
    DOCKER_CERT_PATH, which picks a tcp:// Docker host's TLS certificates, was read straight from it."""
    import re
    from pathlib import Path

    import qwq_agent

    root = Path(qwq_agent.__file__).parent
    # A named variable read (a child's environment passed on whole, `{**os.environ, ...}`, is no read).
    reads = re.compile(r"(?:os\.environ\.get|os\.getenv|os\.environ\[)\(?\s*[\"']([A-Z_][A-Z0-9_]*)[\"']")
    read = {
        name: str(f.relative_to(root))
        for f in root.rglob("*.py")
        if "supervisor" not in f.parts and f.name != "settings.py"
        for name in reads.findall(f.read_text())
    }
    assert read == {}
    help_text = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "DOCKER_CERT_PATH" in help_text


def test_docker_cert_path_is_read_through_settings(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))
    assert get_settings().docker_cert_path == str(tmp_path)
    monkeypatch.setenv("DOCKER_CERT_PATH", "")  # empty counts as unset
    assert get_settings().docker_cert_path is None


NO_PASSWD_UID = 54321  # a user id with no passwd entry: Path.home() has nothing to go on without HOME


def _as_a_user_without_a_home(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """`argv` run with HOME unset, as a user id without a passwd entry (an unprivileged user namespace:
    what a container started with `--user 1234`, or an `env -i` wrapper, gets)."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    namespace = ["unshare", "--user", f"--map-user={NO_PASSWD_UID}", f"--map-group={NO_PASSWD_UID}"]
    if subprocess.run([*namespace, "true"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("unprivileged user namespaces are not allowed here")
    clean = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME")}
    return subprocess.run(
        [*namespace, *argv], capture_output=True, text=True, timeout=60, env={**clean, **env}, input="hi"
    )


def test_commands_work_without_a_home_directory(tmp_path) -> None:
    # Path.home() ran when settings.py was imported: every command, --version too, died with a traceback.
    for argv in (["--version"], ["--help"], ["parse", "--compact", "-"]):
        for env in ({}, {"XDG_CACHE_HOME": str(tmp_path)}):
            proc = _as_a_user_without_a_home([*CLI, *argv], **env)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, (argv, env, proc.stderr)
            if argv == ["--help"]:
                assert "XDG_CACHE_HOME [~/.cache]" in proc.stdout


def test_the_cache_folder_is_found_when_needed_or_named_as_unknown(tmp_path) -> None:
    code = "from qwq_agent.sandbox.image.debian import deb_cache_dir; print(deb_cache_dir())"
    given = _as_a_user_without_a_home([sys.executable, "-c", code], XDG_CACHE_HOME=str(tmp_path))
    assert given.returncode == 0 and given.stdout.strip() == str(tmp_path / "qwq-agent" / "debs"), (
        given.stderr
    )
    unknown = _as_a_user_without_a_home([sys.executable, "-c", code])
    assert unknown.returncode != 0
    last = unknown.stderr.strip().splitlines()[-1]
    assert last.startswith("qwq_agent.settings.SettingsError: ") and "XDG_CACHE_HOME" in last, last
    assert f"user id {NO_PASSWD_UID}" in last and "HOME" in last
    # as the CLI reports it (a build needing the cache raises it): one line, and the fix is to set one
    code = (
        "from qwq_agent.cli.errors import report; from qwq_agent.settings import get_settings\n"
        "try:\n    get_settings().cache_home\nexcept Exception as exc:\n"
        "    raise SystemExit(report(exc, 'sandbox build', debug=False))"
    )
    shown = _as_a_user_without_a_home([sys.executable, "-c", code])
    assert shown.returncode == 2 and shown.stderr.splitlines() == [
        "qwq-agent sandbox build: no cache folder: XDG_CACHE_HOME is unset and the home directory is unknown "
        f"(HOME is unset and user id {NO_PASSWD_UID} has no passwd entry)",
        "  fix: set XDG_CACHE_HOME (or HOME) to a folder this user can write",
    ], shown.stderr
