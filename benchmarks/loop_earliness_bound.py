"""Why the median first signal cannot honestly reach 35% on the corpus, and what was tried to get there.

Two measurements on `../shared/reasoning-corpus`, fed as the agent feeds the detector:

1. The oracle bound. For each loop, take the earlier of the detector's first signal and the point
   where `sources.md` notes the loop as evident (a signal that is never later than the loop becomes
   evident, and keeps every earlier signal it already has). The median of those is the best a
   detector can do without firing before the circling exists, i.e. without predicting loops.
   The "evident" column marks where the looping block *begins*, and for a verbatim loop that is
   before anything has repeated: no detector can see a copy before the second one is written. The
   stricter bound also waits, for each verbatim loop, until some 128-character span of it has occurred
   verbatim before (`first_repeat`), which is when a verbatim loop becomes observable at all.
2. Candidate early signals, each added to the detector as a level-1 signal (first signal = the earlier
   of the two; a healthy trace counts as flagged if either flags it), over a grid of thresholds:
   - `markers`: at least k revisit markers ("wait", "again", "再", ...) in the last w characters;
   - `reconfirm`: the same answer claim ("the answer is B", "so it's 126") stated for the n-th time,
     with at least m markers since its previous statement (re-verifying a verified claim);
   - `relist`: the answer options listed ("A: ...", "Option A: ...") for the n-th time.
   For each, the earliest median among grid points that keep healthy <= 2/77 flagged is reported
   (None when no point does). A point that fails the healthy target in-sample cannot pass it held out,
   so no leave-one-out is needed for a signal that has no admissible point.

    python benchmarks/loop_earliness_bound.py [--corpus PATH]

Prints a table and writes benchmarks/results/loop_earliness_bound.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qwq_agent.agent.loops.evaluation import FileResult, evaluate_corpus, find_corpus
from qwq_agent.agent.loops.ledger import _MARKERS  # the detector's own revisit markers

ROOT = Path(__file__).resolve().parent.parent
FLOOR = 2000  # the detector's floor for statistical signals (`min_reasoning_chars`)
TARGET = 0.35
_CLAIM = re.compile(
    r"(?:[Tt]he (?:correct |final )?answer (?:is|would be|should be|must be)|[Aa]nswer:|答案(?:是|为)|"
    r"[Ss]o,? (?:it'?s |the answer is )?(?:option )?)\s*\**\s*\(?([A-J]|-?\d+(?:\.\d+)?)\)?(?![\w'])"
)
_LISTING = re.compile(
    r"(?m)^[ \t]*(?:[-*][ \t]*)?(?:\*\*)?(?:[Oo]ption[ \t]+)?\(?A\)?(?:\*\*)?[ \t]*[:.)][ \t]"
)

Signal = Callable[[str], int | None]  # first character position where the signal fires, or None


def markers(w: int, k: int) -> Signal:
    def first(text: str) -> int | None:
        pos = [m.end() for m in _MARKERS.finditer(text)]
        j = 0
        for i, p in enumerate(pos):
            while pos[j] < p - w:
                j += 1
            if p >= FLOOR and i - j + 1 >= k:
                return p
        return None

    return first


def reconfirm(n: int, m: int) -> Signal:
    def first(text: str) -> int | None:
        events = sorted(
            [(x.end(), "", "m") for x in _MARKERS.finditer(text)]
            + [(x.end(), x.group(1), "c") for x in _CLAIM.finditer(text)]
        )
        seen = 0
        last: dict[str, int] = {}
        confirmed: dict[str, int] = {}
        for p, claim, kind in events:
            if kind == "m":
                seen += 1
                continue
            if claim in last and seen - last[claim] >= m:
                confirmed[claim] = confirmed.get(claim, 1) + 1
                if confirmed[claim] >= n and p >= FLOOR:
                    return p
            last[claim] = seen
        return None

    return first


def relist(n: int) -> Signal:
    def first(text: str) -> int | None:
        hits = [x.end() for x in _LISTING.finditer(text)]
        return hits[n - 1] if len(hits) >= n and hits[n - 1] >= FLOOR else None

    return first


@dataclass
class Score:
    loops_flagged: int
    median_first_frac: float | None
    healthy_flagged: int


def combined(files: list[FileResult], texts: dict[str, str], signal: Signal | None) -> Score:
    """The corpus figures with `signal` added to the detector as a level-1 signal."""
    fracs: list[float] = []
    flagged = healthy = 0
    for f in files:
        extra = signal(texts[f.name]) if signal else None
        at = min(x for x in (f.first_at, extra) if x is not None) if (f.first_at or extra) else None
        if f.looping:
            flagged += at is not None
            if at is not None:
                fracs.append(at / f.chars)
        else:
            healthy += at is not None
    return Score(flagged, round(statistics.median(fracs), 3) if fracs else None, healthy)


def first_repeat(text: str, span: int = 128) -> int:
    """Where the text first ends a `span`-character stretch that occurred verbatim earlier in it."""
    seen: set[str] = set()
    for i in range(len(text) - span + 1):
        piece = text[i : i + span]
        if piece in seen:
            return i + span
        seen.add(piece)
    return len(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=None)
    args = ap.parse_args()
    corpus = args.corpus or find_corpus(ROOT)
    if corpus is None:
        print("reasoning corpus not found beside the clone (../shared/reasoning-corpus); nothing to do")
        return 0
    report = evaluate_corpus(corpus)
    texts = {
        p.name: p.read_text(encoding="utf-8")
        for sub in ("looping", "healthy")
        for p in (corpus / sub).glob("*.txt")
    }
    loops = [f for f in report.files if f.looping]
    oracle = sorted(
        min(f.first_frac if f.first_frac is not None else 1.0, (f.evident_at or f.chars) / f.chars)
        for f in loops
    )
    observable = sorted(
        min(
            f.first_frac if f.first_frac is not None else 1.0,
            max(f.evident_at or f.chars, first_repeat(texts[f.name]) if f.label == "verbatim" else 0)
            / f.chars,
        )
        for f in loops
    )
    bound = {
        "median_if_every_loop_were_caught_where_evident": round(statistics.median(oracle), 3),
        "median_if_caught_where_evident_and_observable": round(statistics.median(observable), 3),
        "loops_at_or_under_35pct_when_observable": sum(x <= TARGET for x in observable),
        "observable_fracs": [round(x, 3) for x in observable],
        "loops_at_or_under_35pct_under_the_oracle": sum(x <= TARGET for x in oracle),
        "loops_needed_at_or_under_35pct": len(loops) // 2 + 1,
        "oracle_fracs": [round(x, 3) for x in oracle],
    }
    grids: dict[str, dict[str, Signal]] = {
        "markers": {
            f"w={w},k={k}": markers(w, k)
            for w, k in itertools.product((1500, 2000, 3000), (6, 8, 10, 12, 14, 18))
        },
        "reconfirm": {f"n={n},m={m}": reconfirm(n, m) for n, m in itertools.product((2, 3, 4, 5), (1, 2, 3))},
        "relist": {f"n={n}": relist(n) for n in (2, 3, 4)},
    }
    now = combined(report.files, texts, None)
    results: dict[str, object] = {"detector_now": asdict(now), "oracle_bound": bound}
    table = Table(title="earliness: the oracle bound and candidate early signals (level 1, whole corpus)")
    for col in (
        "signal",
        "best admissible point",
        "loops flagged",
        "median first",
        "healthy flagged",
        "points tried",
    ):
        table.add_column(col)
    table.add_row(
        "detector now", "", str(now.loops_flagged), str(now.median_first_frac), str(now.healthy_flagged), ""
    )
    table.add_row(
        "oracle: caught where evident",
        "",
        "19",
        str(bound["median_if_every_loop_were_caught_where_evident"]),
        "-",
        f"{bound['loops_at_or_under_35pct_under_the_oracle']} loops <= 35% (10 needed)",
    )
    table.add_row(
        "oracle: ... and a verbatim copy exists",
        "",
        "19",
        str(bound["median_if_caught_where_evident_and_observable"]),
        "-",
        f"{bound['loops_at_or_under_35pct_when_observable']} loops <= 35% (10 needed)",
    )
    signals: dict[str, object] = {}
    for name, grid in grids.items():
        scores = {point: combined(report.files, texts, sig) for point, sig in grid.items()}
        ok = {p: sc for p, sc in scores.items() if sc.healthy_flagged <= 2 and sc.loops_flagged >= 18}
        best = min(ok, key=lambda p: ok[p].median_first_frac or 1.0) if ok else None
        fewest = min(scores, key=lambda p: (scores[p].healthy_flagged, scores[p].median_first_frac or 1.0))
        signals[name] = {
            "best_admissible": best,
            "best_score": asdict(ok[best]) if best else None,
            "fewest_healthy": {"point": fewest, **asdict(scores[fewest])},
            "grid": {p: asdict(sc) for p, sc in scores.items()},
        }
        shown = ok[best] if best else scores[fewest]
        table.add_row(
            name,
            best or f"none ({fewest}: fewest healthy)",
            str(shown.loops_flagged),
            str(shown.median_first_frac),
            str(shown.healthy_flagged),
            str(len(grid)),
        )
    results["signals"] = signals
    Console(width=160).print(table)
    out = ROOT / "benchmarks" / "results" / "loop_earliness_bound.json"
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
