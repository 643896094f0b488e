"""Replay and resume rebuild the recorded run, say where it diverges, and mark the hand-over to the live model."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwq_agent.agent.approval import ApprovalDecision, ApprovalPolicy
from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.clients.openai_chat import OpenAIChatClient
from qwq_agent.agent.events import ModelCall, ReplayEnded, RunStarted, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.recorded_settings import RecordedSettingsWarning
from qwq_agent.agent.replay import RecordedConfigError, ReplayModel, load_recording
from qwq_agent.agent.trace import read_trace
from qwq_agent.protocols import SamplingParams
from qwq_agent.testing import helpers
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import tool
from qwq_agent.tools.catalog import build_tools

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(name="add")
def add_wrong(a: int, b: int) -> int:
    """Add two integers."""
    return a + b + 1


TURNS = [
    "add\n</think>\n\n" + call("add", a=20, b=22),
    "add more\n</think>\n\n" + call("add", a=42, b=1),
    "done\n</think>\n\n43",
]


def config(**kw: object) -> AgentConfig:
    return AgentConfig(check_language=False, **kw)


async def record(path, turns=TURNS, **kw):
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [add], trace_path=path, **kw)
        return await agent.run("Add things.")


async def test_a_recording_holds_the_tools_their_options_and_the_config(tmp_path):
    custom = config(
        system_prompt="Be terse.", budget=Budget(max_steps=7), sampling=SamplingParams(max_new_tokens=999)
    )
    await record(tmp_path / "t.jsonl", config=custom, tool_options={"docs_db": "/data/notes.sqlite3"})
    rec = load_recording(tmp_path / "t.jsonl")
    assert rec.task == "Add things." and rec.tools == ["add"]
    assert rec.tool_options == {"docs_db": "/data/notes.sqlite3"}
    assert rec.agent_config() == custom
    assert len(rec.completions) == 3 and rec.status == "completed"


async def test_a_recorded_config_with_settings_since_removed_loads_without_them_and_says_so(tmp_path):
    # The config models refuse unknown keys (a misspelt setting is an error): a trace written by a
    # version that had a setting this one lacks must still load, and replay, as it did when such keys
    # were ignored.
    custom = config(budget=Budget(max_steps=7))
    await record(tmp_path / "t.jsonl", config=custom)
    lines = (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()
    started = json.loads(lines[0])
    assert started["type"] == "run_started"
    started["config"]["retired_setting"] = True
    started["config"]["budget"]["max_wall"] = 60
    started["config"]["sampling"]["old_penalty"] = 1.1
    lines[0] = json.dumps(started)
    (tmp_path / "old.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.warns(RecordedSettingsWarning) as caught:
        rec = load_recording(tmp_path / "old.jsonl")
        recorded = rec.agent_config()
    message = str(caught[0].message)
    assert "retired_setting" in message and "budget.max_wall" in message and "sampling.old_penalty" in message
    assert recorded == custom
    replay = Agent(ReplayModel.from_recording(rec), [add], config=recorded)
    result = await replay.run(rec.task)
    assert (result.status, result.answer) == ("completed", "43")


async def test_replay_warns_where_the_run_diverges_from_its_recording(tmp_path):
    trace = tmp_path / "t.jsonl"
    await record(trace, config=config())
    faithful = Agent(ReplayModel.from_trace(trace), [add], config=config())
    events = [ev async for ev in faithful.stream("Add things.")]
    assert not [e for e in events if isinstance(e, Warning_) and e.kind == "replay_divergence"]

    # The tool now answers differently: the next prompt is not the recorded one.
    diverged = Agent(ReplayModel.from_trace(trace), [add_wrong], config=config())
    events = [ev async for ev in diverged.stream("Add things.")]
    warnings = [e for e in events if isinstance(e, Warning_) and e.kind == "replay_divergence"]
    assert len(warnings) == 2  # the second and third prompts hold the changed results
    assert "recorded model call 2 of 3" in warnings[0].message
    assert r"\n42\n</tool" in warnings[0].message and r"\n43\n</tool" in warnings[0].message
    # Reported before the run goes on, and recorded in the run's events.
    steps = [e.step for e in events if isinstance(e, Warning_) and e.kind == "replay_divergence"]
    assert steps == [2, 3]


async def test_replay_warns_when_the_run_ends_before_its_recording_does(tmp_path):
    trace = tmp_path / "t.jsonl"
    await record(trace, config=config())
    short = Agent(ReplayModel.from_trace(trace), [add], config=config(budget=Budget(max_steps=1)))
    events = [ev async for ev in short.stream("Add things.")]
    warnings = [e for e in events if isinstance(e, Warning_) and e.kind == "replay_divergence"]
    assert len(warnings) == 1 and "ended after 1 of the 3 recorded model calls" in warnings[0].message
    assert events[-1].type == "final"


async def test_resume_writes_a_new_trace_naming_its_source_and_marking_the_hand_over(tmp_path):
    partial = tmp_path / "partial.jsonl"
    cut = await record(partial, turns=TURNS[:1], config=config(budget=Budget(max_steps=1)))
    assert cut.status == "budget_exceeded"
    source_bytes = partial.read_bytes()
    async with ScriptedModelServer(TURNS[1:]) as server, SGLangClient(server.url, retry=NO_RETRY) as live:
        # Pointing the new run at the source trace does not append to it.
        agent = Agent(ReplayModel.from_trace(partial, then=live), [add], config=config(), trace_path=partial)
        events = [ev async for ev in agent.stream("Add things.")]
    assert agent.result.answer == "43"
    assert partial.read_bytes() == source_bytes
    assert agent.result.trace_path != str(partial)
    written = read_trace(agent.result.trace_path)
    started = written[0]
    assert isinstance(started, RunStarted) and started.replay_of is not None
    assert started.replay_of.mode == "resume" and started.replay_of.path == str(partial)
    assert started.replay_of.run_id == cut.run_id and started.replay_of.completions == 1
    # The marker sits between the replayed model call and the first live one.
    kinds = [type(e).__name__ for e in written if isinstance(e, ModelCall | ReplayEnded)]
    assert kinds == ["ModelCall", "ReplayEnded", "ModelCall", "ModelCall"]
    assert next(e for e in events if isinstance(e, ReplayEnded)).completions == 1


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "run", *args], capture_output=True, text=True, timeout=timeout)


def started_of(path) -> RunStarted:
    first = read_trace(path)[0]
    assert isinstance(first, RunStarted)
    return first


@pytest.mark.docker
def test_cli_replay_and_resume_use_the_recorded_tools_and_config(sandbox_image, tmp_path):
    # The tool result depends on the workspace: replayed without it, the prompts would diverge.
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "n.txt").write_text("20 22")
    code = "sum(map(int, open('/workspace/n.txt').read().split()))"
    turns = ["Count.\n</think>\n\n" + call("python", code=code), "done\n</think>\n\nIt is 42."]
    original = tmp_path / "original.jsonl"
    with ScriptedModelServer(turns) as server:
        proc = run_cli(
            "Add 20 and 22.", "--model-url", server.url, "--tools", "python", "--max-steps", "5",
            "--max-new-tokens", "777", "--trace", str(original), "--workspace", str(workspace),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr

    replayed = tmp_path / "replayed.jsonl"
    proc = run_cli("--replay", str(original), "--trace", str(replayed), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    started = started_of(replayed)
    assert started.tools == ["python"] and started.task == "Add 20 and 22."
    assert started.config["budget"]["max_steps"] == 5
    assert started.config["sampling"]["max_new_tokens"] == 777
    assert started.replay_of is not None and started.replay_of.mode == "replay"
    assert started.tool_options == {"workspace": str(workspace.resolve())}
    assert json.loads(proc.stdout.splitlines()[-1])["answer"] == "It is 42."
    assert "Out: 42" in proc.stdout and "divergence" not in proc.stdout

    # Resume a run cut after its first step; an explicit flag wins over the recording, and says so.
    cut = tmp_path / "cut.jsonl"
    with ScriptedModelServer(turns[:1]) as server:
        run_cli("Add 20 and 22.", "--model-url", server.url, "--tools", "python", "--max-steps", "1",
                "--trace", str(cut), "--workspace", str(workspace))  # fmt: skip
    resumed = tmp_path / "resumed.jsonl"
    with ScriptedModelServer(turns[1:]) as server:
        proc = run_cli(
            "--resume", str(cut), "--model-url", server.url, "--max-steps", "4", "--trace", str(resumed)
        )
        assert len(server.requests) == 1
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "--resume overrides the recording: max steps 4 (recorded: 1)" in out
    started = started_of(resumed)
    assert started.tools == ["python"] and started.replay_of.mode == "resume"
    assert started.replay_of.path == str(cut)
    assert [e.type for e in read_trace(resumed)].count("replay_end") == 1


# A turn whose reasoning stays in the next prompt only under keep_reasoning.
REASONED = [
    "I will look it up.\n</think>\n\n" + call("no_such_tool", q="x"),
    "That tool does not exist; I answer directly.\n</think>\n\nHello.",
]


async def test_a_replay_renders_prompts_with_the_recorded_keep_reasoning(tmp_path):
    trace = tmp_path / "t.jsonl"
    async with (
        ScriptedModelServer(REASONED) as server,
        SGLangClient(server.url, retry=NO_RETRY, keep_reasoning=True) as client,
    ):
        await Agent(client, [add], config=config(), trace_path=trace).run("Say hello.")
    assert started_of(trace).prompt_options == {
        "keep_reasoning": True,
        "profile": "qwq-32b",
        "written_order": True,
        "exact_tokens": True,
    }
    replay = Agent(ReplayModel.from_trace(trace), [add], config=config())
    events = [ev async for ev in replay.stream("Say hello.")]
    assert not [e for e in events if isinstance(e, Warning_) and e.kind == "replay_divergence"]
    assert replay.result.answer == "Hello."


def test_cli_replay_and_resume_keep_the_recorded_reasoning_policy(tmp_path):
    """`--keep-reasoning` is a client setting, not the AgentConfig's: it must be recorded and re-applied,
    or a replay reports false divergences and a resume continues under the other history policy."""
    original = tmp_path / "original.jsonl"
    with ScriptedModelServer(REASONED) as server:
        proc = run_cli("Say hello.", "--model-url", server.url, "--tools", "fetch_url", "--keep-reasoning",
                       "--trace", str(original))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    replayed = tmp_path / "replayed.jsonl"
    proc = run_cli("--replay", str(original), "--json", "--trace", str(replayed))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "replay_divergence" not in proc.stdout
    assert json.loads(proc.stdout.splitlines()[-1])["answer"] == "Hello."
    assert started_of(replayed).prompt_options["keep_reasoning"] is True  # and so on, replay after replay
    # An explicit flag still wins, and says so (the prompts then differ from the recording).
    proc = run_cli(
        "--replay", str(original), "--no-keep-reasoning", "--json", "--trace", str(tmp_path / "r2.jsonl")
    )
    assert "--replay overrides the recording: keep reasoning off (recorded: on)" in proc.stderr
    assert "replay_divergence" in proc.stdout

    # Resumed after its first step: the live model's prompt keeps the replayed turn's reasoning.
    cut = tmp_path / "cut.jsonl"
    with ScriptedModelServer(REASONED[:1]) as server:
        run_cli("Say hello.", "--model-url", server.url, "--tools", "fetch_url", "--keep-reasoning",
                "--max-steps", "1", "--trace", str(cut))  # fmt: skip
    with ScriptedModelServer(REASONED[1:]) as server:
        proc = run_cli("--resume", str(cut), "--model-url", server.url, "--max-steps", "4", "--json",
                       "--trace", str(tmp_path / "resumed.jsonl"))  # fmt: skip
        # Sent as ids under keep_reasoning (the kept turn's own ids spliced in): decoded to compare.
        prompts = [r.prompt or server.tokenizer.decode(r.input_ids or []) for r in server.requests]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "replay_divergence" not in proc.stdout
    assert len(prompts) == 1 and "I will look it up." in prompts[0]


async def test_cli_resume_sends_prompts_as_text_when_the_recorded_client_did(tmp_path):
    """`exact_tokens` is a client setting too: a run whose kept turns went back as text resumes sending
    text, not the kept turns' ids (the CLI's own default)."""
    cut = tmp_path / "cut.jsonl"
    async with (
        ScriptedModelServer(REASONED[:1]) as server,
        SGLangClient(server.url, retry=NO_RETRY, keep_reasoning=True, exact_tokens=False) as client,
    ):
        agent = Agent(
            client, build_tools(["fetch_url"]), config=config(budget=Budget(max_steps=1)), trace_path=cut
        )
        await agent.run("Say hello.")
    assert started_of(cut).prompt_options["exact_tokens"] is False
    resumed = tmp_path / "resumed.jsonl"
    with ScriptedModelServer(REASONED[1:]) as server:
        proc = await asyncio.to_thread(
            run_cli, "--resume", str(cut), "--model-url", server.url, "--max-steps", "4", "--json",
            "--trace", str(resumed),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # The kept turn's reasoning goes back in the prompt, as its text.
        assert [(r.input_ids is None, "I will look it up." in (r.prompt or "")) for r in server.requests] == [
            (True, True)
        ]
    assert started_of(resumed).prompt_options["exact_tokens"] is False


# A trace written by the code of commit 4054742, before malformed calls were rendered back into their
# turn and tool results put in call order (`PromptOptions.written_order`): the first turn holds a call
# and then a malformed one, so its prompts had the error's result first and no malformed block.
OLD_TRACE = Path(__file__).parent / "data" / "old-traces" / "malformed_call_at_4054742.jsonl"


async def test_an_old_trace_with_a_malformed_call_replays_as_it_was_rendered(tmp_path):
    agent = Agent(
        ReplayModel.from_trace(OLD_TRACE),
        [helpers.add],  # the tool it was recorded with
        config=AgentConfig(check_language=False),
        trace_path=tmp_path / "replay.jsonl",
    )
    events = [ev async for ev in agent.stream("add")]
    assert [ev.message for ev in events if ev.type == "warning" and ev.kind == "replay_divergence"] == []
    assert agent.result.status == "completed" and agent.result.answer == "done"
    # The replay records the rendering it used, so replaying the replay renders the old way too.
    assert read_trace(tmp_path / "replay.jsonl")[0].prompt_options["written_order"] is False
    again = Agent(
        ReplayModel.from_trace(tmp_path / "replay.jsonl"),
        [helpers.add],
        config=AgentConfig(check_language=False),
    )
    events = [ev async for ev in again.stream("add")]
    assert not [ev for ev in events if ev.type == "warning" and ev.kind == "replay_divergence"]


async def test_a_new_trace_records_the_written_order_rendering(tmp_path):
    path = tmp_path / "new.jsonl"
    bad = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": }\n</tool_call>'
    turns = ["r1\n</think>\n\n" + call("add", a=1, b=2) + "\n" + bad, "ok\n</think>\n\ndone"]
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            await Agent(client, [add], config=AgentConfig(check_language=False), trace_path=path).run("add")
        second_prompt = server.requests[1].prompt or ""
    assert read_trace(path)[0].prompt_options["written_order"] is True
    assert second_prompt.index('"b": }') < second_prompt.index("<tool_response>")
    replay = Agent(ReplayModel.from_trace(path), [add], config=AgentConfig(check_language=False))
    events = [ev async for ev in replay.stream("add")]
    assert not [ev for ev in events if ev.type == "warning" and ev.kind == "replay_divergence"]


# Two calls, the second denied: errors-first order would put its denial before the first call's result.
DENIED_SECOND = [
    "r1\n</think>\n\n" + call("add", a=1, b=2) + "\n" + call("add", a=3, b=4),
    "r2\n</think>\n\n" + call("add", a=5, b=6),
    "ok\n</think>\n\ndone",
]


async def _deny_a3(req):
    return ApprovalDecision.deny("no") if req.call.arguments.get("a") == 3 else ApprovalDecision.allow()


def _tool_results(body: dict) -> list[str]:
    return [m["content"][:20] for m in body["messages"] if m["role"] == "tool"]


def _first_turn_only(trace: Path, to: Path, *, prompt_options: dict | None = None) -> None:
    """`trace` cut after its first model call (a resume replays it and goes on live), optionally with
    its `run_started.prompt_options` replaced (as an older trace recorded them)."""
    kept, calls = [], 0
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        calls += event.get("type") == "model_call"
        if calls > 1 and event.get("type") == "model_call":
            continue
        if prompt_options is not None and event.get("type") == "run_started":
            event["prompt_options"] = prompt_options
        kept.append(json.dumps(event))
    to.write_text("\n".join(kept) + "\n")


@pytest.mark.parametrize("recorded", [None, {}], ids=["as-recorded-today", "recorded-no-options"])
async def test_a_resumed_openai_api_run_sends_tool_results_in_call_order(tmp_path, recorded):
    """An OpenAI-API client renders no prompts, and its traces recorded no prompt options: the resume took
    that for a trace older than `written_order` and sent the denial of call 2 before call 1's result."""
    cfg = AgentConfig(check_language=False, approval=ApprovalPolicy(default="ask"))
    trace = tmp_path / "t.jsonl"
    async with ScriptedModelServer(DENIED_SECOND) as server:
        async with OpenAIChatClient(server.url + "/v1") as client:
            await Agent(client, [add], config=cfg, approver=_deny_a3, trace_path=trace).run("add")
        original = _tool_results(server.requests[1].body)
    assert read_trace(trace)[0].prompt_options == {"written_order": True}
    assert original[0] == "3" and original[1].startswith("Error")
    cut = tmp_path / "cut.jsonl"
    _first_turn_only(trace, cut, prompt_options=recorded)
    async with ScriptedModelServer(DENIED_SECOND[1:]) as server:
        async with OpenAIChatClient(server.url + "/v1") as live:
            resumed = ReplayModel.from_trace(cut, then=live)
            await Agent(resumed, [add], config=cfg, approver=_deny_a3).run("add")
        assert _tool_results(server.requests[0].body) == original
    assert load_recording(cut).prompt().written_order is True


