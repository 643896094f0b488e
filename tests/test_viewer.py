"""The trace viewer, in a real headless browser (Debian's chromium, driven by selenium).

The traces come from real runs: an example (recorded completions, real sandbox, real tools) and a
run whose python call draws a figure in the sandbox. The HTTP API is checked directly as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import io
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwq_agent.viewer import TraceViewer, summarize

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

PLOT = (
    "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
    "plt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nprint('plotted')"
)


@contextlib.contextmanager
def being_written(path: Path) -> Iterator[None]:
    """Hold `path`'s lock as a run's `TraceWriter` does while it writes the trace: the viewer shows
    such a trace without a final event as running (one that nobody holds is cut short)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


async def _record_runs(folder: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    import harness
    from rich.console import Console

    from qwq_agent.agent.clients import SGLangClient
    from qwq_agent.agent.loop import Agent, AgentConfig
    from qwq_agent.agent.workspace import open_sandbox
    from qwq_agent.testing.scripted_server import ScriptedModelServer
    from qwq_agent.tools.catalog import build_tools

    spec = importlib.util.spec_from_file_location("ex_math", EXAMPLES / "math_puzzles/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    quiet = Console(file=io.StringIO())
    outcome = await harness.run(
        module.EXAMPLES["strawberry"], console=quiet, trace_path=folder / "strawberry.jsonl"
    )
    assert outcome.result.status == "completed"

    turns = [
        "I should plot the squares to see them.\n</think>\n\n" + call("python", code=PLOT),
        "The figure shows the squares.\n</think>\n\nPlotted y = x² for x = 1..3.",
    ]
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url) as client:
        async with open_sandbox() as sandbox:
            agent = Agent(
                client,
                build_tools(["python"]),
                sandbox=sandbox,
                config=AgentConfig(check_language=False),
                trace_path=folder / "plot.jsonl",
            )
            result = await agent.run("Plot the squares of 1, 2 and 3.")
    assert result.status == "completed"

    # A run the loop had to step into (the same call three times) and where a call was denied.
    from qwq_agent.agent.approval import ApprovalDecision, ApprovalPolicy, Rule
    from qwq_agent.tools.base import tool

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return "nothing"

    same = call("lookup", key="answer")
    turns = [f"Try again.\n</think>\n\n{same}"] * 3 + [
        "Delete it.\n</think>\n\n" + call("lookup", key="drop table"),
        "Stuck.\n</think>\n\nNo answer found.",
    ]
    policy = ApprovalPolicy(rules=[Rule(tool="lookup", action="ask", arguments={"key": ["drop"]})])

    async def deny(request):
        return ApprovalDecision.deny("not that one")

    async with ScriptedModelServer(turns) as server, SGLangClient(server.url) as client:
        agent = Agent(
            client,
            [lookup],
            config=AgentConfig(check_language=False, approval=policy),
            approver=deny,
            trace_path=folder / "stuck.jsonl",
        )
        result = await agent.run("Find the answer.")
    assert result.status == "completed"


@pytest.fixture(scope="module")
def traces(sandbox_image, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("traces")
    asyncio.run(_record_runs(folder))
    return folder


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.docker
def test_the_api_lists_runs_and_serves_events_from_a_line_on(traces):
    with TraceViewer(traces) as viewer:
        assert viewer.url.startswith("http://127.0.0.1:")
        runs = {r["file"]: r for r in get_json(viewer.url + "api/runs")["runs"]}
        assert set(runs) == {"strawberry.jsonl", "plot.jsonl", "stuck.jsonl"}
        assert runs["stuck.jsonl"]["warnings"] >= 1
        plot = runs["plot.jsonl"]
        assert plot["status"] == "completed" and plot["steps"] == 2 and plot["prompt_tokens"] > 0
        assert 0 <= plot["cached_share"] < 1 and plot["wall_s"] > 0
        first = get_json(viewer.url + "api/events?file=plot.jsonl&from=0")
        assert first["events"][0]["type"] == "run_started" and first["events"][-1]["type"] == "final"
        # Prompts stay on disk: the page gets their length.
        model_call = next(e for e in first["events"] if e["type"] == "model_call")
        assert "prompt" not in model_call and model_call["prompt_chars"] > 0
        rest = get_json(viewer.url + f"api/events?file=plot.jsonl&from={first['next']}")
        assert rest["events"] == [] and rest["next"] == first["next"]
        for bad in ("../x.jsonl", "/etc/passwd", "nothing.jsonl"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                get_json(viewer.url + "api/events?file=" + urllib.request.quote(bad))
            assert exc.value.code == 404


def test_a_run_still_being_written_is_summarized_as_running(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        json.dumps(
            {
                "type": "run_started",
                "run_id": "r",
                "step": 0,
                "ts": 1.0,
                "task": "T",
                "model": "m",
                "tools": [],
            }
        )
        + "\n"
        + '{"type": "warning", "step": 1, "ts": 2.0, "kind": "x", "mess'  # torn: still being written
    )
    with being_written(trace):
        row = summarize(trace, tmp_path)
    assert row.status == "running" and row.warnings == 0 and row.task == "T"
    # Its writer gone (a full disk made it let go, or its process was killed): no more lines will come.
    row = summarize(trace, tmp_path)
    assert (row.status, row.note) == ("cut_short", "ended without a final event (trace cut short)")


@pytest.fixture
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; "
            "scripts/test-setup.sh does it when run as root)"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


@pytest.mark.docker
def test_the_page_lists_runs_opens_one_shows_its_image_and_unfolds_reasoning(traces, browser, tmp_path):
    from selenium.webdriver.common.by import By

    with TraceViewer(traces) as viewer:
        browser.get(viewer.url)
        rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.run"))
        assert sorted(r.get_attribute("data-file") for r in rows) == [
            "plot.jsonl",
            "strawberry.jsonl",
            "stuck.jsonl",
        ]
        plot_row = next(r for r in rows if r.get_attribute("data-file") == "plot.jsonl")
        assert "completed" in plot_row.text
        plot_row.click()
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".final"))
        assert "Plotted y = x²" in browser.find_element(By.CSS_SELECTOR, ".final").text
        assert "TTFT" in browser.find_element(By.CSS_SELECTOR, '.step[data-step="1"] h3').text
        call_text = browser.find_element(By.CSS_SELECTOR, ".tool-call").text
        assert "python" in call_text and "plt.plot" in call_text

        # The figure the sandbox drew is decoded and shown.
        image = browser.find_element(By.CSS_SELECTOR, ".tool-result img.tool-image")
        wait(
            browser,
            lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image),
        )
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 100
        assert image.is_displayed()

        # Reasoning is folded until clicked.
        folded = browser.find_element(By.CSS_SELECTOR, "details.reasoning")
        text = folded.find_element(By.TAG_NAME, "pre")
        assert folded.get_attribute("open") is None and not text.is_displayed()
        folded.find_element(By.TAG_NAME, "summary").click()
        wait(browser, lambda d: text.is_displayed())
        assert "plot the squares" in text.text
        browser.save_screenshot(str(tmp_path / "viewer.png"))
        if os.environ.get("QWQ_VIEWER_SCREENSHOT"):
            shutil.copy(tmp_path / "viewer.png", os.environ["QWQ_VIEWER_SCREENSHOT"])

        # Back to the list, and the example's run opens too.
        browser.get(viewer.url + "#run=strawberry.jsonl")
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".final"))
        assert browser.find_elements(By.CSS_SELECTOR, ".tool-result")

        # Loop interventions stand out; approvals are shown with their reason.
        browser.get(viewer.url + "#run=stuck.jsonl")
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".final"))
        loop = browser.find_element(By.CSS_SELECTOR, ".warning.loop")
        assert (
            "repeated_tool_call" in loop.text.lower() and loop.value_of_css_property("font-weight") == "600"
        )
        approvals = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".approval")]
        assert any("deny by user" in a and "not that one" in a for a in approvals), approvals


