"""Lone surrogates (half a UTF-16 pair, U+D800-U+DFFF) in untrusted text end nothing.

Before: a model writing `"\\ud83d"` in a tool call's JSON, a server escaping half a pair, or a tool's
output holding one (a page decoded as utf-7) gave Python strings nothing can encode as UTF-8. The trace
writer closed the trace at that event (the final answer lost), the next request to the model failed to
encode (the run ended `model_error`), and the CLI's live view died with a traceback. Now each boundary
replaces them with U+FFFD, and the trace writer keeps going whatever one event holds. The text a user
hands in (the task, `history`, the system prompt; a command-line argument that is not UTF-8 arrives with
them) went into the prompt as it was: the run ended `model_error` before any request was sent. It is
taken in the same way, so the prompt sent is the one the trace records.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from qwq_agent.agent.clients import NO_RETRY, OpenAIChatClient, SGLangClient
from qwq_agent.agent.events import ModelCall, RunStarted, ToolCallEvent, ToolResultEvent, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.messages import Message, ToolCall, replace_surrogates_in_messages
from qwq_agent.agent.parser import parse
from qwq_agent.agent.trace import TraceWriter, read_trace
from qwq_agent.cli.render import EventRenderer
from qwq_agent.cli.safe_text import safe
from qwq_agent.protocols import Completion, SamplingParams, ToolOutput, Usage
from qwq_agent.testing.raw_server import RawServer
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import tool
from qwq_agent.tools.registry import ToolRegistry

LONE = "\ud83d"


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_a_surrogate_escape_in_a_tool_call_becomes_u_fffd_and_the_repair_is_named() -> None:
    text = 'x\n</think>\n\n<tool_call>\n{"name": "echo", "arguments": {"text": "smile \\ud83d", "\\udc00k": [1, "\\ud83d\\ude00"]}}\n</tool_call>'
    result = parse(text)
    [call] = result.tool_calls
    assert call.arguments == {"text": "smile \ufffd", "\ufffdk": [1, "\U0001f600"]}  # a whole pair stays
    assert any("surrogate" in r for r in result.repairs[call.id])
    clean = parse(
        'x\n</think>\n\n<tool_call>\n{"name": "echo", "arguments": {"text": "\\ud83d\\ude00"}}\n</tool_call>'
    )
    assert clean.tool_calls[0].arguments == {"text": "\U0001f600"} and not clean.repairs


def _native_stream(writer: asyncio.StreamWriter) -> None:
    meta = {"id": "x", "finish_reason": {"type": "stop"}, "prompt_tokens": 1, "completion_tokens": 1}
    event = {"text": "half \ud83d pair", "output_ids": [1], "meta_info": meta}
    # json.dumps escapes the surrogate as \ud83d: ASCII on the wire, as a server's JSON encoder writes it
    writer.write(b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n")


def _openai_stream(writer: asyncio.StreamWriter) -> None:
    chunk = {"choices": [{"delta": {"content": "half \ud83d pair"}, "finish_reason": None}]}
    end = {"choices": [{"delta": {}, "finish_reason": "stop"}]}
    writer.write(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: " + json.dumps(end).encode())
    writer.write(b"\n\ndata: [DONE]\n\n")


async def test_both_clients_replace_a_servers_surrogate_escapes() -> None:
    async with RawServer("text/event-stream", _native_stream) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            native = await asyncio.wait_for(client.generate("hi", SamplingParams(max_new_tokens=8)), 60)
    assert native.text == "half \ufffd pair"

    async with RawServer("text/event-stream", _openai_stream) as server:
        async with OpenAIChatClient(server.url, model="m", retry=NO_RETRY) as client:
            stream = client.stream([Message(role="user", content="hi")], [], SamplingParams(max_new_tokens=8))
            events = await asyncio.wait_for(_all(stream), 60)
    completion = next(ev for ev in events if isinstance(ev, Completion))
    assert "half \ufffd pair" in completion.text and _encodable(completion.text)


async def _all(stream: Any) -> list[Any]:
    return [ev async for ev in stream]


@tool
def lone(kind: str) -> ToolOutput:
    """Return text holding half a surrogate pair."""
    return ToolOutput(text=f"{kind} {LONE} end", metadata={"note": LONE, "nested": [{"k": LONE}]})


async def test_every_tool_output_leaves_the_registry_encodable() -> None:
    registry = ToolRegistry([lone])
    out = await registry.call(ToolCall(id="c", name="lone", arguments={"kind": "page"}))
    assert not out.is_error, out.text
    assert out.text == "page \ufffd end"
    assert out.metadata == {"note": "\ufffd", "nested": [{"k": "\ufffd"}]}


def test_the_trace_writer_keeps_an_event_with_a_lone_surrogate_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with TraceWriter(path) as writer:
        call = ToolCall(id="c", name="echo", arguments={"text": f"smile {LONE}"})
        assert writer.write(ToolCallEvent(call=call))
        assert writer.write(ToolResultEvent(call_id="c", name="echo", text=f"a {LONE} b", duration_s=0.1))
        assert writer.write_final("completed", answer="done")
        assert writer.error is None and not writer.closed
    events = read_trace(path)
    assert [e.type for e in events] == ["tool_call", "tool_result", "final"]
    assert events[0].call.arguments == {"text": "smile \ufffd"} and events[1].text == "a \ufffd b"


def test_an_event_too_deep_to_serialise_leaves_a_placeholder_and_the_prompts_stay_whole(
    tmp_path: Path,
) -> None:
    deep: Any = "leaf"
    for _ in range(400):  # past pydantic's serialisation depth, inside Python's recursion limit
        deep = [deep]
    path = tmp_path / "t.jsonl"
    usage = Usage(prompt_tokens=1, completion_tokens=1)
    with TraceWriter(path) as writer:
        assert writer.write(ModelCall(prompt="system\nuser", completion="a", usage=usage))
        # built unvalidated, as a user's own code may: ids nested where a list of ints belongs
        dropped = ModelCall.model_construct(
            prompt="system\nuser\nmore", completion="b", usage=usage, step=1, completion_ids=deep
        )
        assert not writer.write(dropped)
        assert writer.write(ModelCall(prompt="system\nuser\nmore\nlast", completion="c", usage=usage, step=2))
        assert writer.write_final("completed", answer="done")
        assert not writer.closed and "model_call" in (writer.error or "")
    events = read_trace(path)
    assert [e.type for e in events] == ["model_call", "warning", "model_call", "final"]
    placeholder = events[1]
    assert isinstance(placeholder, Warning_) and placeholder.kind == "trace_event_dropped"
    assert "model_call" in placeholder.message and placeholder.step == 1
    # The prompt after the dropped call is stored against the last one on disk, so it reads back whole.
    assert events[2].prompt == "system\nuser\nmore\nlast"


def test_the_live_view_shows_a_lone_surrogate_as_an_escape() -> None:
    assert safe(f"a{LONE}b\udc80") == "a\\ud83db\\udc80"
    out = io.BytesIO()
    console = Console(
        file=io.TextIOWrapper(out, encoding="utf-8", write_through=True), width=100, color_system=None
    )
    renderer = EventRenderer(console)
    renderer.handle(
        ToolCallEvent(call=ToolCall(id="c", name="fetch_url", arguments={"url": f"http://x/{LONE}"}))
    )
    renderer.handle(ToolResultEvent(call_id="c", name="fetch_url", text=f"page {LONE}", duration_s=0.1))
    shown = out.getvalue().decode("utf-8")
    assert "http://x/\\ud83d" in shown and "page \\ud83d" in shown


@tool
def echo(text: str) -> str:
    """Echo a string back."""
    return f"{len(text)} characters"


async def test_a_model_writing_half_a_pair_gets_its_answer_and_a_whole_trace(tmp_path: Path) -> None:
    call = '<tool_call>\n{"name": "echo", "arguments": {"text": "smile \\ud83d"}}\n</tool_call>'
    turns = ["Echo it.\n</think>\n\n" + call, "done\n</think>\n\nIt has 7 characters."]
    path = tmp_path / "run.jsonl"
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [echo], config=AgentConfig(check_language=False), trace_path=path)
        [ev async for ev in agent.stream("Echo a smile.")]
    assert agent.result.status == "completed" and agent.result.trace_error is None
    events = read_trace(path)
    assert [e.type for e in events].count("final") == 1
    result = next(e for e in events if isinstance(e, ToolResultEvent))
    assert result.text == "7 characters" and not result.is_error


ANSWER = "Easy.\n</think>\n\nA milky coffee."
# What Python makes of the Latin-1 byte 0xe9 in a command-line argument (surrogateescape).
CAFE = "What is a caf\udce9 au lait?"


def _sent_and_traced(path: Path, requests: list[Any]) -> tuple[str, str, RunStarted]:
    """The one request's prompt, the trace's record of it, and the trace's run_started."""
    [request] = requests
    events = read_trace(path)
    [call] = [e for e in events if isinstance(e, ModelCall)]
    [started] = [e for e in events if isinstance(e, RunStarted)]
    assert request.prompt is not None
    return request.prompt, call.prompt, started