# Traces written by the code of commit 9a26afa, before an answer cut off by the token limit was continued
# and a turn ended inside its reasoning was closed for the model (`max_answer_continuations`): each run
# made one request and ended `completed`, with the cut-off answer, or with none.
OLD_TURN_TRACES = {
    "cut_answer_at_9a26afa.jsonl": "The answer is 42 and the",
    "unclosed_reasoning_at_9a26afa.jsonl": "",
}


@pytest.mark.parametrize("name", list(OLD_TURN_TRACES))
async def test_a_trace_recorded_before_answers_were_continued_replays_as_it_ran(name: str) -> None:
    recording = load_recording(Path(__file__).parent / "data" / "old-traces" / name)
    assert recording.status == "completed" and len(recording.completions) == 1
    agent = Agent(ReplayModel.from_recording(recording), [], config=recording.agent_config())
    events = [ev async for ev in agent.stream(recording.task)]
    # Before, today's default continued the answer (or closed the reasoning) in a request the trace
    # does not hold: the replay ended model_error, ReplayExhausted.
    assert agent.result is not None
    assert (agent.result.status, agent.result.error) == ("completed", None)
    assert agent.result.answer == OLD_TURN_TRACES[name]
    assert [ev.kind for ev in events if isinstance(ev, Warning_)] == []


