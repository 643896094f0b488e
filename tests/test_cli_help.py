"""`--help` documents every option with its default, the tools, and every environment variable."""

from __future__ import annotations

import argparse
import subprocess
import sys

from qwq_agent.cli.main import build_parser, subparsers
from qwq_agent.settings import Settings
from qwq_agent.tools.catalog import TOOL_NAMES


def test_every_option_of_every_subcommand_has_help() -> None:
    missing = []
    for parser in subparsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{parser.prog} {c.dest}" for c in action._choices_actions if not c.help]
            elif not action.help:
                missing.append(f"{parser.prog} {action.option_strings or action.dest}")
    assert missing == []


def test_help_shows_defaults() -> None:
    serve = subprocess.run(
        [sys.executable, "-m", "qwq_agent.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    flat = " ".join(serve.stdout.split())
    assert "(default: 32768)" in flat and "(default: lpm)" in flat and "(default: 30000)" in flat


def test_run_help_lists_the_tools() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qwq_agent.cli.main", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tools = out.split("\ntools:\n", 1)[1]
    for name in TOOL_NAMES:
        assert f"\n  {name} " in "\n" + tools


def test_top_level_help_lists_every_environment_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qwq_agent.cli.main", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for info in Settings.model_fields.values():
        for name in info.validation_alias.choices:  # type: ignore[union-attr]
            assert name in out
    assert "QWQ_MODEL_URL [http://127.0.0.1:30000]" in out
    assert "QWQ_DOCKER_PING_TIMEOUT [10.0]" in out