@pytest.mark.docker
def test_a_run_in_progress_grows_on_the_page(traces, browser, tmp_path):
    from selenium.webdriver.common.by import By

    lines = (traces / "strawberry.jsonl").read_text().splitlines(keepends=True)
    cut = next(
        i for i, line in enumerate(lines) if '"type": "tool_result"' in line or '"type":"tool_result"' in line
    )
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    growing = live_dir / "growing.jsonl"
    growing.write_text("".join(lines[:cut]))
    with being_written(growing), TraceViewer(live_dir) as viewer:
        browser.get(viewer.url + "#run=growing.jsonl")
        wait(browser, lambda d: "live" in d.find_element(By.ID, "live").text)
        assert not browser.find_elements(By.CSS_SELECTOR, ".tool-result, .final")
        with growing.open("a") as f:  # the run goes on: its next events are appended
            f.write("".join(lines[cut:]))
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".final"))
        assert browser.find_elements(By.CSS_SELECTOR, ".tool-result")
        wait(browser, lambda d: d.find_element(By.ID, "live").text == "")


def test_a_trace_cut_short_says_so_and_is_not_polled(tmp_path, browser):
    """No final event, and nobody writes it any more (its disk filled up, its process was killed): it
    was listed as running and its page polled every second for ever."""
    from selenium.webdriver.common.by import By

    started = {"type": "run_started", "run_id": "r", "step": 0, "ts": 1.0, "task": "t", "model": "m"}
    (tmp_path / "cut.jsonl").write_text(json.dumps(started) + "\n")
    with TraceViewer(tmp_path) as viewer:
        browser.get(viewer.url)
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.run .status.cut_short"))
        browser.get(viewer.url + "#run=cut.jsonl")
        wait(
            browser,
            lambda d: (
                "ended without a final event (trace cut short)" in d.find_element(By.ID, "summary").text
            ),
        )
        assert browser.find_element(By.ID, "live").text == ""