# Traces written by the code of commit 07e9303, before the last step the budget allows could be nudged or
# hinted (`intervene_on_last_step`): on step 1 of max_steps=1 the intervention checked every budget, the
# steps included, and each run made one request and ended budget_exceeded.
OLD_LAST_STEP_TRACES = {
    # the budget stopped the hint before its warning; the nudge after it
    "hint_on_last_step_at_07e9303.jsonl": ([], [add]),
    "nudge_on_last_step_at_07e9303.jsonl": (["reasoning_loop"], []),
}


@pytest.mark.parametrize("name", list(OLD_LAST_STEP_TRACES))
async def test_a_trace_recorded_before_the_last_step_could_be_intervened_on_replays_as_it_ran(
    name: str,
) -> None:
    recording = load_recording(Path(__file__).parent / "data" / "old-traces" / name)
    assert recording.status == "budget_exceeded" and len(recording.completions) == 1
    assert recording.agent_config().intervene_on_last_step is False
    warnings, tools = OLD_LAST_STEP_TRACES[name]
    agent = Agent(ReplayModel.from_recording(recording), tools, config=recording.agent_config())
    events = [ev async for ev in agent.stream(recording.task)]
    # Before, today's default went on after the intervention in a request the trace does not hold: the
    # replay ended model_error, ReplayExhausted.
    assert agent.result is not None
    assert (agent.result.status, agent.result.error) == ("budget_exceeded", "budget steps used up (1 >= 1)")
    assert [ev.kind for ev in events if isinstance(ev, Warning_)] == warnings  # no replay_divergence


