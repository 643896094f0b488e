"""NFC exactly as QwQ-32B's reference tokenizer computes it, whatever Unicode version Python has.

The reference (`tokenizer.json` run by Hugging Face `tokenizers`, which is what SGLang runs) normalises with
the Rust crate `unicode-normalization-alignments` 0.1.12, whose tables are Unicode 9.0. Python's `unicodedata`
is newer (14.0 on 3.11, 15.x on 3.12 and 3.13), so on its own it reorders, decomposes or composes characters
assigned after 9.0 that the reference leaves alone: U+0EBA LAO SIGN PALI VIRAMA (12.0) has combining class 9
for Python and 0 for the reference, U+11935 U+11930 composes to U+11938 (13.0) only in Python, and so on.

To the reference, a character assigned after 9.0 is an inert starter: combining class 0, no decomposition,
part of no composition. NFC never reorders or composes across such a character, so the text is cut at each
run of them, the runs are kept as they are and the pieces between are normalised by `unicodedata`. That is
exact for the pieces because they hold only characters assigned by 9.0, whose combining classes,
decompositions and composition exclusions every later version keeps unchanged (Unicode's normalisation
stability policy). The one piece of data is the list of code points assigned by 9.0 (`unicode9_assigned.txt`,
made by scripts/freeze-unicode9.sh); a character's age never changes, so the list is frozen for good.

`unicodedata` puts combining marks in canonical order with an insertion sort: quadratic in a run of marks
out of order (100,000 alternating marks in one tool output: 20 s). A piece holding a long run of marks is
therefore decomposed character by character (no reordering), each run of non-starters is stably sorted by
combining class here, and only then handed to `unicodedata`, whose reordering of ordered marks is linear.
That is canonical ordering as Unicode defines it (a stable sort by class), so the output is the same.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["REFERENCE_UNICODE_VERSION", "is_normalized", "normalize"]

REFERENCE_UNICODE_VERSION = "9.0.0"

_ASTRAL = re.compile("[\U00010000-\U0010ffff]+")

# Runs of marks shorter than this cost `unicodedata`'s insertion sort little: at most about 4 * 32
# non-starters (a character decomposes to at most 4 of them) between two starters.
_LONG_MARK_RUN = 32


@dataclass(frozen=True)
class _Later:
    """The code points not assigned by Unicode 9.0."""

    bmp: re.Pattern[str]  # runs of those below U+10000: one class, which `re` tests with a bitmap
    astral_starts: list[int]  # those from U+10000 on, as sorted ranges: `re` would try hundreds per character
    astral_ends: list[int]

    def is_astral_later(self, cp: int) -> bool:
        i = bisect.bisect_right(self.astral_starts, cp) - 1
        return i >= 0 and cp <= self.astral_ends[i]


@cache
def _later() -> _Later:
    text = resources.files("qwq_agent.agent").joinpath("unicode9_assigned.txt").read_text(encoding="ascii")
    gaps, next_free = [], 0
    for line in text.splitlines():
        if line and not line.startswith("#"):
            first, last = (int(field, 16) for field in line.split(".."))
            if first > next_free:
                gaps.append((next_free, first - 1))
            next_free = last + 1
    if next_free <= 0x10FFFF:
        gaps.append((next_free, 0x10FFFF))
    bmp = "".join(f"\\u{a:04x}-\\u{min(b, 0xFFFF):04x}" for a, b in gaps if a <= 0xFFFF)
    astral = [(max(a, 0x10000), b) for a, b in gaps if b > 0xFFFF]
    return _Later(re.compile(f"[{bmp}]+"), [a for a, _ in astral], [b for _, b in astral])


def _later_spans(text: str) -> list[tuple[int, int]]:
    """Sorted, disjoint (start, end) spans of `text` made of code points not assigned by Unicode 9.0."""
    later = _later()
    spans = [m.span() for m in later.bmp.finditer(text)]
    astral: list[tuple[int, int]] = []
    for run in _ASTRAL.finditer(text):
        for i in range(run.start(), run.end()):
            if later.is_astral_later(ord(text[i])):
                if astral and astral[-1][1] == i:
                    astral[-1] = (astral[-1][0], i + 1)
                else:
                    astral.append((i, i + 1))
    return sorted(spans + astral) if astral else spans


def _pieces(text: str, spans: list[tuple[int, int]]) -> list[str]:
    """`text` cut at `spans`: the pieces between them at even indexes, the spans' text at odd ones."""
    parts, start = [], 0
    for first, end in spans:
        parts += [text[start:first], text[first:end]]
        start = end
    parts.append(text[start:])
    return parts


@cache
def _nonstarter_classes() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Patterns for runs of non-starters, and for long runs of characters whose decomposition starts with one.

    Only the pieces of characters assigned by 9.0 meet them, on whose classes Python and 9.0 agree.
    """
    marks, leading = [], []
    for cp in range(0x110000):
        ch = chr(cp)
        if unicodedata.combining(ch):
            marks.append(cp)
            leading.append(cp)
        elif unicodedata.decomposition(ch) and unicodedata.combining(unicodedata.normalize("NFD", ch)[0]):
            leading.append(cp)  # U+0F73, U+0F75, U+0F81: class 0 but made of marks only

    def char_class(cps: list[int]) -> str:
        ranges: list[list[int]] = []
        for cp in cps:
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
        return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)

    return re.compile(f"[{char_class(marks)}]{{2,}}"), re.compile(
        f"[{char_class(leading)}]{{{_LONG_MARK_RUN},}}"
    )


def _ordered_nfd(text: str) -> str:
    """`text` fully decomposed with each run of non-starters stably sorted by combining class, in linear time."""
    runs, _ = _nonstarter_classes()
    decomposed = "".join([unicodedata.normalize("NFD", ch) for ch in text])
    return runs.sub(lambda run: "".join(sorted(run[0], key=unicodedata.combining)), decomposed)


def _nfc_piece(piece: str) -> str:
    """NFC of a piece made only of characters assigned by Unicode 9.0."""
    _, long_runs = _nonstarter_classes()
    if long_runs.search(piece):
        piece = _ordered_nfd(piece)
    return unicodedata.normalize("NFC", piece)


def normalize(text: str) -> str:
    """`text` in NFC as the reference tokenizer's normaliser (Unicode 9.0 tables) gives it."""
    # Text that Python finds normal is normal to the reference too: whatever the reference would change
    # (a decomposable character, marks out of order, a pair to compose and the marks between) is made of
    # characters of 9.0, on which Python agrees.
    if unicodedata.is_normalized("NFC", text):
        return text
    parts = _pieces(text, _later_spans(text))
    parts[::2] = [_nfc_piece(part) for part in parts[::2]]
    return "".join(parts)


def is_normalized(text: str) -> bool:
    """True when `normalize(text)` would return `text` unchanged (cheaper than comparing)."""
    if unicodedata.is_normalized("NFC", text):
        return True
    parts = _pieces(text, _later_spans(text))
    return all(unicodedata.is_normalized("NFC", part) for part in parts[::2])
