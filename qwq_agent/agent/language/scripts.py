"""Unicode scripts of letters, and the CJK character evidence that tells Chinese from Japanese."""

from __future__ import annotations

import bisect
import re
import threading
import unicodedata
from collections.abc import Iterable

__all__ = [
    "CJK",
    "KANA",
    "LANG_SCRIPTS",
    "SCRIPT_LANG",
    "ScriptWeights",
    "han_markers",
    "script_of",
    "script_weights",
]

_RANGES: list[tuple[int, int, str]] = [
    (0x0370, 0x03FF, "Greek"),
    (0x1F00, 0x1FFF, "Greek"),
    (0x0400, 0x052F, "Cyrillic"),
    (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"),
    (0x0750, 0x077F, "Arabic"),
    (0x08A0, 0x08FF, "Arabic"),
    (0x0900, 0x097F, "Devanagari"),
    (0x0E00, 0x0E7F, "Thai"),
    (0x1100, 0x11FF, "Hangul"),
    (0x3040, 0x309F, "Hiragana"),
    (0x30A0, 0x30FF, "Katakana"),
    (0x31F0, 0x31FF, "Katakana"),
    (0x3130, 0x318F, "Hangul"),
    (0x3400, 0x4DBF, "Han"),
    (0x4E00, 0x9FFF, "Han"),
    (0xF900, 0xFAFF, "Han"),
    (0x20000, 0x2FA1F, "Han"),
    (0xAC00, 0xD7AF, "Hangul"),
    (0xFF66, 0xFF9F, "Katakana"),
]
CJK = frozenset({"Han", "Hiragana", "Katakana", "Hangul"})
KANA = frozenset({"Hiragana", "Katakana"})

# Script -> language, for scripts used (in practice) by one language.
SCRIPT_LANG = {
    "Hangul": "ko",
    "Hiragana": "ja",
    "Katakana": "ja",
    "Cyrillic": "ru",
    "Arabic": "ar",
    "Devanagari": "hi",
    "Greek": "el",
    "Hebrew": "he",
    "Thai": "th",
}
# The scripts a language is written in; Latin is not listed: technical terms are Latin everywhere.
LANG_SCRIPTS: dict[str, frozenset[str]] = {
    "zh": frozenset({"Han"}),
    "ja": frozenset({"Han", "Hiragana", "Katakana"}),
    "ko": frozenset({"Hangul"}),
    **{lang: frozenset({s}) for s, lang in SCRIPT_LANG.items() if lang not in ("ko", "ja")},
}


def script_of(ch: str) -> str | None:
    """The script of a letter (`Latin`, `Han`, `Cyrillic`...), or None for non-letters."""
    if not ch.isalpha():
        return None
    cp = ord(ch)
    if cp < 0x0250 or 0x1E00 <= cp <= 0x1EFF or 0xFF21 <= cp <= 0xFF5A:
        return "Latin"
    for lo, hi, name in _RANGES:
        if lo <= cp <= hi:
            return name
    # Fall back on the character name's first word ("LATIN SMALL LETTER ...", "ARMENIAN ...").
    return unicodedata.name(ch, "OTHER").split(" ")[0].title()


def _char_class(ranges: list[tuple[int, int]]) -> str:
    return "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in ranges)


# Latin letters are counted by one regular expression (in C); only the other letters are named one
# by one, through a binary search of the ranges: answers are checked on every turn.
_LATIN_RANGES = [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x24F), (0x1E00, 0x1EFF)]
_LATIN_RANGES += [(0xFF21, 0xFF3A), (0xFF41, 0xFF5A)]
_LATIN = re.compile(f"[{_char_class(_LATIN_RANGES)}]")
_NOT_OTHER_LETTER = re.compile(f"[{_char_class(_LATIN_RANGES)}\\W\\d_]+")
_SORTED = sorted(_RANGES)
_STARTS = [lo for lo, _, _ in _SORTED]


def _other_script(ch: str) -> str | None:
    cp = ord(ch)
    i = bisect.bisect_right(_STARTS, cp) - 1
    if i >= 0 and cp <= _SORTED[i][1]:
        return _SORTED[i][2]
    return script_of(ch)


class ScriptWeights(dict[str, float]):
    """Letters per script, as floats (CJK characters weigh more); a script not seen weighs 0."""

    def __missing__(self, key: str) -> float:
        return 0.0  # like Counter: reading a missing script does not add it

    def most_common(self) -> list[tuple[str, float]]:
        """Scripts by weight, heaviest first (ties in the order they were first seen)."""
        return sorted(self.items(), key=lambda sw: sw[1], reverse=True)


def script_weights(text: str, cjk_weight: float) -> ScriptWeights:
    """Letters per script; a CJK character weighs `cjk_weight` letters (it carries about that much text)."""
    weights = ScriptWeights()
    latin = len(_LATIN.findall(text))
    if latin:
        weights["Latin"] = float(latin)
    if sum(map(str.isalpha, text)) > latin:
        for ch in _NOT_OTHER_LETTER.sub("", text):
            script = _other_script(ch)
            if script is not None:
                weights[script] += cjk_weight if script in CJK else 1.0
    return weights


# ---- Han characters only one of Chinese and Japanese writes ------------------------------------
# Python's own codecs carry the national character sets: a character in GB2312 (mainland
# simplified Chinese) but not in Shift-JIS (cp932, Japanese) is a simplified-only form (这, 们, 说,
# 读); one in Shift-JIS but in neither GB2312 nor Big5 (traditional Chinese) is a Japanese-only form
# (読, 気, 毎, 込). Both sets are built once per process, lazily (about 0.1 s).

_markers: tuple[frozenset[str], frozenset[str]] | None = None
_markers_lock = threading.Lock()


def _encodes(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _build_markers() -> tuple[frozenset[str], frozenset[str]]:
    zh_only, ja_only = set(), set()
    for cp in range(0x4E00, 0xA000):
        ch = chr(cp)
        in_jis = _encodes(ch, "cp932")
        in_gb = _encodes(ch, "gb2312")
        if in_gb and not in_jis:
            zh_only.add(ch)
        elif in_jis and not in_gb and not _encodes(ch, "big5"):
            ja_only.add(ch)
    return frozenset(zh_only), frozenset(ja_only)


def han_markers(chars: Iterable[str]) -> tuple[int, int]:
    """How many of `chars` are simplified-Chinese-only and how many Japanese-only Han forms."""
    global _markers
    if _markers is None:
        with _markers_lock:
            if _markers is None:
                _markers = _build_markers()
    zh_only, ja_only = _markers
    zh = ja = 0
    for ch in chars:
        if ch in zh_only:
            zh += 1
        elif ch in ja_only:
            ja += 1
    return zh, ja