@tool
def read_chunk(i: int) -> str:
    """Read chunk i of a long log.

    Args:
        i: chunk number
    """
    return "\n".join(f"log line {i}.{k}: request served in {k * 7 % 97} ms" for k in range(20))


async def test_a_trace_recorded_before_requests_were_fitted_to_the_context_replays_as_it_ran() -> None:
    # Written by the code of commit 6929519, before each request was fitted to the context
    # (`min_context_room_tokens`): the second turn's first request went unchecked, asking for 512 new
    # tokens past the 1024-token context it was configured with; the server refused it three times
    # (retried as any model error) and the run ended model_error. Today's check would end it
    # context_full unsent: a replay of it must not.
    recording = load_recording(
        Path(__file__).parent / "data" / "old-traces" / "context_refused_at_6929519.jsonl"
    )
    assert recording.agent_config().min_context_room_tokens is None
    assert [c.error_outcome for c in recording.completions] == [None, "retried", "retried", "ended"]
    replay = ReplayModel.from_recording(recording)
    events = [
        ev async for ev in Agent(replay, [read_chunk], config=recording.agent_config()).stream(recording.task)
    ]
    final = events[-1]
    assert final.type == "final" and final.status == "model_error" == recording.status
    assert final.error is not None and "Requested token count exceeds" in final.error
    assert replay.remaining == 0 and warnings_of(events, "replay_divergence") == []