def test_the_page_says_when_it_lost_the_viewer_and_follows_the_run_again_once_it_is_back(tmp_path, browser):
    from selenium.webdriver.common.by import By

    def line(ev: dict) -> str:
        return json.dumps(ev) + "\n"

    trace = tmp_path / "live.jsonl"
    trace.write_text(
        line(
            {
                "type": "run_started",
                "run_id": "r",
                "step": 0,
                "ts": 1.0,
                "task": "t",
                "model": "m",
                "tools": [],
            }
        )
        + line({"type": "warning", "run_id": "r", "step": 1, "ts": 2.0, "kind": "k", "message": "step one"})
    )
    with being_written(trace):  # the run goes on, its writer holding the trace, until its final
        with TraceViewer(tmp_path) as first:
            port = first._server.server_port
            browser.get(first.url + "#run=live.jsonl")
            wait(browser, lambda d: d.find_element(By.ID, "live").text == "● live")
            first.close()  # a restart: the page's next polls fail
            wait(browser, lambda d: "unreachable" in d.find_element(By.ID, "live").text)
            assert "live" not in browser.find_element(By.ID, "live").text
        with TraceViewer(tmp_path, port=port) as second:
            assert second.url == first.url
            with trace.open("a") as f:  # the run ended while the viewer was away
                f.write(
                    line(
                        {
                            "type": "final",
                            "run_id": "r",
                            "step": 2,
                            "ts": 4.0,
                            "status": "completed",
                            "answer": "A",
                        }
                    )
                )
            wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".final"), timeout=30)
            wait(browser, lambda d: d.find_element(By.ID, "live").text == "")


def test_the_run_list_says_when_it_lost_the_viewer_and_refreshes_again_once_it_is_back(tmp_path, browser):
    """Before: one failed `/api/runs` ended the list's refreshing for good, with nothing said."""
    from selenium.webdriver.common.by import By

    def started(run_id: str) -> str:
        ev = {"type": "run_started", "run_id": run_id, "step": 0, "ts": 1.0, "task": run_id, "model": "m"}
        return json.dumps(ev) + "\n"

    (tmp_path / "a.jsonl").write_text(started("first"))
    with TraceViewer(tmp_path) as first:
        port = first._server.server_port
        browser.get(first.url)
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.run")) == 1)
        first.close()
        wait(browser, lambda d: "unreachable" in d.find_element(By.ID, "live").text)
    with TraceViewer(tmp_path, port=port):
        (tmp_path / "b.jsonl").write_text(started("second"))
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.run")) == 2, timeout=30)
        wait(browser, lambda d: d.find_element(By.ID, "live").text == "")
