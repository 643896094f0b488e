"""The reasoning-loop detector on held-out real traces it was never tuned on (`benchmarks/heldout`).

Same measurement as `benchmarks/loop_detector_bench.py` (default config, 16-character deltas, labels and
"loop evident from" parsed from `sources.md` by `evaluate_corpus`), on traces collected outside the
development corpus. Only traces from licensed repositories are committed (`benchmarks/heldout/`): CI can
rerun those. The others are listed in `benchmarks/heldout/sources.md` with their provenance; when a local
copy exists (`--extra`, same `looping/` + `healthy/` layout) they are evaluated too and marked `local`.
Totals are given for the committed traces alone and for all traces found.

    python benchmarks/loop_detector_heldout.py [--heldout PATH] [--extra PATH]

Prints a table and writes benchmarks/results/loop_detector_heldout.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qwq_agent.agent.loops.evaluation import DELTA_CHARS, CorpusReport, evaluate_corpus

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "benchmarks" / "heldout"
EXTRA = Path("/tmp/heldout-uncommitted")


def _merged(dirs: list[Path], sources: Path, into: Path) -> Path:
    """A corpus view of `dirs` (their `looping/` and `healthy/` files) labelled by `sources`."""
    for sub in ("looping", "healthy"):
        (into / sub).mkdir(parents=True)
        for d in dirs:
            for path in sorted((d / sub).glob("*.txt")):
                (into / sub / path.name).symlink_to(path.resolve())
    (into / "sources.md").symlink_to(sources.resolve())
    return into


def _totals(report: CorpusReport) -> dict[str, object]:
    return {
        "looping_flagged": report.looping_flagged,
        "looping_total": report.looping_total,
        "median_first_frac": report.median_first_frac,
        "median_evident_frac": report.median_evident_frac,
        "median_first_minus_evident": report.median_first_minus_evident,
        "healthy_total": report.healthy_total,
        "healthy_by_level": report.healthy_by_level,
    }


def _pct(x: float | None) -> str:
    return f"{100 * x:.0f}" if x is not None else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heldout", type=Path, default=HELDOUT, help="committed held-out traces + sources.md")
    ap.add_argument("--extra", type=Path, default=EXTRA, help="local copies of the uncommitted traces")
    args = ap.parse_args()
    committed = {p.name for sub in ("looping", "healthy") for p in (args.heldout / sub).glob("*.txt")}
    extra = [args.extra] if (args.extra / "looping").is_dir() or (args.extra / "healthy").is_dir() else []
    with tempfile.TemporaryDirectory() as tmp:
        sources = args.heldout / "sources.md"
        only_committed = evaluate_corpus(_merged([args.heldout], sources, Path(tmp) / "committed"))
        everything = evaluate_corpus(_merged([args.heldout, *extra], sources, Path(tmp) / "all"))

    console = Console(width=160)
    table = Table(title=f"loop detector on held-out traces ({DELTA_CHARS}-char deltas)")
    numeric = ("chars", "level", "evident %", "first signal %")
    for col in ("file", "where", "label", "chars", "level", "evident %", "first signal %", "signal"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for f in everything.files:
        where = "committed" if f.name in committed else "local"
        evident = f.evident_at / f.chars if f.evident_at is not None else None
        label = f.label or ("looping" if f.looping else "healthy")
        row = (f.name, where, label, str(f.chars), str(f.level), _pct(evident), _pct(f.first_frac))
        table.add_row(*row, f.first_kind or "-")
    console.print(table)

    summary = Table(title="totals (issue 12 targets, stated for the development corpus)")
    summary.add_column("measure")
    summary.add_column("committed", justify="right")
    summary.add_column("all found", justify="right")
    summary.add_column("target", justify="right")
    reports = (only_committed, everything)
    summary.add_row(
        "looping flagged (level >= 1)", *(f"{r.looping_flagged}/{r.looping_total}" for r in reports), "all"
    )
    summary.add_row("median first signal, % of trace", *(_pct(r.median_first_frac) for r in reports), "<= 35")
    summary.add_row(
        "median 'loop evident from', % of trace", *(_pct(r.median_evident_frac) for r in reports), ""
    )
    summary.add_row(
        "median (first signal - evident), points",
        *(
            f"{100 * r.median_first_minus_evident:+.1f}" if r.median_first_minus_evident is not None else "-"
            for r in reports
        ),
        "",
    )
    for lvl, target in ((1, "few"), (2, "0"), (3, "0")):
        summary.add_row(
            f"healthy at level {lvl}",
            *(f"{r.healthy_by_level[lvl]}/{r.healthy_total}" for r in reports),
            target,
        )
    console.print(summary)
    if not extra:
        console.print(
            f"[yellow]no local copies of the uncommitted traces at {args.extra}: committed ones only"
        )

    out = ROOT / "benchmarks" / "results" / "loop_detector_heldout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "heldout": str(args.heldout.relative_to(ROOT) if args.heldout.is_relative_to(ROOT) else args.heldout),
        "delta_chars": DELTA_CHARS,
        "committed": _totals(only_committed),
        "all_found": _totals(everything),
        "files": [
            {**f.model_dump(exclude={"seconds"}), "committed": f.name in committed} for f in everything.files
        ],
    }
    out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    console.print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
