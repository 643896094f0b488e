"""Every example runs end to end: recorded completions over real HTTP, real sandbox, real tools.

The recordings only say what the model writes; the checks look at what really happened in the
sandbox (tests fail before the fix and pass after it, the crash reproduces and then goes away, the
computed numbers appear in the tool outputs), so a recording that claimed a wrong result would fail.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

pytestmark = pytest.mark.docker


def load(relative: str):
    path = EXAMPLES / relative
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def run_example(example, tmp_path):
    import harness

    screen_buffer = io.StringIO()
    console = Console(file=screen_buffer, width=120)
    outcome = await harness.run(example, console=console, trace_path=tmp_path / "trace.jsonl")
    screen = screen_buffer.getvalue()
    assert outcome.replayed and "replaying this example's recorded" in screen
    assert outcome.problems == [], outcome.problems
    assert outcome.result.status == "completed", outcome.result.error
    assert (tmp_path / "trace.jsonl").stat().st_size > 0
    return outcome


@pytest.mark.parametrize("name", ["strawberry", "parentheses", "pi"])
async def test_math_puzzles(name, sandbox_image, tmp_path):
    module = load("math_puzzles/run.py")
    await run_example(module.EXAMPLES[name], tmp_path)


async def test_coding_assistant_fixes_the_failing_test(sandbox_image, tmp_path):
    module = load("coding_assistant/run.py")
    outcome = await run_example(module.EXAMPLE, tmp_path)
    outputs = [m.content for m in outcome.result.messages if m.role == "tool"]
    assert "FAILED (failures=1)" in outputs[0]
    assert "OK" in outputs[3] and "Ran 4 tests" in outputs[3]


async def test_debugging_reproduces_patches_and_verifies(sandbox_image, tmp_path):
    module = load("debugging/run.py")
    outcome = await run_example(module.EXAMPLE, tmp_path)
    outputs = [m.content for m in outcome.result.messages if m.role == "tool"]
    assert "invalid literal for int()" in outputs[0]
    assert "globex: 0.00" in outputs[3]


async def test_research_cites_its_sources(sandbox_image, tmp_path):
    module = load("research/run.py")
    outcome = await run_example(module.EXAMPLE, tmp_path)
    assert "kv-cache.md:1" in (outcome.result.answer or "")


def test_plotting_saves_its_figure_where_a_terminal_opens_it(sandbox_image, tmp_path):
    """The example as a user runs it: the sandbox draws the plot, the PNG lands next to the trace and
    its absolute path is printed; a figure already in that folder (an earlier run's) is kept."""
    import os
    import subprocess

    import harness

    images = tmp_path / "traces" / "example-fibonacci-plot-images"
    images.mkdir(parents=True)
    (images / "image-1.png").write_bytes(b"left by an earlier run")
    env = {k: v for k, v in os.environ.items() if k != "QWQ_MODEL_URL"}
    env.update(QWQ_SANDBOX_IMAGE=sandbox_image, COLUMNS="300")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "plotting" / "run.py")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    saved = sorted(images.iterdir())
    assert [p.name for p in saved] == ["image-1-2.png", "image-1.png"]
    assert saved[1].read_bytes() == b"left by an earlier run"  # never written over
    width, height = harness.png_size(saved[0].read_bytes())
    assert width > 200 and height > 150  # a real figure, not an empty canvas
    screen = " ".join(done.stdout.split())
    assert "replaying this example's recorded" in screen
    assert f"image saved: {images.resolve() / 'image-1-2.png'}" in screen  # absolute: opens from anywhere
    assert f"images: 1 PNG(s) in {images.resolve()}" in screen
    assert "✓ fibonacci-plot: checked" in screen
    assert "trace: traces/example-fibonacci-plot.jsonl" in screen


