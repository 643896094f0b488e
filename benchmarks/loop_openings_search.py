"""Search for a level-1 "openings" (template) signal on the reasoning corpus, checked leave-one-out.

Looping Qwen3 traces start sentence after sentence with the same long opening and a different ending
("Alternatively, maybe the DSG is a reagent that ..."). This script feeds every corpus trace to the real
detector once (16-character deltas), records each sentence it ends (its words, revisit markers, and the
detector's own echo share at that point), then evaluates candidate rules offline. A rule counts only
where it fires before the detector's own first signal (it would be level-1-only, joined to the
detector's flags) and after `min_reasoning_chars`. For each family it reports the best grid point in
sample with healthy <= 2, 4 and 7 of 77 flagged (the detector's own two included), and a leave-one-out
check: each of the 96 files held out in turn, the grid point a tuner would pick without it (earliest
median first signal with healthy <= 2 and at most one loop missed, as `loop_detector_loo.py` picks;
ties to fewer healthy, then the earliest mean) applied to the held-out file.

Rules (the opening is a sentence's first k words, lowercased, digits -> '#'; an opening holding a
number never counts, it is an enumeration's label or a value; a sentence is flagged when its opening
was already the opening of >= 2 earlier sentences, a third visit; W is a window of sentences):
- `share`: share of flagged sentences among the last W, and revisit markers in them (the prototype);
- `share_echo`: the same AND the detector's echo share (second visits of whole steps): two weak
  signals together, as `copy_echo_markers` does;
- `share_no_new_numbers`: a flag needs no number unseen so far in the trace (an enumeration moves on);
- `share_continuation`: a flag needs its ending to overlap (word-bigram Jaccard) an earlier ending of
  the same opening (the continuations repeat too);
- `dominant`: one opening fills >= c of the last W sentences (one template hammered, where healthy
  math reuses many stock openings a few times each);
- `share_stripped`: openings taken after leading fillers ("wait", "alternatively", "so", ...);
- `pair`: the flag is a third visit of (previous opening, opening): a cycle of templates;
- `share_persist`, `dominant_persist`: the rule must hold for 500-1,000 characters, as the
  detector's statistical signals must (`persist_chars`).
Markers are the detector's (`ledger.count_markers`) or, `alt`, a word set that adds the template words
themselves ("alternatively", "hmm").

Result (corpus 19 looping / 77 healthy; the detector alone: 18/19 flagged, median first signal 40.6%
of the trace, healthy 2/77 at level 1: qwq overthinking_4, r1-distill-llama math500-0009). Medians are
over flagged loops, as in `loop_detector_bench.py`; h = healthy flagged:

| family | in sample, h <= 2 | h <= 4 | h <= 7 | held out (LOO) |
|---|---|---|---|---|
| share | 40.6%, 18/19 | 40.0%, 19/19, h=3 | 34.5%, 19/19, h=7 | 41.2%, 19/19, h=3 |
| share_echo | 40.4%, 19/19 | 40.0%, 19/19, h=3 | (same) | 41.2%, 19/19, h=3 |
| share_no_new_numbers | 40.6%, 18/19 | 40.0%, 19/19, h=3 | (same) | 40.6%, 18/19, h=3 |
| share_continuation | 40.6%, 18/19 | 40.0%, 19/19, h=3 | 39.9%, 19/19, h=7 | 40.6%, 18/19, h=5 |
| dominant | 38.3%, 18/19 | 34.5%, 19/19, h=3 | (same) | 41.2%, 19/19, h=5 |
| share_stripped | 40.6%, 18/19 | (same) | 40.0%, 19/19, h=6 | 41.2%, 19/19, h=4 |
| pair | 39.5%, 18/19 | (same) | 38.5%, 18/19, h=6 | 40.6%, 18/19, h=2 |
| share_persist | 40.6%, 18/19 | (same) | 40.0%, 19/19, h=7 | 41.2%, 19/19, h=4 |
| dominant_persist | 38.8%, 18/19 | 37.5%, 18/19, h=4 | (same) | 40.6%, 18/19, h=2 |

- Held out, no rule beats the detector alone (40.6%, 2/77): the best keep 40.6% with 2/77 (`pair`,
  `dominant_persist`), the rest flag 3-5 healthy traces. The in-sample gains of those two rest on one
  file, s13g7 (the DSG template loop itself: 41.2% -> 37.6-39.1%); in its own fold the tuner picks a
  rule that does not move it, hence the held-out 40.6%. Catching s02g6 (most rules do, late) raises
  the median of flagged loops rather than lowering it.
- The one rule that reaches the median target, `dominant` with k=5, W=12, c=3 and 5 `alt` markers
  (19/19, 34.5%: s02g6 at 20%, s13g7 from 41% to 34%, s04g6/s14g3 earlier), nudges one more healthy
  trace (r1-distill-qwen-7b math500-0018, at 92%): 3/77, over the issue's budget, and held out its
  family flags 5.
- The healthy traces that block are long math and MCQ traces (r1-distill math500-0018/-0007/-0017,
  Qwen3 fill-ins s01g3/s05g5) whose stock openings ("So the first blank is", "Therefore the angle
  between", "Alternatively, maybe the angle") recur as often, with as many "wait"s, as a loop's. No
  number, continuation, echo or persistence condition separates them. The loops that would move the
  median most (dsh_zh, riddle_100/182/475, s04g7) have no repeated openings before their first signal.
- A first pass on the detector's segments (sentences merged up to 8 words) instead of sentences gave
  no gain at h <= 2 either (40.6%).
So no openings signal is adopted and the detector's defaults are unchanged.

The evaluation is offline: a rule's first firing is joined to the detector's own first signal, which is
exact for level-1 flags; what an earlier nudge would change in later escalation is not simulated (it
would matter only for an adopted rule). About 75 s for all families.

    python benchmarks/loop_openings_search.py [--corpus PATH] [--family NAME ...]

Prints a table and writes benchmarks/results/loop_openings_search.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qwq_agent.agent.loops.config import LoopDetectorConfig
from qwq_agent.agent.loops.detector import ReasoningLoopDetector
from qwq_agent.agent.loops.evaluation import DELTA_CHARS, find_corpus
from qwq_agent.agent.loops.ledger import count_markers

ROOT = Path(__file__).resolve().parent.parent
_WORD = re.compile(r"[^\W_]+(?:[.,][0-9]+)*", re.UNICODE)  # the detector's word pattern
_NUMBER = re.compile(r"^[0-9]+(?:[.,][0-9]+)*$")
_ALT_MARKERS = frozenset({"alternatively", "hmm", "wait", "again", "recheck", "earlier", "before"})
_FILLERS = frozenset(
    {"wait", "alternatively", "but", "so", "hmm", "maybe", "perhaps", "actually", "and", "or", "oh", "well",
     "now", "however", "also", "then", "again", "no", "ok", "okay", "yes"}
)  # fmt: skip
FLOOR = LoopDetectorConfig().min_reasoning_chars


@dataclass
class Sentence:
    pos: int  # characters consumed when it ended
    words: list[str]
    numbers: list[str]
    markers: int  # `count_markers`
    alt_markers: int  # `_ALT_MARKERS` words
    echo: float  # the detector's echo share at that point


@dataclass
class Trace:
    name: str
    looping: bool
    chars: int
    first_at: int | None  # the detector's own first signal
    sentences: list[Sentence]


class _Recorder(ReasoningLoopDetector):
    """The real detector, recording each sentence it ends (same word stream, so chunking-independent)."""

    def reset(self) -> None:
        super().reset()
        self.sentences: list[Sentence] = []
        self._sent_words: list[str] = []
        self._sent_raw: list[str] = []

    def _consume(self, chunk: str) -> None:
        super()._consume(chunk)
        self._sent_raw.append(chunk)
        self._sent_words.extend(w.lower() for w in _WORD.findall(chunk))

    def _end_sentence(self) -> None:
        super()._end_sentence()
        words, self._sent_words = self._sent_words, []
        raw, self._sent_raw = "".join(self._sent_raw), []
        if words:
            self.sentences.append(
                Sentence(
                    self._pos,
                    words,
                    [w for w in words if _NUMBER.match(w)],
                    count_markers(raw),
                    sum(w in _ALT_MARKERS for w in words),
                    self.echo_share,
                )
            )


def export(corpus: Path) -> list[Trace]:
    traces = []
    for sub, looping in (("looping", True), ("healthy", False)):
        for path in sorted((corpus / sub).glob("*.txt")):
            text = path.read_text(encoding="utf-8")
            det = _Recorder()
            for i in range(0, len(text), DELTA_CHARS):
                det.feed(text[i : i + DELTA_CHARS])
            first = int(det.signals[0].evidence["chars"]) if det.signals else None
            traces.append(Trace(path.name, looping, len(text), first, det.sentences))
    return traces


def _opening(words: list[str], k: int, strip: bool = False) -> tuple[str, ...] | None:
    if strip:  # "Wait, maybe the DSG is" and "Alternatively, maybe the DSG is": one template
        i = 0
        while i < len(words) - k and words[i] in _FILLERS:
            i += 1
        words = words[i:]
    op = tuple("#" if w[0].isdigit() else w for w in words[:k])
    return None if "#" in op else op  # an enumeration's label or a value: never a template


def _bigrams(words: list[str]) -> frozenset[tuple[str, str]]:
    return frozenset(itertools.pairwise(words))


def fire(tr: Trace, p: dict[str, Any]) -> int | None:
    """Where rule `p` first holds before the detector's own first signal, or None."""
    k, window, need_markers = p["k"], p["W"], p["markers"]
    alt = p.get("alt", False)
    seen: Counter[tuple[str, ...]] = Counter()
    endings: dict[tuple[str, ...], list[frozenset[tuple[str, str]]]] = {}
    numbers_seen: set[str] = set()
    win: deque[tuple[tuple[str, ...] | None, bool, int]] = deque()
    in_win: Counter[tuple[str, ...]] = Counter()
    flags = marks = 0
    prev: tuple[str, ...] | None = None
    pairs: Counter[tuple[tuple[str, ...] | None, tuple[str, ...]]] = Counter()
    since: int | None = None
    for s in tr.sentences:
        if tr.first_at is not None and s.pos > tr.first_at:
            break
        if len(s.words) < k + 2:
            continue
        op = _opening(s.words, k, p.get("strip", False))
        flag = op is not None and seen[op] >= 2
        if "pair" in p and op is not None:  # the same opening after the same opening: a cycle of templates
            flag = pairs[prev, op] >= 2
            pairs[prev, op] += 1
        prev = op
        if flag and "new_numbers" in p:
            flag = sum(n not in numbers_seen for n in s.numbers) <= p["new_numbers"]
        if op is not None and "cont" in p:
            ending = _bigrams(s.words[k:])
            olds = endings.setdefault(op, [])
            if flag:
                flag = any(len(ending & o) >= p["cont"] * len(ending | o) > 0 for o in olds)
            olds.append(ending)
        if op is not None:
            seen[op] += 1
            in_win[op] += 1
        numbers_seen.update(s.numbers)
        m = s.alt_markers if alt else s.markers
        win.append((op, flag, m))
        flags += flag
        marks += m
        if len(win) > window:
            old_op, old_flag, old_m = win.popleft()
            flags -= old_flag
            marks -= old_m
            if old_op is not None:
                in_win[old_op] -= 1
        holds = len(win) == window and marks >= need_markers and s.echo >= p.get("echo", 0.0)
        if "dominant" in p:
            holds = holds and max(in_win.values(), default=0) >= p["dominant"]
        else:
            holds = holds and flags >= p["share"] * window
        if not holds:
            since = None
            continue
        since = s.pos if since is None else since
        if s.pos >= FLOOR and s.pos - since >= p.get("persist", 0):
            return s.pos
    return None


