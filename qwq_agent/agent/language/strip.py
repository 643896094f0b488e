"""Remove what is in no natural language, or in nobody's: code, URLs, math, quotes, proper names."""

from __future__ import annotations

import re

__all__ = ["strip_non_language"]

_BLOCKS = [
    re.compile(r"```.*?(?:```|\Z)", re.S),  # fenced code, also when the answer is cut inside it
    re.compile(r"~~~.*?(?:~~~|\Z)", re.S),
    re.compile(r"\$\$.*?\$\$", re.S),
    re.compile(r"\\\[.*?\\\]", re.S),
]
# Indented code blocks (4 spaces or a tab after a blank line) are common in model answers too.
_INDENTED = re.compile(r"(?:^|\n)(?:(?: {4}|\t)[^\n]*(?:\n|$))+")
# A quotation is the quoted text's language, not the answer's; markdown block quotes too.
_QUOTES = [
    re.compile(r"^[ \t]*>[^\n]*", re.M),
    re.compile(r'"[^"\n]{1,300}"'),
    re.compile(r"“[^”\n]{1,300}”"),
    re.compile(r"«[^»\n]{1,300}»"),
    re.compile(r"„[^“”\n]{1,300}[“”]"),
    re.compile(r"「[^」\n]{1,300}」"),
    re.compile(r"『[^』\n]{1,300}』"),
]
_INLINE = [
    re.compile(r"`[^`\n]*`"),
    re.compile(r"\\\(.*?\\\)", re.S),
    re.compile(r"\$[^$\n]+\$"),
    re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.I),
    re.compile(r"\S+@\S+\.\w+"),  # e-mail addresses
    re.compile(r"\\[a-zA-Z]+"),  # stray LaTeX commands
    # Identifiers: snake_case, dotted.names, CamelCase, calls(); they are code, not prose. Tried at
    # word starts only (`\b`): three times faster, same matches.
    re.compile(
        r"\b(?:[A-Za-z0-9]*_[A-Za-z0-9_]*|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|[a-z]+[A-Z][A-Za-z0-9]*"
        r"|[A-Z][a-z]+[A-Z][A-Za-z0-9]*|[A-Za-z_][A-Za-z0-9_]*\()",
        re.A,
    ),
    re.compile(r"\b[A-Z]{2,}s?\b"),  # acronyms: CSV, API, JSONs
    re.compile(r"[0-9]+"),
]
# Proper names: two or more capitalised words in a row ("Visual Studio Code", "New York"). At the
# start of a sentence the first word is ordinary prose and stays (and German capitalises nouns).
_NAME_RUN = re.compile(r"\b[A-Z][\w'’-]*(?:[ \t]+[A-Z][\w'’-]*)+")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;。！？\n]\s*|^\s*[-*+]\s+|\n\s*[-*+]\s+|\n\s*\d+[.)]\s+)$")


def _drop_names(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        before = text[max(0, m.start() - 8) : m.start()]
        if _SENTENCE_START.search(before) or m.start() == 0:
            # "Die Meldung", "The Python": article and noun, not a name; three words or more are.
            words = m.group(0).split()
            return m.group(0) if len(words) < 3 else words[0] + " "
        return " "

    return _NAME_RUN.sub(repl, text)


def strip_non_language(text: str) -> str:
    """Remove code, inline code, URLs, identifiers, numbers, math, quotations and proper names.

    Line breaks between paragraphs survive, so the answer can still be judged part by part.
    """
    for pattern in _BLOCKS:
        text = pattern.sub("\n", text)
    text = _INDENTED.sub("\n", text)
    for pattern in _QUOTES:
        text = pattern.sub(" ", text)
    text = _drop_names(text)
    for pattern in _INLINE:
        text = pattern.sub(" ", text)
    return text
