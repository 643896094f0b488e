"""Cut-off tool calls are never run, and every repair made to a call shows in its event (real HTTP)."""

from __future__ import annotations

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import ToolCallEvent, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.protocols import SamplingParams
from qwq_agent.testing.helpers import call
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import tool


def make_writer():
    written: dict[str, str] = {}

    @tool
    def write_file(path: str, text: str) -> str:
        """Write a file.

        Args:
            path: where
            text: the whole content
        """
        written[path] = text
        return f"wrote {len(text)} characters to {path}"

    return write_file, written


async def run(turns, tools, *, max_new_tokens: int = 8192):
    config = AgentConfig(check_language=False, sampling=SamplingParams(max_new_tokens=max_new_tokens))
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, tools, config=config)
        events = [ev async for ev in agent.stream("Write the module.")]
    return agent.result, events, server.requests


async def test_a_call_cut_off_by_the_token_limit_is_not_run_and_the_model_is_asked_again():
    write_file, written = make_writer()
    long_text = "".join(f"line_{i} = {i} * {i}\n" for i in range(300))
    turns = [
        # The server stops this one at max_new_tokens, inside "text": the old repair ran it half-written.
        "Write it.\n</think>\n\n" + call("write_file", path="m.py", text=long_text),
        "Shorter.\n</think>\n\n" + call("write_file", path="m.py", text="x = 1\n"),
        "Done.\n</think>\n\nWritten.",
    ]
    result, events, requests = await run(turns, [write_file], max_new_tokens=200)
    assert result.status == "completed"
    assert written == {"m.py": "x = 1\n"}  # only the complete call ran
    warnings = [e for e in events if isinstance(e, Warning_) and e.kind == "truncated_tool_call"]
    assert len(warnings) == 1 and "token limit" in warnings[0].message
    retry_prompt = requests[1].prompt or ""
    assert "cut off" in retry_prompt and "Write the whole call again" in retry_prompt
    assert [e.call.arguments["text"] for e in events if isinstance(e, ToolCallEvent)] == ["x = 1\n"]


async def test_a_call_ending_inside_a_string_is_not_run_even_without_the_token_limit():
    write_file, written = make_writer()
    turns = [
        'Write it.\n</think>\n\n<tool_call>\n{"name": "write_file", "arguments": {"path": "m.py", "text": "def f(',
        "Ok.\n</think>\n\nGave up.",
    ]
    result, _, _ = await run(turns, [write_file])
    assert written == {}
    tool_msgs = [m for m in result.messages if m.role == "tool"]
    assert len(tool_msgs) == 1 and tool_msgs[0].name == "write_file" and "cut off" in tool_msgs[0].content


async def test_tool_call_events_show_the_repairs_made_to_each_call():
    write_file, written = make_writer()
    turns = [
        "Two calls.\n</think>\n\n"
        '<tool_call>\n{"name": "write_file", "arguments": {"path": "a", "text": "1",},}\n</tool_call>\n'
        + call("write_file", path="b", text="2")
        + '\n<tool_call>\n{"name": "write_file", "arguments": {"path": "c", "text": "3"}',
        "Done.\n</think>\n\nWritten.",
    ]
    _, events, _ = await run(turns, [write_file])
    assert written == {"a": "1", "b": "2", "c": "3"}
    repairs = {e.call.arguments["path"]: e.repairs for e in events if isinstance(e, ToolCallEvent)}
    assert repairs["a"] == ["removed a trailing comma"]
    assert repairs["b"] == []
    assert repairs["c"] == [
        "added the missing </tool_call> at the end of the output",
        "added missing closing bracket(s) at the end",
    ]
