"""The README's parallel-branches blocks run as written: the Python API and the command lines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import VENV, blocks_of, clean_env, run_block

from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest

ROOT = Path(__file__).resolve().parent.parent
OLD = "    mid = len(ordered) // 2\n    return ordered[mid]\n"
GOOD = (
    "    mid = len(ordered) // 2\n"
    "    if len(ordered) % 2:\n"
    "        return ordered[mid]\n"
    "    return (ordered[mid - 1] + ordered[mid]) / 2\n"
)
WRONG = "    mid = len(ordered) // 2\n    return ordered[0]\n"

pytestmark = pytest.mark.docker


def fix(new: str) -> list[str]:
    call = {
        "name": "str_replace_editor",
        "arguments": {
            "command": "str_replace",
            "path": "/workspace/textstats/stats.py",
            "old_str": OLD,
            "new_str": new,
        },
    }
    return [
        "fix\n</think>\n\n<tool_call>\n" + json.dumps(call) + "\n</tool_call>",
        "done\n</think>\n\nFixed.",
    ]


class ByArrival:
    """Random seeds per branch: the first seed seen gets the first script, and so on."""

    def __init__(self, scripts: list[list[str]]) -> None:
        self.scripts, self.seeds = scripts, []

    def __call__(self, req: ScriptedRequest) -> str:
        params = req.sampling_params
        if params.get("max_new_tokens") == 1:
            return "x"
        if params["sampling_seed"] not in self.seeds:
            self.seeds.append(params["sampling_seed"])
        script = self.scripts[self.seeds.index(params["sampling_seed"])]
        return script[min((req.prompt or "").count("<tool_response>"), len(script) - 1)]


def user_dir(tmp_path: Path) -> Path:
    cwd = tmp_path / "cwd"
    shutil.copytree(
        ROOT / "examples" / "coding_assistant" / "repo", cwd / "examples" / "coding_assistant" / "repo"
    )
    return cwd


def test_branches_python_block_runs(sandbox_image, tmp_path) -> None:
    block = blocks_of("python")[-1]
    assert "agent.explore(" in block.body
    cwd = user_dir(tmp_path)
    script = cwd / "explore.py"
    script.write_text(block.body)
    route = ByArrival([fix(WRONG), fix(GOOD), fix(WRONG), ["no\n</think>\n\nLooks fine."]])
    with ScriptedModelServer(route) as server:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=cwd,
            env=clean_env(QWQ_MODEL_URL=server.url, QWQ_SANDBOX_IMAGE=sandbox_image),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert sum(ln.startswith("branch ") and "exited 0" in ln for ln in lines) == 1, done.stdout
    # Checked on what the winner delivers: its patch, applied in a fresh sandbox to the start state.
    assert re.search(
        r"winner: \d \(`python3 -m unittest -q` exited 0 on its patch in a fresh sandbox\)", done.stdout
    )
    assert (cwd / "traces" / "explore.branch-3.jsonl").exists()


def test_branches_command_lines_run(sandbox_image, tmp_path) -> None:
    if not (VENV / "bin" / "qwq-agent").exists():
        pytest.skip(f"the tests do not run from a virtualenv with the qwq-agent command ({VENV})")
    block = blocks_of("bash")[-1]
    cwd = user_dir(tmp_path)
    route = ByArrival([fix(WRONG), fix(GOOD), fix(WRONG), fix(WRONG)])
    with ScriptedModelServer(route) as server:
        env = clean_env(
            QWQ_MODEL_URL=server.url,
            QWQ_SANDBOX_IMAGE=sandbox_image,
            PATH=f"{VENV / 'bin'}:{clean_env()['PATH']}",
        )
        done = run_block(block, cwd, env, {})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert len(re.findall(r"^branch \d \(seed \d+\)", done.stdout, re.M)) == 4
    assert re.search(r"branch \d won: `python3 -m unittest -q` exited 0", done.stdout)
    assert "4 branches" in done.stdout and done.stdout.count("first turn") == 4  # trace show --branches
    assert (cwd / "traces" / "fix-replayed.jsonl").exists() and "Traceback" not in out
