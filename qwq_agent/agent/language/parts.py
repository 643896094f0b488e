"""Cut a (stripped) text into parts of a sentence or more, and name the language of each part."""

from __future__ import annotations

import re

from pydantic import BaseModel

from qwq_agent.agent.language import model
from qwq_agent.agent.language.config import LanguageConfig
from qwq_agent.agent.language.scripts import CJK, SCRIPT_LANG, han_markers, script_weights

__all__ = ["Part", "judge_part", "latin_text", "split_parts"]

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])")


class Part(BaseModel):
    """One part of a text: its text, its language (`und` when it cannot be told), and its weight.

    `weight` is the part's letters, a CJK character counting `cjk_weight` letters.
    """

    text: str
    lang: str
    confidence: float
    weight: float


_CJK_CHAR = re.compile("[\u3040-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def latin_text(text: str) -> str:
    """`text` without its CJK characters: what the model should see of a Latin-script part."""
    return _CJK_CHAR.sub(" ", text)


def _letters(text: str, cjk_weight: float) -> float:
    # Hangul syllables and everything from kana to the end of the basic Han block weigh more.
    return sum(map(str.isalpha, text)) + (cjk_weight - 1.0) * len(_CJK_CHAR.findall(text))


def split_parts(text: str, min_letters: float, cjk_weight: float = 2.5) -> list[str]:
    """Lines, cut into sentences; a sentence lighter than `min_letters` joins its neighbour.

    Weights are letters, a CJK character counting `cjk_weight`.
    """
    parts: list[str] = []
    for line in text.splitlines():
        line_start = len(parts)
        # The sentences waiting to be heavy enough, joined once: growing one string by each was
        # quadratic on a line of letterless sentences ("。" repeated: 64 KB, 0.2 s).
        pending: list[str] = []
        weight = 0.0
        for sentence in _SENTENCE_END.split(line):
            if not sentence.strip():
                continue
            pending.append(sentence)
            weight += _letters(sentence, cjk_weight)
            if weight >= min_letters:
                parts.append(" ".join(pending).strip())
                pending, weight = [], 0.0
        buffer = " ".join(pending)
        if buffer.strip():
            # A short tail (a heading, "Voilà !") is judged with the sentence before it on its line.
            if len(parts) > line_start:
                parts[-1] = f"{parts[-1]} {buffer.strip()}"
            else:
                parts.append(buffer.strip())
    return parts


def _han_language(text: str, user_lang: str) -> tuple[str, float]:
    """Chinese or Japanese, for Han text without kana."""
    if user_lang == "zh":
        # Japanese written without a single kana is not something QwQ produces: for a Chinese
        # user, Han text is their own language (traditional characters included).
        return "zh", 1.0
    zh_only, ja_only = han_markers(text)
    if zh_only != ja_only:
        lang = "zh" if zh_only > ja_only else "ja"
        return lang, round(max(zh_only, ja_only) / (zh_only + ja_only), 3)
    probs = model.rank(text)
    zh, ja = probs.get("zh", 0.0), probs.get("ja", 0.0)
    if zh + ja == 0:
        return "und", 0.0
    return ("zh" if zh >= ja else "ja"), round(max(zh, ja) / (zh + ja), 3)


def judge_part(text: str, user_lang: str, config: LanguageConfig) -> Part:
    """The language of one part. `user_lang` settles what the text alone cannot (Han-only text)."""
    weights = script_weights(text, config.cjk_weight)
    total = sum(weights.values())
    if total < config.min_part_letters:
        return Part(text=text, lang="und", confidence=0.0, weight=total)
    cjk = sum(weights[s] for s in CJK)
    if cjk >= config.cjk_part_share * total:
        if weights["Hangul"] >= 0.5 * cjk:
            return Part(text=text, lang="ko", confidence=round(weights["Hangul"] / cjk, 3), weight=total)
        # Japanese prose always has hiragana (particles, endings); katakana alone is a loanword or a
        # name ("ハルジオン") that a Chinese sentence may carry too.
        kana = weights["Hiragana"] + (weights["Katakana"] if weights["Hiragana"] else 0.0)
        if kana >= config.min_kana_share * cjk:
            return Part(text=text, lang="ja", confidence=round(kana / cjk, 3), weight=total)
        lang, confidence = _han_language(text, user_lang)
        return Part(text=text, lang=lang, confidence=confidence, weight=total)
    top, top_weight = max(((s, w) for s, w in weights.items() if s not in CJK), key=lambda sw: sw[1])
    if top != "Latin":
        lang = SCRIPT_LANG.get(top, "und")
        return Part(text=text, lang=lang, confidence=round(top_weight / total, 3), weight=total)
    if top_weight < config.min_latin_letters:
        return Part(text=text, lang="und", confidence=0.0, weight=total)
    # The model sees the Latin text alone: CJK words in it would pull it towards zh/ja.
    lang, prob = model.classify(latin_text(text) if cjk else text)
    if prob < config.latin_confidence or lang not in model.LATIN_LANGS:
        return Part(text=text, lang="und", confidence=round(prob, 3), weight=total)
    return Part(text=text, lang=lang, confidence=round(prob * top_weight / total, 3), weight=total)
