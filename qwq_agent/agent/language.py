"""Which language a text is in, and whether an answer drifted away from the user's language.

QwQ sometimes switches language mid-answer (most often into Chinese). Detection here is deliberately
light: Unicode script counts for every script, plus stopword counts to tell Latin-script languages
apart. Code, inline code, URLs, numbers and math are removed first, since they are in no language.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from pydantic import BaseModel, Field

__all__ = [
    "LanguageConfig",
    "LanguageGuess",
    "Mismatch",
    "correction_prompt",
    "detect_language",
    "language_mismatch",
    "script_of",
    "strip_non_language",
]


class LanguageConfig(BaseModel):
    """Thresholds of `language_mismatch` and `detect_language`."""

    foreign_script_threshold: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Share of the answer's (weighted) letters in a script foreign to the user's "
        "language at or above which the answer is flagged.",
    )
    latin_prose_threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="For a user writing in a non-Latin script: share of Latin letters in the answer at or "
        "above which it is flagged, if that Latin text is prose (stopwords), not identifiers.",
    )
    latin_confidence: float = Field(
        0.5, ge=0, le=1, description="Confidence both Latin-language guesses need before they are compared."
    )
    min_stopwords: int = Field(
        4, ge=1, description="Stopword hits needed to name a Latin-script language at all."
    )
    min_letters: int = Field(
        20, ge=1, description="Texts with fewer letters (after stripping code, numbers...) are not judged."
    )
    cjk_weight: float = Field(
        2.5,
        gt=0,
        description="Weight of one Han/kana/Hangul character against one alphabetic letter: a CJK "
        "character carries roughly as much text as a few letters.",
    )


class LanguageGuess(BaseModel):
    """A language guess: ISO 639-1 code (`und` when unknown), confidence 0..1, and script shares."""

    lang: str
    confidence: float
    scripts: dict[str, float] = Field(default_factory=dict)


class Mismatch(BaseModel):
    """An answer not in the user's language.

    `foreign_share` is the share of the answer's weighted letters in a foreign script, or, when both
    are Latin-script languages, the confidence of the answer's guess.
    """

    user_lang: str
    answer_lang: str
    reason: str
    foreign_share: float


# ---- scripts -----------------------------------------------------------------------------------

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
_CJK = {"Han", "Hiragana", "Katakana", "Hangul"}


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


# Script -> language, for scripts used (in practice) by one language.
_SCRIPT_LANG = {
    "Hangul": "ko",
    "Cyrillic": "ru",
    "Arabic": "ar",
    "Devanagari": "hi",
    "Greek": "el",
    "Hebrew": "he",
    "Thai": "th",
}
_LANG_SCRIPTS = {
    "zh": {"Han"},
    "ja": {"Han", "Hiragana", "Katakana"},
    "ko": {"Hangul", "Han"},
    **{lang: {script} for script, lang in _SCRIPT_LANG.items() if lang != "ko"},
}

# ---- stripping ---------------------------------------------------------------------------------

_STRIP = [
    re.compile(r"```.*?(?:```|\Z)", re.S),  # fenced code, also when the answer is cut inside it
    re.compile(r"~~~.*?(?:~~~|\Z)", re.S),
    re.compile(r"`[^`\n]*`"),
    re.compile(r"\$\$.*?\$\$", re.S),
    re.compile(r"\\\[.*?\\\]", re.S),
    re.compile(r"\\\(.*?\\\)", re.S),
    re.compile(r"\$[^$\n]+\$"),
    re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.I),
    re.compile(r"\S+@\S+\.\w+"),  # e-mail addresses
    re.compile(r"\\[a-zA-Z]+"),  # stray LaTeX commands
    # Identifiers: snake_case, dotted.names, CamelCase, calls(); they are code, not prose.
    re.compile(
        r"[A-Za-z0-9]*_[A-Za-z0-9_]*|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|[a-z]+[A-Z][A-Za-z0-9]*"
        r"|[A-Z][a-z]+[A-Z][A-Za-z0-9]*|[A-Za-z_][A-Za-z0-9_]*\(",
        re.A,
    ),
    re.compile(r"[0-9]+"),
]
# Indented code blocks (4 spaces or a tab after a blank line) are common in model answers too.
_INDENTED = re.compile(r"(?:^|\n)(?:(?: {4}|\t)[^\n]*(?:\n|$))+")


def strip_non_language(text: str) -> str:
    """Remove what is in no natural language: code, inline code, URLs, identifiers, numbers, math."""
    for pattern in _STRIP[:2]:
        text = pattern.sub(" ", text)
    text = _INDENTED.sub("\n", text)
    for pattern in _STRIP[2:]:
        text = pattern.sub(" ", text)
    return text


# ---- stopwords ---------------------------------------------------------------------------------

# Frequent function words, chosen to be as distinctive as possible between these languages.
_STOPWORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        "en": "the and is are was were of to in that this it with for on be have has not you "
        "what which would should could there their they we will can but from by an or if then so",
        "fr": "le les et est un une des du dans que qui pour pas sur avec ce cette sont être "
        "nous vous ils elle au aux mais ou donc très plus il je ne peut faire comme",
        "de": "der die das und ist nicht ein eine zu den mit sich des auf für dem im sie es "
        "auch wir ich sind wird werden nach bei oder aber noch wie kann dass",
        "es": "el los las y es un una que del en por para con no se lo como más pero sus "
        "al está son muy también hay puede ser esta este",
        "it": "il lo gli e è un una che di del della per con non si come più ma sono anche "
        "questo questa nel alla dei delle molto può essere",
        "pt": "o os as e é um uma que do da dos das em no na por para com não se como mais "
        "mas são também muito pode ser isso este esta você",
        "nl": "de het een en is van dat die in op te met voor niet zijn er aan ook maar "
        "wordt worden dit deze bij als naar kan heeft wij",
    }.items()
}
_LATIN_WORD = re.compile(r"[a-zA-ZÀ-ÖØ-öø-ÿ']+")


def _latin_scores(text: str) -> tuple[Counter[str], int]:
    words = [w.lower().strip("'") for w in _LATIN_WORD.findall(text)]
    scores: Counter[str] = Counter()
    for w in words:
        for lang, stop in _STOPWORDS.items():
            if w in stop:
                scores[lang] += 1
    return scores, len(words)


# ---- detection ---------------------------------------------------------------------------------


def _script_shares(text: str, config: LanguageConfig) -> tuple[dict[str, float], float]:
    weights: Counter[str] = Counter()
    for ch in text:
        script = script_of(ch)
        if script is not None:
            weights[script] += config.cjk_weight if script in _CJK else 1.0
    total = sum(weights.values())
    return ({s: w / total for s, w in weights.most_common()} if total else {}), total


def detect_language(text: str, config: LanguageConfig | None = None) -> LanguageGuess:
    """Guess the language of `text` from its scripts and, for Latin script, its stopwords."""
    config = config or LanguageConfig()
    clean = strip_non_language(text)
    shares, total = _script_shares(clean, config)
    if total < config.min_letters:
        return LanguageGuess(lang="und", confidence=0.0, scripts=shares)
    top = next(iter(shares))
    share = shares[top]
    if top in ("Han", "Hiragana", "Katakana"):
        cjk = sum(shares.get(s, 0.0) for s in ("Han", "Hiragana", "Katakana"))
        kana = shares.get("Hiragana", 0.0) + shares.get("Katakana", 0.0)
        # Japanese is Han plus kana; Chinese has no kana at all.
        lang = "ja" if kana >= 0.1 * cjk else "zh"
        return LanguageGuess(lang=lang, confidence=round(cjk, 3), scripts=shares)
    if top in _SCRIPT_LANG:
        return LanguageGuess(lang=_SCRIPT_LANG[top], confidence=round(share, 3), scripts=shares)
    if top != "Latin":
        return LanguageGuess(lang="und", confidence=round(share * 0.5, 3), scripts=shares)
    scores, _ = _latin_scores(clean)
    hits = sum(scores.values())
    if not scores or scores.most_common(1)[0][1] < config.min_stopwords:
        return LanguageGuess(lang="und", confidence=0.0, scripts=shares)
    (lang, best), *rest = scores.most_common(2)
    second = rest[0][1] if rest else 0
    # Words shared by several languages ("de", "que", "in") count for each; the margin over the
    # runner-up is what tells the languages apart.
    margin = (best - second) / best
    confidence = share * min(1.0, 0.3 + margin) * min(1.0, hits / (2 * config.min_stopwords))
    return LanguageGuess(lang=lang, confidence=round(confidence, 3), scripts=shares)


def _is_latin_prose(text: str, config: LanguageConfig) -> bool:
    scores, n_words = _latin_scores(text)
    hits = max(scores.values(), default=0)
    # Prose is roughly a third function words; technical terms and identifiers have hardly any.
    return hits >= config.min_stopwords and hits >= 0.15 * n_words


def _script_lang(script: str, shares: dict[str, float]) -> str:
    if script in ("Hiragana", "Katakana"):
        return "ja"
    if script == "Han":
        return "ja" if shares.get("Hiragana", 0.0) + shares.get("Katakana", 0.0) > 0 else "zh"
    return _SCRIPT_LANG.get(script, "und")


def language_mismatch(
    user_text: str, answer_text: str, config: LanguageConfig | None = None
) -> Mismatch | None:
    """Flag an answer whose language differs from the user's; None when it matches or cannot be told.

    Latin technical terms inside a Chinese/Japanese/... answer are normal and not flagged unless the
    Latin part reads as prose and dominates.
    """
    config = config or LanguageConfig()
    user = detect_language(user_text, config)
    if user.lang == "und":
        return None
    clean = strip_non_language(answer_text)
    shares, total = _script_shares(clean, config)
    if total < config.min_letters:
        return None
    answer = detect_language(answer_text, config)
    if user.lang in _LANG_SCRIPTS:
        own = _LANG_SCRIPTS[user.lang]
        foreign = {s: v for s, v in shares.items() if s not in own and s != "Latin"}
        if user.lang == "zh" and answer.lang == "ja":
            foreign = {s: v for s, v in shares.items() if s in ("Hiragana", "Katakana")}
        foreign_share = sum(foreign.values())
        if foreign_share >= config.foreign_script_threshold:
            top = max(foreign, key=foreign.__getitem__)
            return Mismatch(
                user_lang=user.lang,
                answer_lang=_script_lang(top, shares),
                reason=f"{foreign_share:.0%} of the answer is in {top} script",
                foreign_share=round(foreign_share, 3),
            )
        latin = shares.get("Latin", 0.0)
        if latin >= config.latin_prose_threshold and _is_latin_prose(clean, config):
            return Mismatch(
                user_lang=user.lang,
                answer_lang=answer.lang,
                reason=f"{latin:.0%} of the answer is Latin-script prose",
                foreign_share=round(latin, 3),
            )
        return None
    # The user writes in a Latin-script language.
    foreign_share = 1.0 - shares.get("Latin", 0.0)
    if foreign_share >= config.foreign_script_threshold:
        top = next(s for s in shares if s != "Latin")
        return Mismatch(
            user_lang=user.lang,
            answer_lang=_script_lang(top, shares),
            reason=f"{foreign_share:.0%} of the answer is in {top} script",
            foreign_share=round(foreign_share, 3),
        )
    if (
        answer.lang not in ("und", user.lang)
        and answer.confidence >= config.latin_confidence
        and user.confidence >= config.latin_confidence
    ):
        return Mismatch(
            user_lang=user.lang,
            answer_lang=answer.lang,
            reason=f"the answer reads as {answer.lang}, the question as {user.lang}",
            foreign_share=round(answer.confidence, 3),
        )
    return None


# ---- correction --------------------------------------------------------------------------------

_NAMES = {
    "en": ("English", "Please answer in English."),
    "zh": ("Chinese", "请用中文回答。"),
    "ja": ("Japanese", "日本語で答えてください。"),
    "ko": ("Korean", "한국어로 답변해 주세요."),
    "ru": ("Russian", "Пожалуйста, отвечайте на русском языке."),
    "fr": ("French", "Veuillez répondre en français."),
    "de": ("German", "Bitte antworte auf Deutsch."),
    "es": ("Spanish", "Por favor, responde en español."),
    "it": ("Italian", "Per favore, rispondi in italiano."),
    "pt": ("Portuguese", "Por favor, responda em português."),
    "nl": ("Dutch", "Antwoord alstublieft in het Nederlands."),
    "ar": ("Arabic", "من فضلك أجب باللغة العربية."),
    "hi": ("Hindi", "कृपया हिंदी में उत्तर दें।"),
    "el": ("Greek", "Παρακαλώ απάντησε στα ελληνικά."),
    "he": ("Hebrew", "אנא ענה בעברית."),
    "th": ("Thai", "กรุณาตอบเป็นภาษาไทย"),
}


def correction_prompt(user_lang: str) -> str:
    """The one-time request to answer in the user's language, in English and in that language."""
    if user_lang not in _NAMES:
        return "Please answer in the same language as my question."
    name, native = _NAMES[user_lang]
    english = f"Please answer in {name}."
    return english if native == english else f"{english} {native}"
