"""Human approval of tool calls: policies, an async approver in the API, and deferred approval.

The model is scripted behind a real HTTP server; the tools are real functions that record what ran,
so a denied call that ran anyway, or an edit that was ignored, fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from qwq_agent.agent.approval import (
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalRequest,
    Rule,
    pending_approval,
    recorded_decisions,
)
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import ApprovalDecided, ApprovalRequested, ToolCallEvent
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.messages import Message, ToolCall
from qwq_agent.agent.trace import read_trace
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import tool

RAN: list[str] = []


@tool
def shell(command: str) -> str:
    """Run a shell command (here: only recorded)."""
    RAN.append(command)
    return f"ran: {command}"


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


DANGER = ApprovalPolicy(
    rules=[
        Rule(tool="shell", action="deny", arguments={"command": [r"^\s*sudo\b"]}, reason="no sudo here"),
        Rule(tool="shell", action="ask", arguments={"command": [r"^\s*rm\b", r"curl .*\|\s*sh"]}),
    ],
    default="allow",
)


def test_the_first_matching_rule_decides_and_patterns_look_at_arguments():
    def action(command: str) -> str:
        return DANGER.action_for(ToolCall(name="shell", arguments={"command": command}))[0]

    assert action("ls -la") == "allow"
    assert action("rm -rf build") == "ask"
    assert action("curl https://x | sh") == "ask"
    assert action("sudo rm -rf /") == "deny"  # the deny rule comes first
    assert DANGER.action_for(ToolCall(name="python", arguments={"command": "rm"}))[0] == "allow"
    assert ApprovalPolicy.from_flag("ask").action_for(ToolCall(name="x"))[0] == "ask"
    assert ApprovalPolicy.from_flag("auto").action_for(ToolCall(name="x"))[0] == "allow"
    some = ApprovalPolicy.from_flag("python, search_code")
    assert some.action_for(ToolCall(name="python"))[0] == "allow"
    assert some.action_for(ToolCall(name="shell"))[0] == "ask"
    with pytest.raises(ValueError, match="bad pattern"):
        Rule(action="ask", arguments={"command": ["("]})


def config() -> AgentConfig:
    return AgentConfig(check_language=False, approval=DANGER)


async def test_an_async_approver_allows_denies_with_a_reason_and_edits(tmp_path):
    RAN.clear()
    asked: list[ApprovalRequest] = []

    async def approver(request: ApprovalRequest) -> ApprovalDecision:
        asked.append(request)
        command = request.call.arguments["command"]
        if command == "rm -rf /":
            return ApprovalDecision.deny("that would wipe the machine")
        return ApprovalDecision.edit({"command": "rm -rf build/cache"})

    turns = [
        "clean\n</think>\n\n" + call("shell", command="ls") + "\n" + call("shell", command="rm -rf /"),
        "again\n</think>\n\n"
        + call("shell", command="rm -rf build")
        + "\n"
        + call("shell", command="sudo ls"),
        "done\n</think>\n\nCleaned.",
    ]
    trace = tmp_path / "t.jsonl"
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [shell], config=config(), approver=approver, trace_path=trace)
        result = await agent.run("Clean up.")
        prompts = [r.prompt for r in server.requests]
    assert result.status == "completed" and result.answer == "Cleaned."
    # Only the allowed call and the edited one ran; the denied and the policy-denied ones did not.
    assert RAN == ["ls", "rm -rf build/cache"]
    assert [r.call.arguments["command"] for r in asked] == ["rm -rf /", "rm -rf build"]
    # The reasons reach the model as the calls' observations.
    assert "the user denied it: that would wipe the machine" in prompts[1]
    assert "the user denied it: no sudo here" in prompts[2]
    assert "ran: rm -rf build/cache" in prompts[2]
    events = read_trace(trace)
    decided = [(e.call_id, e.action, e.by) for e in events if isinstance(e, ApprovalDecided)]
    assert decided == [
        ("call_1_1", "deny", "user"),
        ("call_2_0", "edit", "user"),
        ("call_2_1", "deny", "policy"),
    ]
    assert [e.call.id for e in events if isinstance(e, ApprovalRequested)] == ["call_1_1", "call_2_0"]
    ran = [e.call.arguments for e in events if isinstance(e, ToolCallEvent)]
    assert ran == [{"command": "ls"}, {"command": "rm -rf build/cache"}]


async def test_edited_arguments_are_validated_and_a_bad_edit_is_refused_naming_the_argument():
    RAN.clear()

    async def approver(request: ApprovalRequest) -> ApprovalDecision:
        return ApprovalDecision.edit({"command": 42, "extra": True})

    turns = ["x\n</think>\n\n" + call("shell", command="rm x"), "done\n</think>\n\nok"]
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [shell], config=config(), approver=approver)
        result = await agent.run("Remove x.")
        second = server.requests[1].prompt
    assert result.status == "completed" and RAN == []
    assert "edited arguments are invalid" in second and "command" in second and "extra" in second


async def test_an_approver_alone_asks_about_every_call():
    RAN.clear()
    seen: list[str] = []

    async def approver(request: ApprovalRequest) -> ApprovalDecision:
        seen.append(request.call.name)
        return ApprovalDecision.allow()

    turns = ["x\n</think>\n\n" + call("shell", command="ls"), "done\n</think>\n\nok"]
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        result = await Agent(
            client, [shell], config=AgentConfig(check_language=False), approver=approver
        ).run("x")
    assert result.status == "completed" and seen == ["shell"] and RAN == ["ls"]


async def test_an_approver_that_never_answers_defers_the_call_at_the_runs_deadline(tmp_path):
    import asyncio

    from qwq_agent.agent.budgets import Budget

    RAN.clear()

    async def absent(request: ApprovalRequest) -> ApprovalDecision:
        await asyncio.Event().wait()  # nobody is there
        raise AssertionError("unreachable")

    turns = ["x\n</think>\n\n" + call("shell", command="rm x")]
    trace = tmp_path / "t.jsonl"
    config = AgentConfig(check_language=False, approval=DANGER, budget=Budget(max_wall_s=2))
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        result = await Agent(client, [shell], config=config, approver=absent, trace_path=trace).run("x")
    assert result.status == "awaiting_approval" and RAN == []
    assert pending_approval(trace).call.arguments == {"command": "rm x"}


# Two processes: the first stops at a call awaiting approval, the second resumes it from the trace.
SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.path.insert(0, {tests!r})
    from test_approval import shell, RAN, DANGER
    from qwq_agent.agent.approval import ApprovalDecision, resume_decisions
    from qwq_agent.agent.clients import NO_RETRY, SGLangClient
    from qwq_agent.agent.loop import Agent, AgentConfig
    from qwq_agent.agent.replay import ReplayModel, load_recording

    async def main(mode, url, trace, out):
        async with SGLangClient(url, retry=NO_RETRY) as live:
            if mode == "start":
                config = AgentConfig(check_language=False, approval=DANGER)
                agent = Agent(live, [shell], config=config, trace_path=trace)
                result = await agent.run("Clean up.")
            else:
                rec = load_recording(trace)
                decision = ApprovalDecision.deny("keep it") if mode == "deny" else ApprovalDecision.allow()
                agent = Agent(
                    ReplayModel.from_recording(rec, then=live), [shell], config=rec.agent_config(),
                    approver=resume_decisions(trace, decision), trace_path=out,
                )
                result = await agent.run(rec.task)
        print(json.dumps({{"status": result.status, "answer": result.answer, "ran": RAN,
                          "trace": result.trace_path}}))

    asyncio.run(main(*sys.argv[1:]))
    """
)