async def test_the_users_text_with_a_lone_surrogate_is_sent_as_u_fffd_as_the_trace_records_it(
    tmp_path: Path,
) -> None:
    config = AgentConfig(check_language=False, system_prompt="Answer briefly, se\udcf1or.")
    async with ScriptedModelServer([ANSWER], when_exhausted="repeat") as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [], config=config, trace_path=tmp_path / "fresh.jsonl")
            result = await asyncio.wait_for(agent.run(CAFE), 60)
        assert result.status == "completed", result.error
        sent, traced, started = _sent_and_traced(tmp_path / "fresh.jsonl", server.requests)
    assert "caf\ufffd au lait" in sent and "se\ufffdor" in sent and _encodable(sent)
    assert sent == traced and started.task == "What is a caf\ufffd au lait?"

    history = [
        Message(role="user", content="Is na\udcefve a word?"),
        Message(role="assistant", content="Yes: na\udcefve."),
    ]
    async with ScriptedModelServer([ANSWER], when_exhausted="repeat") as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [], config=config, trace_path=tmp_path / "history.jsonl")
            result = await asyncio.wait_for(agent.run(CAFE, history=history), 60)
        assert result.status == "completed", result.error
        sent, traced, started = _sent_and_traced(tmp_path / "history.jsonl", server.requests)
    assert "na\ufffdve a word" in sent and "Yes: na\ufffdve." in sent and "caf\ufffd" in sent
    assert sent == traced and _encodable(sent)
    assert [m["content"] for m in started.history] == ["Is na\ufffdve a word?", "Yes: na\ufffdve."]
    assert all(_encodable(m.model_dump()) for m in result.messages)


