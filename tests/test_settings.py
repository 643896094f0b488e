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