Outcome = list[tuple[bool, int | None, int]]  # per trace: looping, first signal (joined), chars


def joined(traces: list[Trace], fires: list[int | None]) -> Outcome:
    out = []
    for tr, f in zip(traces, fires, strict=True):
        first = f if f is not None and (tr.first_at is None or f < tr.first_at) else tr.first_at
        out.append((tr.looping, first, tr.chars))
    return out


def score(res: Outcome, skip: int | None = None) -> tuple[float, int, float, int] | None:
    """(median first signal of flagged loops, healthy flagged, mean first signal with a miss at the
    end, loops flagged), or None when more than one loop is missed (as the LOO script requires)."""
    loops = [(f, c) for i, (lp, f, c) in enumerate(res) if lp and i != skip]
    healthy = sum(1 for i, (lp, f, _) in enumerate(res) if not lp and f is not None and i != skip)
    flagged = [f / c for f, c in loops if f is not None]
    if len(loops) - len(flagged) > 1:
        return None
    mean = statistics.mean(f / c if f is not None else 1.0 for f, c in loops)
    return statistics.median(flagged), healthy, mean, len(flagged)


KS = (4, 5, 6)
WS = (8, 12, 16, 24)
MARKS = (0, 3, 5, 8)
FAMILIES: dict[str, dict[str, tuple[Any, ...]]] = {
    "share": {"k": KS, "W": WS, "share": (0.2, 0.25, 0.35, 0.5), "markers": MARKS, "alt": (False, True)},
    "share_echo": {"k": KS, "W": WS, "share": (0.2, 0.35), "markers": MARKS, "echo": (0.15, 0.25)},
    "share_no_new_numbers": {
        "k": KS, "W": WS, "share": (0.2, 0.35, 0.5), "markers": MARKS, "new_numbers": (0, 1),
    },
    "share_continuation": {"k": KS, "W": WS, "share": (0.2, 0.35, 0.5), "markers": MARKS, "cont": (0.2, 0.4)},
    "dominant": {"k": (3, *KS), "W": WS, "dominant": (3, 4, 5, 6), "markers": MARKS, "alt": (False, True)},
    "share_stripped": {"k": (3, 4, 5), "W": WS, "share": (0.2, 0.35, 0.5), "markers": MARKS, "strip": (True,)},
    "pair": {"k": (3, 4, 5), "W": WS, "share": (0.1, 0.2, 0.35), "markers": MARKS, "pair": (True,)},
    "share_persist": {"k": KS, "W": WS, "share": (0.2, 0.35, 0.5), "markers": MARKS, "persist": (500, 1000)},
    "dominant_persist": {"k": (4, 5), "W": WS, "dominant": (3, 4, 5), "markers": MARKS, "persist": (500, 1000)},
}  # fmt: skip


