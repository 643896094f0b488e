"""From what a user or model types to a safe FTS5 MATCH expression."""

from __future__ import annotations

import re

_PHRASE = re.compile(r'"([^"]*)"')
_WORD = re.compile(r"\w+", re.UNICODE)


def plain_to_fts(query: str, *, any_term: bool = False) -> str | None:
    """Escape a plain query into quoted FTS5 terms, keeping `"double-quoted phrases"` together.

    Operators and punctuation lose their meaning (`C++ AND/OR` searches for the words), so no plain
    query can be a syntax error. Terms are ANDed, or ORed with `any_term`. Returns None when the
    query holds no searchable word.
    """
    terms: list[str] = []
    for phrase in _PHRASE.findall(query):
        words = _WORD.findall(phrase)
        if words:
            terms.append('"' + " ".join(words) + '"')
    for word in _WORD.findall(_PHRASE.sub(" ", query)):
        terms.append(f'"{word}"')
    if not terms:
        return None
    return (" OR " if any_term else " ").join(dict.fromkeys(terms))


def query_words(query: str) -> list[str]:
    """The lower-cased words of a query, used to find the matching line inside a hit."""
    return [w.lower() for w in _WORD.findall(query) if w.upper() not in ("AND", "OR", "NOT", "NEAR")]


def query_phrases(query: str) -> list[list[str]]:
    """The lower-cased words of each double-quoted phrase of a query."""
    return [ws for ws in (_WORD.findall(p.lower()) for p in _PHRASE.findall(query)) if len(ws) > 1]
