"""Near-duplicate steps, counted on their third visit.

The reasoning is cut into segments (sentences, merged when short, cut when run-on). A segment is a
visit of an earlier one when their normalised word 3-shingles overlap (Jaccard) and their numbers and
labels agree: one verification pass revisits each step once (a second visit), a loop comes back again
and again, so only a third-or-later visit counts. An enumeration ("Case 3: ...", "Case 4: ...") reuses
its wording with other labels or numbers, so it is never a visit.
"""

from __future__ import annotations

from collections import Counter, deque
from itertools import pairwise

from qwq_agent.agent.loops.config import LoopDetectorConfig

__all__ = ["NearDuplicates", "number_overlap"]


def number_overlap(a: list[str], b: list[str]) -> float:
    """How much two segments' number sequences agree, weighted by digits (1.0 when neither has any).

    Consecutive pairs are compared, not single numbers, so that tracing a program (the same values
    in a changing order) reads as progress; weighting by digits makes two steps of a long
    multiplication differ, since they share the one-digit multipliers but not the long products.
    """
    if not a and not b:
        return 1.0
    # Tuples of two numbers, or of one when a segment holds a single number.
    pa: list[tuple[str, ...]] = list(pairwise(a)) or [(n,) for n in a]
    pb: list[tuple[str, ...]] = list(pairwise(b)) or [(n,) for n in b]
    ca, cb = Counter(pa), Counter(pb)

    def digits(pairs: Counter[tuple[str, ...]]) -> int:
        return sum(c * sum(map(len, p)) for p, c in pairs.items())

    common = sum(min(ca[p], cb[p]) * sum(map(len, p)) for p in ca.keys() & cb.keys())
    return common / max(digits(ca), digits(cb))


class _Segment:
    __slots__ = ("labels", "numbers", "shingles")

    def __init__(
        self, shingles: frozenset[tuple[str, ...]], numbers: list[str], labels: frozenset[str]
    ) -> None:
        self.shingles = shingles
        self.numbers = numbers
        self.labels = labels


class NearDuplicates:
    """Index of recent segments; `add` says how many earlier visits a new segment has."""

    def __init__(self, config: LoopDetectorConfig) -> None:
        self.config = config
        self._order: deque[int] = deque()  # ids of the lookback segments, oldest first
        self._by_id: dict[int, _Segment] = {}
        self._index: dict[tuple[str, ...], set[int]] = {}
        self._next_id = 0

    def add(self, words: list[str], numbers: list[str], labels: frozenset[str]) -> int:
        """Store the segment; return how many earlier segments it revisits (capped at `revisit_visits`)."""
        cfg = self.config
        norm = ["#" if w[0].isdigit() else w for w in words]
        k = min(cfg.shingle_size, len(norm))
        shingles = frozenset(tuple(norm[i : i + k]) for i in range(len(norm) - k + 1))
        earlier = self._visits(shingles, numbers, labels)
        self._store(_Segment(shingles, numbers, labels))
        return earlier

    def _visits(
        self, shingles: frozenset[tuple[str, ...]], numbers: list[str], labels: frozenset[str]
    ) -> int:
        cfg = self.config
        overlap: Counter[int] = Counter()
        for sh in shingles:
            for seg_id in self._index.get(sh, ()):
                overlap[seg_id] += 1
        need = cfg.revisit_visits - 1
        found = 0
        for seg_id, common in overlap.items():
            other = self._by_id[seg_id]
            jaccard = common / (len(shingles) + len(other.shingles) - common)
            if (
                jaccard >= cfg.similarity_threshold
                and labels == other.labels
                and number_overlap(numbers, other.numbers) >= cfg.number_reuse_threshold
            ):
                found += 1
                if found >= need:
                    break
        return found

    def _store(self, seg: _Segment) -> None:
        seg_id = self._next_id
        self._next_id += 1
        self._order.append(seg_id)
        self._by_id[seg_id] = seg
        for sh in seg.shingles:
            self._index.setdefault(sh, set()).add(seg_id)
        if len(self._order) > self.config.lookback_segments:
            old_id = self._order.popleft()
            old = self._by_id.pop(old_id)
            for sh in old.shingles:
                ids = self._index[sh]
                ids.discard(old_id)
                if not ids:
                    del self._index[sh]