async def test_a_trace_recorded_today_replays_its_answer_continuation(tmp_path: Path) -> None:
    cfg = config(sampling=SamplingParams(max_new_tokens=12))
    trace = tmp_path / "t.jsonl"
    long = "Short.\n</think>\n\nThe answer is 42 and the proof goes as follows: first we note that"
    async with (
        ScriptedModelServer([long, " it is so."]) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        recorded = await Agent(client, [], config=cfg, trace_path=trace).run("What is the answer?")
    assert recorded.status == "completed" and recorded.answer == "The answer is 42 and the it is so."
    recording = load_recording(trace)
    assert recording.agent_config().max_answer_continuations == 2
    replayed = await Agent(ReplayModel.from_recording(recording), [], config=recording.agent_config()).run(
        recording.task
    )
    assert (replayed.status, replayed.answer) == (recorded.status, recorded.answer)


async def record_openai(path: Path, turns=TURNS, **kw) -> list[list[dict]]:
    """Record a run through the OpenAI API; the messages each request sent, as the server got them."""
    async with ScriptedModelServer(turns) as server, OpenAIChatClient(server.url + "/v1") as client:
        await Agent(client, [add], trace_path=path, **kw).run("Add things.")
        return [r.body["messages"] for r in server.requests]


def warnings_of(events, kind: str) -> list[Warning_]:
    return [e for e in events if isinstance(e, Warning_) and e.kind == kind]


@tool(name="add")
def add_redescribed(a: int, b: int) -> int:
    """Add two integers, exactly."""
    return a + b


async def test_an_openai_api_replay_reports_where_its_messages_differ_from_the_recording(tmp_path):
    """OpenAI-API runs recorded no prompt, and a replay checked nothing: a changed tool result or an
    edited task was replayed silently, the recorded turns fed after what the model never saw."""
    trace = tmp_path / "t.jsonl"
    sent = await record_openai(trace, config=config())
    # What was sent is in the trace, each message once: the trace grows with the conversation.
    stored = [json.loads(line) for line in trace.read_text().splitlines()]
    stored_calls = [e for e in stored if e["type"] == "model_call"]
    assert [len(e["messages"]) for e in stored_calls] == [2, 2, 2]
    assert [e["messages_shared_prefix"] for e in stored_calls] == [0, 2, 4]
    assert [c.messages for c in load_recording(trace).completions] == sent

    faithful = Agent(ReplayModel.from_trace(trace), [add], config=config())
    events = [ev async for ev in faithful.stream("Add things.")]
    assert [e.kind for e in events if isinstance(e, Warning_)] == []

    diverged = Agent(ReplayModel.from_trace(trace), [add_wrong], config=config())
    events = [ev async for ev in diverged.stream("Add things.")]
    warnings = warnings_of(events, "replay_divergence")
    assert [w.step for w in warnings] == [2, 3]  # the second and third requests hold the changed results
    assert "recorded model call 2 of 3: message 4 of 4 (tool) differs" in warnings[0].message
    assert "in its content at character 1 (recorded '42', now '43')" in warnings[0].message

    # A tool described otherwise: the native prompt holds the tools, here their digest does.
    redescribed = Agent(ReplayModel.from_trace(trace), [add_redescribed], config=config())
    events = [ev async for ev in redescribed.stream("Add things.")]
    warnings = warnings_of(events, "replay_divergence")
    assert len(warnings) == 3 and "the tools sent differ" in warnings[0].message

    # A task edited in the trace differs from the one the recorded completions answered.
    edited = tmp_path / "edited.jsonl"
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    lines[0]["task"] = "Subtract things."
    edited.write_text("".join(json.dumps(e) + "\n" for e in lines))
    recording = load_recording(edited)
    replay = Agent(ReplayModel.from_recording(recording), [add], config=config())
    events = [ev async for ev in replay.stream(recording.task)]
    warnings = warnings_of(events, "replay_divergence")
    assert len(warnings) == 3 and "recorded model call 1 of 3: message 2 of 2 (user)" in warnings[0].message
    assert "Subtract things." in warnings[0].message


async def test_an_openai_api_replay_of_a_continued_answer_matches_its_recording(tmp_path):
    """A continuation sends the turn so far as a trailing assistant message: replayed the same."""
    cfg = config(sampling=SamplingParams(max_new_tokens=12))
    trace = tmp_path / "t.jsonl"
    long = "Short.\n</think>\n\nThe answer is 42 and the proof goes as follows: first we note that"
    sent = await record_openai(trace, turns=[long, " it is so."], config=cfg)
    assert sent[1][-1]["role"] == "assistant"  # the continued answer
    replay = Agent(ReplayModel.from_trace(trace), [add], config=cfg)
    events = [ev async for ev in replay.stream("Add things.")]
    assert [e.kind for e in events if isinstance(e, Warning_)] == ["answer_continued"]
    assert replay.result.answer == "The answer is 42 and the it is so."


async def test_an_openai_api_trace_without_the_messages_sent_says_once_it_cannot_be_checked(tmp_path):
    trace = tmp_path / "t.jsonl"
    await record_openai(trace, config=config())
    # As written before the messages sent were recorded.
    old = tmp_path / "old.jsonl"
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    for e in lines:
        for key in ("messages", "messages_shared_prefix", "tools_digest"):
            e.pop(key, None)
    old.write_text("".join(json.dumps(e) + "\n" for e in lines))
    replay = Agent(ReplayModel.from_trace(old), [add_wrong], config=config())
    events = [ev async for ev in replay.stream("Add things.")]
    assert warnings_of(events, "replay_divergence") == []
    unchecked = warnings_of(events, "replay_unchecked")
    assert len(unchecked) == 1 and unchecked[0].step == 1
    assert "cannot be checked" in unchecked[0].message


async def test_the_replay_of_a_run_cancelled_mid_tool_ends_where_its_recording_does(tmp_path: Path) -> None:
    """A run cancelled (Ctrl-C, SIGTERM) while a tool ran recorded one completion; its replay runs the tool
    and asks for the next. That ended `model_error` ("ReplayExhausted: ...") as if the model had failed;
    it now ends saying the recording stops there, and how the recorded run ended."""
    started, holding = asyncio.Event(), [True]

    @tool(timeout=30)
    async def slow(n: int) -> str:
        """Take a while."""
        started.set()
        if holding[0]:
            await asyncio.Event().wait()
        return "slept"

    trace = tmp_path / "t.jsonl"
    turns = ["go\n</think>\n\n" + call("slow", n=1), "ok\n</think>\n\ndone"]
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        running = asyncio.create_task(Agent(client, [slow], config=config(), trace_path=trace).run("do it"))
        await started.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    recording = load_recording(trace)
    assert (recording.status, recording.error) == ("cancelled", "the run was cancelled")
    holding[0] = False
    replay = Agent(ReplayModel.from_recording(recording), [slow], config=recording.agent_config())
    events = [ev async for ev in replay.stream(recording.task)]
    assert replay.result is not None and replay.result.status == "recording_ended"
    assert replay.result.error == (
        "the recording ends here, after 1 model call: the recorded run ended 'cancelled' (the run was cancelled)"
    )
    assert [ev.type for ev in events if ev.type in ("tool_result", "warning")] == ["tool_result", "warning"]
    # The same from the trace's path.
    again = await Agent(ReplayModel.from_trace(trace), [slow], config=recording.agent_config()).run(
        recording.task
    )
    assert (again.status, again.error) == (replay.result.status, replay.result.error)


# Written by the code of commit e038dae, before the runaway-count, copy, echo, exact-cycle and ledger loop
# signals existed (its loop_detector config has none of their settings): the model counted 399 items
# one line each in its reasoning, and the run ended `completed` in one request. Today's counting signal
# nudges that reasoning, so with today's defaults the replay asked for a request the trace does not
# hold (ended recording_ended), and a resume threw the recorded answer away for the live model's.
OLD_SIGNALS_TRACE = Path(__file__).parent / "data" / "old-traces" / "runaway_count_at_e038dae.jsonl"


async def test_a_trace_recorded_before_todays_loop_signals_replays_as_it_ran() -> None:
    recording = load_recording(OLD_SIGNALS_TRACE)
    assert recording.status == "completed" and len(recording.completions) == 1
    cfg = recording.agent_config()
    detector = cfg.loop_detector
    assert not (detector.counter_enabled or detector.copy_enabled or detector.echo_enabled)
    assert not (detector.periodic_enabled or detector.ledger_enabled or detector.arithmetic_slip_hint)
    assert (cfg.max_requests_per_turn, cfg.model_retry_backoff_s) == (None, 0.0)
    assert detector.attempt_window == 20  # what the trace does hold is kept
    agent = Agent(ReplayModel.from_recording(recording), [], config=cfg)
    events = [ev async for ev in agent.stream(recording.task)]
    assert agent.result is not None
    assert (agent.result.status, agent.result.answer) == ("completed", "There are 399 items.")
    assert [ev.kind for ev in events if isinstance(ev, Warning_)] == []  # no nudge, nothing to say


async def test_a_resume_of_a_trace_recorded_before_todays_loop_signals_keeps_its_turns_and_says_so_once(
    tmp_path: Path,
) -> None:
    recording = load_recording(OLD_SIGNALS_TRACE)
    async with (
        ScriptedModelServer(["live\n</think>\n\nSomething else."], when_exhausted="repeat") as server,
        SGLangClient(server.url, retry=NO_RETRY) as live,
    ):
        replay = ReplayModel.from_recording(recording, then=live)
        agent = Agent(replay, [], config=recording.agent_config(), trace_path=tmp_path / "resumed.jsonl")
        events = [ev async for ev in agent.stream(recording.task)]
    assert agent.result is not None and agent.result.answer == "There are 399 items."
    assert server.requests == []  # the recorded answer stands: the live model was never asked
    said = [ev for ev in events if isinstance(ev, Warning_)]
    assert [ev.kind for ev in said] == ["trace_predates_settings"]
    assert "loop_detector.counter_enabled=false" in said[0].message
    assert "max_requests_per_turn=null" in said[0].message


async def test_a_trace_recorded_today_resumes_with_todays_settings_and_no_word_of_them(
    tmp_path: Path,
) -> None:
    trace = tmp_path / "today.jsonl"
    await record(trace, config=config())
    recording = load_recording(trace)
    assert recording.predates() == {} and recording.agent_config() == config()
    async with ScriptedModelServer(["x\n</think>\n\nno"]) as server, SGLangClient(server.url) as live:
        agent = Agent(
            ReplayModel.from_recording(recording, then=live), [add], config=recording.agent_config()
        )
        events = [ev async for ev in agent.stream(recording.task)]
    assert agent.result is not None and agent.result.answer == "43"
    assert [ev.kind for ev in events if isinstance(ev, Warning_)] == []


def _flat_keys(config: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in config.items():
        if isinstance(value, dict) and value:
            keys |= _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_every_setting_an_old_trace_lacks_says_how_the_code_before_it_ran() -> None:
    # A setting added to AgentConfig without saying what a trace recorded before it replays with took
    # today's default there: the loop signals added since e038dae nudged recorded turns on replay.
    from qwq_agent.agent.config_history import SAME_AS_BEFORE, SINCE, as_recorded_then

    today = _flat_keys(AgentConfig().model_dump())
    oldest = _flat_keys(started_of(OLD_SIGNALS_TRACE).config)
    covered = {s.key for s in SINCE} | {p for s in SINCE for p in s.before} | SAME_AS_BEFORE
    assert sorted(today - oldest - covered) == []
    assert {s.key for s in SINCE} | {p for s in SINCE for p in s.before} <= today  # no stale entry
    # The values that replay an old trace are valid settings (once the settings since removed are
    # dropped, as `Recording.agent_config` drops them).
    from qwq_agent.agent.recorded_settings import known_settings

    AgentConfig.model_validate(
        known_settings(AgentConfig, as_recorded_then(started_of(OLD_SIGNALS_TRACE).config)[0])[0]
    )


def test_cli_replay_of_a_trace_with_settings_since_removed_says_so_once_in_one_plain_line(tmp_path):
    """The CLI printed the `RecordedSettingsWarning` twice (the trace's read and the settings' each warned),
    as raw Python warnings with the internal source line under them."""
    original = tmp_path / "original.jsonl"
    with ScriptedModelServer(REASONED) as server:
        proc = run_cli(
            "Say hello.", "--model-url", server.url, "--tools", "fetch_url", "--trace", str(original)
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = original.read_text(encoding="utf-8").splitlines()
    started = json.loads(lines[0])
    started["config"]["budget"]["max_wall"] = 60  # a key an older version could have recorded
    lines[0] = json.dumps(started)
    old = tmp_path / "old.jsonl"
    old.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_cli("--replay", str(old), "--json", "--trace", str(tmp_path / "replayed.jsonl"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = [line for line in proc.stderr.splitlines() if "budget.max_wall" in line]
    assert len(said) == 1, proc.stderr
    assert "RecordedSettingsWarning" not in proc.stderr and "agent_config()" not in proc.stderr
    assert "settings this version does not have" in said[0]


async def test_a_recorded_setting_this_version_refuses_is_named_as_accepted_then_refused_now(tmp_path):
    """A trace recorded with a value a later version refuses (`model_retries: -1`) was "not valid", with
    the CLI's fix "pass a trace written by `qwq-agent run`", which it was. Both now say what happened."""
    await record(tmp_path / "t.jsonl", config=config())
    lines = (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()
    started = json.loads(lines[0])
    started["config"]["model_retries"] = -1
    lines[0] = json.dumps(started)
    old = tmp_path / "old.jsonl"
    old.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RecordedConfigError) as caught:
        load_recording(old)
    message = str(caught.value)
    assert "model_retries" in message and "refused by this version" in message and "accepted it" in message
    proc = run_cli("--replay", str(old), "--tools", "fetch_url")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "model_retries" in proc.stderr and "refused by this version" in proc.stderr
    assert "version that recorded it" in proc.stderr and "pass a trace written by" not in proc.stderr
