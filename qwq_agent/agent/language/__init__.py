"""Which language a text is in, and whether an answer drifted away from the user's language.

QwQ sometimes switches language, often midway through an answer and most often into Chinese. The
answer is judged part by part (sentences; short ones join a neighbour) after code, URLs, math,
quotations and proper names are stripped. Scripts settle most parts (kana is Japanese, Hangul
Korean); Han-only text is told Chinese or Japanese by the forms only one of them writes and by the
model; Latin-script text by the model (py3langid, loaded lazily, once per process).

Modules: `scripts` (Unicode scripts, Han forms), `strip` (what is in no language), `model` (the
statistical model), `parts` (cutting and judging parts), `mismatch` (the checks), `names` (names
and the correction prompt), `requested` (languages the task asks for), `config` (thresholds).
"""

from __future__ import annotations

from qwq_agent.agent.language.config import LanguageConfig
from qwq_agent.agent.language.mismatch import (
    LanguageGuess,
    Mismatch,
    detect_language,
    language_mismatch,
    reasoning_drift,
)
from qwq_agent.agent.language.names import correction_prompt, language_name
from qwq_agent.agent.language.parts import Part, judge_part, split_parts
from qwq_agent.agent.language.requested import requested_languages
from qwq_agent.agent.language.scripts import script_of
from qwq_agent.agent.language.strip import strip_non_language

__all__ = [
    "LanguageConfig",
    "LanguageGuess",
    "Mismatch",
    "Part",
    "correction_prompt",
    "detect_language",
    "judge_part",
    "language_mismatch",
    "language_name",
    "reasoning_drift",
    "requested_languages",
    "script_of",
    "split_parts",
    "strip_non_language",
]
