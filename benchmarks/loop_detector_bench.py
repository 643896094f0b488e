"""The reasoning-loop detector on the whole reasoning corpus, fed as the agent feeds it.

Every trace of `../shared/reasoning-corpus` (beside the clone) is fed in 16-character deltas. Per file:
the highest level reached, where the first signal came (as % of the trace) and which signal it was;
totals: looping flagged, median first-signal position, healthy flagged by level; cost in microseconds
per character of reasoning (CPU time of the process, so that other tenants of shared cores do not
count), with a baseline measured in the same run (splitting the same deltas into words, the floor
any word-based detector pays). The QwQ-style cases of `tests/data/reasoning/` are
reported too (not part of the corpus totals).

    python benchmarks/loop_detector_bench.py [--corpus PATH] [--repeat 3]

Prints a table and writes benchmarks/results/loop_detector_bench.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qwq_agent.agent.loops.evaluation import DELTA_CHARS, evaluate_corpus, evaluate_text, find_corpus

ROOT = Path(__file__).resolve().parent.parent
OWN_CASES = {
    "qwq_parentheses_loop": True,
    "qwq_zh_loop": True,
    "qwq_options_loop": True,
    "qwq_rederive_loop": True,
    "healthy_enumeration": False,
    "healthy_verify_once": False,
    "healthy_many_waits": False,
    "healthy_options_weighed": False,
    "qwq_24_loop": True,
    "healthy_reconfirm": False,
    "qwq_recopy_loop": True,
    "healthy_restate": False,
    "healthy_zh_verify": False,
    "healthy_code_refine": False,
    "healthy_table_puzzle": False,
    "healthy_code_refine_unfenced": False,
    "healthy_fence_in_string": False,
}
_WORD = re.compile(r"[^\W_]+(?:[.,][0-9]+)*", re.UNICODE)


def baseline_us_per_char(texts: list[str]) -> float:
    """Cost of only cutting the text into 16-character deltas and words."""
    chars = sum(map(len, texts))
    t0 = time.process_time()
    for text in texts:
        for i in range(0, len(text), DELTA_CHARS):
            _WORD.findall(text[i : i + DELTA_CHARS])
    return 1e6 * (time.process_time() - t0) / chars


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="runs for the cost figure (median taken)")
    args = ap.parse_args()
    corpus = args.corpus or find_corpus(ROOT)
    if corpus is None:
        print("reasoning corpus not found beside the clone (../shared/reasoning-corpus); nothing to do")
        return 0
    reports = [evaluate_corpus(corpus) for _ in range(max(1, args.repeat))]
    report = reports[0]
    texts = [
        p.read_text(encoding="utf-8") for sub in ("looping", "healthy") for p in (corpus / sub).glob("*.txt")
    ]
    base = statistics.median(baseline_us_per_char(texts) for _ in range(max(1, args.repeat)))
    cost = statistics.median(r.us_per_char for r in reports)
    own = [
        evaluate_text(
            name, (ROOT / "tests/data/reasoning" / f"{name}.txt").read_text(encoding="utf-8"), looping=lp
        )
        for name, lp in OWN_CASES.items()
    ]

    console = Console(width=150)
    table = Table(title=f"loop detector on {corpus} ({DELTA_CHARS}-char deltas)")
    numeric = ("chars", "level", "evident %", "first signal %")
    for col in ("file", "label", "chars", "level", "evident %", "first signal %", "signal"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for f in [*report.files, *own]:
        if not f.looping and f.level == 0 and f not in own:
            continue  # healthy and silent: counted below
        label = f.label or ("looping" if f.looping else "healthy")
        first = f"{100 * f.first_frac:.0f}" if f.first_frac is not None else "-"
        evident = f"{100 * f.evident_at / f.chars:.0f}" if f.evident_at is not None else "-"
        table.add_row(f.name, label, str(f.chars), str(f.level), evident, first, f.first_kind or "-")
    console.print(table)
    healthy_flagged = sum(report.healthy_by_level.values())
    median = report.median_first_frac
    summary = Table(title="totals (targets from issue 12)")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    summary.add_column("target", justify="right")
    summary.add_row(
        "looping flagged (level >= 1)", f"{report.looping_flagged}/{report.looping_total}", ">= 18/19"
    )
    summary.add_row(
        "median first signal, % of trace", f"{100 * median:.0f}" if median is not None else "-", "<= 35"
    )
    evident = report.median_evident_frac
    lead = report.median_first_minus_evident
    summary.add_row(
        "median 'loop evident from' (sources.md), % of trace",
        f"{100 * evident:.0f}" if evident is not None else "-",
        "(floor)",
    )
    summary.add_row(
        "median (first signal - evident), points of trace",
        f"{100 * lead:+.1f}" if lead is not None else "-",
        "",
    )
    summary.add_row(
        "healthy flagged at level 1 only", f"{report.healthy_by_level[1]}/{report.healthy_total}", "<= 2"
    )
    summary.add_row(
        "healthy at level 2 / 3", f"{report.healthy_by_level[2]} / {report.healthy_by_level[3]}", "0 / 0"
    )
    summary.add_row("healthy flagged at any level", f"{healthy_flagged}/{report.healthy_total}", "")
    summary.add_row("detector cost, µs per char (median)", f"{cost:.2f}", "<= 5")
    summary.add_row("baseline: deltas + word split, µs per char", f"{base:.2f}", "")
    console.print(summary)

    out = ROOT / "benchmarks" / "results" / "loop_detector_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "corpus": str(corpus),
        "delta_chars": DELTA_CHARS,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "looping_flagged": report.looping_flagged,
        "looping_total": report.looping_total,
        "median_first_frac": median,
        "median_evident_frac": evident,
        "median_first_minus_evident": lead,
        "healthy_total": report.healthy_total,
        "healthy_by_level": report.healthy_by_level,
        "clock": "process CPU time",
        "us_per_char": round(cost, 3),
        "baseline_us_per_char": round(base, 3),
        "files": [f.model_dump(exclude={"seconds"}) for f in report.files],
        "own_cases": [f.model_dump(exclude={"seconds"}) for f in own],
    }
    out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    console.print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
