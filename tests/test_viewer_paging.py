"""A long trace costs the viewer what it sends, not the file's size on every poll.

The page polls a live run once a second and the run list every 3 s; traces of long runs reach
gigabytes. What the viewer process reads (`/proc/PID/io` rchar) and its peak memory (VmHWM) are read
from a real viewer process around real requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_viewer import being_written, browser, wait  # noqa: F401  (the fixture, a real headless chromium)

from qwq_agent.viewer import TraceViewer
from qwq_agent.viewer.summary import MAX_LINE

REPO = Path(__file__).resolve().parent.parent
VIEWER = """
import sys
from qwq_agent.viewer import TraceViewer
viewer = TraceViewer(sys.argv[1], port=0)
print(viewer.url, flush=True)
viewer.serve_forever()
"""


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=120) as r:
        return json.loads(r.read())


def proc_field(pid: int, name: str, field: str) -> int:
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def model_call(i: int, size: int) -> str:
    return (
        json.dumps(
            {
                "type": "model_call",
                "run_id": "r",
                "step": i + 1,
                "ts": 2.0 + i,
                "prompt": "p" * 1000,
                "completion": f"thought {i} " * (size // 12),
                "usage": {"prompt_tokens": 10, "cached_tokens": 5, "completion_tokens": 3},
            }
        )
        + "\n"
    )


def follow(url: str, name: str, cursor: object = 0) -> tuple[list[dict], object, int, dict]:
    """Every event from `cursor` on, as the page asks for them; and how many answers it took."""
    events: list[dict] = []
    answers = 0
    while True:
        data = get(f"{url}api/events?file={name}&from={urllib.request.quote(str(cursor))}")
        answers += 1
        events += data["events"]
        cursor = data["next"]
        if not data.get("more"):
            return events, cursor, answers, data["summary"]


@pytest.fixture
def viewer_process(tmp_path):
    procs: list[subprocess.Popen] = []

    def start(root: Path) -> tuple[str, int]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-c", VIEWER, str(root)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        procs.append(proc)
        assert proc.stdout is not None
        return proc.stdout.readline().strip(), proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=30)


def test_a_long_trace_is_read_a_page_at_a_time_and_a_live_poll_reads_what_was_added(tmp_path, viewer_process):
    root = tmp_path / "traces"
    root.mkdir()
    trace = root / "long.jsonl"
    calls = 480
    with trace.open("w") as f:
        f.write(
            json.dumps({"type": "run_started", "run_id": "r", "task": "long", "step": 0, "ts": 1.0}) + "\n"
        )
        for i in range(calls):
            f.write(model_call(i, 200_000))  # ~96 MiB in all; no final: the run is live
    size = trace.stat().st_size
    url, pid = viewer_process(root)

    hwm = proc_field(pid, "status", "VmHWM") * 1024
    with being_written(trace):  # the run is live: its writer holds the trace
        events, cursor, answers, summary = follow(url, "long.jsonl")
    grew = proc_field(pid, "status", "VmHWM") * 1024 - hwm
    assert [e["type"] for e in events] == ["run_started"] + ["model_call"] * calls
    assert [e["step"] for e in events[1:]] == list(range(1, calls + 1))
    assert summary["status"] == "running" and summary["steps"] == calls
    assert summary["prompt_tokens"] == 10 * calls and summary["cached_share"] == 0.5
    assert answers > 4  # pages; the old viewer sent the whole file in one answer
    assert grew < size / 3, f"peak memory grew {grew >> 20} MiB reading a {size >> 20} MiB trace"

    # Live polls with nothing new read next to nothing (the old viewer read the whole file twice each).
    read = proc_field(pid, "io", "rchar")
    for _ in range(5):
        data = get(f"{url}api/events?file=long.jsonl&from={urllib.request.quote(str(cursor))}")
        assert data["events"] == [] and data["next"] == cursor
    assert proc_field(pid, "io", "rchar") - read < 1 << 20

    # What the run appends next is what the next poll reads.
    with trace.open("a") as f:
        f.write(model_call(calls, 2000))
        f.write(json.dumps({"type": "final", "run_id": "r", "status": "completed", "step": calls + 1}) + "\n")
    read = proc_field(pid, "io", "rchar")
    data = get(f"{url}api/events?file=long.jsonl&from={urllib.request.quote(str(cursor))}")
    assert [e["type"] for e in data["events"]] == ["model_call", "final"] and not data["more"]
    assert data["summary"]["status"] == "completed" and data["summary"]["steps"] == calls + 1
    assert proc_field(pid, "io", "rchar") - read < 1 << 20

    # The run list reads each trace once, then only what was added.
    get(url + "api/runs")
    read = proc_field(pid, "io", "rchar")
    for _ in range(3):
        (row,) = get(url + "api/runs")["runs"]
        assert row["status"] == "completed" and row["prompt_tokens"] == 10 * (calls + 1)
    assert proc_field(pid, "io", "rchar") - read < 1 << 20


def test_pages_hold_every_event_once_in_order(tmp_path):
    lines = [{"type": "content", "run_id": "r", "step": i, "text": "y" * 300} for i in range(60)]
    lines[10:10] = ["not json"]
    body = "".join((json.dumps(e) if isinstance(e, dict) else e) + "\n" for e in lines)
    (tmp_path / "t.jsonl").write_text(body + '{"type": "content", "step": 61, "te')  # torn: being written
    for limits, most in (({"page_events": 7}, 7), ({"page_bytes": 2000}, 6)):
        with TraceViewer(tmp_path, **limits) as viewer:
            cursor: object = 0
            seen: list[int] = []
            while True:
                data = get(f"{viewer.url}api/events?file=t.jsonl&from={urllib.request.quote(str(cursor))}")
                assert len(data["events"]) <= most
                seen += [e["step"] for e in data["events"]]
                cursor = data["next"]
                if not data["more"]:
                    break
            assert seen == list(range(60)), limits
            assert get(f"{viewer.url}api/events?file=t.jsonl&from={cursor}")["events"] == []
            with (tmp_path / "t.jsonl").open("a") as f:  # the torn line is finished: it comes next
                f.write('xt": "done"}\n')
            (last,) = get(f"{viewer.url}api/events?file=t.jsonl&from={cursor}")["events"]
            assert last == {"type": "content", "step": 61, "text": "done"}
            (tmp_path / "t.jsonl").write_text(body + '{"type": "content", "step": 61, "te')


def test_a_line_too_long_to_show_is_skipped_and_said(tmp_path):
    trace = tmp_path / "big.jsonl"
    with trace.open("w") as f:
        f.write(json.dumps({"type": "run_started", "run_id": "r", "task": "t", "step": 0}) + "\n")
        f.write('{"type": "content", "step": 1, "text": "' + "z" * MAX_LINE + '"}\n')
        f.write(json.dumps({"type": "final", "status": "completed", "step": 2}) + "\n")
    with TraceViewer(tmp_path) as viewer:
        events, _, _, summary = follow(viewer.url, "big.jsonl")
    assert [e["type"] for e in events] == ["run_started", "warning", "final"]
    assert "not shown" in events[1]["message"]
    assert summary["status"] == "completed" and summary["steps"] == 2


def test_the_page_asks_for_every_page_and_shows_the_whole_run(tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    events = [{"type": "run_started", "run_id": "r", "task": "paged", "model": "m", "tools": [], "step": 0}]
    events += [{"type": "content", "run_id": "r", "step": i, "text": f"said {i}"} for i in range(1, 41)]
    events += [{"type": "final", "run_id": "r", "status": "completed", "answer": "all there", "step": 41}]
    (tmp_path / "paged.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    with TraceViewer(tmp_path, page_events=3) as viewer:
        browser.get(viewer.url + "#run=paged.jsonl")
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".final"))
        steps = [s.get_attribute("data-step") for s in browser.find_elements(By.CSS_SELECTOR, "section.step")]
        assert steps == [str(i) for i in range(42)]
        assert "said 40" in browser.find_element(By.CSS_SELECTOR, '.step[data-step="40"]').text
        assert "all there" in browser.find_element(By.CSS_SELECTOR, ".final").text
        assert browser.find_element(By.ID, "live").text == ""


def run_lines(run_id: str, steps: int, *, final: bool = False) -> str:
    events = [
        {
            "type": "run_started",
            "run_id": run_id,
            "task": f"task {run_id}",
            "model": "m",
            "tools": [],
            "ts": 1.0,
        }
    ]
    events += [
        {"type": "content", "run_id": run_id, "step": i, "text": f"{run_id} step {i}"}
        for i in range(1, steps + 1)
    ]
    events += [{"type": "warning", "run_id": run_id, "step": steps, "kind": "k", "message": run_id}]
    if final:
        events.append({"type": "final", "run_id": run_id, "status": "completed", "step": steps + 1})
    return "".join(json.dumps(e) + "\n" for e in events)


def replace_by_unlinking(trace: Path, text: str) -> None:
    trace.unlink()
    trace.write_text(text)  # often given the inode number the deleted file had


def replace_by_truncating(trace: Path, text: str) -> None:
    trace.write_text(text)  # the same inode, for certain


@pytest.mark.parametrize("replace", [replace_by_unlinking, replace_by_truncating])
def test_a_trace_written_again_under_its_name_starts_the_page_over(tmp_path, replace):
    trace = tmp_path / "nightly.jsonl"
    trace.write_text(run_lines("first", 6))  # crashed: no final, so the page keeps polling it
    with TraceViewer(tmp_path) as viewer:
        events, cursor, _, summary = follow(viewer.url, "nightly.jsonl")
        assert len(events) == 8 and summary["run_id"] == "first"
        with trace.open("a") as f:  # it grows: the page goes on from where it was
            f.write(json.dumps({"type": "content", "run_id": "first", "step": 7, "text": "more"}) + "\n")
        data = get(f"{viewer.url}api/events?file=nightly.jsonl&from={cursor}")
        assert not data["reset"] and [e["text"] for e in data["events"]] == ["more"]
        cursor = data["next"]

        replace(trace, run_lines("second", 9))  # longer than the first: a size check alone would miss it
        data = get(f"{viewer.url}api/events?file=nightly.jsonl&from={cursor}")
        assert data["reset"] is True
        assert [(e["run_id"], e["type"]) for e in data["events"][:2]] == [
            ("second", "run_started"),
            ("second", "content"),
        ]
        assert len(data["events"]) == 11 and {e["run_id"] for e in data["events"]} == {"second"}
        summary = data["summary"]  # the summary is of the second run alone, not the first's counts added to
        assert (summary["run_id"], summary["steps"], summary["warnings"]) == ("second", 9, 1)
        cursor = data["next"]

        trace.write_text(run_lines("second", 2))  # truncated: shorter than where the page was
        data = get(f"{viewer.url}api/events?file=nightly.jsonl&from={cursor}")
        assert data["reset"] is True and len(data["events"]) == 4
        assert (data["summary"]["steps"], data["summary"]["warnings"]) == (2, 1)
        (row,) = get(viewer.url + "api/runs")["runs"]
        assert (row["steps"], row["warnings"]) == (2, 1)


def test_a_cursor_that_names_no_file_starts_over_and_one_that_is_no_cursor_is_refused(tmp_path):
    (tmp_path / "t.jsonl").write_text(run_lines("r", 3))
    with TraceViewer(tmp_path) as viewer:
        data = get(f"{viewer.url}api/events?file=t.jsonl&from=2")  # a line number, as the viewer once used
        assert data["reset"] is True and len(data["events"]) == 5
        for bad in ("x", "-1", "1.2.3", "1.2.3.zz", "²"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                get(f"{viewer.url}api/events?file=t.jsonl&from={urllib.request.quote(bad)}")
            assert exc.value.code == 400, bad


def test_the_page_drops_a_run_whose_trace_was_written_again(tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    trace = tmp_path / "nightly.jsonl"
    trace.write_text(run_lines("first", 6))
    with being_written(trace), TraceViewer(tmp_path) as viewer:
        browser.get(viewer.url + "#run=nightly.jsonl")
        wait(browser, lambda d: "first step 6" in d.find_element(By.ID, "timeline").text)
        assert "live" in browser.find_element(By.ID, "live").text
        # The run started over under the same name (put in place at once: a poll between an unlink and
        # the new file's creation would find no trace, and the page would say so and stop).
        (tmp_path / "nightly.tmp").write_text(run_lines("second", 9, final=True))
        os.replace(tmp_path / "nightly.tmp", trace)
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".final"))
        timeline = browser.find_element(By.ID, "timeline").text
        assert "second step 1" in timeline and "second step 9" in timeline and "first" not in timeline
        assert "task second" in browser.find_element(By.ID, "summary").text


def read_fd_position(trace: Path) -> int | None:
    """Where an fd of this process open read-only on `trace` (the viewer's, serving a request) stands."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != str(trace):
                continue
            info = dict(
                line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{name}").read_text().splitlines()
            )
        except OSError:
            continue
        if int(info["flags"].strip(), 8) & 0o3 == os.O_RDONLY:
            return int(info["pos"].strip())
    return None


def test_an_answer_whose_summary_saw_lines_past_its_page_says_more(tmp_path):
    """The run's last lines, written while the server reads a page, are not left out of what the page
    gets: the summary (read after the page) counts them, and `final` makes the page stop polling, so
    `more` must send the page after them."""
    landed = 0
    with TraceViewer(tmp_path, page_bytes=64 << 20) as viewer:
        for n in range(10):
            trace = (tmp_path / f"live{n}.jsonl").resolve()
            # a long first prompt: parsing the page takes long enough to land the run's end inside it
            head = [
                {"type": "run_started", "run_id": f"r{n}", "step": 0, "ts": 1.0, "task": "t", "model": "m"},
                {"type": "model_call", "run_id": f"r{n}", "step": 1, "ts": 2.0, "prompt": "p" * (24 << 20)},
            ]
            trace.write_text("".join(json.dumps(e) + "\n" for e in head))
            tail = json.dumps(
                {"type": "final", "run_id": f"r{n}", "step": 2, "ts": 4.0, "status": "completed"}
            )
            appended = threading.Event()

            def write_the_end_mid_read(trace: Path = trace, tail: str = tail, appended=appended) -> None:
                while not appended.is_set():
                    if (read_fd_position(trace) or 0) > 0:  # the server has taken the size and is reading
                        with trace.open("a") as f:
                            f.write(tail + "\n")
                        appended.set()
                    time.sleep(0.0005)

            writer = threading.Thread(target=write_the_end_mid_read, daemon=True)
            writer.start()
            data = get(f"{viewer.url}api/events?file={trace.name}&from=0")
            events = data["events"]
            if not appended.is_set():  # the server was done before the writer saw it read: try again
                appended.set()
                writer.join()
                continue
            writer.join()
            landed += 1
            # what the page does (viewer/page.py poll()): asks again while `more` or while the run runs
            for _ in range(10):
                if not (data["more"] or data["summary"]["status"] == "running"):
                    break
                data = get(f"{viewer.url}api/events?file={trace.name}&from={data['next']}")
                events += data["events"]
            assert [e["type"] for e in events] == ["run_started", "model_call", "final"]
            if landed == 3:
                break
    assert landed, "the run's end never landed inside a page read"
