"""The viewer page never turns a trace field into markup, whatever the field's type or content.

The page's own JavaScript runs in node against a minimal DOM (the innerHTML it writes is read back)
and a stubbed `fetch` answering with a hostile run list and a hostile trace: every field the page
shows holds markup meant to run script. The HTML it produces is parsed: it must contain no element
or attribute that the page itself did not write.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from qwq_agent.viewer.page import PAGE

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

P = "\"'><img src=x onerror=alert(1)>"
"""Markup closing an attribute (either quote) and opening an element with a handler."""

HOSTILE_CALL = {"name": P, "id": P, "arguments": {"k": P}}
EVENTS = [
    {"type": "run_started", "step": 0, "tools": [P], "replay_of": {"mode": P, "path": P}},
    {"type": "run_started", "step": 0, "tools": P},
    {"type": "reasoning", "step": 1, "text": P},
    {"type": "content", "step": 1, "text": P},
    {
        "type": "model_call",
        "step": 1,
        "completion": P + "</think>" + P,
        "usage": {"prompt_tokens": P, "cached_tokens": P, "finish_reason": P, "ttft_s": P},
    },
    {"type": "tool_call", "step": 1, "call": HOSTILE_CALL},
    {
        "type": "tool_result",
        "step": 1,
        "name": P,
        "call_id": P,
        "duration_s": P,
        "error_type": P,
        "text": P,
        "images": [P],
        "is_error": True,
    },
    {"type": "warning", "step": 1, "kind": P, "level": P, "message": P},
    {"type": "budget", "step": 1, "budget": P, "used": P, "limit": P},
    {"type": "approval_requested", "step": 1, "call": HOSTILE_CALL, "reason": P},
    {
        "type": "approval",
        "step": 1,
        "action": P,
        "by": P,
        "name": P,
        "call_id": P,
        "reason": P,
        "arguments": P,
    },
    {"type": "replay_end", "step": 1, "completions": P},
    {"type": "branches", "step": 1, "n": P, "select": P, "seeds": [P]},
    {"type": "branches", "step": 1, "n": P, "select": P, "seeds": P},
    {"type": "branch_end", "step": 1, "index": P, "status": P, "verdict": P, "trace": P, "passed": P},
    {"type": "branch_selected", "step": 1, "winner": P, "reason": P},
    {"type": "final", "step": P, "status": P, "answer": P, "error": P},
    {"type": P, "step": P},
    {"type": "tool_call", "step": 2, "call": None},  # unreadable: shown as such, the rest still renders
]
SUMMARY = {
    "file": P,
    "run_id": P,
    "task": P,
    "model": P,
    "status": P,
    "steps": P,
    "prompt_tokens": P,
    "generated_tokens": P,
    "cached_share": P,
    "wall_s": P,
    "warnings": P,
}

HARNESS = """
const vm = require("vm");
const elements = new Map();
const element = (sel) => {
  if (!elements.has(sel)) elements.set(sel, {hidden: false, innerHTML: "", textContent: "", addEventListener() {}});
  return elements.get(sel);
};
const answers = {"/api/runs": {root: "/r", runs: [SUMMARY]}, "/api/events": {events: EVENTS, next: 1, summary: SUMMARY}};
const fetch = async (url) => ({json: async () => answers[url.split("?")[0]]});
const ctx = {document: {querySelector: element, querySelectorAll: () => []}, window: {addEventListener() {}},
             location: {hash: "#run=x"}, fetch, setTimeout: () => 0, clearTimeout: () => {}, console};
vm.createContext(ctx);
vm.runInContext(SCRIPT + "\\n;globalThis.__page = {showList, showRun};", ctx);
(async () => {
  await ctx.__page.showList();
  await ctx.__page.showRun("x");
  const out = {};
  for (const sel of ["#runs tbody", "#summary", "#timeline"]) out[sel] = element(sel).innerHTML;
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e && e.stack || e); process.exit(1); });
"""


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


def _render(tmp_path: Path) -> dict[str, str]:
    script = re.search(r"<script>(.*)</script>", PAGE, re.S)
    assert script is not None
    code = (
        HARNESS.replace("SCRIPT", json.dumps(script.group(1)))
        .replace("SUMMARY", json.dumps(SUMMARY))
        .replace("EVENTS", json.dumps(EVENTS))
    )
    harness = tmp_path / "harness.js"
    harness.write_text(code)
    assert NODE is not None
    done = subprocess.run([NODE, str(harness)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_trace_field_becomes_markup(tmp_path):
    rendered = _render(tmp_path)
    assert all(rendered.values()), rendered
    for where, markup in rendered.items():
        parser = Elements()
        parser.feed(markup)
        for tag, attrs in parser.found:
            names = {name for name, _ in attrs}
            assert not any(name.startswith("on") for name in names), (where, tag, attrs)
            if tag == "img":  # the page's own image element; the field only fills its attributes
                assert dict(attrs).get("class") == "tool-image", (where, attrs)
                assert dict(attrs)["src"] == "data:image/png;base64," + P
    # every hostile value is shown, as text
    assert rendered["#timeline"].count("&lt;img src=x onerror=alert(1)&gt;") > len(EVENTS)
    assert "an event this page cannot show" in rendered["#timeline"]
