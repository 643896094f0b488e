"""NFC as the reference tokenizer does it (Unicode 9.0 tables), not as this Python's `unicodedata` does.

The reference is QwQ-32B's tokenizer.json run by Hugging Face `tokenizers` (what SGLang runs): its normaliser
is compared with ours on every code point in a few contexts, and the ids on every code point that
normalisation can touch.
"""

from __future__ import annotations

import time
import unicodedata
from functools import cache
from typing import Any

import pytest
from conftest_reference import require_reference

from qwq_agent.agent import nfc
from qwq_agent.agent.tokenizer import get_tokenizer

# Texts on which this Python's unicodedata (14.0 or newer) and the reference (9.0) disagree.
DISAGREEING = {
    "Lao tone mark + Pali virama (U+0EBA, 12.0: class 9 to Python, 0 to the reference)": "\u0e81\u0ec8\u0eba",
    "Arabic small high word al-juz (U+0898, 14.0) + kasra": "\u0628\u0898\u0650",
    "Bengali sandhi mark (U+09FE, 11.0) + grave below": "\u0995\u09fe\u0316",
    "Malayalam circular virama (U+0D3C, 10.0) + tilde overlay": "\u0d15\u0d3c\u0334",
    "Dives Akuru E + AA (13.0): Python composes them into U+11938": "\U00011935\U00011930",
    "in a rendered chat turn": "<|im_start|>user\n\u0e81\u0ec8\u0eba<|im_end|>\n",
}

# A context puts the swept character `c` between neighbours that make a combining class or a composition
# show: after a class-240 mark a character of any lower non-zero class moves in front of it; before a
# class-1 mark one of any higher class moves behind it. Each is joined to the next with a separator of
# class 0 that composes with nothing, so NFC of the join is the join of the NFCs.
CONTEXTS = ["{}", "a\u0345{}", "a{}\u0334"]
SEPARATOR = "\n"


@cache
def _all() -> list[str]:
    """Every code point but the surrogates."""
    return [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]


@cache
def _assigned() -> list[str]:
    """The characters this Python's Unicode assigns, private use excepted.

    The others are inert to both normalisers (unassigned in this Unicode, so in 9.0 too); they are swept
    alone, side by side, and the assigned ones in every context.
    """
    return [c for c in _all() if unicodedata.category(c) not in ("Cn", "Co")]


@cache
def _reference() -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(require_reference("tokenizer.json")))


def _joined(context: str, chars: list[str]) -> str:
    before, after = context.split("{}")
    return before + f"{after}{SEPARATOR}{before}".join(chars) + after


def _composition_pairs() -> list[str]:
    """Every two-character canonical decomposition this Python knows (the pairs NFC may compose)."""
    pairs = []
    for ch in _all():
        fields = unicodedata.decomposition(ch).split()
        if len(fields) == 2 and not fields[0].startswith("<"):
            pairs.append("".join(chr(int(f, 16)) for f in fields))
    return pairs


def _first_differences(texts: list[str]) -> list[str]:
    """The texts (of a join whose normal forms differ) that differ on their own, for the failure message."""
    norm = _reference().normalizer.normalize_str
    return [ascii(t) for t in texts if nfc.normalize(t) != norm(t)][:5]


def test_every_code_point_side_by_side_normalises_as_the_reference() -> None:
    text = "".join(_all())
    ours, theirs = nfc.normalize(text), _reference().normalizer.normalize_str(text)
    assert ours == theirs, _first_differences(_all())
    assert not nfc.is_normalized(text) and nfc.is_normalized(theirs)


@pytest.mark.parametrize("context", CONTEXTS)
def test_every_assigned_character_normalises_as_the_reference(context: str) -> None:
    assert len(_assigned()) > 140_000
    text = _joined(context, _assigned())
    ours, theirs = nfc.normalize(text), _reference().normalizer.normalize_str(text)
    assert ours == theirs, _first_differences([context.format(c) for c in _assigned()])
    assert nfc.is_normalized(text) == (ours == text)


