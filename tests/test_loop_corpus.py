"""The detector on the real reasoning corpus beside the clone (`../shared/reasoning-corpus`).

Fed the way the agent feeds it (16-character deltas). Skipped when the corpus is absent. The bounds
are what this detector reaches (see the README for the figures and the issue's targets), so a change
that loses a caught loop or adds a destructive false positive fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qwq_agent.agent.loops.evaluation import evaluate_corpus, find_corpus

CORPUS = find_corpus(Path(__file__).resolve().parent.parent)
pytestmark = pytest.mark.skipif(CORPUS is None, reason="../shared/reasoning-corpus is not beside the clone")


@pytest.fixture(scope="module")
def report():
    assert CORPUS is not None
    return evaluate_corpus(CORPUS)


def test_looping_traces_are_flagged_before_they_end(report) -> None:
    assert report.looping_total == 19
    assert report.looping_flagged >= 18
    missed = [f.name for f in report.files if f.looping and f.level == 0]
    assert len(missed) <= 1, missed
    assert report.median_first_frac is not None and report.median_first_frac <= 0.45
    # The first signal comes, at the median, within 5 points of the trace after where sources.md notes
    # the loop as evident (a miss counts as a signal at the end; 6.7 points without the echo signal).
    assert report.median_evident_frac is not None and report.median_first_minus_evident is not None
    assert report.median_first_minus_evident <= 0.05
    # Including the verbatim loop of digits without spaces the old detector missed, and a Chinese one.
    by_name = {f.name: f for f in report.files}
    assert by_name["r1-distill-llama-8b_riddle_475.txt"].level >= 1
    assert by_name["deepseek-dsh_zh_real_loop.txt"].level >= 1


def test_healthy_traces_are_never_stopped_and_rarely_flagged(report) -> None:
    assert report.healthy_total == 77
    assert report.healthy_by_level[3] == 0
    assert report.healthy_by_level[2] == 0  # closing a healthy answer is destructive
    assert report.healthy_by_level[1] <= 2
