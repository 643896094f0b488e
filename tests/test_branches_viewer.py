"""`qwq-agent trace serve` shows an exploration's trace: the fork, one line per branch, the selection."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_branches import SEEDS, config, per_branch
from test_viewer import browser, wait  # noqa: F401  (the fixture, a real headless chromium)

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loop import Agent
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.viewer import TraceViewer


async def _explore(folder: Path) -> None:
    scripts = {
        SEEDS[0]: ["a\n</think>\n\n42"],
        SEEDS[1]: ["b\n</think>\n\n42"],
        SEEDS[2]: ["c\n</think>\n\n41"],
    }
    async with (
        ScriptedModelServer(per_branch(scripts)) as server,
        SGLangClient(server.url, retry=NO_RETRY) as client,
    ):
        agent = Agent(client, [], config=config(), trace_path=folder / "explore.jsonl")
        result = await agent.explore("6*7?", n=3, select="majority", seeds=SEEDS[:3])
    assert result.winner == 0


def test_the_viewer_shows_the_branches_of_an_exploration(browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    asyncio.run(_explore(tmp_path))
    with TraceViewer(tmp_path) as viewer:
        browser.get(viewer.url)
        rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.run"))
        files = sorted(r.get_attribute("data-file") for r in rows)
        assert files == [
            "explore.branch-0.jsonl",
            "explore.branch-1.jsonl",
            "explore.branch-2.jsonl",
            "explore.jsonl",
        ]
        browser.get(viewer.url + "#run=explore.jsonl")
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".final"))
        text = browser.find_element(By.TAG_NAME, "body").text.lower()  # labels are shown in capitals
        assert "3 branches · select majority" in text
        assert "branch 2" in text and "explore.branch-2.jsonl" in text
        assert "selectedbranch 0: majority: 2 of 3 completed branches agree" in text
