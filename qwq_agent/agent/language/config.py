"""Thresholds of the language checks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LanguageConfig"]


class LanguageConfig(BaseModel):
    """Thresholds of `language_mismatch`, `reasoning_drift` and `detect_language`."""

    # A misspelt threshold is an error, not the default; an infinite one (a weight `inf`) is no threshold.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    foreign_script_threshold: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Share of the answer's (weighted) letters in parts of another language at or above "
        "which the answer is flagged, however short each part.",
    )
    min_run_weight: float = Field(
        25.0,
        gt=0,
        description="Weighted letters of consecutive parts in one other language at or above which the "
        "answer is flagged, however small their share: QwQ switches midway. 25 is a short sentence "
        "(10 CJK characters, or 25 letters).",
    )
    latin_confidence: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Probability the model must give a Latin-script language before a part (or the "
        "question) is said to be in it; below it the part is undetermined and not judged.",
    )
    min_letters: int = Field(
        8,
        ge=1,
        description="Texts with fewer (weighted) letters, after stripping code, numbers..., are not "
        "judged: a question of two words or three CJK characters still is.",
    )
    question_confidence: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Probability the model must give a Latin-script language to name the question's "
        "language (lower than `latin_confidence`: `question_doubt` covers the runners-up).",
    )
    question_doubt: float = Field(
        0.05,
        ge=0,
        le=1,
        description="A Latin-script language the model gives the question at least this probability is "
        "accepted in the answer too: a short question ('Hola, ¿qué tal?') does not settle es vs fr.",
    )
    min_part_letters: int = Field(
        12,
        ge=1,
        description="Weighted letters a part needs to be judged; shorter sentences join a neighbour.",
    )
    min_latin_letters: int = Field(
        20,
        ge=1,
        description="Latin letters a Latin-script part needs before the model names its language: "
        "fewer are a name, a term or a heading, not a sentence.",
    )
    cjk_part_share: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Share of CJK characters (weighted) at or above which a part is CJK text with "
        "Latin terms in it rather than Latin text.",
    )
    min_kana_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Share of kana among a part's CJK characters that makes it Japanese (katakana "
        "counts only beside hiragana).",
    )
    cjk_weight: float = Field(
        2.5,
        gt=0,
        description="Weight of one Han/kana/Hangul character against one alphabetic letter: a CJK "
        "character carries roughly as much text as a few letters.",
    )
