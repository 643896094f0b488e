"""Trace files: the prompt-delta encoding, torn last lines, one run per file, interrupted runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import Final, ModelCall, RunStarted, ToolCallEvent
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.messages import ToolCall
from qwq_agent.agent.replay import ReplayModel, load_recording
from qwq_agent.agent.trace import (
    MixedTraceError,
    TraceExistsError,
    TracePathError,
    TraceWriter,
    check_trace_path,
    common_prefix_len,
    read_trace,
    restore_prompts,
    trace_runs,
)
from qwq_agent.protocols import Usage
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import tool


@given(st.text(alphabet="ab<>\n", max_size=40), st.text(alphabet="ab<>\n", max_size=40))
def test_common_prefix_len_matches_the_definition(a, b):
    expected = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    assert common_prefix_len(a, b) == expected


@given(st.lists(st.none() | st.text(max_size=30), min_size=1, max_size=6))
def test_prompts_survive_the_delta_encoding(tmp_path_factory, prompts):
    path = tmp_path_factory.mktemp("t") / "trace.jsonl"
    writer = TraceWriter(path)
    for p in prompts:  # None: an OpenAI-API request, which renders no prompt
        writer.write(ModelCall(prompt=p, completion="x", usage=Usage()))
    writer.close()
    assert [e.prompt for e in read_trace(path)] == prompts
    stored = read_trace(path, prompts="stored")
    assert [e.prompt for e in restore_prompts(stored)] == prompts
    assert [e.prompt for e in read_trace(path, prompts="stored")] == [e.prompt for e in stored]  # as read


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "trace.jsonl"
    writer = TraceWriter(path)
    writer.write(ModelCall(prompt="abc", completion="x", usage=Usage()))
    writer.write(Final(status="completed", answer="ok"))
    writer.close()
    with path.open("a") as fh:
        fh.write('{"type": "model_call", "prompt": "ab')
    events = read_trace(path)
    assert [e.type for e in events] == ["model_call", "final"]


def test_a_last_line_torn_inside_a_multibyte_character_is_skipped(tmp_path):
    # a full disk cuts the write anywhere, also one byte into a 3-byte character
    path = tmp_path / "trace.jsonl"
    writer = TraceWriter(path)
    writer.write(ModelCall(prompt="abc", completion="x", usage=Usage()))
    writer.close()
    torn = '{"type": "model_call", "prompt": "计算'.encode()[:-2]
    with path.open("ab") as fh:
        fh.write(torn)
    assert [e.type for e in read_trace(path)] == ["model_call"]
    # a byte no UTF-8 text holds is no torn write: the file is reported as not UTF-8
    with path.open("ab") as fh:
        fh.write(b"\n\xff\xfe")
    with pytest.raises(UnicodeDecodeError):
        read_trace(path)


def test_an_event_pydantic_cannot_serialise_is_a_trace_error_not_an_exception(tmp_path):
    path = tmp_path / "trace.jsonl"
    writer = TraceWriter(path)
    assert writer.write(RunStarted(task="t", model="m", tools=[], run_id="r"))
    deep: object = "x"
    for _ in range(300):  # past pydantic's serialisation recursion limit
        deep = [deep]
    assert not writer.write(ToolCallEvent(call=ToolCall(name="t", arguments={"a": deep})))
    assert writer.error is not None and "tool_call" in writer.error
    # the event is left out, a placeholder says so, and the run's later events are still written
    assert writer.write(Final(status="completed", run_id="r"))
    events = read_trace(path)
    assert [e.type for e in events] == ["run_started", "warning", "final"]
    assert "tool_call" in events[1].message


# -- one file, one run -----------------------------------------------------------------------------


def test_a_file_holding_a_run_is_refused_or_a_named_new_file_is_used(tmp_path):
    path = tmp_path / "run.jsonl"
    with TraceWriter(path) as first:
        first.write(Final(status="completed", run_id="aaa"))
    with pytest.raises(TraceExistsError, match="already holds a run"):
        TraceWriter(path)
    with TraceWriter(path, if_exists="new", tag="bbb") as second:
        second.write(Final(status="completed", run_id="bbb"))
    assert second.path == tmp_path / "run.bbb.jsonl"
    with TraceWriter(path, if_exists="new", tag="bbb") as third:
        pass
    assert third.path == tmp_path / "run.bbb.2.jsonl"
    assert [e.run_id for e in read_trace(path)] == ["aaa"]


def test_a_fifo_or_a_device_is_refused_as_a_trace_never_opened_for_blocking_io(tmp_path):
    fifo = tmp_path / "t.jsonl"
    os.mkfifo(fifo)
    # A reader on the other end, so that an open that does not refuse the FIFO returns instead of
    # waiting (forever, in the event loop's thread) for one.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(TracePathError, match=r"is a FIFO \(named pipe\), not a file"):
            check_trace_path(fifo)
        with pytest.raises(TracePathError, match="is a FIFO"):
            TraceWriter(fifo)
        with pytest.raises(TracePathError, match="is a FIFO"):
            TraceWriter(fifo, if_exists="new", tag="x")
    finally:
        os.close(reader)
    with pytest.raises(TracePathError, match="is a character device"):
        TraceWriter("/dev/null")
    with pytest.raises(TracePathError, match="is a character device"):
        read_trace("/dev/null")


def test_two_writers_never_share_a_file_even_an_empty_one(tmp_path):
    path = tmp_path / "run.jsonl"
    path.touch()  # an empty file is free to take, but only by one writer at a time
    with TraceWriter(path) as first:
        with pytest.raises(TraceExistsError):
            TraceWriter(path)
        with TraceWriter(path, if_exists="new", tag="x") as other:
            assert other.path != first.path
        # Another process is refused too (the lock is an flock on the open file).
        code = (
            "import sys; from qwq_agent.agent.trace import TraceWriter, TraceExistsError\n"
            "try:\n    TraceWriter(sys.argv[1])\nexcept TraceExistsError:\n    sys.exit(7)\n"
        )
        assert subprocess.run([sys.executable, "-c", code, str(path)], timeout=60).returncode == 7


def test_reading_a_file_with_several_runs_never_mixes_them(tmp_path):
    # As versions before one-run-per-file wrote it: a second run appended to the same file.
    path = tmp_path / "old.jsonl"
    lines = [
        RunStarted(run_id="r1", task="first", model="m", tools=[]),
        ModelCall(run_id="r1", prompt="p1", completion="c1", usage=Usage()),
        Final(run_id="r1", status="completed", answer="one"),
        RunStarted(run_id="r2", task="second", model="m", tools=[]),
        ModelCall(run_id="r2", prompt="p2", completion="c2", usage=Usage()),
        Final(run_id="r2", status="completed", answer="two"),
    ]
    path.write_text("".join(e.model_dump_json() + "\n" for e in lines))
    with pytest.raises(MixedTraceError, match=r"2 runs.*r1, r2"):
        read_trace(path)
    assert trace_runs(path) == ["r1", "r2"]
    second = read_trace(path, run_id="r2")
    assert [getattr(e, "answer", None) for e in second if e.type == "final"] == ["two"]
    assert {e.run_id for e in second} == {"r2"}
    with pytest.raises(MixedTraceError, match="no run with id 'r3'"):
        read_trace(path, run_id="r3")
    with pytest.raises(MixedTraceError):
        ReplayModel.from_trace(path)


def test_a_run_stored_against_the_run_before_it_reads_whole(tmp_path):
    # A writer of those versions could go on from one run's last prompt to the next run's first.
    path = tmp_path / "old.jsonl"
    lines = [
        RunStarted(run_id="r1", task="first", model="m", tools=[]),
        ModelCall(run_id="r1", prompt="system\nfirst", completion="c1", usage=Usage()),
        RunStarted(run_id="r2", task="second", model="m", tools=[]),
        ModelCall(run_id="r2", prompt="second", prompt_shared_prefix_chars=7, completion="c2", usage=Usage()),
        ModelCall(run_id="r2", prompt=" more", prompt_shared_prefix_chars=13, completion="c3", usage=Usage()),
    ]
    path.write_text("".join(e.model_dump_json() + "\n" for e in lines))
    whole = ["system\nsecond", "system\nsecond more"]
    assert [e.prompt for e in read_trace(path, run_id="r2") if isinstance(e, ModelCall)] == whole
    stored = read_trace(path, run_id="r2", prompts="stored")
    assert [e.prompt for e in restore_prompts(stored) if isinstance(e, ModelCall)] == whole
    replay = ReplayModel.from_trace(path, run_id="r2")
    for prompt in whole:
        assert asyncio.run(replay.generate(prompt)).prompt == prompt
    assert replay.divergences == 0


def test_write_final_ends_an_interrupted_trace_once(tmp_path):
    path = tmp_path / "t.jsonl"
    writer = TraceWriter(path)
    writer.write(RunStarted(run_id="r", task="t", model="m", tools=[]))
    assert writer.write_final("interrupted", error="SIGTERM", run_id="r")
    assert not writer.write_final("interrupted")  # already ended
    writer.close()
    events = read_trace(path)
    assert [e.type for e in events] == ["run_started", "final"] and events[-1].status == "interrupted"


# -- the agent's trace -------------------------------------------------------------------------------


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


TURNS = ["add\n</think>\n\n" + call("add", a=2, b=3), "done\n</think>\n\n5"]


async def test_concurrent_agents_given_one_trace_path_write_separate_files(tmp_path):
    path = tmp_path / "shared.jsonl"
    config = AgentConfig(check_language=False)
    async with ScriptedModelServer(TURNS, when_exhausted="repeat") as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agents = [Agent(client, [add], config=config, trace_path=path) for _ in range(4)]
            results = await asyncio.gather(*(a.run("What is 2 + 3?") for a in agents))
            # The same agent run again does not append to its earlier run's file either.
            again = await agents[0].run("What is 2 + 3?")
    paths = {r.trace_path for r in [*results, again]}
    assert len(paths) == 5 and str(path) in paths
    for r in [*results, again]:
        events = read_trace(r.trace_path)
        assert [e.type for e in events].count("run_started") == 1 and events[-1].type == "final"
        assert r.answer == "5" and r.trace_error is None


async def test_one_agent_runs_one_task_at_a_time(tmp_path):
    async with ScriptedModelServer(TURNS, when_exhausted="repeat") as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [add], config=AgentConfig(check_language=False))
            first = agent.stream("a")
            await anext(first)
            with pytest.raises(RuntimeError, match="already running"):
                await anext(agent.stream("b"))
            async for _ in first:
                pass
            assert agent.result.status == "completed"


async def test_a_stream_stopped_from_outside_still_ends_its_trace(tmp_path):
    async with ScriptedModelServer(TURNS, when_exhausted="repeat") as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            # The caller stops iterating (closes the stream).
            agent = Agent(
                client, [add], config=AgentConfig(check_language=False), trace_path=tmp_path / "a.jsonl"
            )
            stream = agent.stream("What is 2 + 3?")
            async for ev in stream:
                if ev.type == "tool_call":
                    break
            await stream.aclose()
            # The caller abandons the stream and ends the run (as a signal handler does).
            other = Agent(
                client, [add], config=AgentConfig(check_language=False), trace_path=tmp_path / "b.jsonl"
            )
            it = other.stream("What is 2 + 3?")
            await anext(it)
            result = other.end_run("interrupted", "SIGTERM")
    assert read_trace(tmp_path / "a.jsonl")[-1].status == "interrupted"
    last = read_trace(tmp_path / "b.jsonl")[-1]
    assert last.type == "final" and last.status == "interrupted" and last.error == "SIGTERM"
    assert result.status == "interrupted"


def test_trace_show_names_the_runs_of_a_mixed_file_and_shows_the_one_chosen(tmp_path):
    path = tmp_path / "old.jsonl"
    lines = [
        RunStarted(run_id="r1", task="first task", model="m", tools=[]),
        Final(run_id="r1", status="completed", answer="answer one"),
        RunStarted(run_id="r2", task="second task", model="m", tools=[]),
        Final(run_id="r2", status="completed", answer="answer two"),
    ]
    path.write_text("".join(e.model_dump_json() + "\n" for e in lines))
    cli = [sys.executable, "-m", "qwq_agent.cli.main", "trace", "show", str(path)]
    mixed = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert mixed.returncode == 2 and "holds 2 runs (r1, r2)" in mixed.stderr and "--run-id" in mixed.stderr
    chosen = subprocess.run([*cli, "--run-id", "r2"], capture_output=True, text=True, timeout=60)
    assert chosen.returncode == 0 and "answer two" in chosen.stdout and "answer one" not in chosen.stdout


# -- reading a long run's trace ----------------------------------------------------------------------

STEP_CHARS = 1000  # each prompt adds a tool result of this size: 400 steps end near QwQ's context


def long_prompts(steps: int):
    """The prompts of a run whose context grows by a tool result each step (built one at a time)."""
    prompt = "<|im_start|>system\nYou are helpful.<|im_end|>\n"
    for i in range(steps):
        body = f"step {i} " + "x" * (STEP_CHARS - 60)
        prompt += f"<|im_start|>user\n<tool_response>\n{body}\n</tool_response><|im_end|>\n"
        yield prompt


def write_long_trace(path, steps: int) -> None:
    with TraceWriter(path) as w:
        w.write(RunStarted(run_id="r", task="long task", model="m", tools=[]))
        for i, prompt in enumerate(long_prompts(steps), 1):
            w.write(ModelCall(run_id="r", step=i, prompt=prompt, completion=f"ok {i}", usage=Usage()))
        w.write(Final(run_id="r", step=steps, status="completed", answer="done"))


def peak_rss_of(cmd: list[str], stderr_path) -> int:
    """Peak RSS in bytes of `cmd`, run as its own process to the end (it must succeed)."""
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, for its resource usage
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, stderr_path.read_text()[-500:]
    return usage.ru_maxrss * 1024


def test_trace_show_of_a_long_run_takes_memory_in_proportion_to_the_file(tmp_path):
    # 400 prompts, the last ~400k characters: the file is under 1 MB, the prompts whole ~80 MB.
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    write_long_trace(small, 2)
    write_long_trace(big, 400)
    size = big.stat().st_size
    show = [sys.executable, "-m", "qwq_agent.cli.main", "trace", "show", "--reasoning", "off"]
    err = tmp_path / "stderr"
    grew = peak_rss_of([*show, str(big)], err) - peak_rss_of([*show, str(small)], err)
    assert grew < 20 * size, f"trace show took {grew / size:.0f}x the file's size"  # was ~100x


def test_trace_show_prompts_shows_each_prompt_whole(tmp_path):
    path = tmp_path / "t.jsonl"
    prompts = ["system\nfirst", "system\nfirst\nsecond", "system\nfirst\nsecond\nthird"]
    with TraceWriter(path) as w:
        w.write(RunStarted(run_id="r", task="t", model="m", tools=[]))
        for p in prompts:
            w.write(ModelCall(run_id="r", prompt=p, completion="ok", usage=Usage()))
    cli = [sys.executable, "-m", "qwq_agent.cli.main", "trace", "show", str(path)]
    shown = subprocess.run([*cli, "--prompts"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert [shown.stdout.count(w) for w in ("system", "first", "second", "third")] == [3, 3, 2, 1]
    hidden = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert hidden.returncode == 0 and "first" not in hidden.stdout


async def test_a_replay_of_a_long_run_holds_one_recorded_prompt_at_a_time(tmp_path):
    path = tmp_path / "long.jsonl"
    steps = 400
    write_long_trace(path, steps)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        recording = load_recording(path)
        replay = ReplayModel.from_recording(recording)
        for i, prompt in enumerate(long_prompts(steps), 1):
            done = await replay.generate(prompt)
            assert done.text == f"ok {i}" and done.prompt == prompt
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert replay.divergences == 0 and replay.remaining == 0
    # The file, its events and a few prompts of ~400k characters (~5x the file); all 400 whole ~150x.
    assert peak < 20 * size, f"the replay took {peak / size:.0f}x the file's size"
