"""Leave-one-out check of a level-1 signal's two thresholds on the reasoning corpus.

The second-visit signals (level 1 only) have two thresholds each: `echo`, the share of recent steps that
are second visits and the revisit markers among them; `copy`, the length of a verbatim copy and how many
separate copies. This script evaluates a grid of both on the whole corpus once, then,
for each of the 96 files in turn, picks the grid point a tuner would pick *without that file*
(earliest median first signal with healthy <= 2/77 at level 1, none at level 2/3, loops flagged
>= 18) and applies it to the held-out file. If the result depends on one file's influence, the held-out
figures (healthy flagged, median first signal of held-out loops) differ from the in-sample ones.

    python benchmarks/loop_detector_loo.py [--corpus PATH] [--signal echo|copy]

Prints a table and writes benchmarks/results/loop_detector_loo.json (`copy`: ..._loo_copy.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qwq_agent.agent.loops.config import LoopDetectorConfig
from qwq_agent.agent.loops.evaluation import FileResult, evaluate_corpus, find_corpus

ROOT = Path(__file__).resolve().parent.parent
SHARES = (0.3, 0.35, 0.4, 0.45, 0.5)
MARKERS = (3, 4, 5, 6, 8)
# Per signal: its two thresholds with the values tried (larger = stricter, unless named in SMALLER_IS_STRICTER),
# and what turns it off.
SMALLER_IS_STRICTER = {"copy_echo_window_chars"}
GRIDS: dict[str, tuple[tuple[str, tuple[float, ...]], tuple[str, tuple[float, ...]], dict[str, object]]] = {
    "echo": (("echo_share_threshold", SHARES), ("echo_min_markers", MARKERS), {"echo_enabled": False}),
    "copy": (
        ("copy_min_chars", (160, 180, 200, 240, 256)),
        ("copy_count", (2, 3, 4)),
        {"copy_enabled": False},
    ),
    # The echo after a copy: its markers, and how recent the copy must be.
    "copy_echo": (
        ("copy_echo_markers", (3, 4, 5, 6)),
        ("copy_echo_window_chars", (4000, 2000, 1000)),
        {"copy_echo_markers": 1000},
    ),
}


def _score(files: list[FileResult]) -> tuple[float, int] | None:
    """(median first signal, healthy flagged) if the targets hold on `files`, else None."""
    loops = [f for f in files if f.looping]
    healthy = [f for f in files if not f.looping]
    if sum(f.level >= 2 for f in healthy) or sum(f.level == 1 for f in healthy) > 2:
        return None
    if sum(f.level == 0 for f in loops) > 1:
        return None
    fracs = [f.first_frac for f in loops if f.first_frac is not None]
    return statistics.median(fracs), sum(f.level >= 1 for f in healthy)


def _mean_first(files: list[FileResult]) -> float:
    """Mean first-signal position over the loops, a miss counted at the end of its trace."""
    return round(
        statistics.mean(f.first_frac if f.first_frac is not None else 1.0 for f in files if f.looping), 3
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--signal", choices=sorted(GRIDS), default="echo")
    args = ap.parse_args()
    corpus = args.corpus or find_corpus(ROOT)
    if corpus is None:
        print("reasoning corpus not found beside the clone (../shared/reasoning-corpus); nothing to do")
        return 0
    default = LoopDetectorConfig()
    (name_a, values_a), (name_b, values_b), off_config = GRIDS[args.signal]
    grid = list(itertools.product(values_a, values_b))
    results = {
        point: evaluate_corpus(corpus, LoopDetectorConfig(**{name_a: point[0], name_b: point[1]})).files
        for point in grid
    }
    n = len(results[grid[0]])
    off = evaluate_corpus(corpus, LoopDetectorConfig.model_validate(off_config)).files

    def pick(skip: int | None) -> tuple[float, int] | None:
        best = None
        for point in grid:
            score = _score([f for i, f in enumerate(results[point]) if i != skip])
            # Earliest median; then fewest healthy flagged; then the stricter point (fewer nudges).
            strict = tuple(
                v if name in SMALLER_IS_STRICTER else -v
                for name, v in zip((name_a, name_b), point, strict=True)
            )
            key = (score[0], score[1], *strict) if score else None
            if key and (best is None or key < best[0]):
                best = (key, point)
        return best[1] if best else None

    in_sample = pick(None)
    held_out: list[FileResult] = []
    chosen: dict[str, int] = {}
    others: dict[str, str] = {}  # held-out file -> its fold's pick, where it differs from in-sample
    for i in range(n):
        point = pick(i)
        assert point is not None
        chosen[f"{point[0]}/{point[1]}"] = chosen.get(f"{point[0]}/{point[1]}", 0) + 1
        held_out.append(results[point][i])
        if point != in_sample:
            others[results[point][i].name] = f"{point[0]}/{point[1]}"
    loops = [f for f in held_out if f.looping]
    healthy = [f for f in held_out if not f.looping]
    fracs = [f.first_frac for f in loops if f.first_frac is not None]  # as the benchmark's median
    default_point = (getattr(default, name_a), getattr(default, name_b))
    default_files = results.get(default_point) or evaluate_corpus(corpus).files
    summary = {
        "signal": args.signal,
        "grid": {name_a: values_a, name_b: values_b},
        "default": {name_a: default_point[0], name_b: default_point[1]},
        "in_sample_pick": {name_a: in_sample[0], name_b: in_sample[1]} if in_sample else None,
        "picks_across_folds": chosen,
        "folds_picking_otherwise": others,
        "held_out_loops_flagged": sum(f.level >= 1 for f in loops),
        "held_out_median_first_frac": statistics.median(fracs) if fracs else None,
        "held_out_mean_first_frac": _mean_first(held_out),
        "in_sample_mean_first_frac": _mean_first(results[in_sample]) if in_sample else None,
        "signal_off": _score(off),
        "signal_off_mean_first_frac": _mean_first(off),
        "held_out_healthy_level1": sum(f.level == 1 for f in healthy),
        "held_out_healthy_level2_3": sum(f.level >= 2 for f in healthy),
        "held_out_healthy_flagged": sorted(f.name for f in healthy if f.level),
        "default_score": _score(default_files),
        "grid_scores": {f"{p[0]}/{p[1]}": _score(results[p]) for p in grid},
    }
    table = Table(title=f"{args.signal} thresholds, leave-one-out over the corpus")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in (
        "default",
        "in_sample_pick",
        "picks_across_folds",
        "folds_picking_otherwise",
        "held_out_loops_flagged",
        "held_out_median_first_frac",
        "held_out_mean_first_frac",
        "in_sample_mean_first_frac",
        "signal_off",
        "signal_off_mean_first_frac",
        "held_out_healthy_level1",
        "held_out_healthy_level2_3",
        "held_out_healthy_flagged",
        "default_score",
    ):
        table.add_row(key, str(summary[key]))
    Console(width=150).print(table)
    suffix = "" if args.signal == "echo" else f"_{args.signal}"
    out = ROOT / "benchmarks" / "results" / f"loop_detector_loo{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
