"""A trace with fields of unexpected types (another version or tool, a hand edit) is summarized with
those fields counted as absent; one that cannot be read at all is listed as unreadable. Either way the
run list keeps every other run."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_viewer import browser, wait  # noqa: F401  (the fixture, a real headless chromium)

from qwq_agent.viewer import TraceViewer, summarize

ODD = {
    "step_str.jsonl": [{"type": "note", "step": "step-1"}, {"type": "note", "step": 2}],
    "usage_list.jsonl": [
        {"type": "model_call", "usage": [1, 2]},
        {
            "type": "model_call",
            "usage": {"prompt_tokens": "9", "completion_tokens": 5, "cached_tokens": None},
        },
    ],
    "ts_str.jsonl": [
        {"type": "run_started", "ts": 1.0, "run_id": 7, "task": ["a"], "model": None},
        {"type": "x", "ts": "2026-01-01T00:00:00"},
        {"type": "x", "ts": 3.5},
    ],
    "final_odd.jsonl": [{"type": "final", "status": None, "totals": [], "step": 1e400}],
    "bools.jsonl": [{"type": "model_call", "step": True, "usage": {"prompt_tokens": True}}],
}


def _write(folder: Path, name: str, events: list[dict]) -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_field_types_count_as_absent(tmp_path, name):
    row = summarize(_write(tmp_path, name, ODD[name]), tmp_path)
    assert row.model_dump()["file"] == name


def test_what_an_odd_trace_still_says(tmp_path):
    steps = summarize(_write(tmp_path, "a.jsonl", ODD["step_str.jsonl"]), tmp_path)
    assert steps.steps == 2
    usage = summarize(_write(tmp_path, "b.jsonl", ODD["usage_list.jsonl"]), tmp_path)
    assert (usage.prompt_tokens, usage.generated_tokens, usage.cached_tokens) == (0, 5, 0)
    ts = summarize(_write(tmp_path, "c.jsonl", ODD["ts_str.jsonl"]), tmp_path)
    assert ts.wall_s == 2.5 and ts.run_id == "7" and ts.task == '["a"]' and ts.model == ""
    final = summarize(_write(tmp_path, "d.jsonl", ODD["final_odd.jsonl"]), tmp_path)
    assert final.status == "?" and final.wall_s is None and final.steps == 0
    bools = summarize(_write(tmp_path, "e.jsonl", ODD["bools.jsonl"]), tmp_path)
    assert bools.steps == 0 and bools.prompt_tokens == 0


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_the_run_list_keeps_every_run_whatever_one_file_holds(tmp_path):
    _write(
        tmp_path,
        "good.jsonl",
        [
            {"type": "run_started", "run_id": "r1", "task": "hello", "model": "m", "ts": 1.0, "step": 0},
            {"type": "final", "status": "completed", "ts": 2.0, "step": 1, "totals": {}},
        ],
    )
    for name, events in ODD.items():
        _write(tmp_path, name, events)
    (tmp_path / "deep.jsonl").write_text("[" * 200_000 + "]" * 200_000 + "\n")  # deeper than json parses
    (tmp_path / "folder.jsonl").mkdir()  # matches the glob, cannot be read as a file
    with TraceViewer(tmp_path) as viewer:
        runs = {r["file"]: r for r in _get(viewer.url + "api/runs")["runs"]}
        assert runs["good.jsonl"]["status"] == "completed" and runs["good.jsonl"]["task"] == "hello"
        assert set(runs) == {"good.jsonl", "deep.jsonl", "folder.jsonl", *ODD}
        assert runs["folder.jsonl"]["status"] == "unreadable"
        assert "is a folder" in runs["folder.jsonl"]["task"]
        for name in ODD:
            answer = _get(viewer.url + f"api/events?file={name}&from=0")
            assert len(answer["events"]) == len(ODD[name]) and answer["summary"]["file"] == name


def test_a_fifo_or_a_device_named_like_a_trace_is_listed_as_unreadable_not_opened(tmp_path):
    """A FIFO would block the listing's open() forever (and a poll every 3 s parks one more thread in
    it); a link to a device (/dev/zero) would be read without end. Neither is opened: both are listed
    as unreadable, and the other runs are listed as ever."""
    _write(tmp_path, "good.jsonl", [{"type": "final", "status": "completed", "step": 1}])
    os.mkfifo(tmp_path / "stuck.jsonl")
    (tmp_path / "to-fifo.jsonl").symlink_to(tmp_path / "stuck.jsonl")
    (tmp_path / "device.jsonl").symlink_to("/dev/null")  # a device that ends, so the old code ends too
    with TraceViewer(tmp_path) as viewer:
        # the old viewer never answered: this timeout is a bound it misses by forever
        with urllib.request.urlopen(viewer.url + "api/runs", timeout=20) as r:
            runs = {row["file"]: row for row in json.loads(r.read())["runs"]}
        assert runs["good.jsonl"]["status"] == "completed"
        assert runs["stuck.jsonl"]["status"] == runs["to-fifo.jsonl"]["status"] == "unreadable"
        assert "FIFO" in runs["stuck.jsonl"]["task"] and "FIFO" in runs["to-fifo.jsonl"]["task"]
        assert runs["device.jsonl"]["status"] == "unreadable" and "device" in runs["device.jsonl"]["task"]
        for name in ("stuck.jsonl", "device.jsonl"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(viewer.url + f"api/events?file={name}", timeout=20)
            assert exc.value.code == 404


# A Latin-1 name (not UTF-8: Python holds it with a lone surrogate, which no URL can carry), a UTF-8
# one, and names holding what a URL gives a meaning to.
ODD_NAMES = [b"caf\xe9.jsonl", "naïve 日本.jsonl".encode(), b"a+b&c=d#e%41 f.jsonl", b"sub\xff/x.jsonl"]


def _write_odd_names(folder: Path) -> None:
    for i, name in enumerate(ODD_NAMES):
        path = os.path.join(os.fsencode(folder), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(
                json.dumps({"type": "run_started", "run_id": f"r{i}", "task": f"odd name {i}", "step": 0})
                + "\n"
            )
            f.write(json.dumps({"type": "final", "run_id": f"r{i}", "status": "completed", "step": 1}) + "\n")


def test_every_listed_trace_opens_whatever_bytes_its_name_holds(tmp_path):
    _write_odd_names(tmp_path)
    with TraceViewer(tmp_path) as viewer:
        with urllib.request.urlopen(viewer.url + "api/runs", timeout=10) as r:
            body = r.read()
        runs = json.loads(body)["runs"]
        assert b"\\ud" not in body  # no lone surrogate: the page could not encode it
        assert sorted(row["file"] for row in runs) == sorted(
            ["caf\\xe9.jsonl", "naïve 日本.jsonl", "a+b&c=d#e%41 f.jsonl", "sub\\xff/x.jsonl"]
        )
        for row in runs:
            answer = _get(viewer.url + f"api/events?file={row['ref']}")
            assert [e["type"] for e in answer["events"]] == ["run_started", "final"], row
            assert answer["events"][0]["task"] == row["task"] and answer["summary"]["file"] == row["file"]
        # the Latin-1 name by its byte, as a person would type it
        assert _get(viewer.url + "api/events?file=caf%E9.jsonl")["summary"]["run_id"] == "r0"


def test_the_page_opens_a_trace_whose_name_is_not_utf8(tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    _write_odd_names(tmp_path)
    with TraceViewer(tmp_path) as viewer:
        for i, shown in enumerate(
            ["caf\\xe9.jsonl", "naïve 日本.jsonl", "a+b&c=d#e%41 f.jsonl", "sub\\xff/x.jsonl"]
        ):
            browser.get(viewer.url)
            rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.run"))
            next(r for r in rows if r.get_attribute("data-file") == shown).click()
            wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".final"))
            assert f"odd name {i}" in browser.find_element(By.ID, "summary").text


async def _run_traced(trace: Path, answer: str) -> str:
    """One real run (today's agent, a scripted model, no tools) traced to `trace`; its run id."""
    from qwq_agent.agent.clients import SGLangClient
    from qwq_agent.agent.loop import Agent
    from qwq_agent.testing.scripted_server import ScriptedModelServer

    async with (
        ScriptedModelServer([f"hm\n</think>\n\n{answer}"]) as server,
        SGLangClient(server.url) as client,
    ):
        result = await Agent(client, [], trace_path=trace).run("say something")
    assert result.status == "completed"
    return result.run_id


def test_a_file_holding_two_runs_is_listed_unreadable_as_trace_show_refuses_it_not_spliced(tmp_path):
    # Older versions appended each run to the `--trace` file given. `trace show` refuses such a file
    # (MixedTraceError: "holds 2 runs ...; choose one by its run id"), but the viewer listed it as one
    # run (the last run's id, both runs' tokens summed) and served both runs' events as one timeline.
    import asyncio

    from qwq_agent.agent.trace import MixedTraceError, read_trace

    first = asyncio.run(_run_traced(tmp_path / "one.jsonl", "first answer"))
    second = asyncio.run(_run_traced(tmp_path / "two.jsonl", "second answer"))
    folder = tmp_path / "traces"
    folder.mkdir()
    multi = folder / "multi.jsonl"
    multi.write_bytes((tmp_path / "one.jsonl").read_bytes() + (tmp_path / "two.jsonl").read_bytes())
    (folder / "single.jsonl").write_bytes((tmp_path / "one.jsonl").read_bytes())
    with pytest.raises(MixedTraceError):
        read_trace(multi)
    message = f"holds 2 runs ({first}, {second}); choose one by its run id"
    with TraceViewer(folder) as viewer:
        runs = {r["file"]: r for r in _get(viewer.url + "api/runs")["runs"]}
        assert runs["single.jsonl"]["status"] == "completed" and runs["single.jsonl"]["run_id"] == first
        row = runs["multi.jsonl"]
        assert row["status"] == "unreadable" and message in row["task"], row
        assert "trace show multi.jsonl --run-id" in row["task"]
        assert row["prompt_tokens"] == 0  # nothing summed across the runs
        answer = _get(viewer.url + "api/events?file=multi.jsonl&from=0")
        assert answer["events"] == [] and answer["summary"]["status"] == "unreadable"
        assert message in answer["summary"]["task"]
        # The file as the first run alone (the second not appended yet) is one run: shown as ever.
        answer = _get(viewer.url + "api/events?file=single.jsonl&from=0")
        assert [e["type"] for e in answer["events"]].count("run_started") == 1
        assert answer["summary"]["status"] == "completed"
    with pytest.raises(MixedTraceError):  # the same refusal from the plain summary
        summarize(multi, folder)
