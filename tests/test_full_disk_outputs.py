"""What the CLI writes on a full disk (a real small tmpfs): an image is whole or absent, stdout that
cannot be written is named as such (exit 74) and ends a run's trace saying so, a document index that
cannot grow is named with a hint to free space (not to rebuild it), and a trace cut short is shown so.

Each through the real CLI as a subprocess, on a tmpfs mounted for the test (root only)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from small_disk import tmpfs

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.cli.errors import EXIT_OUTPUT, explain
from qwq_agent.cli.image_files import write_new_png
from qwq_agent.docindex import DocIndex
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import tool
from qwq_agent.viewer import summarize

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
ENV = {k: v for k, v in os.environ.items() if k not in ("QWQ_MODEL_URL", "QWQ_DEBUG", "QWQ_API")}
FULL = "No space left on device"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a small tmpfs needs root (mount)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`small_disk("16k")`: a tmpfs of that size; writing past it fails with ENOSPC, as on a full disk."""
    names = (f"disk{i}" for i in itertools.count())
    with contextlib.ExitStack() as mounted:
        yield lambda size: mounted.enter_context(tmpfs(tmp_path / next(names), size))


def _cli(argv: list[str], cwd: Path, stdout: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI, its stdout into the file `stdout` (None: captured)."""
    with open(stdout, "w") if stdout else open(os.devnull) as out:
        return subprocess.run(
            [*CLI, *argv],
            cwd=cwd,
            env=ENV,
            stdout=out if stdout else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )


def _trace(path: Path, **tool_result: object) -> Path:
    events = [
        {"type": "run_started", "run_id": "r1", "step": 0, "ts": 1.0, "task": "plot", "model": "m", "tools": []},
        {"type": "tool_result", "run_id": "r1", "step": 1, "ts": 2.0, "call_id": "c1", "name": "python", **tool_result},
        {"type": "final", "run_id": "r1", "step": 1, "ts": 3.0, "status": "completed", "answer": "done"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


# -- images ---------------------------------------------------------------------------------------------


def test_an_image_the_disk_cannot_take_leaves_no_file_and_its_name_free(small_disk, tmp_path):
    """The write failed part way: a truncated image-1.png was left, under the name a whole copy would
    get (a later save went to image-1-2.png); one that failed at its first byte left an empty file."""
    disk = small_disk("16k")
    big, small = b"\x89PNG\r\n\x1a\n" + os.urandom(40_000), b"\x89PNG\r\n\x1a\n" + os.urandom(3_000)
    with pytest.raises(OSError, match=FULL):
        write_new_png(disk, 1, big)
    assert os.listdir(disk) == []
    (disk / "filler").write_bytes(b"x" * 13_000)  # not even a first page of data fits now
    with pytest.raises(OSError, match=FULL):
        write_new_png(disk, 2, small)
    assert os.listdir(disk) == ["filler"]
    (disk / "filler").unlink()
    assert write_new_png(disk, 1, small) == disk.resolve() / "image-1.png"  # the name was free
    assert (disk / "image-1.png").read_bytes() == small


def test_trace_show_images_on_a_full_disk_keeps_only_whole_images(small_disk, tmp_path):
    disk = small_disk("16k")
    big, small = b"\x89PNG\r\n\x1a\n" + os.urandom(40_000), b"\x89PNG\r\n\x1a\n" + os.urandom(3_000)
    images = [base64.b64encode(x).decode() for x in (big, small)]
    trace = _trace(tmp_path / "t.jsonl", text="ok", images=images)
    proc = _cli(["trace", "show", str(trace), "--images", str(disk / "imgs")], tmp_path)
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 0, proc.stderr
    assert f"(image 1 not saved: {FULL}: {disk / 'imgs'})" in out
    assert f"image saved: {disk / 'imgs' / 'image-2.png'}" in out
    assert os.listdir(disk / "imgs") == ["image-2.png"]
    assert (disk / "imgs" / "image-2.png").read_bytes() == small


# -- stdout -------------------------------------------------------------------------------------------

THINK = " ".join(f"w{j * 7919 % 10007}" for j in range(3000))  # ~20 KB: more than the disk


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "live-view"])
def test_a_run_whose_stdout_fills_the_disk_says_so_and_its_trace_says_why(small_disk, tmp_path, as_json):
    """`run --json > events.jsonl` on a full disk: "cannot use: No space left on device / check the path
    and its permissions", exit 2 (bad input), the trace's final "the run was stopped before it ended"."""
    disk = small_disk("8k")
    trace = tmp_path / "t.jsonl"
    # The task is printed first (run_started, the live view's task panel): it fills the disk at once.
    with ScriptedModelServer(["x\n</think>\n\nThe answer."]) as server:
        argv = ["run", THINK, "--model-url", server.url, "--tools", "fetch_url", "--trace", str(trace)]
        proc = _cli([*argv, *(["--json"] if as_json else [])], tmp_path, stdout=disk / "out")
    assert proc.stderr.splitlines() == [
        f"qwq-agent run: cannot write to standard output: {FULL}",
        "  fix: free some space on the disk it is redirected to, or redirect it elsewhere",
    ]
    assert proc.returncode == EXIT_OUTPUT == 74
    finals = [e for e in map(json.loads, trace.read_text().splitlines()) if e["type"] == "final"]
    assert [(f["status"], f["error"]) for f in finals] == [
        ("interrupted", f"cannot write to standard output: {FULL}")
    ]


def test_trace_show_into_a_full_disk_says_stdout_could_not_be_written(small_disk, tmp_path):
    disk = small_disk("8k")
    trace = _trace(tmp_path / "t.jsonl", text="line of output\n" * 2000)
    proc = _cli(["trace", "show", str(trace)], tmp_path, stdout=disk / "shown.txt")
    assert proc.stderr.startswith(f"qwq-agent trace show: cannot write to standard output: {FULL}\n")
    assert "permissions" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.returncode == 74


def test_what_print_left_buffered_is_reported_too_not_lost_at_exit(small_disk, tmp_path):
    """`parse` prints its JSON without a flush: the interpreter's flush at exit failed with "Exception
    ignored" and status 120."""
    disk = small_disk("8k")
    raw = tmp_path / "out.txt"
    raw.write_text(THINK + "\n</think>\n\nThe answer.")
    proc = _cli(["parse", str(raw)], tmp_path, stdout=disk / "parsed.json")
    assert proc.stderr.startswith(f"qwq-agent parse: cannot write to standard output: {FULL}\n")
    assert "Exception ignored" not in proc.stderr
    assert proc.returncode == 74


# -- the document index -----------------------------------------------------------------------------


def _docs(folder: Path, count: int, start: int = 0) -> None:
    folder.mkdir(exist_ok=True)
    for i in range(start, start + count):
        words = " ".join(f"word{(i * 7919 + j * 104729) % 99991}" for j in range(300))
        (folder / f"d{i}.md").write_text(f"# Doc {i}\n{words}\n")


def test_an_index_the_disk_cannot_grow_is_named_and_kept_not_to_be_rebuilt(small_disk, tmp_path):
    """SQLITE_FULL was taken for a broken index: "rebuild it with `qwq-agent index DIR`", the very
    command that failed, the file not named, exit 2."""
    disk, docs = small_disk("200k"), tmp_path / "docs"
    db = disk / "docs.sqlite3"
    _docs(docs, 2)
    first = _cli(["index", str(docs), "--db", str(db)], tmp_path)
    assert first.returncode == 0, first.stderr
    _docs(docs, 40, start=2)
    proc = _cli(["index", str(docs), "--db", str(db)], tmp_path)
    assert proc.stderr.splitlines()[0] == (
        f"qwq-agent index: the document index {db} could not be written: the disk is full "
        "(database or disk is full)"
    )
    assert "free some space" in proc.stderr and "rebuild" not in proc.stderr
    assert proc.returncode == 74
    with DocIndex(db, read_only=True) as index:  # as the last commit left it
        assert index.file_count() == 2


def test_an_index_that_is_read_only_or_cannot_be_opened_is_not_called_broken(tmp_path):
    """Real SQLite errors, as `qwq-agent run --docs-db` or `index` meets them."""
    db = tmp_path / "docs.sqlite3"
    DocIndex(db, tmp_path).close()
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    with pytest.raises(sqlite3.Error) as read_only:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(sqlite3.Error) as cannot_open:
        sqlite3.connect(tmp_path / "missing-folder" / "docs.sqlite3")
    said = explain(read_only.value)
    assert said is not None and "is read-only" in said.what and "writable" in said.fix
    said = explain(cannot_open.value)
    assert said is not None and "cannot be opened" in said.what and "folder exists" in said.fix
    assert "rebuild" not in said.fix


# -- a trace cut short ----------------------------------------------------------------------------------

TASK = "What is 2 + 3? " + "Please be careful. " * 150  # run_started fits 8 KiB, the first model_call not


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


async def test_a_trace_cut_by_a_full_disk_is_shown_cut_short_not_running(small_disk, tmp_path):
    """Its writer let go of it at the failed write, the run went on and ended: the viewer listed it as
    running, polled every second for ever."""
    disk = small_disk("8k")
    trace = disk / "run.jsonl"
    turns = ["add\n</think>\n\n" + _call("add", a=2, b=3), "done\n</think>\n\nThe answer is 5."]
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [add], config=AgentConfig(check_language=False), trace_path=trace)
        result = await agent.run(TASK)
    assert result.status == "completed" and FULL in (result.trace_error or "")
    row = summarize(trace, disk)
    assert (row.status, row.note) == ("cut_short", "ended without a final event (trace cut short)")
    shown = _cli(["trace", "show", str(trace)], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "the trace ended without a final event (trace cut short" in " ".join(shown.stdout.split())
