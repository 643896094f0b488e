"""The held-out traces (`benchmarks/heldout`): the licensing rule and what CI can rerun.

Only texts from MIT / Apache-2.0 / BSD / CC-BY repositories may be committed; every other source is
recorded in `sources.md` with its provenance and "not committed". The committed healthy traces are fed
the way the agent feeds them and must not be flagged. The full held-out measurement, including local
copies of the uncommitted traces, is `benchmarks/loop_detector_heldout.py`.
"""

from __future__ import annotations

from pathlib import Path

from qwq_agent.agent.loops.evaluation import evaluate_corpus

HELDOUT = Path(__file__).resolve().parent.parent / "benchmarks" / "heldout"
LICENSES = ("MIT", "Apache-2.0", "BSD", "CC-BY")


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in (HELDOUT / "sources.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 8 and cells[1].endswith(".txt"):
            rows[cells[1]] = cells
    return rows


def test_only_licensed_texts_are_committed() -> None:
    rows = _rows()
    committed = {f"{p.parent.name}/{p.name}" for p in HELDOUT.glob("*/*.txt")}
    assert committed <= set(rows), committed - set(rows)
    for name, cells in rows.items():
        license_ = cells[5]
        if name in committed:
            assert license_.startswith(LICENSES) and "(committed)" in license_, name
        else:
            assert "not committed" in license_, name


def test_committed_healthy_traces_are_not_flagged() -> None:
    report = evaluate_corpus(HELDOUT)
    assert report.healthy_total >= 2
    assert [f.name for f in report.files if not f.looping and f.level > 0] == []
