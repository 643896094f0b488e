"""`qwq-agent run --approve`: what the CLI makes of its inputs when they are odd.

A closed stdin, a run whose approver alone deferred, a policy file with a misspelt key or a bad rule. The
CLI runs as its own process against a scripted model server; the one tool, fetch_url, is never allowed
to run here except where a test says so (its URL does not resolve).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwq_agent.agent.approval import ApprovalDecision, pending_approval, recorded_decisions
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import RunStarted, ToolCallEvent, ToolResultEvent
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.trace import read_trace
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.catalog import build_tools

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
URL = "http://example.invalid/needs-approval"
FETCH = (
    "fetch it\n</think>\n\n<tool_call>\n"
    + json.dumps({"name": "fetch_url", "arguments": {"url": URL}})
    + "\n</tool_call>"
)
DONE = "done\n</think>\n\nAll done."


def cli(*args: str, closed_stdin: bool = False) -> subprocess.CompletedProcess[str]:
    """The CLI with stdin not a terminal: /dev/null, or fd 0 closed (`<&-`, as some supervisors do)."""
    if closed_stdin:
        # bash closes fd 0 for the child; subprocess cannot start a child without one.
        command = " ".join(json.dumps(a) for a in [*CLI, *args]) + " <&-"
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
    )


def ran(trace: Path) -> list[object]:
    return [e for e in read_trace(trace) if isinstance(e, (ToolCallEvent, ToolResultEvent))]


def test_with_stdin_closed_a_call_that_needs_approval_waits_and_parse_says_what_is_wrong(tmp_path):
    trace = tmp_path / "a.jsonl"
    with ScriptedModelServer([FETCH]) as server:
        proc = cli("run", "Fetch.", "--model-url", server.url, "--tools", "fetch_url", "--approve", "ask",
                   "--trace", str(trace), closed_stdin=True)  # fmt: skip
    # No terminal, as with stdin not a tty: the run waits for a decision (5), not a crash (70).
    assert proc.returncode == 5, proc.stdout + proc.stderr
    pending = pending_approval(trace)
    assert pending is not None and pending.call.arguments == {"url": URL}
    proc = cli("parse", closed_stdin=True)
    assert proc.returncode == 2, proc.stderr
    assert "stdin is closed" in proc.stderr and "unexpected error" not in proc.stderr


def test_a_run_picked_by_run_id_from_a_multi_run_trace_replays_and_resumes_with_its_approvals(tmp_path):
    """An old trace holding several runs: `--run-id` picks the one to replay or resume, and its approvals
    (the call it waits on, its decisions) are read from that run alone. They were read from the whole
    file, which holds several runs: every such replay failed as a bug (exit 70)."""
    waiting, answered = tmp_path / "waiting.jsonl", tmp_path / "answered.jsonl"
    with ScriptedModelServer([FETCH]) as server:
        proc = cli("run", "Fetch.", "--model-url", server.url, "--tools", "fetch_url", "--approve", "ask",
                   "--trace", str(waiting))  # fmt: skip
        assert proc.returncode == 5, proc.stdout + proc.stderr
    with ScriptedModelServer(["sure\n</think>\n\nThe answer is 42."]) as server:
        proc = cli("run", "Answer.", "--model-url", server.url, "--tools", "fetch_url",
                   "--trace", str(answered))  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    multi = tmp_path / "old.jsonl"  # as versions before one file held one run appended them
    multi.write_bytes(answered.read_bytes() + waiting.read_bytes())
    answered_id, waiting_id = read_trace(answered)[0].run_id, read_trace(waiting)[0].run_id

    replayed = tmp_path / "replayed.jsonl"
    proc = cli("run", "--replay", str(multi), "--run-id", answered_id, "--trace", str(replayed))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = read_trace(replayed)[-1]
    assert final.type == "final" and final.answer == "The answer is 42."

    denied = tmp_path / "denied.jsonl"
    with ScriptedModelServer([DONE]) as server:
        proc = cli("run", "--resume", str(multi), "--run-id", waiting_id, "--model-url", server.url,
                   "--decide", "deny:not that", "--trace", str(denied))  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "not that" in (server.requests[0].prompt or "")
    assert recorded_decisions(denied)["call_1_0"].action == "deny"
    assert pending_approval(multi, run_id=waiting_id) is not None  # the library's readers take it too


@pytest.fixture
def approver_only_trace(tmp_path: Path) -> Path:
    """A run whose approver alone (no policy) deferred its one call: it awaits approval."""

    async def defer(request: object) -> ApprovalDecision:  # a web form nobody answered yet
        return ApprovalDecision(action="defer")

    async def first() -> str:
        trace = tmp_path / "a.jsonl"
        async with ScriptedModelServer([FETCH]) as s, SGLangClient(s.url, retry=NO_RETRY) as client:
            agent = Agent(
                client, build_tools(["fetch_url"]), config=AgentConfig(check_language=False),
                approver=defer, trace_path=trace,
            )  # fmt: skip
            return (await agent.run("Fetch it.")).status

    import asyncio

    assert asyncio.run(first()) == "awaiting_approval"
    return tmp_path / "a.jsonl"


def test_an_approver_only_run_records_its_policy_so_a_resume_waits_for_a_decision(
    approver_only_trace, tmp_path
):
    started = read_trace(approver_only_trace)[0]
    assert isinstance(started, RunStarted)
    assert started.config["approval"] == {"rules": [], "default": "ask"}
    # Without a decision (and no terminal) the call waits again (it used to run, undecided).
    again = tmp_path / "again.jsonl"
    with ScriptedModelServer([DONE]) as server:
        proc = cli("run", "--resume", str(approver_only_trace), "--model-url", server.url,
                   "--trace", str(again))  # fmt: skip
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert ran(again) == []
    # With one, it is applied (it was refused: "the run has no approval policy").
    denied = tmp_path / "denied.jsonl"
    with ScriptedModelServer([DONE]) as server:
        proc = cli("run", "--resume", str(approver_only_trace), "--model-url", server.url,
                   "--decide", "deny:not that", "--trace", str(denied))  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "not that" in (server.requests[0].prompt or "")
    assert recorded_decisions(denied)["call_1_0"].action == "deny"
    assert not [e for e in ran(denied) if isinstance(e, ToolResultEvent) and not e.is_error]


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"rule": [{"tool": "fetch_url", "action": "deny"}], "default": "allow"}, "rule: unknown key"),
        (
            {"rules": [{"tool": "fetch_url", "action": "deny", "reasons": "no"}]},
            "rules[0].reasons: unknown key",
        ),
        (
            {"rules": [{"tool": "*", "action": "ask", "argumnets": {"url": ["x"]}}], "default": "allow"},
            "rules[0].argumnets: unknown key",
        ),
        ({"rules": [{"tool": "shell", "action": "maybe"}]}, "rules[0].action: Input should be"),
        (
            {"rules": [{"tool": "fetch_url", "action": "ask", "arguments": {"url": ["("]}}]},
            "rules[0].arguments: argument 'url': bad pattern '('",
        ),
    ],
    ids=["top-level-typo", "rule-key-typo", "arguments-typo", "bad-action", "bad-regex"],
)
def test_a_policy_file_with_a_misspelt_key_or_a_bad_rule_is_refused_naming_it(tmp_path, policy, named):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    trace = tmp_path / "t.jsonl"
    with ScriptedModelServer([FETCH, DONE]) as server:
        proc = cli("run", "x", "--tools", "fetch_url", "--approve", str(path), "--model-url", server.url,
                   "--trace", str(trace))  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path} is not a valid policy: {named}" in proc.stderr
    assert "fix: write it as" in proc.stderr
    assert not trace.exists() or ran(trace) == []


def test_a_trace_without_a_recorded_policy_that_awaits_approval_still_waits_for_a_decision(
    approver_only_trace, tmp_path
):
    """A trace written before approver-only runs recorded their policy (`approval: null`) that stopped
    awaiting approval: its resume refused --decide ("no approval policy") and, without one, ran the
    waiting call undecided. Its approver asked about every call, so the resume does too."""
    events = [json.loads(line) for line in approver_only_trace.read_text().splitlines()]
    for event in events:
        if event.get("type") == "run_started":
            event["config"]["approval"] = None
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps(e) + "\n" for e in events))
    again = tmp_path / "again.jsonl"
    with ScriptedModelServer([DONE]) as server:
        proc = cli("run", "--resume", str(old), "--model-url", server.url, "--trace", str(again))
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert ran(again) == []
    denied = tmp_path / "denied.jsonl"
    with ScriptedModelServer([DONE]) as server:
        proc = cli("run", "--resume", str(old), "--model-url", server.url,
                   "--decide", "deny:not that", "--trace", str(denied))  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "not that" in (server.requests[0].prompt or "")
    assert recorded_decisions(denied)["call_1_0"].action == "deny"
    started = read_trace(denied)[0]
    assert isinstance(started, RunStarted) and started.config["approval"] == {"rules": [], "default": "ask"}


def test_a_policy_file_that_is_not_utf8_is_refused_naming_the_flag_and_the_file(tmp_path):
    path = tmp_path / "policy.json"
    policy = {"rules": [{"tool": "shell", "action": "deny", "reason": "pas de réseau"}]}
    path.write_bytes(json.dumps(policy, ensure_ascii=False).encode("latin-1"))
    trace = tmp_path / "t.jsonl"
    with ScriptedModelServer([FETCH, DONE]) as server:
        proc = cli("run", "x", "--tools", "fetch_url", "--approve", str(path), "--model-url", server.url,
                   "--trace", str(trace))  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--approve: {path} is not UTF-8" in proc.stderr
    assert f"fix: save {path} as UTF-8" in proc.stderr
    assert not trace.exists()


def test_mcp_serve_with_stdin_closed_says_so_before_starting_anything():
    proc = cli("mcp-serve", closed_stdin=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "stdin is closed: an MCP client must talk on stdin" in proc.stderr
    assert "unexpected error" not in proc.stderr


def test_a_policy_naming_an_argument_no_matching_tool_has_is_refused_and_an_unknown_tool_warned(tmp_path):
    """A misspelt argument name ("URL" for fetch_url's "url") made its rule never apply: this `deny`
    denied nothing and the call ran under `default: allow`. A tool glob matching none of the run's tools
    is warned of (one policy file may serve runs with other tools)."""
    path = tmp_path / "policy.json"
    rule = {"tool": "fetch_*", "action": "deny", "arguments": {"URL": ["internal"]}}
    path.write_text(json.dumps({"rules": [rule], "default": "allow"}))
    trace = tmp_path / "t.jsonl"
    with ScriptedModelServer([FETCH, DONE]) as server:
        proc = cli("run", "x", "--tools", "fetch_url", "--approve", str(path), "--model-url", server.url,
                   "--trace", str(trace))  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "rules[0].arguments.URL: no tool matching 'fetch_*' has an argument 'URL'" in proc.stderr
    assert "they have: max_chars, offset, url" in proc.stderr
    assert not trace.exists() or ran(trace) == []

    path.write_text(json.dumps({"rules": [{"tool": "fetch-url", "action": "deny"}], "default": "ask"}))
    with ScriptedModelServer([FETCH, DONE]) as server:
        proc = cli("run", "x", "--tools", "fetch_url", "--approve", str(path), "--model-url", server.url,
                   "--trace", str(tmp_path / "t2.jsonl"))  # fmt: skip
    assert proc.returncode == 5, proc.stdout + proc.stderr
    warning = "rules[0].tool 'fetch-url' matches none of this run's tools (did you mean 'fetch_url'?)"
    assert warning in proc.stdout + proc.stderr


def test_a_decide_edit_that_does_not_fit_the_tool_is_refused_before_the_resume_starts(tmp_path):
    """`--decide edit:JSON` with a misspelt argument became a denial the model read ("the edited
    arguments are invalid"), and the resume went on with exit 0: an approval turned into a refusal."""
    trace = tmp_path / "t.jsonl"
    with ScriptedModelServer([FETCH]) as server:
        proc = cli("run", "Fetch.", "--model-url", server.url, "--tools", "fetch_url", "--approve", "ask",
                   "--trace", str(trace))  # fmt: skip
    assert proc.returncode == 5, proc.stdout + proc.stderr
    resumed = tmp_path / "resumed.jsonl"
    with ScriptedModelServer([DONE]) as server:
        proc = cli("run", "--resume", str(trace), "--model-url", server.url, "--trace", str(resumed),
                   "--decide", 'edit:{"URL": "http://example.invalid/b"}')  # fmt: skip
        assert server.requests == []
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--decide edit: the arguments do not fit fetch_url" in proc.stderr
    assert "'URL'" in proc.stderr and "missing required argument" in proc.stderr
    assert not resumed.exists() or recorded_decisions(resumed) == {}
    assert pending_approval(trace) is not None  # still waiting, for a decision that fits


def test_the_pending_report_quotes_the_trace_and_bounds_the_models_arguments(tmp_path):
    """The resume hint printed the trace path unquoted (a path with a space pasted as two words) and the
    waiting line printed the model's arguments whole (6 KB of terminal for a 6 KB argument)."""
    import shlex

    folder = tmp_path / "my runs"
    folder.mkdir()
    trace = folder / "t.jsonl"
    url = "http://example.invalid/?" + "q" * 6_000
    turn = "x\n</think>\n\n<tool_call>\n" + json.dumps({"name": "fetch_url", "arguments": {"url": url}})
    with ScriptedModelServer([turn + "\n</tool_call>"]) as server:
        proc = cli("run", "Fetch.", "--model-url", server.url, "--tools", "fetch_url", "--approve", "ask",
                   "--trace", str(trace))  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 5, out
    waiting = next(line for line in out.splitlines() if line.startswith("waiting for approval of fetch_url"))
    assert len(waiting) < 400 and "characters left out" in waiting and waiting.endswith('q"}')
    hint = next(line for line in out.splitlines() if "resume with:" in line).split("resume with:", 1)[1]
    assert hint.strip().endswith("--decide allow|deny:REASON|edit:JSON")
    tokens = shlex.split(hint.replace("|", " "))
    assert tokens[tokens.index("--resume") + 1] == str(trace)
