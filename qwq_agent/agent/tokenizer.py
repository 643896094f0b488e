"""QwQ-32B's tokenizer, exact and offline: Qwen's BPE on tiktoken, with QwQ's added tokens.

The vocabulary is the official `qwen.tiktoken` that Alibaba ships inside the `dashscope` package (151,643
byte-level BPE tokens); the pre-tokenizer pattern is Qwen2's; text is NFC-normalised as QwQ-32B's
`tokenizer.json` does, with its Unicode 9.0 tables rather than Python's (`nfc`); the 26 added tokens (ids
151643-151668) are package data. Ids equal those of the Hugging Face tokenizer of QwQ-32B (the tests compare
them on thousands of texts and on every code point).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path

import tiktoken

from qwq_agent.agent import nfc

__all__ = [
    "ENDOFTEXT",
    "IM_END",
    "IM_START",
    "PAT_STR",
    "THINK",
    "THINK_END",
    "TOOL_CALL",
    "TOOL_CALL_END",
    "TOOL_RESPONSE",
    "TOOL_RESPONSE_END",
    "QwenTokenizer",
    "VocabularyNotFound",
    "get_tokenizer",
    "load_added_tokens",
    "load_qwen_ranks",
]

# Qwen2's split pattern (its tokenizer.json `Split` pre-tokenizer), in tiktoken's regex dialect.
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

ENDOFTEXT = 151643
IM_START = 151644
IM_END = 151645
TOOL_CALL = 151657
TOOL_CALL_END = 151658
TOOL_RESPONSE = 151665
TOOL_RESPONSE_END = 151666
THINK = 151667
THINK_END = 151668

_BASE_VOCAB_SIZE = 151643


class VocabularyNotFound(RuntimeError):
    """The Qwen BPE vocabulary (`dashscope/resources/qwen.tiktoken`) is not installed."""


def _qwen_tiktoken_path() -> Path:
    # find_spec locates the package without running dashscope/__init__.py, which takes most of a second
    # and pulls in its HTTP clients; only the data file is wanted.
    spec = importlib.util.find_spec("dashscope")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "resources" / "qwen.tiktoken"
        if path.is_file():
            return path
    raise VocabularyNotFound(
        "QwQ's tokenizer needs Qwen's BPE vocabulary, shipped as dashscope/resources/qwen.tiktoken in "
        "Alibaba's `dashscope` package: pip install dashscope (or pip install -e '.[dev]' in the checkout)"
    )


def load_qwen_ranks(path: Path | None = None) -> dict[bytes, int]:
    """Read a `.tiktoken` file (base64 token, space, rank per line) into tiktoken's mergeable ranks."""
    data = (path or _qwen_tiktoken_path()).read_bytes()
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def load_added_tokens() -> dict[str, int]:
    """QwQ's added tokens (`<|endoftext|>` ... `</think>`), text to id, from the package data."""
    text = resources.files("qwq_agent.agent").joinpath("qwen_added_tokens.json").read_text(encoding="utf-8")
    return {entry["content"]: entry["id"] for entry in json.loads(text)}


class QwenTokenizer:
    """Encode and decode text with QwQ-32B's ids.

    `encode` recognises the added tokens in text by default, as the Hugging Face tokenizer does (a prompt
    rendered by `chat_format.render` encodes to the ids a server computes); `allow_special=False` encodes
    their text as ordinary text, for untrusted strings that must not smuggle control tokens in.
    """

    def __init__(self, mergeable_ranks: Mapping[bytes, int], added_tokens: Mapping[str, int]) -> None:
        self._added = dict(added_tokens)
        self._enc = tiktoken.Encoding(
            name="qwq-32b",
            pat_str=PAT_STR,
            mergeable_ranks=dict(mergeable_ranks),
            special_tokens=self._added,
        )
        self._allowed = frozenset(self._added)
        # Longest first so that no added token is matched as the prefix of another.
        alternatives = sorted(self._added, key=len, reverse=True)
        self._added_re = re.compile("|".join(re.escape(token) for token in alternatives))

    @property
    def added_tokens(self) -> Mapping[str, int]:
        """The added tokens, text to id (a copy)."""
        return dict(self._added)

    @property
    def vocab_size(self) -> int:
        """Number of ids in use: 151,643 BPE tokens plus the added tokens (151,669 for QwQ-32B)."""
        return self._enc.n_vocab

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Token ids of `text` (NFC-normalised first, added tokens excepted, as QwQ's tokenizer does)."""
        if not allow_special:
            return self._ordinary(text)
        if nfc.is_normalized(text):
            return self._enc.encode(text, allowed_special=self._allowed, disallowed_special=())
        # Added tokens are cut out before normalising: NFC would fuse a `>` ending one with a following
        # U+0338 into `≯` and break the token.
        ids: list[int] = []
        start = 0
        for match in self._added_re.finditer(text):
            if match.start() > start:
                ids.extend(self._ordinary(text[start : match.start()]))
            ids.append(self._added[match.group()])
            start = match.end()
        if start < len(text):
            ids.extend(self._ordinary(text[start:]))
        return ids

    def _ordinary(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(nfc.normalize(text))

    def count(self, text: str, *, allow_special: bool = True) -> int:
        """Number of tokens `text` encodes to."""
        return len(self.encode(text, allow_special=allow_special))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, added tokens included; bytes that are not valid UTF-8 become U+FFFD."""
        return self._enc.decode(list(ids))

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (an added token's UTF-8 text)."""
        return self._enc.decode_single_token_bytes(token_id)

    def is_added(self, token_id: int) -> bool:
        """True for the added tokens (ids from 151643 on)."""
        return token_id >= _BASE_VOCAB_SIZE


@cache
def get_tokenizer() -> QwenTokenizer:
    """QwQ-32B's tokenizer, built once per process (about half a second: 151k vocabulary lines)."""
    return QwenTokenizer(load_qwen_ranks(), load_added_tokens())
