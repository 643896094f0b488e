"""Remove what is in no natural language, or in nobody's: code, URLs, math, quotes, proper names."""

from __future__ import annotations

import re

__all__ = ["strip_non_language"]


class _Span:
    """`open.*?close` across lines, matched only in the text up to the last `close`.

    An opener after the last closer cannot match, and the lazy scan from each one to the end of the
    text was quadratic: 64 KB of "\\[" took 7 s. Before the last closer every opener tried finds one.
    """

    def __init__(self, pattern: str, close: str) -> None:
        self._pattern = re.compile(pattern, re.S)
        self._close = close

    def sub(self, repl: str, text: str) -> str:
        end = text.rfind(self._close)
        if end < 0:
            return text
        end += len(self._close)
        return self._pattern.sub(repl, text[:end]) + text[end:]


class _Emails:
    """`\\S+@\\S+\\.\\w+` (e-mail addresses), read per whitespace-delimited token in linear time.

    The pattern itself backtracks through every `@` and `.` from every start: cubic, 160 s on 8 KB of
    "@". Its match is found here directly: it starts at the token's start, needs an `@` after the first
    character, and ends after the word characters that follow the token's last `.` + word character
    (at least two characters after that `@`); a token holds at most one.
    """

    _TOKEN = re.compile(r"(?<!\S)\S+")
    _DOT_WORD = re.compile(r"\.(?=\w)")
    _WORD = re.compile(r"\w+")

    def sub(self, repl: str, text: str) -> str:
        if "@" not in text:
            return text

        def one(m: re.Match[str]) -> str:
            token = m.group()
            at = token.find("@", 1)
            if at < 0:
                return token
            dot = -1
            for d in self._DOT_WORD.finditer(token, at + 2):
                dot = d.start()
            if dot < 0:
                return token
            end = self._WORD.match(token, dot + 1)
            assert end is not None  # the lookahead saw a word character
            return repl + token[end.end() :]

        return self._TOKEN.sub(one, text)


_BLOCKS: list[re.Pattern[str] | _Span] = [
    re.compile(r"```.*?(?:```|\Z)", re.S),  # fenced code, also when the answer is cut inside it
    re.compile(r"~~~.*?(?:~~~|\Z)", re.S),
    re.compile(r"\$\$.*?\$\$", re.S),
    _Span(r"\\\[.*?\\\]", "\\]"),
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
_INLINE: list[re.Pattern[str] | _Span | _Emails] = [
    re.compile(r"`[^`\n]*`"),
    _Span(r"\\\(.*?\\\)", "\\)"),
    re.compile(r"\$[^$\n]+\$"),
    re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.I),
    _Emails(),  # e-mail addresses
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
# The first word is at most 100 characters: a name can start at every capital after a `-` or `'`, and
# each start scanned its word to the end, quadratic on "A-A-A-..." (64 KB: 24 s). Every start inside
# a word reaches the same word end, so a longer first word is no name and can stop the scan.
_NAME_RUN = re.compile(r"\b[A-Z][\w'’-]{0,99}(?:[ \t]+[A-Z][\w'’-]*)+")
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
    for inline in _INLINE:
        text = inline.sub(" ", text)
    return text