def test_a_history_message_keeps_its_token_ids_only_while_they_still_decode_to_its_raw_text() -> None:
    clean = Message(role="assistant", content="fine", raw="ok\n</think>\n\nfine", token_ids=[1, 2])
    in_answer = Message(role="assistant", content="caf\udce9", raw="ok\n</think>\n\ncaf\udce9", token_ids=[3])
    in_call = Message(role="assistant", tool_calls=[ToolCall(id="c", name="echo", arguments={"t": LONE})])
    kept, replaced, call = replace_surrogates_in_messages([clean, in_answer, in_call])
    assert kept is clean
    assert replaced.content == "caf\ufffd" and replaced.raw == "ok\n</think>\n\ncaf\ufffd"
    assert replaced.token_ids is None  # they decode to the old raw text: tokenized again instead
    assert call.tool_calls == [ToolCall(id="c", name="echo", arguments={"t": "\ufffd"})]


async def test_branches_warm_the_prefix_they_send_for_a_task_with_a_lone_surrogate() -> None:
    async with ScriptedModelServer([ANSWER], when_exhausted="repeat") as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [], config=AgentConfig(check_language=False))
            result = await asyncio.wait_for(agent.explore(CAFE, n=2, select="first", seeds=[1, 2]), 60)
        assert [b.status for b in result.branches] == ["completed", "completed"], result.branches
        prompts = [r.prompt or "" for r in server.requests]
    # The warm-up (one token) and both branches: the warm-up's prompt is the branches' shared prefix.
    assert len(prompts) == 3 and all("caf\ufffd au lait" in p for p in prompts)
    warm = next(r.prompt for r in server.requests if r.sampling_params.get("max_new_tokens") == 1)
    assert warm is not None and all(p.startswith(warm) for p in prompts)


def test_the_cli_runs_a_task_that_is_not_utf_8_and_says_so_in_one_line(tmp_path: Path) -> None:
    with ScriptedModelServer([ANSWER], when_exhausted="repeat") as server:
        env = dict(os.environ, QWQ_MODEL_URL=server.url, COLUMNS="200")
        argv = [
            sys.executable.encode(),
            b"-m",
            b"qwq_agent.cli.main",
            b"run",
            CAFE.encode("utf-8", "surrogateescape"),
        ]
        argv += [b"--tools", b"fetch_url", b"--trace", str(tmp_path / "t.jsonl").encode()]
        proc = subprocess.run(argv, env=env, capture_output=True, timeout=120, cwd=tmp_path)
        out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
        assert proc.returncode == 0, out
        sent, traced, started = _sent_and_traced(tmp_path / "t.jsonl", server.requests)
    assert "caf\ufffd au lait" in sent and sent == traced and started.task == "What is a caf\ufffd au lait?"
    [warning] = [line for line in out.splitlines() if "UTF-8" in line]
    assert "the task is not valid UTF-8" in warning and "U+FFFD" in warning
