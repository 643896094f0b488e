"""`--reasoning full|tail|off` in the live view, and `trace show --images DIR`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from qwq_agent.agent.events import ContentDelta, ReasoningDelta
from qwq_agent.cli.render import EventRenderer
from qwq_agent.testing.scripted_server import ScriptedModelServer

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
THOUGHT = "".join(f"thought line {n}\n" for n in range(1, 11))


def screen(mode: str, *, terminal: bool = False) -> str:
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None, force_terminal=terminal)
    renderer = EventRenderer(console, reasoning=mode)  # type: ignore[arg-type]
    for piece in (THOUGHT[i : i + 7] for i in range(0, len(THOUGHT), 7)):
        renderer.handle(ReasoningDelta(text=piece))
    renderer.handle(ContentDelta(text="The answer."))
    return out.getvalue()


def test_full_shows_every_line():
    text = screen("full")
    assert all(f"thought line {n}\n" in text for n in range(1, 11)) and text.endswith("The answer.")


def test_tail_folds_to_the_last_lines():
    text = screen("tail")
    assert "6 earlier lines of reasoning folded" in text
    assert "thought line 1\n" not in text and "thought line 5\n" not in text
    assert all(f"thought line {n}" in text for n in range(7, 11))
    assert text.rstrip().endswith("The answer.")


def test_tail_redraws_in_place_on_a_terminal():
    text = screen("tail", terminal=True)
    streaming, final = text.rsplit("folded", 1)
    # Drawn while it streamed (line 2 before line 10 arrived), each redraw erasing the last (cursor up).
    assert "thought line 2" in streaming and "\x1b[1A\x1b[2K" in streaming
    assert "thought line 1\nthought line 2\nthought line 3\nthought line 4\nthought line 5" not in streaming
    assert "thought line 10" in final and "thought line 2" not in final


def test_off_hides_the_reasoning_and_says_so():
    text = screen("off")
    assert "thought line" not in text
    assert "(reasoning: 10 lines" in text and "hidden)" in text
    assert text.rstrip().endswith("The answer.")


def test_run_reasoning_off_from_the_cli(tmp_path):
    with ScriptedModelServer(["A secret chain of thought.\nMore of it.\n</think>\n\nHello there."]) as server:
        proc = subprocess.run(
            [
                *CLI,
                "run",
                "Say hello.",
                "--model-url",
                server.url,
                "--tools",
                "fetch_url",
                "--reasoning",
                "off",
                "--trace",
                str(tmp_path / "t.jsonl"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "100"},
        )
    assert proc.returncode == 0, proc.stderr
    assert "secret chain" not in proc.stdout and "Hello there." in proc.stdout
    assert "(reasoning: 2 lines" in proc.stdout


@pytest.mark.docker
def test_trace_show_images_writes_the_pngs_of_a_real_run(sandbox_image, tmp_path):
    code = "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()"
    call = "<tool_call>\n" + json.dumps({"name": "python", "arguments": {"code": code}}) + "\n</tool_call>"
    trace = tmp_path / "run.jsonl"
    with ScriptedModelServer(["Plot.\n</think>\n\n" + call, "Done.\n</think>\n\nPlotted."]) as server:
        run = subprocess.run(
            [
                *CLI,
                "run",
                "Plot a line.",
                "--model-url",
                server.url,
                "--tools",
                "python",
                "--trace",
                str(trace),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
    assert run.returncode == 0, run.stderr
    live = " ".join(run.stdout.split())
    assert f"image saved: {tmp_path}/qwq-agent-images/" in live  # absolute: a terminal opens it from anywhere

    plain = subprocess.run([*CLI, "trace", "show", str(trace)], capture_output=True, text=True, timeout=60)
    assert "pass --images DIR" in plain.stdout

    images = tmp_path / "pngs"
    shown = subprocess.run(
        [*CLI, "trace", "show", str(trace), "--images", str(images)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path / "..",
    )
    assert shown.returncode == 0, shown.stderr
    written = sorted(images.glob("*.png"))
    assert [p.name for p in written] == ["image-1.png"]
    assert written[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"image saved: {written[0]}" in " ".join(shown.stdout.split())
    # Shown again into the same folder (say, another trace's figure there): the first file is kept.
    written[0].write_bytes(b"a figure the user saved before")
    again = subprocess.run(
        [*CLI, "trace", "show", str(trace), "--images", str(images)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert written[0].read_bytes() == b"a figure the user saved before"
    second = images / "image-1-2.png"
    assert second.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"image saved: {second}" in " ".join(again.stdout.split())


def test_an_image_is_never_written_through_a_link_planted_at_its_name(tmp_path) -> None:
    from qwq_agent.cli.image_files import write_new_png

    victim = tmp_path / "victim"
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "image-1.png").symlink_to(victim)  # dangling: an exclusive create must still not follow it
    path = write_new_png(folder, 1, b"png bytes")
    assert path == folder.resolve() / "image-1-2.png" and path.read_bytes() == b"png bytes"
    assert not victim.exists()
