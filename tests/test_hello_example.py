"""`examples/hello.py`, the README's first example, runs as written: a real subprocess, a real sandbox, and
the scripted model server in place of QwQ (it only decides what the model writes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwq_agent.testing.helpers import call
from qwq_agent.testing.scripted_server import ScriptedModelServer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.docker


def test_hello_example_runs_its_tool_and_python_in_a_sandbox(sandbox_image):
    turns = [
        "I need both populations.\n</think>\n\n"
        + call("population", city="Tokyo")
        + "\n"
        + call("population", city="Paris"),
        "Now the difference.\n</think>\n\n" + call("python", code="print(round(14 - 2.1, 1))"),
        "Done.\n</think>\n\nAbout 11.9 million more people live in Tokyo.",
    ]
    with ScriptedModelServer(turns) as server:
        env = {**os.environ, "QWQ_MODEL_URL": server.url, "QWQ_SANDBOX_IMAGE": sandbox_image}
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "hello.py")],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        prompts = [r.prompt for r in server.requests]
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "completed About 11.9 million more people live in Tokyo."
    assert len(prompts) == 3
    assert "14 million" in prompts[1] and "2.1 million" in prompts[1]  # our tool ran, both calls
    assert "11.9" in prompts[2]  # python ran in the sandbox
