"""The `Sandbox` and `Tool` seams: tools declare sandbox use in their definition; the loop keeps their order."""

from __future__ import annotations

import json

import pytest

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import ToolResultEvent
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.messages import ToolSpec
from qwq_agent.protocols import Sandbox, Tool, ToolContext, ToolOutput
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import FunctionTool, tool
from qwq_agent.tools.catalog import build_tools
from qwq_agent.tools.registry import ToolRegistry


def test_built_in_tools_declare_whether_they_use_the_sandbox() -> None:
    tools = {t.spec.name: t for t in build_tools(["python", "shell", "str_replace_editor", "search_code"])}
    assert {name: t.uses_sandbox for name, t in tools.items()} == {
        "python": True,
        "shell": True,
        "str_replace_editor": True,
        "search_code": True,
    }
    from qwq_agent.tools.fetch_url import FetchUrl
    from qwq_agent.tools.web_search import WebSearch

    assert FetchUrl.uses_sandbox is False and WebSearch.uses_sandbox is False


def test_the_decorator_and_from_model_take_the_declaration() -> None:
    @tool(uses_sandbox=True)
    async def touch(ctx: ToolContext, path: str) -> str:
        return path

    @tool
    def add(a: int, b: int) -> int:
        return a + b

    assert touch.uses_sandbox is True and add.uses_sandbox is False
    assert isinstance(touch, Tool) and isinstance(add, Tool)
    from pydantic import BaseModel

    class Args(BaseModel):
        x: int

    assert FunctionTool.from_model(Args, lambda a: a.x, uses_sandbox=True).uses_sandbox is True


def test_registry_refuses_a_tool_that_does_not_declare_sandbox_use() -> None:
    class Undeclared:
        spec = ToolSpec(name="u", description="", parameters={"type": "object", "properties": {}})

        async def __call__(self, arguments: dict, context: ToolContext) -> ToolOutput:
            return ToolOutput(text="")

    with pytest.raises(TypeError, match="uses_sandbox"):
        ToolRegistry([Undeclared()])


def test_tool_context_takes_only_a_sandbox() -> None:
    with pytest.raises(ValueError, match="Sandbox"):
        ToolContext(sandbox=object())


@pytest.mark.docker
async def test_docker_sandbox_satisfies_the_protocol(shared_sandbox: object) -> None:
    assert isinstance(shared_sandbox, Sandbox)
    assert ToolContext(sandbox=shared_sandbox).sandbox is shared_sandbox  # type: ignore[arg-type]


def _call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


@pytest.mark.docker
async def test_search_in_the_same_turn_sees_the_edits_written_before_it(sandbox_image: str) -> None:
    """search_code declares sandbox use, so it waits for the edits the model wrote before it."""
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    edits = "\n".join(
        _call(
            "str_replace_editor", command="create", path=f"/workspace/f{i}.py", file_text=f"MARK_{i} = {i}\n"
        )
        for i in range(6)
    )
    turns = [
        "x\n</think>\n\n" + edits + "\n" + _call("search_code", pattern="MARK_"),
        "done\n</think>\n\nok",
    ]
    tools = build_tools(["str_replace_editor", "search_code"])
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, tools, sandbox=sb, config=AgentConfig(check_language=False))
            events = [ev async for ev in agent.stream("task")]
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    search = [r for r in results if r.name == "search_code"]
    assert len(search) == 1 and search[0].text.startswith("6 matches"), search[0].text
