"""The loop with the real sandbox tools: state, figures, timeouts and a container killed mid-run."""

from __future__ import annotations

import json

import docker
import pytest

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import ToolResultEvent
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.sandbox import DockerSandbox, SandboxConfig
from qwq_agent.testing.scripted_server import ScriptedModelServer, ScriptedRequest
from qwq_agent.tools.catalog import build_tools

pytestmark = pytest.mark.docker


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


async def run(server, sandbox, task="task"):
    tools = build_tools(["python", "shell", "str_replace_editor"])
    async with SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, tools, sandbox=sandbox, config=AgentConfig(check_language=False))
        events = [ev async for ev in agent.stream(task)]
    return agent.result, events


async def test_state_persists_and_figures_come_back_as_images(sandbox_image):
    turns = [
        "x\n</think>\n\n" + call("python", code="import numpy as np\nxs = np.arange(5)\nxs.sum()"),
        "y\n</think>\n\n"
        + call(
            "python", code="import matplotlib.pyplot as plt\nplt.plot(xs, xs**2)\nplt.show()\nprint(len(xs))"
        ),
        "z\n</think>\n\n"
        + call("str_replace_editor", command="create", path="/workspace/a.txt", file_text="one\ntwo\n")
        + "\n"
        + call("shell", command="wc -l /workspace/a.txt"),
        "done\n</think>\n\nok",
    ]
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        async with ScriptedModelServer(turns) as server:
            result, events = await run(server, sb)
    assert result.status == "completed"
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert "Out: 10" in results[0].text
    assert results[1].images and "figure" in results[1].text and "5" in results[1].text
    assert "File created successfully" in results[2].text or "File created successfully" in results[3].text
    assert any("2 /workspace/a.txt" in r.text for r in results)
    # The model sees text only: the image is announced, not inlined.
    assert "image(s) produced" in (server.requests[2].prompt or "")


async def test_python_timeout_is_reported_with_lost_state(sandbox_image):
    turns = [
        "x\n</think>\n\n" + call("python", code="a = 1"),
        "y\n</think>\n\n" + call("python", code="while True:\n    pass", timeout=2),
        "z\n</think>\n\n" + call("python", code="print('a' in globals())"),
        "done\n</think>\n\nok",
    ]
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        async with ScriptedModelServer(turns) as server:
            result, events = await run(server, sb)
    texts = [e.text for e in events if isinstance(e, ToolResultEvent)]
    assert result.status == "completed"
    assert "timed out after 2 s" in texts[1]
    assert "True" in texts[2] or "lost" in texts[1] + texts[2]


async def test_container_killed_between_steps_is_replaced_and_the_model_is_told(sandbox_image):
    killed = []

    def model(req: ScriptedRequest) -> str:
        n = len([r for r in server.requests if r.path == req.path])
        if n == 1:
            return "x\n</think>\n\n" + call("python", code="v = 41")
        if n == 2:
            docker.from_env().containers.get(sandbox.id).kill()
            killed.append(sandbox.id)
            return "y\n</think>\n\n" + call("python", code="print(v + 1)")
        if n == 3:
            return "z\n</think>\n\n" + call("python", code="print(1 + 1)")
        return "done\n</think>\n\nrecovered"

    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sandbox:
        async with ScriptedModelServer(model) as server:
            result, events = await run(server, sandbox)
        assert sandbox.id != killed[0]
    texts = [e.text for e in events if isinstance(e, ToolResultEvent)]
    assert result.status == "completed" and result.answer == "recovered"
    after_kill = "\n".join(texts[1:])
    assert "replaced" in after_kill or "SandboxDead" in after_kill
    assert "2" in texts[-1]


