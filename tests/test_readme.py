"""Every fenced block of README.md runs, so the README cannot drift from what the code does.

Shell blocks run as bash scripts (the `qwq-agent` command from the virtualenv the README activates) in a
temporary folder, against the scripted model server standing in for SGLang and real sandboxes; the
Python blocks run as complete scripts; the `text` block's command prints what the README shows.

A README line this file does not know fails `test_every_block_is_run`: a new command must be added to
`SUBSTITUTIONS`/`SKIPPED` below (with the reason) or run as it is. What is changed before running:

- `SKIPPED`: lines that cannot run here, each with the reason;
- `SUBSTITUTIONS`: text replaced in a line (GPU commands get `--print-command`; the model URL becomes the
  scripted server's; `<run-id>` the id of the first run's trace; the MCP server of the example becomes
  the test's own).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from git_repo import git

from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MCP_SERVER = ROOT / "tests" / "mcp_server.py"
VENV = Path(sys.executable).parent.parent
MARK = "::: README line "

SKIPPED = {
    "./scripts/test.sh": "the whole suite: running it from inside the suite would recurse (CI runs it)",
    "pip install -e '.[serve]'": "installs SGLang, for a GPU machine; test_the_extras_the_readme_installs_exist "
    "checks that the extra is declared",
}
RUN_ID = "$(ls -tr traces | head -n1 | sed 's/[.]jsonl$//')"
SUBSTITUTIONS = {
    # SGLang needs a GPU: show the launch command the same flags make.
    "qwq-agent serve --tp 2": "qwq-agent serve --tp 2 --print-command",
    "qwq-agent serve --dp 2 --router-policy affinity": "qwq-agent serve --dp 2 --router-policy affinity --print-command",
    "export QWQ_MODEL_URL=http://127.0.0.1:30000": "export QWQ_MODEL_URL={model_url}",
    "source .venv/bin/activate": "source {venv}/bin/activate",
    "./scripts/demo.sh": "{root}/scripts/demo.sh",
    "<run-id>": RUN_ID,
    "'python my_server.py --flag'": "'{python} {mcp_server} --name readme'",
    "--mcp-url http://127.0.0.1:8000/mcp": "--mcp-url {mcp_url}",
}


@dataclass
class Block:
    lang: str
    body: str
    line: int  # of the opening fence, 1-based


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    found = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S):
        found.append(Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1))
    return found


def command_of(line: str) -> str:
    """A README shell line without its trailing `# comment`."""
    return re.sub(r"\s+#\s.*$", "", line).strip()


def shell_script(block: Block, values: dict[str, str]) -> tuple[str, list[str]]:
    """The block as a bash script that marks each line before running it; and the lines skipped."""
    lines, skipped = ["set -euo pipefail"], []
    for offset, raw in enumerate(block.body.splitlines(), start=1):
        command = command_of(raw)
        if not command:
            continue
        if command in SKIPPED:
            skipped.append(command)
            continue
        for old, new in SUBSTITUTIONS.items():
            if old in command:
                command = command.replace(old, new.format(**values))
        lines.append(f"echo '{MARK}{block.line + offset}' >&2")
        lines.append(command)
    return "\n".join(lines) + "\n", skipped


def by_line(stderr: str, stdout: str) -> dict[int, str]:
    """The stderr of each README line, keyed by line number (stdout is asserted on whole)."""
    parts = re.split(rf"^{re.escape(MARK)}(\d+)\n", stderr, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def model(request: ScriptedRequest) -> str:
    """QwQ's part in the README's runs: one fitting tool call per task, then an answer."""
    prompt = request.prompt or ""
    turn = prompt.rsplit("<|im_start|>user", 1)[-1]
    if "<tool_response>" in turn:
        return "The tool answered.\n</think>\n\nDone: the tool's result is above."
    if "Plot sin(x)" in prompt:
        code = (
            "import numpy as np, matplotlib.pyplot as plt\n"
            "x = np.linspace(0, 2 * np.pi, 200)\nplt.plot(x, np.sin(x))\nplt.show()\n"
            "print([0, round(np.pi, 4), round(2 * np.pi, 4)])"
        )
        return "Plot it.\n</think>\n\n" + call("python", code=code)
    if "Make the tests pass" in prompt:
        fix = call(
            "str_replace_editor",
            command="str_replace",
            path="/workspace/calc.py",
            old_str="a - b",
            new_str="a + b",
        )
        return "The operator is wrong.\n</think>\n\n" + fix
    if "radix caches" in prompt:
        return "Search the notes.\n</think>\n\n" + call("search_docs", query="radix cache")
    if "What is 2 + 3" in prompt:
        return "Use the server's tool.\n</think>\n\n" + call("add", a=2, b=3)
    return "Nothing to do.\n</think>\n\nDone."


def user_folder(tmp_path: Path) -> tuple[Path, Path]:
    """What a user of the README has at hand: a repository, notes, a raw QwQ output; and a HOME."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    repo = cwd / "myrepo"
    repo.mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    )
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "add() and its test")
    notes = home / "notes"
    notes.mkdir(parents=True)
    (notes / "radix.md").write_text(
        "# Radix caches\n\nSGLang's radix cache reuses the KV cache of shared prefixes.\n"
    )
    (cwd / "output.txt").write_text(
        'Think.\n</think>\n\n<tool_call>\n{"name": "python", "arguments": {"code": "1 + 1"}}\n</tool_call>'
    )
    return cwd, home


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without model settings a developer may have set."""
    drop = ("QWQ_MODEL_URL", "QWQ_API", "OPENAI_BASE_URL", "QWQ_OPENAI_BASE_URL", "VIRTUAL_ENV")
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if not p.startswith(str(VENV))
    )
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PATH": path, **extra}


def run_block(
    block: Block, cwd: Path, env: dict[str, str], values: dict[str, str]
) -> subprocess.CompletedProcess:
    script, _ = shell_script(block, values)
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=540
    )


def blocks_of(lang: str) -> list[Block]:
    return [b for b in readme_blocks() if b.lang == lang]


# ----------------------------------------------------------------------------------------------- tests


def test_every_block_is_run() -> None:
    """Each block is one of those the tests below run; a new one needs its own test."""
    kinds = [(b.lang, b.body.splitlines()[0]) for b in readme_blocks()]
    assert kinds == [
        (
            "bash",
            "./scripts/demo.sh    # a coding agent fixes a repository's failing tests inside a real sandbox",
        ),
        ("bash", "source .venv/bin/activate               # after the quickstart: `qwq-agent` on PATH"),
        ("text", '$ DOCKER_HOST=unix:///nonexistent.sock qwq-agent run "..." --tools python'),
        ("python", "import asyncio"),
        ("python", "import asyncio"),
        (
            "bash",
            "qwq-agent run \"...\" --mcp 'python my_server.py --flag' --mcp-url http://127.0.0.1:8000/mcp",
        ),
        ("python", "from qwq_agent.agent.approval import ApprovalDecision, ApprovalPolicy, Rule"),
        ("python", "from qwq_agent.agent.approval import pending_approval, resume_decisions"),
        ("python", "import asyncio"),  # parallel branches: tests/test_branches_readme.py runs it
        (
            "bash",
            'qwq-agent run "Fix the failing test." --workspace examples/coding_assistant/repo '
            "--tools shell,str_replace_editor --branches 4 --select 'tests:python3 -m unittest -q' "
            "--trace traces/fix.jsonl",
        ),
    ]
    for block in blocks_of("bash"):
        _, skipped = shell_script(
            block, dict.fromkeys(("model_url", "venv", "root", "python", "mcp_server", "mcp_url"), "")
        )
        assert set(skipped) <= set(SKIPPED)
    assert all(v for v in SKIPPED.values()), "every skipped line states why"


def test_the_extras_the_readme_installs_exist() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"serve", "mcp", "otel", "dev"} <= set(extras)
    assert any(dep.startswith("sglang") for dep in extras["serve"])


@pytest.mark.docker
def test_quickstart_demo(sandbox_image, tmp_path) -> None:
    block = blocks_of("bash")[0]
    env = clean_env(QWQ_SANDBOX_IMAGE=sandbox_image)
    done = run_block(block, tmp_path, env, {"root": str(ROOT)})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "✓ coding_assistant" in done.stdout
    # The hint the README promises: how to get `qwq-agent` on PATH.
    assert "source .venv/bin/activate" in done.stdout


@pytest.mark.docker
def test_using_it_with_a_real_model(sandbox_image, tmp_path) -> None:
    if not (VENV / "bin" / "activate").exists() or not (VENV / "bin" / "qwq-agent").exists():
        pytest.skip(f"the tests do not run from a virtualenv with the qwq-agent command ({VENV})")
    cwd, home = user_folder(tmp_path)
    env = clean_env(HOME=str(home), QWQ_SANDBOX_IMAGE=sandbox_image)
    block = blocks_of("bash")[1]
    with ScriptedModelServer(model) as server:
        done = run_block(block, cwd, env, {"model_url": server.url, "venv": str(VENV)})
    out = by_line(done.stderr, done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = {command_of(line): block.line + i for i, line in enumerate(block.body.splitlines(), start=1)}
    assert set(out) == {n for c, n in lines.items() if c not in SKIPPED}, "every line ran"

    # The plot: an image saved where the terminal can open it (an absolute path).
    saved = re.findall(r"image saved: (\S+\.png)", " ".join(done.stdout.split()))
    assert saved and Path(saved[0]).is_absolute() and Path(saved[0]).exists()
    # The repository: fixed in the copy, with the patch written and applicable to the original.
    assert (cwd / "out" / "workspace" / "calc.py").read_text().endswith("return a + b\n")
    assert "+    return a + b" in (cwd / "out.diff").read_text()
    git(cwd / "myrepo", "apply", "--check", str(cwd / "out.diff"))
    assert (home / "notes" / ".qwq-docindex.sqlite3").exists()
    assert (cwd / "plots" / "image-1.png").read_bytes().startswith(b"\x89PNG")  # trace show --images
    assert "[1] radix.md:1 — Radix caches" in done.stdout  # search_docs found the note
    # trace show, replay and resume used the first run's trace; parse printed JSON.
    assert "Plot sin(x)" in done.stdout
    assert '"name": "python"' in done.stdout


@pytest.mark.docker
def test_failure_example_prints_what_the_readme_shows() -> None:
    block = blocks_of("text")[0]
    first, *expected = block.body.splitlines()
    command = first.removeprefix("$ ")
    done = subprocess.run(
        ["bash", "-c", command],
        env=clean_env(PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 4
    shown = [" ".join(line.split()) for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert shown == [" ".join(line.split()) for line in expected]


@pytest.mark.docker
def test_python_api_block_is_the_hello_example_and_runs(sandbox_image, tmp_path) -> None:
    block = blocks_of("python")[0]
    example = (ROOT / "examples" / "hello.py").read_text()
    without_docstring = re.sub(r'^""".*?"""\n\n', "", example, flags=re.S)
    assert block.body == without_docstring, "the README shows examples/hello.py (less its docstring)"
    turns = [
        "Both populations.\n</think>\n\n"
        + call("population", city="Tokyo")
        + "\n"
        + call("population", city="Paris"),
        "The difference.\n</think>\n\n" + call("python", code="print(round(14 - 2.1, 1))"),
        "Done.\n</think>\n\nAbout 11.9 million more.",
    ]
    script = tmp_path / "snippet.py"
    script.write_text(block.body)
    with ScriptedModelServer(turns) as server:
        done = subprocess.run(
            [sys.executable, str(script)],
            env=clean_env(QWQ_MODEL_URL=server.url, QWQ_SANDBOX_IMAGE=sandbox_image),
            capture_output=True,
            text=True,
            timeout=180,
        )
        prompts = [r.prompt or "" for r in server.requests]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "completed About 11.9 million more."
    assert "11.9" in prompts[-1]


@pytest.mark.docker
def test_mcp_block_runs_with_a_real_mcp_server(sandbox_image, tmp_path) -> None:
    block = blocks_of("python")[1]
    script = tmp_path / "mcp_snippet.py"
    script.write_text(block.body)
    server_cmd = f"{sys.executable} {MCP_SERVER} --name readme"
    with ScriptedModelServer(model) as server:
        done = subprocess.run(
            [sys.executable, str(script), server_cmd],
            env=clean_env(QWQ_MODEL_URL=server.url, QWQ_SANDBOX_IMAGE=sandbox_image),
            capture_output=True,
            text=True,
            timeout=180,
        )
        prompts = [r.prompt or "" for r in server.requests]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("completed ")
    assert "<tool_response>\n5\n</tool_response>" in prompts[-1]  # the MCP server's add ran


@pytest.mark.docker
def test_mcp_command_line(sandbox_image, tmp_path) -> None:
    from mcp_helpers import http_server

    block = blocks_of("bash")[2]
    with ScriptedModelServer(model) as server, http_server("readme-http") as (mcp_url, _):
        values = {"python": sys.executable, "mcp_server": str(MCP_SERVER), "mcp_url": mcp_url}
        env = clean_env(
            QWQ_MODEL_URL=server.url,
            QWQ_SANDBOX_IMAGE=sandbox_image,
            PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
        )
        done = run_block(block, tmp_path, env, values)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "MCP tools:" in done.stdout and "readme" in done.stdout


def _approval_block(first_line: str) -> Block:
    return next(b for b in blocks_of("python") if b.body.startswith(first_line))


def _in_main(prelude: str, snippet: str, epilogue: str) -> str:
    """One script: `prelude`, the README's snippet as written, then `epilogue`, inside `async def main()`."""
    body = "\n".join((prelude, snippet, epilogue))
    return (
        "import asyncio\n\n\nasync def main():\n"
        + "".join("    " + line + "\n" if line.strip() else "\n" for line in body.splitlines())
        + "\n\nasyncio.run(main())\n"
    )


