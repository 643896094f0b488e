"""Languages a task asks the answer to be in: "translate ... into German", "a poem in French".

Such an answer is not a drift from the user's language, whatever the check finds. Deliberately simple:
the English name of one of the languages the check knows (`names`), or a common alias, after "in" or
"into", or after "to" later in the same sentence as a form of "translate". A translation request
written in another language the check knows ("Übersetze ... ins Englische", "Traduis ... en anglais",
"翻译成英文") accepts an answer in any of them: its target is whatever it asks for, not the language it
is written in, and naming every language in every other one is more than a simple check should try.
One that names a language in passing ("the climate in French Guiana", "la traduction d'adresses")
only makes the check more lenient, never stricter.
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
# "Translate" in each language the check knows (`names`) but English, whose requests name their target
# in English (`_REQUEST`; "address translation" in a technical question asks for nothing): word stems
# where the word has its own stem, the phrase where the bare word means something else too (Vietnamese
# "dịch vụ" is "service", Thai "แปลก" is "strange").
_TRANSLATE = re.compile(
    r"\b(?:übersetz|tradu|vertaal|vertal|tłumacz|przetłumacz|çevir|tercüme|terjemah|översätt"
    r"|oversæt|přelož|překlad|fordít|kääntä|käännä|käännö|перевед|перевест|перевод|μεταφρ|μετάφρ)"
    r"|dịch\s+(?:sang|ra)|bản\s+dịch|翻译|翻譯|译成|譯成|翻訳|訳して|번역|ترجم|अनुवाद|תרגמ|תרגם|תרגום"
    r"|แปลเป็น|คำแปล",
    re.IGNORECASE,
)
_EVERY_LANGUAGE = frozenset(language_codes())


def requested_languages(task: str) -> frozenset[str]:
    """The ISO 639-1 codes of the languages `task` asks the answer to be written in (often none).

    A translation request written in another language (see the module's docstring) asks for any of
    the languages the check knows.
    """
    named = frozenset(_BY_NAME[(m.group(1) or m.group(2)).lower()] for m in _REQUEST.finditer(task))
    if named or _TRANSLATE.search(task) is None:
        return named
    return _EVERY_LANGUAGE