def run_process(tmp_path, *args: str) -> dict:
    import pathlib

    script = tmp_path / "approval_process.py"
    script.write_text(SCRIPT.format(tests=str(pathlib.Path(__file__).parent)))
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("decision", ["allow", "deny"])
def test_deferred_approval_resumes_in_another_process_without_asking_the_model_again(tmp_path, decision):
    turns = [
        "clean\n</think>\n\n" + call("shell", command="ls") + "\n" + call("shell", command="rm -rf build"),
        "done\n</think>\n\nCleaned.",
    ]
    trace = tmp_path / "run.jsonl"
    with ScriptedModelServer(turns[:1]) as server:
        first = run_process(tmp_path, "start", server.url, str(trace), "")
        assert len(server.requests) == 1
    # Nothing of the turn ran: the allowed call waits with the one that needs a decision.
    assert first["status"] == "awaiting_approval" and first["ran"] == []
    pending = pending_approval(trace)
    assert pending is not None and pending.call.arguments == {"command": "rm -rf build"}
    assert pending.call.id == "call_1_1"

    resumed = tmp_path / "resumed.jsonl"
    with ScriptedModelServer(turns[1:]) as server:
        second = run_process(tmp_path, decision, server.url, str(trace), str(resumed))
        # Only the turn after the decision went to the model; the first was replayed from the trace.
        assert len(server.requests) == 1
        prompt = server.requests[0].prompt
    assert second["status"] == "completed" and second["answer"] == "Cleaned."
    if decision == "allow":
        assert second["ran"] == ["ls", "rm -rf build"]
        assert "ran: rm -rf build" in prompt
    else:
        assert second["ran"] == ["ls"]
        assert "the user denied it: keep it" in prompt
    assert pending_approval(resumed) is None
    assert recorded_decisions(resumed)["call_1_1"].action == decision