async def test_a_lost_sandbox_is_never_silent_whatever_the_tool(sandbox_image, tmp_path):
    # search_code's own output says nothing of a replaced sandbox: "No matches" in a fresh, empty
    # workspace read as if the run's file did not hold the text. The loop says it for any tool, and the
    # run (which may still end `completed`) records it as a warning, in its trace and its result.
    from qwq_agent.agent.events import Warning_
    from qwq_agent.agent.trace import read_trace
    from qwq_agent.tools.sandbox_tools import SANDBOX_REPLACED_NOTE

    killed = []

    def model(req: ScriptedRequest) -> str:
        n = len([r for r in server.requests if r.path == req.path])
        if n == 1:
            return "x\n</think>\n\n" + call("shell", command="echo 42 > /workspace/result.txt")
        if n == 2:
            docker.from_env().containers.get(sandbox.id).kill()
            killed.append(sandbox.id)
            return "y\n</think>\n\n" + call("search_code", pattern="42")
        if n == 3:
            return "z\n</think>\n\n" + call("shell", command="ls /workspace")
        return "done\n</think>\n\nThe file is gone."

    trace = tmp_path / "run.jsonl"
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sandbox:
        async with ScriptedModelServer(model) as server:
            async with SGLangClient(server.url, retry=NO_RETRY) as client:
                tools = build_tools(["shell", "search_code"])
                cfg = AgentConfig(check_language=False)
                agent = Agent(client, tools, sandbox=sandbox, config=cfg, trace_path=trace)
                events = [ev async for ev in agent.stream("task")]
        assert killed and sandbox.id != killed[0]
    result = agent.result
    assert result is not None and result.status == "completed"
    texts = [e.text for e in events if isinstance(e, ToolResultEvent)]
    assert texts[1].startswith(SANDBOX_REPLACED_NOTE) and "No matches" in texts[1]
    assert SANDBOX_REPLACED_NOTE not in texts[0] + texts[2]  # said once, where it happened
    lost = [e for e in events if isinstance(e, Warning_) and e.kind == "sandbox_replaced"]
    assert len(lost) == 1 and "search_code" in lost[0].message and "gone" in lost[0].message
    assert [w.kind for w in result.warnings] == ["sandbox_replaced"]
    recorded = [e for e in read_trace(trace) if isinstance(e, Warning_)]
    assert [w.kind for w in recorded] == ["sandbox_replaced"]


async def test_workspace_contents_land_in_workspace_without_caches(sandbox_image, tmp_path):
    from qwq_agent.agent.workspace import open_sandbox

    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "README.md").write_text("hi\n")
    async with open_sandbox(workspace=tmp_path, image=sandbox_image) as sb:
        listing = await sb.shell("cd /workspace && find . -mindepth 1 | sort")
    # `.git` goes in (the agent may `git log`/`git diff`); bytecode caches stay out.
    assert listing.stdout.split() == ["./.git", "./.git/HEAD", "./README.md", "./pkg", "./pkg/m.py"]


async def test_long_tool_calls_stream_started_and_output_events_before_their_result(sandbox_image, tmp_path):
    from qwq_agent.agent.events import ToolOutputDelta, ToolStarted
    from qwq_agent.agent.trace import read_trace

    command = "echo step one; until [ -e /tmp/go ]; do sleep 0.05; done; echo step two"
    turns = ["x\n</think>\n\n" + call("shell", command=command), "done\n</think>\n\nok"]
    trace = tmp_path / "run.jsonl"
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        async with ScriptedModelServer(turns) as server:
            tools = build_tools(["shell"])
            async with SGLangClient(server.url, retry=NO_RETRY) as client:
                agent = Agent(
                    client, tools, sandbox=sb, config=AgentConfig(check_language=False), trace_path=trace
                )
                events = []
                async for ev in agent.stream("task"):
                    events.append(ev)
                    if isinstance(ev, ToolOutputDelta) and "step one" in ev.text:
                        # The call is still running (it waits for this file): its output came first.
                        assert not any(isinstance(e, ToolResultEvent) for e in events)
                        await sb.shell("touch /tmp/go")
    assert agent.result.status == "completed"
    kinds = [type(e).__name__ for e in events]
    started = kinds.index("ToolStarted")
    first_delta = kinds.index("ToolOutputDelta")
    result = kinds.index("ToolResultEvent")
    assert kinds.index("ToolCallEvent") < started < first_delta < result
    deltas = [e for e in events if isinstance(e, ToolOutputDelta)]
    assert "".join(d.text for d in deltas) == "step one\nstep two\n"
    assert all(d.call_id == events[started].call_id and d.name == "shell" for d in deltas)
    assert isinstance(events[started], ToolStarted)
    # The result is what it always was: the whole output, for the model.
    assert "step one\nstep two" in events[result].text
    recorded = [type(e).__name__ for e in read_trace(trace)]
    assert "ToolStarted" in recorded and "ToolOutputDelta" in recorded
