"""The statistical language model: py3langid's naive Bayes over byte n-grams, loaded once, lazily.

py3langid (a maintained fork of langid.py) ships its model inside the wheel (4.6 MB; numpy is its only
dependency). Loading it takes about a second on a busy machine, so nothing loads at import time: the
first text that needs the model loads it, once per process, under a lock.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["LATIN_LANGS", "MODEL_LANGS", "classify", "rank"]

# Latin-script languages the model may answer. A short list keeps close relatives that nobody here
# writes (Galician, Catalan, Occitan) from winning short Spanish or French sentences; a Latin text
# in a language outside it comes out as its nearest listed relative (a mismatch all the same).
LATIN_LANGS: tuple[str, ...] = (
    "en", "fr", "de", "es", "it", "pt", "nl", "pl", "tr", "vi", "id", "sv", "da", "ro", "cs", "hu", "fi",
)  # fmt: skip
MODEL_LANGS: tuple[str, ...] = (*LATIN_LANGS, "zh", "ja")

_identifier: Any = None
_lock = threading.Lock()


def _model() -> Any:
    global _identifier
    if _identifier is None:
        with _lock:
            if _identifier is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
                identifier.set_languages(list(MODEL_LANGS))
                _identifier = identifier
    return _identifier


def classify(text: str) -> tuple[str, float]:
    """The most likely of `MODEL_LANGS` for `text`, and its probability."""
    lang, prob = _model().classify(text)
    return str(lang), float(prob)


def rank(text: str) -> dict[str, float]:
    """Probability of every language of `MODEL_LANGS` for `text`."""
    return {str(lang): float(p) for lang, p in _model().rank(text)}