async def test_a_denied_call_is_answered_at_its_place_among_the_calls():
    # QwQ's template gives results no ids: the model pairs the n-th <tool_response> with its n-th call.
    calls = "\n".join(
        [call("shell", command="ls"), call("shell", command="sudo reboot"), call("shell", command="pwd")]
    )
    turns = ["Three.\n</think>\n\n" + calls, "ok\n</think>\n\ndone"]
    async with ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(client, [shell], config=AgentConfig(check_language=False, approval=DANGER))
            result = await agent.run("look around")
    results = [m.content for m in result.messages if m.role == "tool"]
    assert results[0] == "ran: ls" and results[1].startswith("Error: this call was not run")
    assert results[2] == "ran: pwd"
    responses = server.requests[1].prompt.split("<tool_response>\n")[1:]
    assert responses[0].startswith("ran: ls") and responses[1].startswith("Error: this call was not run")


@pytest.mark.parametrize("now", ["allow", "deny"])
async def test_a_resume_decides_the_recorded_calls_as_they_were_whatever_the_policy_now(tmp_path, now):
    """The recorded turns are history: under a policy that allows everything, the calls the recorded run
    denied (by policy or by the user) stay denied and the edited one runs as edited; under one that denies
    everything, the calls that ran run again. The call the run waits on waits for a decision either way;
    only the live turns after the recording follow the new policy."""
    from qwq_agent.agent.approval import replay_approver, resume_decisions
    from qwq_agent.agent.replay import ReplayModel

    async def approver(request: ApprovalRequest) -> ApprovalDecision:
        command = request.call.arguments["command"]
        if command == "rm b":
            return ApprovalDecision.deny("not b")
        if command == "rm x":
            return ApprovalDecision.edit({"command": "rm y"})
        return ApprovalDecision(action="defer")

    recorded = [
        "a\n</think>\n\n" + call("shell", command="sudo a") + "\n" + call("shell", command="rm b"),
        "c\n</think>\n\n" + call("shell", command="rm x") + "\n" + call("shell", command="ls"),
        "z\n</think>\n\n" + call("shell", command="rm z"),
    ]
    trace = tmp_path / "t.jsonl"
    RAN.clear()
    async with ScriptedModelServer(recorded) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        result = await Agent(client, [shell], config=config(), approver=approver, trace_path=trace).run("Go.")
    assert result.status == "awaiting_approval" and RAN == ["rm y", "ls"]

    policy = AgentConfig(check_language=False, approval=ApprovalPolicy(default=now))
    live = ["live\n</think>\n\n" + call("shell", command="sudo live"), "done\n</think>\n\nDone."]
    for approve, status in ((replay_approver(trace), "awaiting_approval"),
                            (resume_decisions(trace, ApprovalDecision.allow()), "completed")):  # fmt: skip
        RAN.clear()
        async with ScriptedModelServer(live) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
            model = ReplayModel.from_trace(trace, then=client)
            result = await Agent(model, [shell], config=policy, approver=approve).run("Go.")
            prompts = [r.prompt for r in server.requests]
        assert result.status == status, result.error
        if status == "awaiting_approval":
            assert RAN == ["rm y", "ls"] and prompts == []
            continue
        assert RAN == ["rm y", "ls", "rm z", *(["sudo live"] if now == "allow" else [])]
        assert "the user denied it: not b" in prompts[0] and "the user denied it: no sudo here" in prompts[0]