def test_every_composition_pair_normalises_as_the_reference() -> None:
    pairs = _composition_pairs()
    assert len(pairs) > 900
    text = _joined("{}", pairs)
    ours, theirs = nfc.normalize(text), _reference().normalizer.normalize_str(text)
    assert ours == theirs, _first_differences(pairs)


def test_ids_match_the_reference_wherever_normalisation_acts() -> None:
    touched = [
        c for c in _all() if unicodedata.combining(c) or unicodedata.decomposition(c)[:1] not in ("", "<")
    ]
    texts = [
        *DISAGREEING.values(),
        *(context.format(c) for context in [*CONTEXTS, "{}\u0301", "\u1100{}"] for c in touched),
        *_composition_pairs(),
    ]
    tok, refs = get_tokenizer(), _reference().encode_batch(texts, add_special_tokens=False)
    bad = [t for t, r in zip(texts, refs, strict=True) if tok.encode(t) != r.ids]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {[ascii(t) for t in bad[:5]]}"


@pytest.mark.parametrize("text", DISAGREEING.values(), ids=DISAGREEING.keys())
def test_where_python_disagrees_the_reference_wins(text: str) -> None:
    assert unicodedata.normalize("NFC", text) != text  # still a case where Python alone would be wrong
    assert get_tokenizer().encode(text) == _reference().encode(text, add_special_tokens=False).ids
    assert get_tokenizer().count(text) == len(_reference().encode(text, add_special_tokens=False).ids)


def test_text_around_later_characters_is_still_normalised() -> None:
    # U+1F970 (an emoji of 11.0) cuts the text; the pieces on both sides are composed all the same.
    text = "e\u0301\U0001f970\u0301e\u0301"
    assert (
        nfc.normalize(text) == "\u00e9\U0001f970\u0301\u00e9" == _reference().normalizer.normalize_str(text)
    )
    assert not nfc.is_normalized("\U0001f970e\u0301") and nfc.is_normalized("\u00e9\U0001f970\u0301")


# Long runs of combining marks out of canonical order: `unicodedata` sorts them with an insertion sort,
# 20 s for one 100,000-character tool output of alternating marks. Each mixes marks of several classes with
# characters that decompose into marks (U+0344, U+0F73, U+0F81), a precomposed letter whose marks join the
# run, a composition to make (e + U+0301 behind a blocked mark is not blocked), and a later character (U+1DF6,
# 10.0, class 232 to Python) that the reference does not move.
LONG_MARK_RUNS = {
    "alternating 230/220": "a" + "\u0301\u0316" * 50_000,
    "descending classes": "e" + "\u0345\u0301\u031b\u0316\u0334" * 20_000,
    "decomposing marks": "\u00e1" + "\u0344\u0f73\u0316\u0f81\u0301" * 20_000,
    "later character inside": "o" + ("\u0301\u0316" * 2_000 + "\u1df6") * 20,
    "many starters each with a run": ("\u00e9" + "\u0301\u0316\u0327" * 40) * 800,
}


@pytest.mark.parametrize("text", LONG_MARK_RUNS.values(), ids=LONG_MARK_RUNS.keys())
def test_long_runs_of_marks_normalise_in_linear_time(text: str) -> None:
    started = time.process_time()
    nfc.normalize(text)
    nfc.is_normalized(text)
    # Was 20 s for the first (quadratic); linear takes a tenth of a second. A bound no loaded machine misses.
    assert time.process_time() - started < 3


@pytest.mark.parametrize("text", LONG_MARK_RUNS.values(), ids=LONG_MARK_RUNS.keys())
def test_long_runs_of_marks_normalise_as_the_reference(text: str) -> None:
    text = text[:3_000]  # the reference's own ordering is fine; keep Python's old path out of the check
    assert nfc.normalize(text) == _reference().normalizer.normalize_str(text)
    assert nfc.normalize(text * 30) == _reference().normalizer.normalize_str(text * 30)
