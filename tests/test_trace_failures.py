"""A trace that cannot be written never costs the answer: a full disk (a real small tmpfs) and bad folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
from small_disk import tmpfs

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import Final, Warning_
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.trace import TraceWriter, read_trace
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import tool

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
# Long enough that run_started fits on the small disk and the first model_call (which repeats the
# task in its prompt) does not: the disk fills mid-run, mid-line.
TASK = "What is 2 + 3? " + "Please be careful. " * 150


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


TURNS = ["add\n</think>\n\n" + call("add", a=2, b=3), "done\n</think>\n\nThe answer is 5."]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture
def small_disk(tmp_path):
    """A 8 KiB tmpfs: writing more than that fails with ENOSPC, as on a full disk."""
    with tmpfs(tmp_path / "disk", "8k") as mnt:
        yield mnt


async def run_agent(trace_path, turns=TURNS):
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [add], config=AgentConfig(check_language=False), trace_path=trace_path)
        events = [ev async for ev in agent.stream(TASK)]
        return agent.result, events, server.requests


async def test_a_full_disk_is_reported_once_and_the_answer_and_the_written_events_survive(small_disk):
    path = small_disk / "run.jsonl"
    result, events, _ = await run_agent(path)
    assert result.status == "completed" and result.answer == "The answer is 5."
    assert result.trace_error is not None and "No space left on device" in result.trace_error
    failures = [e for e in events if isinstance(e, Warning_) and e.kind == "trace_failed"]
    assert len(failures) == 1 and str(path) in failures[0].message
    assert events[-1].type == "final"
    written = read_trace(path)  # readable: the line torn by the full disk is skipped
    assert written and written[0].type == "run_started" and written[0].task == TASK
    assert len(written) < len([e for e in events if e.type not in ("reasoning", "content")])


async def test_a_bad_trace_folder_is_found_before_the_model_is_asked_and_the_run_goes_on(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the trace folder should be\n")
    result, events, requests = await run_agent(blocker / "traces" / "run.jsonl")
    assert result.status == "completed" and result.answer == "The answer is 5."
    assert result.trace_path is None and "cannot create trace folder" in (result.trace_error or "")
    # Reported right after run_started, before the first model request's events.
    assert events[0].type == "run_started"
    assert isinstance(events[1], Warning_) and events[1].kind == "trace_failed"
    assert len(requests) == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_refuses_a_bad_trace_path_before_the_model_or_a_sandbox(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    held = tmp_path / "held.jsonl"
    held.write_text('{"type": "final", "status": "completed"}\n')
    # No model server at this URL: exit code 3 would mean the model was tried first.
    url = f"http://127.0.0.1:{free_port()}"
    for trace, expected in (
        (blocker / "t.jsonl", "cannot create trace folder"),
        (held, "already holds a run"),
    ):
        proc = subprocess.run(
            [*CLI, "run", "hi", "--model-url", url, "--trace", str(trace)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = (proc.stdout + proc.stderr).strip()
        assert proc.returncode == 2, out
        assert expected in out and len(out.splitlines()) <= 2 and "Traceback" not in out
    assert held.read_text() == '{"type": "final", "status": "completed"}\n'  # untouched


@pytest.mark.docker
def test_cli_on_a_full_disk_prints_the_answer_and_one_line_about_the_trace(sandbox_image, small_disk):
    trace = small_disk / "run.jsonl"
    turns = ["Count.\n</think>\n\n" + call("python", code="2 + 3"), "done\n</think>\n\nThe answer is 5."]
    with ScriptedModelServer(turns) as server:
        proc = subprocess.run(
            [*CLI, "run", TASK, "--model-url", server.url, "--tools", "python", "--trace", str(trace)],
            capture_output=True,
            text=True,
            timeout=180,
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "The answer is 5." in out
    # Said once. Counted in the text with its line breaks undone: where the console wraps the line depends
    # on the length of the temporary path it names (longer under xdist), and a wrap can split the phrase.
    assert " ".join(out.split()).count("No space left on device") == 1, out
    assert "Traceback" not in out
    assert read_trace(trace)[0].type == "run_started"


def test_cli_offers_no_resume_for_an_approval_the_full_disk_kept_out_of_the_trace(small_disk):
    """`--approve ask` without a terminal stops at the first call (exit 5) and prints a resume command.
    With the trace stopped by the full disk before `approval_requested` and `final`, that command failed
    ("not awaiting approval: nothing to decide"): the run waited for a decision it could never get."""
    trace = small_disk / "run.jsonl"
    turns = [
        "fetch\n</think>\n\n" + call("fetch_url", url="http://example.invalid/"),
        "done\n</think>\n\nDone.",
    ]
    with ScriptedModelServer(turns) as server:
        proc = subprocess.run(
            [*CLI, "run", TASK, "--model-url", server.url, "--tools", "fetch_url", "--approve", "ask",
             "--trace", str(trace)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1, out
    assert "resume with" not in out and "Traceback" not in out
    said = re.search(r"the run stopped to wait for approval of a tool call, but its trace does not record "
                     r"the wait \((.*)\): it cannot be resumed; run the task again", out)  # fmt: skip
    assert said and said.group(1) == f"{trace}: No space left on device", out


def test_cli_offers_no_resume_for_branches_whose_waits_the_full_disk_kept_out(small_disk):
    """The same for `--branches`: each branch waiting for an approval got a resume line that could not work."""
    turn = "fetch\n</think>\n\n" + call("fetch_url", url="http://example.invalid/")
    with ScriptedModelServer([turn] * 4) as server:
        proc = subprocess.run(
            [*CLI, "run", TASK, "--model-url", server.url, "--tools", "fetch_url", "--approve", "ask",
             "--branches", "2", "--trace", str(small_disk / "t.jsonl")],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1, out
    assert "resume with" not in out and "Traceback" not in out
    for index in (0, 1):
        assert re.search(
            rf"branch {index} stopped to wait for approval, but its trace does not record the wait \(.*No "
            r"space left on device\): it cannot be resumed",
            out,
        ), out


REMOVAL = {"folder": None}


@tool
def tidy() -> str:
    """Stands for whatever removes the traces folder on the host while a run goes on (`rm -rf traces/`)."""
    folder = REMOVAL["folder"]
    shutil.rmtree(folder)
    if REMOVAL.get("block"):  # and then something takes its place that no folder can be made at
        folder.write_text("not a folder\n")
    return "tidied"


async def tidy_run(folder, *, block=False):
    REMOVAL.update(folder=folder, block=block)
    turns = ["Tidy.\n</think>\n\n" + call("tidy"), "Done.\n</think>\n\nAll done."]
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(
            client, [tidy], config=AgentConfig(check_language=False), trace_path=folder / "run.jsonl"
        )
        events = [e async for e in agent.stream("Tidy up.")]
    return agent.result, [e for e in events if isinstance(e, Warning_)]


async def test_a_trace_removed_mid_run_is_written_again_at_its_path_whole(tmp_path):
    """The trace folder removed while the run wrote it (a cleanup job, `git clean -xdf`): the writer went
    on into the unlinked file, no error, and the run named a trace path that did not exist. Now the
    removal is noticed, the file is written again at its path with every event so far, and said once."""
    folder = tmp_path / "traces"
    result, warnings = await tidy_run(folder)
    assert result.status == "completed" and result.trace_error is None
    assert result.trace_path == str(folder / "run.jsonl")
    events = read_trace(result.trace_path)
    assert [events[0].type, events[-1].type] == ["run_started", "final"]
    assert [e.type for e in events].count("tool_result") == 1 and events[-1].answer == "All done."
    said = [w for w in warnings if w.kind == "trace_recreated"]
    assert len(said) == 1 and "was removed during the run" in said[0].message
    assert not [w for w in warnings if w.kind == "trace_failed"]


async def test_a_trace_removed_mid_run_whose_folder_is_gone_is_kept_in_the_temporary_folder(
    tmp_path, monkeypatch
):
    """The trace folder removed and a file put where it was: the writer closed the only fd to the
    unlinked trace and the run's events were lost. Now they go to the temporary folder, and the
    `trace_recreated` note (raised at `final`, after the result was made) is in `result.warnings`."""
    spare = tmp_path / "tmp"
    spare.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spare))
    folder = tmp_path / "traces"
    result, warnings = await tidy_run(folder, block=True)
    assert result.status == "completed" and result.answer == "All done."
    assert result.trace_error is None and result.trace_path == str(spare / "qwq-agent-run.jsonl")
    events = read_trace(result.trace_path)
    assert [events[0].type, events[-1].type] == ["run_started", "final"]
    said = [w.message for w in result.warnings if w.kind == "trace_recreated"]
    assert len(said) == 1 and "its folder could not take it" in said[0] and str(spare) in said[0]
    assert [w.message for w in warnings if w.kind == "trace_recreated"] == said


async def test_a_trace_removed_mid_run_that_no_place_takes_is_a_trace_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "a file"))
    (tmp_path / "a file").write_text("not a folder\n")
    folder = tmp_path / "traces"
    result, warnings = await tidy_run(folder, block=True)
    assert result.status == "completed" and result.answer == "All done."
    assert result.trace_error is not None and "removed during the run" in result.trace_error
    assert "cannot create trace folder" in result.trace_error or "not a folder" in result.trace_error
    assert len([w for w in warnings if w.kind == "trace_failed"]) == 1
    assert len([w for w in result.warnings if w.kind == "trace_failed"]) == 1


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_removed_trace_passes_over_a_folder_or_fifo_now_at_its_path(tmp_path, kind):
    """A folder or FIFO at the removed trace's path: `_claim` refused it instead of taking the free name
    beside it, and the writer closed the only fd to the unlinked file: every event was lost."""
    path = tmp_path / "traces" / "run.jsonl"
    writer = TraceWriter(path)
    writer.write(Warning_(kind="x", message="one"))
    writer.write(Warning_(kind="x", message="two"))
    shutil.rmtree(path.parent)
    path.parent.mkdir()
    if kind == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    writer.write(Final(status="completed", answer="done"))
    writer.close()
    assert writer.error is None and writer.path == path.with_name("run.run.jsonl")
    assert writer.recreated is not None and f"something else is at {path} now" in writer.recreated
    assert [getattr(e, "message", e.type) for e in read_trace(writer.path)] == ["one", "two", "final"]


def test_a_removed_trace_that_cannot_be_written_again_yet_is_kept_open_and_tried_again(tmp_path):
    """While no place takes the removed trace, the writer goes on in the open file (the only copy), and
    a later check writes it all again once its folder can be made."""
    path = tmp_path / "traces" / "run.jsonl"
    writer = TraceWriter(path)
    writer.write(Warning_(kind="x", message="one"))
    shutil.rmtree(path.parent)
    path.parent.write_text("not a folder\n")
    tempfile_before = tempfile.tempdir
    tempfile.tempdir = str(path.parent)  # the temporary folder is no folder either
    try:
        writer.write(Final(status="completed", answer="done"))  # a check: nowhere to go yet
        assert writer.error is None and writer.recreated is None and not writer.closed
        path.parent.unlink()
        writer.close()
    finally:
        tempfile.tempdir = tempfile_before
    assert writer.error is None and writer.path == path
    assert [getattr(e, "message", e.type) for e in read_trace(path)] == ["one", "final"]


def test_a_trace_file_removed_before_close_is_written_again(tmp_path):
    path = tmp_path / "t.jsonl"
    writer = TraceWriter(path)
    writer.write(Warning_(kind="x", message="one"))
    writer.write(Warning_(kind="x", message="two"))
    path.unlink()
    writer.close()
    assert writer.error is None and writer.recreated is not None
    assert [e.message for e in read_trace(path)] == ["one", "two"]


# Two runs to one trace path, in a process whose every flock() fails with ENOLCK, as on NFS with no lock
# manager (strace injects the error: nothing of ours is replaced).
NO_FLOCK_CHILD = """
import asyncio, json, sys
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.testing.scripted_server import ScriptedModelServer

