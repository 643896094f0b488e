"""Text from a model or a sandbox, made safe to print on the operator's terminal.

Sandbox output and model output are untrusted. Printed raw, an escape sequence in them drives the
terminal: it clears the screen, rewrites a line the operator is about to approve, sets the window title or
writes the clipboard (OSC 52); a bidi override reorders what a command looks like. And a string handed
to Rich as markup is parsed: a model's answer that mentions ``[/workspace/out.txt]`` raises `MarkupError`
and loses the answer. `safe` shows every such character as a visible escape, and `plain` wraps the result
in a `Text`, which Rich never parses as markup.
"""

from __future__ import annotations

import re

from rich.text import Text

__all__ = ["plain", "safe"]

# C0 controls but tab and newline, DEL, C1 controls (0x9b is a one-character CSI), and the Unicode
# format characters that reorder or hide text: bidi embeddings/overrides/isolates and the line and
# paragraph separators some terminals treat as newlines; and lone surrogates (half a pair from a JSON
# escape), which no terminal encoding can write: printing one raises UnicodeEncodeError.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: str) -> str:
    """`text` with control and bidi characters and lone surrogates written as visible escapes
    (``\\x1b``, ``\\u202e``, ``\\ud83d``).

    Tab and newline stay (and CRLF becomes a newline): they only lay text out.
    """
    return _UNSAFE.sub(_escape, text.replace("\r\n", "\n"))


def plain(text: str, style: str = "") -> Text:
    """`safe(text)` as a Rich `Text`: printed literally, never parsed as markup."""
    return Text(safe(text), style=style)
