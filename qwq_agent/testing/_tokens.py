"""Token splitting for the scripted server: the project's tokenizer when it is there, else a regex."""

from __future__ import annotations

import re
from typing import Protocol

# Words, single punctuation marks, whitespace runs and ChatML specials; concatenating the pieces
# gives back the text exactly, which is all streaming and prefix caching need.
_PIECE = re.compile(r"<\|[a-z_]+\|>|</?[a-z_]+>|\w+|\s+|[^\w\s]", re.UNICODE)


class _Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class ScriptTokenizer:
    """Splits text into (id, piece) pairs.

    With `use_project_tokenizer=True` and `qwq_agent.agent.tokenizer` importable, ids are QwQ-32B's;
    otherwise a regex splits the text and ids come from a vocabulary grown on the fly (stable for the
    life of one server, which is what a prefix cache compares).
    """

    def __init__(self, use_project_tokenizer: bool = True) -> None:
        self._enc: _Encoder | None = None
        if use_project_tokenizer:
            try:
                from qwq_agent.agent.tokenizer import get_tokenizer

                self._enc = get_tokenizer()
            except Exception:  # not landed yet, or its files are missing: the regex is good enough
                self._enc = None
        self._vocab: dict[str, int] = {}
        self._inverse: dict[int, str] = {}

    @property
    def is_real(self) -> bool:
        """True when ids are QwQ-32B's own."""
        return self._enc is not None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        if self._enc is not None:
            return list(self._enc.encode(text))
        return [self._id(p) for p in _PIECE.findall(text)]

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` (unknown ids decode to nothing)."""
        if self._enc is not None:
            return self._enc.decode(list(ids))
        return "".join(self._inverse.get(i, "") for i in ids)

    def pieces(self, text: str) -> list[tuple[int, str]]:
        """`text` split into tokens, each with its text; the texts concatenate back to `text`."""
        if self._enc is None:
            return [(self._id(p), p) for p in _PIECE.findall(text)]
        ids = self.encode(text)
        out: list[tuple[int, str]] = []
        done = ""
        for n in range(1, len(ids) + 1):
            # decode prefixes, not single ids, so multi-byte characters split across tokens stay whole
            now = self._enc.decode(ids[:n])
            if now.endswith("\ufffd") and n < len(ids):
                out.append((ids[n - 1], ""))
                continue
            out.append((ids[n - 1], now[len(done) :]))
            done = now
        return out

    def _id(self, piece: str) -> int:
        if piece not in self._vocab:
            self._vocab[piece] = len(self._vocab) + 1000
            self._inverse[self._vocab[piece]] = piece
        return self._vocab[piece]


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