async def main():
    out = []
    for _ in range(2):
        async with ScriptedModelServer([sys.argv[2]]) as server, SGLangClient(server.url, retry=NO_RETRY) as c:
            agent = Agent(c, [], config=AgentConfig(check_language=False), trace_path=sys.argv[1])
            events = [ev async for ev in agent.stream("hi")]
            warnings = [[e.kind, e.message] for e in events if e.type == "warning"]
            out.append({"path": str(agent.result.trace_path), "warnings": warnings, "answer": agent.result.answer})
    print(json.dumps(out))

asyncio.run(main())
"""


def test_a_file_system_without_flock_still_gets_the_trace_and_a_note(tmp_path):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (it injects the ENOLCK that NFS without lockd gives)")
    path = tmp_path / "traces" / "run.jsonl"
    proc = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=flock",
            "-e",
            "inject=flock:error=ENOLCK",
            sys.executable,
            "-c",
            NO_FLOCK_CHILD,
            str(path),
            "done\n</think>\n\nThe answer is 5.",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = json.loads(proc.stdout)
    assert first["answer"] == second["answer"] == "The answer is 5."
    # One file each: the first run's at the path asked for, the second's next to it (the path holds a run).
    assert first["path"] == str(path) and second["path"] != str(path)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, second["path"].rsplit("/", 1)[1]]
    )
    assert read_trace(path)[-1].type == read_trace(second["path"])[-1].type == "final"
    for run in (first, second):
        unlocked = [m for kind, m in run["warnings"] if kind == "trace_unlocked"]
        assert (
            len(unlocked) == 1 and "cannot be locked" in unlocked[0] and "No locks available" in unlocked[0]
        )
    assert [k for k, _ in second["warnings"]] == ["trace_unlocked", "trace_renamed"]
