"""Does the detector's outcome on the corpus hang on where its periodic checks fall?

The exact-cycle and copy checks run every `periodic_check_every` characters, counted from the start of
the reasoning, so a threshold that a trace only just meets can be met or missed depending on where the
checks land. This script feeds every trace of `../shared/reasoning-corpus` as the benchmark does, once
as it is and once behind each of a few short neutral openings ("Okay. ", ...), which shift every check
by their length without changing the reasoning, and prints loops flagged, the median first signal and
the healthy traces flagged for each shift. An outcome that changes with the shift rests on a trace at
its threshold.

    python benchmarks/loop_detector_shift.py [--corpus PATH] [--set copy_count=2 ...]

Prints a table and writes benchmarks/results/loop_detector_shift.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qwq_agent.agent.loops.config import LoopDetectorConfig
from qwq_agent.agent.loops.evaluation import evaluate_text, find_corpus

ROOT = Path(__file__).resolve().parent.parent
OPENINGS = ("", "Okay. ", "Okay, let me see. ", "Alright, so let me think about it. ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], help="a config override, NAME=VALUE (repeatable)")
    args = ap.parse_args()
    corpus = args.corpus or find_corpus(ROOT)
    if corpus is None:
        print("reasoning corpus not found beside the clone (../shared/reasoning-corpus); nothing to do")
        return 0
    overrides = dict(item.split("=", 1) for item in args.set)
    config = LoopDetectorConfig.model_validate({**LoopDetectorConfig().model_dump(), **overrides})
    traces = [
        (path.name, sub == "looping", path.read_text(encoding="utf-8"))
        for sub in ("looping", "healthy")
        for path in sorted((corpus / sub).glob("*.txt"))
    ]
    rows = []
    for opening in OPENINGS:
        results = [evaluate_text(n, opening + t, looping=lp, config=config) for n, lp, t in traces]
        fracs = [r.first_frac for r in results if r.looping and r.first_frac is not None]
        rows.append(
            {
                "shift": len(opening),
                "looping_flagged": len(fracs),
                "median_first_frac": statistics.median(fracs) if fracs else None,
                "healthy_flagged": {r.name: r.level for r in results if not r.looping and r.level},
            }
        )
    table = Table(title=f"outcome against a shift of the checks ({len(traces)} traces)")
    for col in ("shift", "looping flagged", "median first signal %", "healthy flagged (level)"):
        table.add_column(col)
    for row in rows:
        median = row["median_first_frac"]
        table.add_row(
            str(row["shift"]),
            str(row["looping_flagged"]),
            f"{100 * median:.1f}" if median is not None else "-",
            ", ".join(f"{n} ({lvl})" for n, lvl in row["healthy_flagged"].items()),
        )
    Console(width=160).print(table)
    out = ROOT / "benchmarks" / "results" / "loop_detector_shift.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"overrides": overrides, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
