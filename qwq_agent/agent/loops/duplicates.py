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


Pairs = Counter[tuple[str, ...]]


def _number_pairs(numbers: list[str]) -> Pairs:
    """Consecutive pairs of a segment's numbers (its single number when it has one), counted."""
    pairs: list[tuple[str, ...]] = list(pairwise(numbers)) or [(n,) for n in numbers]
    return Counter(pairs)


def _digits(pairs: Pairs) -> int:
    return sum(c * sum(map(len, p)) for p, c in pairs.items())


def _agreement(common: int, digits_a: int, digits_b: int) -> float:
    """`number_overlap` from the digits two segments' pairs share and the digits each has."""
    most = max(digits_a, digits_b)
    return common / most if most else 1.0


def number_overlap(a: list[str], b: list[str]) -> float:
    """How much two segments' number sequences agree, weighted by digits (1.0 when neither has any).

    Consecutive pairs are compared, not single numbers, so that tracing a program (the same values
    in a changing order) reads as progress; weighting by digits makes two steps of a long
    multiplication differ, since they share the one-digit multipliers but not the long products.
    """
    ca, cb = _number_pairs(a), _number_pairs(b)
    common = sum(min(ca[p], cb[p]) * sum(map(len, p)) for p in ca.keys() & cb.keys())
    return _agreement(common, _digits(ca), _digits(cb))


class _Segment:
    __slots__ = ("digits", "labels", "pairs", "shingles")

    def __init__(self, shingles: frozenset[tuple[str, ...]], pairs: Pairs, labels: frozenset[str]) -> None:
        self.shingles = shingles
        self.pairs = pairs
        self.digits = _digits(pairs)
        self.labels = labels


class NearDuplicates:
    """Index of recent segments; `add` says how many earlier segments a new segment revisits.

    Number pairs are indexed too: a list of small numbers makes every segment the same shingles
    (`# # #`), so each new one matches all the lookback segments on wording, and comparing their
    numbers one segment at a time cost ~20 us a character. Through the index only the segments that
    share a pair are visited.
    """

    def __init__(self, config: LoopDetectorConfig) -> None:
        self.config = config
        self._order: deque[int] = deque()  # ids of the lookback segments, oldest first
        self._by_id: dict[int, _Segment] = {}
        self._index: dict[tuple[str, ...], set[int]] = {}
        self._pair_index: dict[tuple[str, ...], dict[int, int]] = {}  # pair -> {segment: times in it}
        self._next_id = 0

    def add(self, words: list[str], numbers: list[str], labels: frozenset[str]) -> int:
        """Store the segment; return how many earlier segments it revisits (capped at `revisit_visits`)."""
        cfg = self.config
        norm = ["#" if w[0].isdigit() else w for w in words]
        k = min(cfg.shingle_size, len(norm))
        shingles = frozenset(tuple(norm[i : i + k]) for i in range(len(norm) - k + 1))
        seg = _Segment(shingles, _number_pairs(numbers), labels)
        earlier = self._visits(seg)
        self._store(seg)
        return earlier

    def _visits(self, seg: _Segment) -> int:
        cfg = self.config
        overlap: Counter[int] = Counter()
        for sh in seg.shingles:
            for seg_id in self._index.get(sh, ()):
                overlap[seg_id] += 1
        similar: list[int] = []  # worded alike, with the same labels: their numbers decide
        for seg_id, common in overlap.items():
            other = self._by_id[seg_id]
            jaccard = common / (len(seg.shingles) + len(other.shingles) - common)
            if jaccard >= cfg.similarity_threshold and seg.labels == other.labels:
                similar.append(seg_id)
        if not similar:
            return 0
        shared = self._shared_digits(seg.pairs)
        need = cfg.revisit_visits - 1
        found = 0
        for seg_id in similar:
            agree = _agreement(shared.get(seg_id, 0), seg.digits, self._by_id[seg_id].digits)
            if agree >= cfg.number_reuse_threshold:
                found += 1
                if found >= need:
                    break
        return found

    def _shared_digits(self, pairs: Pairs) -> Counter[int]:
        """Per stored segment, the digits of the number pairs it shares with `pairs` (as `number_overlap`)."""
        shared: Counter[int] = Counter()
        for p, c in pairs.items():
            weight = sum(map(len, p))
            for seg_id, times in self._pair_index.get(p, {}).items():
                shared[seg_id] += (c if c < times else times) * weight  # min(), without a call per entry
        return shared

    def _store(self, seg: _Segment) -> None:
        seg_id = self._next_id
        self._next_id += 1
        self._order.append(seg_id)
        self._by_id[seg_id] = seg
        for sh in seg.shingles:
            self._index.setdefault(sh, set()).add(seg_id)
        for p, c in seg.pairs.items():
            self._pair_index.setdefault(p, {})[seg_id] = c
        if len(self._order) > self.config.lookback_segments:
            old_id = self._order.popleft()
            old = self._by_id.pop(old_id)
            for sh in old.shingles:
                ids = self._index[sh]
                ids.discard(old_id)
                if not ids:
                    del self._index[sh]
            for p in old.pairs:
                holders = self._pair_index[p]
                del holders[old_id]
                if not holders:
                    del self._pair_index[p]