def test_image_problems_catches_a_missing_or_broken_figure(tmp_path):
    import harness

    assert harness.image_problems([], 1) == ["expected 1 figure(s), 0 saved"]
    broken = tmp_path / "image-1.png"
    broken.write_bytes(b"<html>not a png</html>")
    assert harness.image_problems([broken], 1) == [f"{broken} is not a PNG image"]
    empty = tmp_path / "image-2.png"
    empty.write_bytes(harness.PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR" + b"\x00" * 8)
    assert harness.image_problems([empty], 0) == [f"{empty} is not a PNG image"]  # zero by zero


def _example(script: str, *args: str, cwd: Path, **env: str):
    import os
    import subprocess

    environ = {k: v for k, v in os.environ.items() if k != "QWQ_MODEL_URL"}
    environ.update(COLUMNS="300", **env)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


EARLIER = '{"type": "run_started", "run_id": "earlier-live-run"}\n'


def test_an_example_never_replaces_a_trace_it_is_given_and_each_puzzle_keeps_its_own(sandbox_image, tmp_path):
    """`--trace FILE` deleted whatever FILE held (an earlier, real run), and the three math puzzles all
    wrote that one file, each deleting the one before: only the last run was left."""
    from qwq_agent.agent.trace import read_trace

    precious = tmp_path / "precious.jsonl"
    precious.write_text(EARLIER)
    done = _example("math_puzzles/run.py", "strawberry", "--trace", str(precious), cwd=tmp_path)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{precious} already exists" in done.stderr
    assert precious.read_text() == EARLIER

    done = _example(
        "math_puzzles/run.py", "--trace", str(precious), cwd=tmp_path, QWQ_SANDBOX_IMAGE=sandbox_image
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert precious.read_text() == EARLIER
    for name in ("strawberry", "parentheses", "pi"):
        events = read_trace(tmp_path / f"precious-{name}.jsonl")
        assert events[-1].type == "final" and events[-1].status == "completed"


def test_a_run_to_a_new_trace_keeps_an_earlier_runs_figures(sandbox_image, tmp_path):
    """Runs to two --trace files the user named shared one image folder, and the second run deleted
    the first one's figures from it: each trace now has its own folder, named after it."""
    import re

    marked = b"\x89PNG monday's figure"
    folders = []
    for day in ("monday", "tuesday"):
        done = _example(
            "plotting/run.py", "--trace", str(tmp_path / f"{day}.jsonl"), cwd=tmp_path,
            QWQ_SANDBOX_IMAGE=sandbox_image,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        found = re.search(r"images: 1 PNG\(s\) in (\S+)", " ".join(done.stdout.split()))
        assert found, done.stdout[-3000:]
        folders.append(Path(found.group(1)))
        if day == "monday":
            # marked, as the replayed run draws the same figure again: only a kept file keeps this
            (folders[0] / "image-1.png").write_bytes(marked)
    assert folders[0] != folders[1]
    assert (folders[0] / "image-1.png").read_bytes() == marked  # the earlier run's figure is kept


def test_an_example_without_docker_says_so_in_one_line(tmp_path):
    done = _example(
        "math_puzzles/run.py", "strawberry", cwd=tmp_path, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock"
    )
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("qwq-agent example strawberry: Docker failed")
    assert "fix: start Docker" in done.stderr


class TwoAtOnce:
    """Serves an example's recorded turns to two runs of it; the first run to ask for its answer (its
    figure drawn, its trace half written) is held until the second run has started and asked too."""

    def __init__(self, turns: list[str]) -> None:
        self.turns = turns
        self.held = False

    def __call__(self, req):
        from qwq_agent.testing.scripted_server import Turn

        step = (req.prompt or "").count("<tool_response>")
        text = self.turns[min(step, len(self.turns) - 1)]
        if step == 1 and not self.held:
            self.held = True
            return Turn(text=text, hold_after=1, hold_until_requests=3, hold_timeout=120)
        return text


def _start_example(script: str, *args: str, cwd: Path, **env: str):
    import os
    import subprocess

    environ = {k: v for k, v in os.environ.items() if k != "QWQ_MODEL_URL"}
    environ.update(COLUMNS="300", **env)
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / script), *args],
        env=environ,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for(condition, what: str, proc) -> None:
    import time

    end = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, f"the example exited before {what}: " + "".join(proc.communicate())
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_two_runs_of_one_example_at_once_each_keep_their_trace_and_figures(sandbox_image, tmp_path):
    """Each run deleted the example's trace and figures before it began: a second run started while the
    first was still going unlinked the file the first was writing (both then printed one path, holding
    only the second run) and deleted the figure the first had drawn. Each run now has its own."""
    import re

    from qwq_agent.agent.trace import read_trace
    from qwq_agent.testing.scripted_server import ScriptedModelServer

    module = load("plotting/run.py")
    with ScriptedModelServer(TwoAtOnce(module.TURNS)) as server:
        url = ["--model-url", server.url]
        first = _start_example("plotting/run.py", *url, cwd=tmp_path, QWQ_SANDBOX_IMAGE=sandbox_image)
        procs = [first]
        try:
            # Its figure saved, its answer held: the first run is under way.
            _wait_for(lambda: len(server.requests) >= 2, "the first run's second request", first)
            procs.append(
                _start_example("plotting/run.py", *url, cwd=tmp_path, QWQ_SANDBOX_IMAGE=sandbox_image)
            )
            outs = [p.communicate(timeout=300) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    traces, folders = [], []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:] + err[-2000:]
        screen = " ".join(out.split())
        traces.append(Path(re.search(r"trace: (\S+)", screen).group(1)))
        folders.append(Path(re.search(r"images: 1 PNG\(s\) in (\S+)", screen).group(1)))
    assert traces[0] != traces[1] and folders[0] != folders[1]
    run_ids = set()
    for trace, folder in zip(traces, folders, strict=True):
        events = read_trace(tmp_path / trace)
        assert events[-1].type == "final" and events[-1].status == "completed"
        run_ids.add(events[0].run_id)
        assert harness_png(folder / "image-1.png")
    assert len(run_ids) == 2
    assert sorted(p.name for p in (tmp_path / "traces").glob("*.jsonl")) == sorted(t.name for t in traces)


def harness_png(path: Path) -> bool:
    import harness

    return path.exists() and harness.png_size(path.read_bytes()) is not None


SLEEP = "import time; time.sleep(300)"
STOPPING = ["SIGINT", "SIGTERM", "SIGHUP"]


@pytest.mark.parametrize("name", STOPPING)
def test_a_signal_stops_an_example_cleanly(name, sandbox_image, tmp_path):
    """SIGTERM and SIGHUP killed an example on the spot (its trace without `final`), and Ctrl-C printed a
    40-line traceback: each now ends the run as the CLI does, with its trace ended and sandbox gone."""
    import json
    import signal
    import subprocess

    from qwq_agent.agent.trace import read_trace
    from qwq_agent.testing.scripted_server import ScriptedModelServer

    def model(req):
        if "<tool_response>" in (req.prompt or ""):
            return "ok\n</think>\n\n3"
        return "sleep\n</think>\n\n" + json.dumps({"name": "python", "arguments": {"code": SLEEP}}).join(
            ["<tool_call>\n", "\n</tool_call>"]
        )

    def sleeping() -> bool:
        found = list((tmp_path / "traces").glob("*.jsonl"))
        return bool(found) and '"tool_started"' in found[0].read_text()

    signum = signal.Signals[name]
    with ScriptedModelServer(model) as server:
        proc = _start_example(
            "math_puzzles/run.py", "strawberry", "--model-url", server.url, cwd=tmp_path,
            QWQ_SANDBOX_IMAGE=sandbox_image,
        )  # fmt: skip
        try:
            _wait_for(sleeping, "the python call", proc)
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 128 + signum, out[-3000:] + err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    assert f"{name}: the run was stopped" in out
    [trace] = (tmp_path / "traces").glob("*.jsonl")
    assert f"trace: {trace.relative_to(tmp_path)}" in " ".join(out.split())
    events = read_trace(trace)
    assert events[-1].type == "final" and events[-1].status == "cancelled"
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=qwq-agent.owner-pid={proc.pid}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert left == [], "the example's sandbox was left behind"