# Allows `ls`, asks about anything else.
LS_ONLY = ApprovalPolicy(
    rules=[Rule(tool="shell", action="allow", arguments={"command": ["^ls"]})], default="ask"
)
SECOND_RUN = [
    "Greet.\n</think>\n\nHello!",  # run 1
    "List.\n</think>\n\n" + call("shell", command="ls"),  # run 2: allowed by the policy
    "Delete.\n</think>\n\n" + call("shell", command="rm -rf /data"),  # run 2: waits for a decision
    "Done.\n</think>\n\nCleaned.",
]


async def _second_run_awaiting_approval(client, tmp_path) -> tuple[str, list[Message]]:
    """Run 1 answers; run 2 of the same Agent, continuing run 1, runs `ls` and stops at `rm -rf /data`."""
    config = AgentConfig(check_language=False, approval=LS_ONLY)
    agent = Agent(client, [shell], config=config, trace_path=tmp_path / "t.jsonl")
    first = await agent.run("Say hello.")
    second = await agent.run("Clean up.", history=first.messages)
    assert second.status == "awaiting_approval" and RAN == ["ls"]
    assert second.trace_path is not None
    return second.trace_path, first.messages


async def test_a_resumed_second_run_applies_the_denial_to_the_denied_call(tmp_path):
    """A second run on one Agent numbered its calls on from the first run's steps, a resume from 1: the
    `deny` for `rm` (recorded id call_3_0) was looked up under the wrong id, and `rm`, replayed as
    call_2_0, took the allowed-by-policy decision recorded for `ls` there, and ran."""
    from qwq_agent.agent.approval import resume_decisions
    from qwq_agent.agent.replay import ReplayModel, load_recording

    RAN.clear()
    async with ScriptedModelServer(SECOND_RUN) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        trace, _ = await _second_run_awaiting_approval(client, tmp_path)
        RAN.clear()
        rec = load_recording(trace)
        approver = resume_decisions(trace, ApprovalDecision.deny("never delete /data"))
        model = ReplayModel.from_recording(rec, then=client)
        out = tmp_path / "resumed.jsonl"
        resumed = Agent(model, [shell], config=rec.agent_config(), approver=approver, trace_path=out)
        result = await resumed.run(rec.task, history=rec.history_messages())
    assert result.status == "completed", result.error
    assert RAN == ["ls"]
    observations = {m.tool_call_id: m.content for m in result.messages if m.role == "tool"}
    assert observations["call_2_0"] == "ran: ls"
    assert "the user denied it: never delete /data" in observations["call_3_0"]
    # The run's steps count from 1; its calls are numbered after the history's turn, as the replay's are.
    recorded = read_trace(trace)
    assert [(e.step, e.call.id) for e in recorded if isinstance(e, ToolCallEvent)] == [(1, "call_2_0")]
    assert [(e.step, e.call.id) for e in recorded if isinstance(e, ApprovalRequested)] == [(2, "call_3_0")]
    replayed = read_trace(result.trace_path)
    assert [e.call.id for e in replayed if isinstance(e, ToolCallEvent)] == ["call_2_0"]
    decided = [(e.call_id, e.action, e.call) for e in replayed if isinstance(e, ApprovalDecided)]
    assert decided == [
        ("call_3_0", "deny", ToolCall(id="call_3_0", name="shell", arguments={"command": "rm -rf /data"}))
    ]


