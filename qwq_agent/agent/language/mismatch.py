"""Whether an answer (or the reasoning before it) left the user's language, judged part by part."""

from __future__ import annotations

from collections.abc import Collection

from pydantic import BaseModel, Field

from qwq_agent.agent.language import model
from qwq_agent.agent.language.config import LanguageConfig
from qwq_agent.agent.language.model import LATIN_LANGS
from qwq_agent.agent.language.names import language_name
from qwq_agent.agent.language.parts import Part, judge_part, latin_text, split_parts
from qwq_agent.agent.language.requested import requested_languages
from qwq_agent.agent.language.scripts import CJK, script_weights
from qwq_agent.agent.language.strip import strip_non_language

__all__ = ["LanguageGuess", "Mismatch", "detect_language", "language_mismatch", "reasoning_drift"]


class LanguageGuess(BaseModel):
    """A language guess: ISO 639-1 code (`und` when unknown), confidence 0..1, and script shares.

    `candidates` are, for Latin-script text, the model's languages of non-negligible probability.
    """

    lang: str
    confidence: float
    scripts: dict[str, float] = Field(default_factory=dict)
    candidates: dict[str, float] = Field(default_factory=dict)


class Mismatch(BaseModel):
    """An answer (or reasoning) not in the user's language.

    `foreign_share` is the share of the text's weighted letters in parts of another language;
    `excerpt` is the start of the first such part, for the warning a person reads.
    """

    user_lang: str
    answer_lang: str
    reason: str
    foreign_share: float
    excerpt: str = ""


_CJK_LANGS = frozenset({"zh", "ja", "ko"})


def detect_language(text: str, config: LanguageConfig | None = None) -> LanguageGuess:
    """Guess the language of `text` as a whole (scripts first, the statistical model for Latin/Han).

    Meant for the user's question: CJK words inside Latin prose ("What does 画蛇添足 mean?") do not
    make it CJK, but a CJK sentence next to pasted English (a log, an error message) does: people
    who write in CJK paste English; the reverse is rare.
    """
    config = config or LanguageConfig()
    stripped = strip_non_language(text)
    clean = " ".join(stripped.split())
    weights = script_weights(clean, config.cjk_weight)
    total = sum(weights.values())
    shares = {s: round(w / total, 3) for s, w in weights.most_common()} if total else {}
    if total < config.min_letters:
        return LanguageGuess(lang="und", confidence=0.0, scripts=shares)
    question = config.model_copy(
        update={
            "min_part_letters": config.min_letters,
            "min_latin_letters": config.min_letters,
            "latin_confidence": config.question_confidence,
            "cjk_part_share": max(config.cjk_part_share, 0.5),
        }
    )
    part = judge_part(clean, "und", question)
    if part.lang not in _CJK_LANGS and any(weights[s] for s in CJK):
        parts = (judge_part(p, "und", question) for p in split_parts(stripped, config.min_part_letters))
        cjk = [p for p in parts if p.lang in _CJK_LANGS]
        if cjk:
            part = max(cjk, key=lambda p: p.weight)
    candidates: dict[str, float] = {}
    if part.lang in LATIN_LANGS:
        ranked = model.rank(latin_text(clean)).items()
        candidates = {lang: round(p, 3) for lang, p in ranked if p >= 0.01 and lang in LATIN_LANGS}
    return LanguageGuess(lang=part.lang, confidence=part.confidence, scripts=shares, candidates=candidates)


def _excerpt(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _drift(
    user_lang: str, text: str, config: LanguageConfig, tolerated: Collection[str] = ()
) -> Mismatch | None:
    clean = strip_non_language(text)
    parts = [
        judge_part(p, user_lang, config)
        for p in split_parts(clean, config.min_part_letters, config.cjk_weight)
    ]
    judged = sum(p.weight for p in parts if p.lang != "und")
    if sum(p.weight for p in parts) < config.min_letters or judged == 0:
        return None
    ok = {user_lang, "und", *tolerated}
    # Runs of consecutive foreign parts in one language; undetermined parts neither end nor add.
    runs: list[list[Part]] = []
    for part in parts:
        if part.lang == "und":
            continue
        if part.lang in ok:
            runs.append([])
        elif runs and runs[-1] and runs[-1][-1].lang == part.lang:
            runs[-1].append(part)
        else:
            runs.append([part])
    runs = [r for r in runs if r]
    if not runs:
        return None
    foreign = sum(p.weight for r in runs for p in r)
    share = foreign / judged
    heaviest = max(runs, key=lambda r: sum(p.weight for p in r))
    if share < config.foreign_script_threshold and sum(p.weight for p in heaviest) < config.min_run_weight:
        return None
    lang = heaviest[0].lang
    n = sum(len(r) for r in runs)
    return Mismatch(
        user_lang=user_lang,
        answer_lang=lang,
        reason=f"{n} of {len(parts)} parts ({share:.0%} of the text) are in {language_name(lang)}, "
        f"not {language_name(user_lang)}: “{_excerpt(heaviest[0].text)}”",
        foreign_share=round(share, 3),
        excerpt=_excerpt(heaviest[0].text),
    )


def language_mismatch(
    user_text: str, answer_text: str, config: LanguageConfig | None = None
) -> Mismatch | None:
    """Flag an answer with parts in a language other than the user's; None when it matches or cannot be told.

    Each sentence (short ones joined to a neighbour) is judged on its own, so a switch midway is
    caught even when most of the answer is right. Code, URLs, math, quotations and proper names are
    left out first; Latin technical terms inside CJK sentences belong to those sentences. A language
    the question asks for ("translate into German", "a poem in French") is accepted too
    (`requested_languages`).
    """
    config = config or LanguageConfig()
    user = detect_language(user_text, config)
    if user.lang == "und":
        return None
    doubt = [lang for lang, p in user.candidates.items() if p >= config.question_doubt]
    return _drift(user.lang, answer_text, config, tolerated=[*doubt, *requested_languages(user_text)])


def reasoning_drift(user_text: str, reasoning: str, config: LanguageConfig | None = None) -> Mismatch | None:
    """Flag reasoning that switched into a third language: an early warning, not a reason to intervene.

    QwQ often thinks in English whatever the user's language, so English parts are not counted.
    """
    config = config or LanguageConfig()
    user = detect_language(user_text, config)
    if user.lang == "und":
        return None
    doubt = [lang for lang, p in user.candidates.items() if p >= config.question_doubt]
    return _drift(user.lang, reasoning, config, tolerated=("en", *doubt, *requested_languages(user_text)))
