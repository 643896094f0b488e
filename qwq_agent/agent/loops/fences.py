"""Fenced code in the reasoning, told apart from prose as it streams.

A coding model writes its function out again and again while it refines it: the docstring, the
signature and most lines are copied verbatim each time, one line changes. Read as prose, that is a
long verbatim copy (the exact-cycle signal) and steps visited a third time (the steps signal), and a
healthy refinement gets nudged or even closed. So code between ``` (or ~~~) fences is not prose: each
block is one step, a visit of an earlier block only when it is the same code (whitespace aside), and
a cycle is looked for inside a block only (a block that repeats itself is degenerate whatever it holds).
"""

from __future__ import annotations

import hashlib
from typing import Literal

__all__ = ["CodeBlock", "FenceSplitter", "Piece"]

# "overflow": code of a block open past `_MAX_OPEN_BLOCK`, which the prose signals read too.
PieceKind = Literal["prose", "code", "overflow", "close"]
Piece = tuple[PieceKind, str]

_FENCE_CHARS = "`~"
# A line start of only spaces this long is not a fence (a hostile stream of spaces holds nothing back).
_MAX_INDENT = 256
# A line that may be a fence is held back until its end, to see what follows the backticks; past this
# many characters it is decided on what it holds (a hostile line of backticks holds nothing back, and
# the decision does not depend on where the stream was cut).
_MAX_HELD = 1024
# Past this many characters (~500 lines) an open block's text goes to the prose signals, while its fences
# still pair: a stray fence, or output cut short, must not hide the rest of the reasoning for long, and
# real code blocks in reasoning are far shorter.
_MAX_OPEN_BLOCK = 20_000
_MAX_BLOCK_CHARS = 1 << 20  # a block past this is hashed on its first megabyte (bounded memory)


class FenceSplitter:
    """Cuts a stream into prose and code pieces; ("close", "") marks the end of a code block.

    Fences follow CommonMark, at the start of a line (after spaces), whatever way the stream was cut: an
    opening fence is three or more backticks or tildes (a backtick fence's info string has no backtick:
    "```x``` is inline code" opens nothing); a closing fence is the opener's character, at least as many,
    with only whitespace after. So a code line that merely starts with backticks (the end of an
    f-string that builds a Markdown fence: three backticks, then the closing triple quote) stays code.
    The start of each line is held back until it is decided.
    """

    def __init__(self) -> None:
        self.in_code = False
        self._open = ""  # the open block's fence (its character, as many as it had)
        self._head: str | None = ""  # the start of the current line while undecided; None once decided
        self._line_kind: PieceKind = "prose"  # what the rest of a decided line is
        self._closing = False  # the current line is a closing fence: the block ends with the line
        self._code_chars = 0  # characters of the open block so far

    def feed(self, delta: str) -> list[Piece]:
        out: list[tuple[PieceKind, list[str]]] = []  # pieces of one kind gathered, joined once at the end
        i, n = 0, len(delta)
        while i < n:
            nl = delta.find("\n", i)
            end = n if nl < 0 else nl + 1
            if self._head is None:
                self._emit_line(out, delta[i:end])
            else:
                head = self._head + delta[i:end]
                fence = self._fence(head)
                if fence is None:
                    self._head = head
                    break  # undecided until more of the line arrives
                # A fence line belongs to its block, the opening one and the closing one alike.
                self._line_kind = "code" if self.in_code or fence else "prose"
                self._closing = bool(fence) and self.in_code
                if fence and not self.in_code:
                    self._code_chars = 0
                    self._open = fence
                if fence:
                    self.in_code = not self.in_code
                self._emit_line(out, head)
                self._head = None
            i = end
            if nl >= 0:
                if self._closing:
                    out.append(("close", []))
                    self._closing = False
                self._head = ""  # the next line starts undecided
        return [(kind, "".join(texts)) for kind, texts in out]

    def _fence(self, head: str) -> str | None:
        """The fence that the line starting with `head` is ("" when none); None while undecided.

        Decided on the line's first `_MAX_HELD` characters only, so the outcome does not depend on
        where the stream was cut.
        """
        done = head.endswith("\n") or len(head) >= _MAX_HELD
        # Cut first: every measure below (the indent included) must see the same text whether the
        # line came whole in one delta or was decided at `_MAX_HELD` characters.
        head = head[:_MAX_HELD]
        stripped = head.lstrip(" \t")
        if len(head) - len(stripped) >= _MAX_INDENT:
            return ""
        char = stripped[:1]
        run = len(stripped) - len(stripped.lstrip(char)) if char and char in _FENCE_CHARS else 0
        rest = stripped[run:].rstrip("\n")
        if not done and (len(stripped) < 3 or (run >= 3 and not rest)):
            return None  # too short to tell, or the run of fence characters may go on
        if run < 3:
            return ""
        if self.in_code:
            if char != self._open[0] or run < len(self._open) or rest.strip(" \t"):
                return ""  # another fence, a shorter one, or text after it: a line of the code
            return None if not done else char * run  # only whitespace so far: wait for the line's end
        if char == "`":
            if "`" in rest:
                return ""  # "```x``` ..." is inline code, not a fence
            if not done:
                return None  # a backtick may still come before the line ends
        return char * run

    def _emit_line(self, out: list[tuple[PieceKind, list[str]]], text: str) -> None:
        """Emit part of the current line: code, up to where an open block has run too long, then overflow."""
        if self._line_kind != "code":
            self._emit(out, self._line_kind, text)
            return
        room = max(0, _MAX_OPEN_BLOCK - self._code_chars)
        self._code_chars += len(text)
        if room:
            self._emit(out, "code", text[:room])
        if len(text) > room:
            # A block open this long is read by the prose signals too from here on (a stray fence, or
            # output cut short, must not hide the rest of the reasoning); it stays one block, whole.
            self._emit(out, "overflow", text[room:])

    @staticmethod
    def _emit(out: list[tuple[PieceKind, list[str]]], kind: PieceKind, text: str) -> None:
        if out and out[-1][0] == kind:
            out[-1][1].append(text)
        else:
            out.append((kind, [text]))


class CodeBlock:
    """The code of one block, kept as a fingerprint of its lines with the whitespace squeezed out."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=12)
        self._line: list[str] = []  # the current line's pieces: a long line is joined once, not per piece
        self._size = 0

    def add(self, text: str) -> None:
        if self._size >= _MAX_BLOCK_CHARS:
            return
        text = text[: _MAX_BLOCK_CHARS - self._size]
        self._size += len(text)
        start = 0
        nl = text.find("\n")
        while nl >= 0:
            self._line.append(text[start:nl])
            self._hash.update(_squeezed("".join(self._line)) + b"\n")
            self._line = []
            start = nl + 1
            nl = text.find("\n", start)
        if start < len(text):
            self._line.append(text[start:])

    def fingerprint(self) -> str:
        """The same for the same code, whitespace aside; different when any line changed."""
        final = self._hash.copy()
        final.update(_squeezed("".join(self._line)))
        return final.hexdigest()


def _squeezed(line: str) -> bytes:
    return "".join(line.split()).encode("utf-8", "surrogatepass")
