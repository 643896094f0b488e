"""Languages a task asks the answer to be in: "translate ... into German", "a poem in French".

Such an answer is not a drift from the user's language, whatever the check finds. Deliberately simple:
the English name of one of the languages the check knows (`names`), or a common alias, after "in" or
"into", or after "to" later in the same sentence as a form of "translate". A task written in another
language is answered in that language anyway (the user's language is always accepted); one that names a
language in passing ("the climate in French Guiana") only makes the check more lenient, never stricter.
"""

from __future__ import annotations

import re

from qwq_agent.agent.language.names import language_codes

__all__ = ["requested_languages"]

_ALIASES = {"mandarin": "zh", "cantonese": "zh"}
_BY_NAME = {**{name.lower(): code for code, name in language_codes().items()}, **_ALIASES}
_NAME = "|".join(sorted((re.escape(n) for n in _BY_NAME), key=len, reverse=True))
_REQUEST = re.compile(
    rf"\b(?:in|into)\s+(?:simplified\s+|traditional\s+)?({_NAME})\b"
    # "translate this paragraph to German": "to" only with translate, else "reply to French clients" counts
    rf"|\btranslat\w*\b[^.?!\n]{{0,300}}?\bto\s+({_NAME})\b",
    re.IGNORECASE,
)


def requested_languages(task: str) -> frozenset[str]:
    """The ISO 639-1 codes of the languages `task` asks the answer to be written in (often none)."""
    return frozenset(_BY_NAME[(m.group(1) or m.group(2)).lower()] for m in _REQUEST.finditer(task))
