"""Token-exact transcripts: keep the ids a server generated and send them back verbatim.

A server's radix cache compares token ids, not text. When it generates a turn, its context holds the
prompt's ids followed by the ids it sampled; re-tokenizing the turn's text in the next prompt gives the
*canonical* encoding, which differs wherever the model sampled a non-canonical split (random weights do so
all the time, trained models now and then) and the cache then misses from that token on. Keeping the ids
(`Message.token_ids`) and splicing them into the next prompt makes that prompt extend the server's context
token for token.

The seam: `chat_format.render_segments` renders a conversation as `Segment`s, text or a `TokenSpan` (a kept
turn's ids and the text they spell); `encode_segments` tokenizes each run of text on its own and splices the
spans in. `"".join(segment_text(s) for s in segments)` is exactly `render(...)`, so the text and id paths
agree on what the prompt says (tests/test_exact_tokens.py checks decode(ids) == text); the one difference is
a chat-template marker the model spelt in ordinary tokens, which a span sends as those tokens and `render`
writes defused (`markers`): to the model neither is a control token.

What the spliced ids hold, exactly (the stop token, stop strings, ``</think>``):

* SGLang's `output_ids` end with the stop token when generation stopped on one (``<|im_end|>`` or
  ``<|endoftext|>``). `exact_output_ids` drops it: the history turn's ``<|im_end|>`` comes from the template
  text that follows the span, and is the same id the model wrote. After ``<|endoftext|>`` the template writes
  ``<|im_end|>`` instead; that differs from the context only in the last generated token, whose KV entry the
  server never computed (it caches prompt + output minus the last id), so nothing cached is lost.
* A stop string is trimmed from the text, but its tokens are in `output_ids`. The history holds the trimmed
  text (as the text path does), so the kept ids are the longest prefix of `output_ids` that spells a prefix of
  the text, and the rest of the text is tokenized: the cache matches up to the cut, not beyond.
* ``</think>`` is one added token (151668) whether the model samples it or the tokenizer meets its text, so a
  turn the model closed itself needs nothing special. A turn the loop continued with injected text (a nudge,
  a forced ``</think>``, a tool call finished under a grammar) was never generated as one sequence: it keeps
  no ids and is tokenized as text (`Message.token_ids` is None).

Only the keep-reasoning policy splices: with reasoning dropped the history turn is not what the model wrote,
and the cache cannot match past ``<|im_start|>assistant\\n`` of that turn whatever ids are sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qwq_agent.agent.tokenizer import ENDOFTEXT, IM_END, QwenTokenizer, get_tokenizer

__all__ = [
    "STOP_TOKEN_IDS",
    "Segment",
    "TokenSpan",
    "encode_segments",
    "exact_output_ids",
    "ids_spell",
    "segment_text",
    "server_text",
]

STOP_TOKEN_IDS = frozenset({IM_END, ENDOFTEXT})
"""QwQ-32B's EOS ids (its generation_config): the ids a finished turn may end with."""


@dataclass(frozen=True)
class TokenSpan:
    """A piece of prompt given as ids (a kept assistant turn), with the text they spell."""

    ids: tuple[int, ...]
    text: str


Segment = str | TokenSpan
"""One piece of a rendered prompt: text to tokenize, or ids to send as they are."""


def segment_text(segment: Segment) -> str:
    """The text of a segment (a span's text)."""
    return segment.text if isinstance(segment, TokenSpan) else segment


def encode_segments(segments: Sequence[Segment], tokenizer: QwenTokenizer | None = None) -> list[int]:
    """Prompt ids: each maximal run of text tokenized on its own, spans spliced in verbatim.

    A run ends where a span begins, so the ids of everything before a span never depend on what follows:
    the prompt of turn N+1 begins with the ids of the prompt of turn N plus that turn's span.
    """
    tok = tokenizer or get_tokenizer()
    ids: list[int] = []
    run: list[str] = []
    for segment in segments:
        if isinstance(segment, TokenSpan):
            if run:
                ids.extend(tok.encode("".join(run)))
                run = []
            ids.extend(segment.ids)
        elif segment:
            run.append(segment)
    if run:
        ids.extend(tok.encode("".join(run)))
    return ids


# SGLang decodes output with skip_special_tokens: QwQ's added tokens marked special (<|endoftext|> through
# <|video_pad|>) never show in its text, while <tool_call>, <think> and the rest do. Ids past the
# tokenizer (the padded rows of a 152,064-row embedding, sampled by random weights) have no text at all.
_SKIPPED_SPECIAL = range(ENDOFTEXT, 151657)


def _visible_bytes(tok: QwenTokenizer, token: int) -> bytes:
    if token in _SKIPPED_SPECIAL or token < 0 or token >= tok.vocab_size:
        return b""
    return tok.token_bytes(token)


def server_text(ids: Sequence[int], tokenizer: QwenTokenizer | None = None) -> str:
    """The text a server shows for `ids`: special tokens skipped, broken UTF-8 as U+FFFD."""
    tok = tokenizer or get_tokenizer()
    return b"".join(_visible_bytes(tok, t) for t in ids).decode("utf-8", "replace")


def ids_spell(ids: Sequence[int], text: str, tokenizer: QwenTokenizer | None = None) -> bool:
    """Whether `ids` show as exactly `text` (a kept turn whose text was edited no longer does)."""
    return server_text(ids, tokenizer) == text


def exact_output_ids(
    raw: str, output_ids: Sequence[int], tokenizer: QwenTokenizer | None = None
) -> list[int] | None:
    """The ids to keep for a turn whose output text is `raw`, given the ids the server generated.

    Trailing stop tokens are dropped. When the rest shows as `raw` (`server_text`), it is returned as is;
    when `raw` goes on after it (text appended to the output), the server's ids are followed by the rest
    tokenized. Otherwise (a stop string cut the text, the server's detokenizer differed) the server's ids
    are kept up to the last clean token boundary inside the text both agree on, and the rest of `raw` is
    tokenized. The result always shows as `raw`. None when no id of the server's can be kept.
    """
    ids = list(output_ids)
    while ids and ids[-1] in STOP_TOKEN_IDS:
        ids.pop()
    if not ids:
        return [] if not raw else None
    tok = tokenizer or get_tokenizer()
    shown = server_text(ids, tok)
    if shown == raw:
        return ids
    if raw.startswith(shown):
        return ids + tok.encode(raw[len(shown) :])
    agree = 0
    for a, b in zip(shown, raw, strict=False):
        if a != b:
            break
        agree += 1
    kept, at = _clean_boundary(tok, ids, agree)
    if kept == 0:
        return None
    return ids[:kept] + (tok.encode(raw[at:]) if at < len(raw) else [])


def _clean_boundary(tok: QwenTokenizer, ids: Sequence[int], limit: int) -> tuple[int, int]:
    """(k, chars): the most ids whose text is whole UTF-8, `chars` long, and no longer than `limit`."""
    kept = at = 0
    pending = b""
    for index, token in enumerate(ids):
        pending += _visible_bytes(tok, token)
        try:
            piece = pending.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.end < len(pending) or len(pending) > 8:  # broken, not merely unfinished: stop here
                break
            continue
        if at + len(piece) > limit:
            break
        at += len(piece)
        kept, pending = index + 1, b""
    return kept, at