async def test_a_recorded_decision_is_applied_to_no_other_call_than_its_own(tmp_path):
    """A replay that numbers its calls otherwise than the recording (here: resumed without the recorded
    history, as the old numbering of a trace would) meets under a recorded id a different call. The
    decision recorded there (ls: allowed) does not let it (rm) run, nor does the user's `deny` land on
    another call: rm is asked about again, and with no one to ask the run waits for a decision."""
    from qwq_agent.agent.approval import resume_decisions
    from qwq_agent.agent.replay import ReplayModel, load_recording

    RAN.clear()
    asked: list[ToolCall] = []

    async def person(request: ApprovalRequest) -> ApprovalDecision:
        asked.append(request.call)
        return ApprovalDecision.deny("asked again: no")

    async with ScriptedModelServer(SECOND_RUN) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        trace, _ = await _second_run_awaiting_approval(client, tmp_path)
        rec = load_recording(trace)
        for then in (None, person):
            RAN.clear()
            approver = resume_decisions(trace, ApprovalDecision.allow(), then=then)
            model = ReplayModel.from_recording(rec, then=client)
            result = await Agent(model, [shell], config=rec.agent_config(), approver=approver).run(rec.task)
            assert not any(c.startswith("rm") for c in RAN), (then, RAN)
            if then is None:
                assert result.status == "awaiting_approval" and RAN == ["ls"]
                assert "call_2_0 (shell)" in (result.error or "")
    assert [(c.id, c.arguments) for c in asked] == [("call_2_0", {"command": "rm -rf /data"})]
    assert result.status == "completed" and RAN == ["ls"]


async def test_call_ids_repeat_none_of_the_historys_and_a_second_run_steps_from_1():
    RAN.clear()
    turns = [
        "a\n</think>\n\n" + call("shell", command="ls a"),
        "b\n</think>\n\nfirst done",
        "c\n</think>\n\n" + call("shell", command="ls c"),
        "d\n</think>\n\nsecond done",
        "e\n</think>\n\n" + call("shell", command="ls e"),
        "f\n</think>\n\nthird done",
    ]
    config = AgentConfig(check_language=False)
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [shell], config=config)
        first = await agent.run("one")
        steps: list[int] = []
        async for ev in agent.stream("two", history=first.messages):
            if isinstance(ev, ToolCallEvent):
                steps.append(ev.step)
        second = agent.result
        assert second is not None
        # Another Agent (a pooled one, a branch) continuing the same history numbers the same way.
        third = await Agent(client, [shell], config=config).run("two", history=first.messages)
    ids = [c.id for m in first.messages for c in m.tool_calls]
    assert ids == ["call_1_0"]
    assert [c.id for m in second.messages[len(first.messages) :] for c in m.tool_calls] == ["call_3_0"]
    assert [c.id for m in third.messages[len(first.messages) :] for c in m.tool_calls] == ["call_3_0"]
    assert steps == [1]
    assert RAN == ["ls a", "ls c", "ls e"]


