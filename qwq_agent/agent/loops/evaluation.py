"""Run the reasoning-loop detector over a labelled corpus the way the agent feeds it.

Shared by the benchmark (`benchmarks/loop_detector_bench.py`) and the corpus tests, so both measure
the same thing: each trace is fed in 16-character deltas (what SGLang streams), and for each file we
keep the highest level reached and where the first signal came, as a fraction of the trace.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

from pydantic import BaseModel

from qwq_agent.agent.loops.config import LoopDetectorConfig
from qwq_agent.agent.loops.detector import ReasoningLoopDetector

__all__ = ["CorpusReport", "FileResult", "evaluate_corpus", "evaluate_text", "find_corpus"]

DELTA_CHARS = 16


class FileResult(BaseModel):
    """Outcome on one trace."""

    name: str
    looping: bool
    label: str = ""
    chars: int
    level: int
    first_at: int | None = None  # character position of the first signal
    first_frac: float | None = None  # first_at / chars
    first_kind: str | None = None
    evident_at: int | None = None  # where the corpus notes the loop as established ("loop evident from")
    seconds: float = 0.0


class CorpusReport(BaseModel):
    """Totals over a corpus: what the issue's targets are stated in."""

    files: list[FileResult]
    looping_total: int
    looping_flagged: int
    median_first_frac: float | None
    median_evident_frac: float | None = None  # the same median for "loop evident from": an honest floor
    median_first_minus_evident: float | None = None  # (first signal - evident) / trace, median
    healthy_total: int
    healthy_by_level: dict[int, int]
    us_per_char: float


def find_corpus(repo_root: Path) -> Path | None:
    """The corpus beside the clone (`../shared/reasoning-corpus`) or inside it (`shared/...`)."""
    repo_root = repo_root.resolve()
    for cand in (repo_root.parent / "shared" / "reasoning-corpus", repo_root / "shared" / "reasoning-corpus"):
        if (cand / "looping").is_dir() and (cand / "healthy").is_dir():
            return cand
    return None


def evaluate_text(
    name: str, text: str, *, looping: bool, config: LoopDetectorConfig | None = None, label: str = ""
) -> FileResult:
    """Feed `text` in 16-character deltas; report the highest level and the first signal."""
    det = ReasoningLoopDetector(config)
    # CPU time of this process, not wall time: on shared cores wall time measures the other tenants.
    t0 = time.process_time()
    for i in range(0, len(text), DELTA_CHARS):
        det.feed(text[i : i + DELTA_CHARS])
    seconds = time.process_time() - t0
    first = det.signals[0] if det.signals else None
    first_at = int(first.evidence.get("chars", 0)) if first else None
    return FileResult(
        name=name,
        looping=looping,
        label=label,
        chars=len(text),
        level=det.level,
        first_at=first_at,
        first_frac=round(first_at / len(text), 3) if first_at is not None else None,
        first_kind=first.kind if first else None,
        seconds=seconds,
    )


_EVIDENT = re.compile(r"~?\s*([0-9][0-9,]*)")


def _labels(corpus: Path) -> dict[str, tuple[str, int | None]]:
    """Label and "loop evident from" character of each file listed in `sources.md`."""
    labels: dict[str, tuple[str, int | None]] = {}
    sources = corpus / "sources.md"
    if sources.exists():
        for line in sources.read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) > 3 and cells[1].endswith(".txt"):
                # The column reads "~9,000", "1,362 (2nd copy)" or "~5,900 (exact from 15,564)": the
                # first number is where circling is established, exact or not.
                m = _EVIDENT.match(cells[7]) if len(cells) > 7 else None
                evident = int(m.group(1).replace(",", "")) if m else None
                labels[Path(cells[1]).name] = (cells[2], evident)
    return labels


def evaluate_corpus(corpus: Path, config: LoopDetectorConfig | None = None) -> CorpusReport:
    """Evaluate every `looping/*.txt` and `healthy/*.txt` file of `corpus`."""
    labels = _labels(corpus)
    files: list[FileResult] = []
    for sub, looping in (("looping", True), ("healthy", False)):
        for path in sorted((corpus / sub).glob("*.txt")):
            text = path.read_text(encoding="utf-8")
            label, evident = labels.get(path.name, ("", None))
            result = evaluate_text(path.name, text, looping=looping, config=config, label=label)
            files.append(result.model_copy(update={"evident_at": evident if looping else None}))
    loops = [f for f in files if f.looping]
    healthy = [f for f in files if not f.looping]
    fracs = [f.first_frac for f in loops if f.first_frac is not None]
    evident_fracs = [f.evident_at / f.chars for f in loops if f.evident_at is not None]
    # A missed loop counts as signalled at the end of its trace, so a miss cannot improve the median.
    lead = [
        ((f.first_at if f.first_at is not None else f.chars) - f.evident_at) / f.chars
        for f in loops
        if f.evident_at is not None
    ]
    by_level = {lvl: sum(1 for f in healthy if f.level == lvl) for lvl in (1, 2, 3)}
    total_chars = sum(f.chars for f in files)
    return CorpusReport(
        files=files,
        looping_total=len(loops),
        looping_flagged=sum(1 for f in loops if f.level >= 1),
        median_first_frac=statistics.median(fracs) if fracs else None,
        median_evident_frac=round(statistics.median(evident_fracs), 3) if evident_fracs else None,
        median_first_minus_evident=round(statistics.median(lead), 3) if lead else None,
        healthy_total=len(healthy),
        healthy_by_level=by_level,
        us_per_char=1e6 * sum(f.seconds for f in files) / max(1, total_chars),
    )