def test_approval_policy_block_runs(tmp_path) -> None:
    block = _approval_block("from qwq_agent.agent.approval import ApprovalDecision, ApprovalPolicy, Rule")
    prelude = """\
import os
from qwq_agent import Agent, AgentConfig, SGLangClient, build_tools
model = SGLangClient(os.environ["QWQ_MODEL_URL"])
tools = build_tools(["shell"])"""
    epilogue = """\
result = await agent.run("Clean the machine")
print(result.status, result.answer)"""
    turns = [
        "Wipe it.\n</think>\n\n" + call("shell", command="rm -rf /"),
        "Refused.\n</think>\n\nI was not allowed to.",
    ]
    script = tmp_path / "approval.py"
    script.write_text(_in_main(prelude, block.body, epilogue))
    with ScriptedModelServer(turns) as server:
        done = subprocess.run(
            [sys.executable, str(script)],
            env=clean_env(QWQ_MODEL_URL=server.url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        prompts = [r.prompt or "" for r in server.requests]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "completed I was not allowed to."
    # The approver denied the call: the shell never ran (no sandbox was given), the model read the reason.
    assert "that would wipe the machine" in prompts[1]


def test_deferred_approval_block_runs(tmp_path) -> None:
    block = _approval_block("from qwq_agent.agent.approval import pending_approval, resume_decisions")
    first_run = """\
import os
from qwq_agent import Agent, AgentConfig, SGLangClient
from qwq_agent.agent.approval import ApprovalDecision, ApprovalPolicy, Rule
from qwq_agent.agent.replay import ReplayModel, load_recording
from qwq_agent.testing.helpers import add
live_model = SGLangClient(os.environ["QWQ_MODEL_URL"])
tools = [add]
policy = ApprovalPolicy(rules=[Rule(tool="add", action="ask")])
first = Agent(live_model, tools, config=AgentConfig(approval=policy), trace_path="run.jsonl")
assert (await first.run("What is 2 + 3?")).status == "awaiting_approval\""""
    epilogue = """\
print(agent.result.status, agent.result.answer)"""
    turns = [
        "Add them.\n</think>\n\n" + call("add", a=2, b=3),
        "Done.\n</think>\n\nIt is 5.",
    ]
    script = tmp_path / "deferred.py"
    script.write_text(_in_main(first_run, block.body, epilogue))
    with ScriptedModelServer(turns) as server:
        done = subprocess.run(
            [sys.executable, str(script)],
            env=clean_env(QWQ_MODEL_URL=server.url),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        prompts = [r.prompt or "" for r in server.requests]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "completed It is 5."
    # The first turn was replayed from the trace, not asked again; the live model saw the tool's result.
    assert len(prompts) == 2 and "<tool_response>\n5\n</tool_response>" in prompts[1]