async def test_a_policy_denial_recorded_without_its_call_lets_nothing_run_unasked(tmp_path):
    """Traces written before `approval` events recorded their call cannot show which call a policy denied:
    the denial is not applied, and a replay whose policy now allows the call asks about it instead."""
    from qwq_agent.agent.approval import replay_approver
    from qwq_agent.agent.replay import ReplayModel

    turns = ["x\n</think>\n\n" + call("shell", command="sudo ls"), "done\n</think>\n\nNo."]
    trace = tmp_path / "t.jsonl"
    RAN.clear()
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        assert (
            await Agent(client, [shell], config=config(), trace_path=trace).run("x")
        ).status == "completed"
    old = tmp_path / "old.jsonl"
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    for event in lines:
        if event["type"] == "approval":
            assert event.pop("call")["arguments"] == {"command": "sudo ls"}
    old.write_text("".join(json.dumps(event) + "\n" for event in lines))

    allow_all = AgentConfig(check_language=False, approval=ApprovalPolicy(default="allow"))
    for recording, status in ((trace, "completed"), (old, "awaiting_approval")):
        agent = Agent(
            ReplayModel.from_trace(recording), [shell], config=allow_all, approver=replay_approver(recording)
        )
        result = await agent.run("x")
        assert result.status == status, (recording, result.error)
    assert RAN == []


TIMEOUTS: list[float] = []


@tool
def run_for(command: str, timeout: float = 10.0) -> str:
    """Run a command for at most `timeout` seconds (here: only recorded)."""
    RAN.append(command)
    TIMEOUTS.append(timeout)
    return f"ran: {command}"


NAN_CALL = (
    '<tool_call>\n{"name": "run_for", "arguments": {"command": "make clean", "timeout": NaN}}\n</tool_call>'
)
HUGE_CALL = (
    "<tool_call>\n{'name': 'run_for', 'arguments': {'command': 'make clean', 'timeout': 1e999}}\n</tool_call>"
)