def evaluate_family(traces: list[Trace], grid: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    points = [dict(zip(grid, vals, strict=True)) for vals in itertools.product(*grid.values())]
    results = [joined(traces, [fire(tr, p) for tr in traces]) for p in points]
    scores = [score(r) for r in results]

    def best(max_healthy: int, skip: int | None = None) -> int | None:
        key_best, pick = None, None
        for i, res in enumerate(results):
            s = score(res, skip) if skip is not None else scores[i]
            if s is None or s[1] > max_healthy:
                continue
            key = s[:3]  # earliest median, then fewest healthy, then earliest on average
            if key_best is None or key < key_best:
                key_best, pick = key, i
        return pick

    in_sample = best(2)
    held: Outcome = []
    picks: Counter[str] = Counter()
    for i in range(len(traces)):
        j = best(2, skip=i)
        assert j is not None  # the empty rule (never firing) is in every grid's reach: see main
        picks[json.dumps(points[j])] += 1
        held.append(results[j][i])
    held_loops = [f / c for lp, f, c in held if lp and f is not None]
    return {
        "grid_points": len(points),
        "in_sample_best_healthy_le_2": _describe(points, scores, in_sample),
        # What the rules could give if more healthy traces were nudged (the prototype's 6/77 point).
        **{f"in_sample_best_healthy_le_{h}": _describe(points, scores, best(h)) for h in (4, 7)},
        "held_out_loops_flagged": len(held_loops),
        "held_out_median_first_frac": round(statistics.median(held_loops), 3),
        "held_out_healthy_flagged": sorted(
            tr.name for tr, (lp, f, _) in zip(traces, held, strict=True) if not lp and f is not None
        ),
        "picks_across_folds": dict(picks.most_common(4)),
    }


def _describe(points: list[dict[str, Any]], scores: list[Any], i: int | None) -> dict[str, Any] | None:
    if i is None:
        return None
    median, healthy, _, flagged = scores[i]
    return {"rule": points[i], "median_first_frac": round(median, 3), "healthy": healthy, "loops": flagged}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--family", action="append", help="only these families (repeatable)")
    args = ap.parse_args()
    corpus = args.corpus or find_corpus(ROOT)
    if corpus is None:
        print("reasoning corpus not found beside the clone (../shared/reasoning-corpus); nothing to do")
        return 0
    traces = export(corpus)
    base = score(joined(traces, [None] * len(traces)))
    assert base is not None and base[1] <= 2  # so a fold can always pick a rule that never fires
    families = {n: g for n, g in FAMILIES.items() if not args.family or n in args.family}
    # Every grid also holds the point that never fires (markers above any window's count), so each
    # fold has a valid pick and "no signal" competes with the rules.
    report = {
        name: evaluate_family(traces, {**g, "markers": (*g["markers"], 10**6)})
        for name, g in families.items()
    }
    table = Table(title=f"openings rules on {corpus} (detector alone: median {base[0]:.1%}, "
                  f"{base[3]}/19 loops, {base[1]}/77 healthy)")  # fmt: skip
    columns = ("family", "points", "in sample, healthy <= 2", "healthy <= 4", "healthy <= 7", "held out")
    for col in (*columns, "held-out healthy (the detector's own 2 included)"):
        table.add_column(col)
    for name, r in report.items():
        cells = [name, str(r["grid_points"])]
        for h in (2, 4, 7):
            a = r[f"in_sample_best_healthy_le_{h}"]
            cells.append(
                f"{a['median_first_frac']:.1%} {a['loops']}/19 h={a['healthy']}\n{a['rule']}" if a else "-"
            )
        cells.append(f"{r['held_out_median_first_frac']:.1%} {r['held_out_loops_flagged']}/19")
        cells.append(f"{len(r['held_out_healthy_flagged'])}: " + ", ".join(r["held_out_healthy_flagged"]))
        table.add_row(*cells)
    Console(width=200).print(table)
    out = ROOT / "benchmarks" / "results" / "loop_openings_search.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "corpus": str(corpus),
        "detector_alone": {"median_first_frac": round(base[0], 3), "healthy": base[1], "loops": base[3]},
        "families": report,
    }
    out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