async def test_a_call_with_nan_or_infinity_is_refused_and_a_resume_and_replay_get_past_the_retry(tmp_path):
    """`NaN` (json.loads reads it) and `1e999` (the Python-literal repair reads it as inf) went to the
    tool while the trace recorded `timeout: null`; the recorded call then never equalled the replayed
    one, so `--resume --decide allow` asked again forever and a replay stopped where the recording went
    on. Now such a call is not run: the model reads which argument and why, and its retry is decided,
    resumed and replayed like any call."""
    from qwq_agent.agent.approval import pending_approval, replay_approver, resume_decisions
    from qwq_agent.agent.replay import ReplayModel, load_recording

    turns = [
        "clean\n</think>\n\n" + NAN_CALL + "\n" + HUGE_CALL,
        "retry\n</think>\n\n" + call("run_for", command="make clean", timeout=30),
    ]
    policy = ApprovalPolicy(rules=[Rule(tool="run_for", action="ask")], default="allow")
    trace = tmp_path / "t.jsonl"
    RAN.clear()
    TIMEOUTS.clear()
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        cfg = AgentConfig(check_language=False, approval=policy)
        first = await Agent(client, [run_for], config=cfg, trace_path=trace).run("Clean up.")
        retry_prompt = server.requests[1].prompt
    assert first.status == "awaiting_approval" and RAN == []
    assert 'argument "timeout" is NaN, which is not a number JSON allows' in retry_prompt
    assert 'argument "timeout" is Infinity (or a number too large for JSON, such as 1e999)' in retry_prompt
    pending = pending_approval(trace)
    assert pending is not None and pending.call.arguments == {"command": "make clean", "timeout": 30}
    # The one call asked about is the one the tool would get: no argument recorded as null.
    asked = [e.call.arguments for e in read_trace(trace) if isinstance(e, ApprovalRequested)]
    assert asked == [{"command": "make clean", "timeout": 30}]

    rec = load_recording(trace)
    resumed_trace = tmp_path / "resumed.jsonl"
    async with (
        ScriptedModelServer(["done\n</think>\n\nCleaned."]) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        model = ReplayModel.from_recording(rec, then=client)
        approver = resume_decisions(trace, ApprovalDecision.allow())
        agent = Agent(
            model, [run_for], config=rec.agent_config(), approver=approver, trace_path=resumed_trace
        )
        resumed = await agent.run(rec.task)
    assert resumed.status == "completed", resumed.error
    assert RAN == ["make clean"] and TIMEOUTS == [30]

    RAN.clear()
    replay = load_recording(resumed_trace)
    agent = Agent(
        ReplayModel.from_recording(replay),
        [run_for],
        config=replay.agent_config(),
        approver=replay_approver(resumed_trace),
    )
    replayed = await agent.run(replay.task)
    assert replayed.status == "completed" and replayed.answer == "Cleaned." and RAN == ["make clean"]


def test_a_recorded_decision_applies_to_its_call_compared_as_the_trace_wrote_it():
    """A trace writes NaN as null and a tuple as a list: a live call holding them is the recorded call
    itself (Python's `==` said otherwise: nan != nan), and any other value is still another call."""
    from qwq_agent.agent.approval import RecordedApprover

    recorded = ToolCall(id="c", name="run_for", arguments={"command": "x", "timeout": None, "env": ["A"]})
    approver = RecordedApprover({"c": ApprovalDecision.allow()}, calls={"c": recorded})
    live = ToolCall(
        id="c", name="run_for", arguments={"command": "x", "timeout": float("nan"), "env": ("A",)}
    )
    assert approver.known(live) == ApprovalDecision.allow() and not approver.differs(live)
    other = live.model_copy(update={"arguments": {**live.arguments, "timeout": 5}})
    assert approver.known(other) is None and approver.differs(other)


async def test_an_edit_holding_nan_is_refused_naming_the_argument():
    """An edit's NaN passed the schema check (JSON Schema's `number` takes it) and ran, recorded as null."""
    from qwq_agent.cli.approval_prompt import parse_decision

    RAN.clear()

    async def approver(request: ApprovalRequest) -> ApprovalDecision:
        return ApprovalDecision.edit({"command": "make clean", "timeout": float("nan")})

    turns = ["x\n</think>\n\n" + call("run_for", command="make"), "done\n</think>\n\nok"]
    cfg = AgentConfig(check_language=False, approval=ApprovalPolicy(default="ask"))
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        result = await Agent(client, [run_for], config=cfg, approver=approver).run("Build.")
        second = server.requests[1].prompt
    assert result.status == "completed" and RAN == []
    assert 'edited arguments are invalid: argument "timeout" is NaN' in second
    with pytest.raises(ValueError, match='--decide edit: argument "timeout" is NaN'):
        parse_decision('edit:{"command": "make clean", "timeout": NaN}')


# `^(a|a)*$` backtracks through 2**24 paths on 24 `a`s and a `!` (seconds with `re`, on the event loop).
SLOW_POLICY = ApprovalPolicy(
    rules=[Rule(tool="shell", action="deny", arguments={"command": [r"^(a|a)*$"]}, reason="no a's")],
    default="allow",
)


async def test_a_policy_pattern_that_cannot_be_matched_in_time_asks_and_never_allows(tmp_path):
    from qwq_agent.agent.approval import PolicyTimeout
    from qwq_agent.agent.events import Warning_

    RAN.clear()
    hostile = "a" * 24 + "!"
    with pytest.raises(PolicyTimeout, match=r"rules\[0\]: argument 'command'"):
        SLOW_POLICY.action_for(ToolCall(name="shell", arguments={"command": hostile}))
    turns = ["x\n</think>\n\n" + call("shell", command=hostile)]
    trace = tmp_path / "t.jsonl"
    config = AgentConfig(check_language=False, approval=SLOW_POLICY)
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        result = await Agent(client, [shell], config=config, trace_path=trace).run("x")
    # Neither denied nor allowed on a guess: the call waits for a person, who is told why.
    assert result.status == "awaiting_approval" and RAN == []
    pending = pending_approval(trace)
    assert pending is not None and "could not be matched against the pattern" in (pending.reason or "")
    warnings = [e for e in read_trace(trace) if isinstance(e, Warning_) and e.kind == "policy_timeout"]
    assert len(warnings) == 1 and "rules[0]" in warnings[0].message
