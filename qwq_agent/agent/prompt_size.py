"""A request's prompt in tokens, before it is sent: what the turn checks against the model's context.

SGLang refuses a request whose prompt plus `max_new_tokens` reaches the context length, so the turn
needs each prompt's size before it sends it (`turn_limits`). A client that builds the prompt itself
counts it exactly with QwQ's own tokenizer (`rendered_prompt_tokens`: the text it sends, or its ids
with kept turns spliced in). A server behind the OpenAI API renders the prompt itself, so its client
can only estimate (`estimate_prompt_tokens`: QwQ's template rendered here, plus a margin, so that the
estimate errs high). Without the tokenizer (the `tokenizer` extra) neither can count: None.

Tokenizing a long transcript takes tens of milliseconds of the event loop
(`benchmarks/prompt_prepare_bench.py`), so a native client builds each request's prompt once
(`prepare_prompt`, a `PromptPreparer`): the turn counts that `PreparedPrompt`, and the client sends it,
as counted.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from qwq_agent.agent.chat_format import PromptOptions, render, render_segments
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.protocols import ModelEvent, PromptCounter, SamplingParams

if TYPE_CHECKING:
    from qwq_agent.agent.tokenizer import QwenTokenizer

__all__ = [
    "PreparedPrompt",
    "PromptPreparer",
    "estimate_prompt_tokens",
    "prepare_prompt",
    "prompt_tokens",
    "rendered_prompt_tokens",
    "text_tokens",
]

# What an estimate adds to the count of the prompt rendered here: a server's own template may add a
# little (a default system prompt, another tool preamble); an estimate that came out low would have the
# server refuse the request, one that comes out high only asks for fewer new tokens.
ESTIMATE_MARGIN_SHARE = 0.02
ESTIMATE_MARGIN_TOKENS = 32


def _tokenizer() -> QwenTokenizer | None:
    """QwQ's tokenizer, or None when it is not installed (counting is then skipped, not an error)."""
    try:
        from qwq_agent.agent.tokenizer import VocabularyNotFound, get_tokenizer
    except ImportError:  # tiktoken is missing
        return None
    try:
        return get_tokenizer()
    except VocabularyNotFound:
        return None


def text_tokens(text: str) -> int | None:
    """The tokens of a prompt sent as this text (the server tokenizes it with QwQ's tokenizer); None
    without the tokenizer."""
    tok = _tokenizer()
    return None if tok is None else int(tok.count(text))


@dataclass(frozen=True)
class PreparedPrompt:
    """One request's prompt as a native client sends it, built once (tokenized too, where it goes as
    ids): what the turn counts, then what the client sends (`PromptPreparer`)."""

    text: str
    """The prompt as text: what is sent when `ids` is None, and what traces record and replays compare."""
    ids: list[int] | None = None
    """The prompt as ids, kept turns spliced in (`PromptOptions.exact_tokens`); None: it goes as text."""

    def followed_by(self, text: str) -> PreparedPrompt:
        """This prompt with `text` after it. Sent as ids, its ids are kept as they are and `text` is
        tokenized after them: a request that extends this one (a probe on the output it streams) then
        shares all of its ids with what the server has cached, not only those before a tokenizer
        boundary that `text` would move."""
        if self.ids is None:
            return PreparedPrompt(self.text + text)
        from qwq_agent.agent.tokenizer import get_tokenizer  # present: these ids were tokenized with it

        return PreparedPrompt(self.text + text, [*self.ids, *get_tokenizer().encode(text)])

    @cached_property
    def tokens(self) -> int | None:
        """Its tokens, as the server counts them: its ids, else its text tokenized (once, when asked:
        a prompt nothing counts is not tokenized); None without QwQ's tokenizer."""
        return len(self.ids) if self.ids is not None else text_tokens(self.text)


@runtime_checkable
class PromptPreparer(Protocol):
    """A model whose request and its count share one prepared prompt: the turn counts what
    `prepare_prompt` built, then has `stream_prepared` send it."""

    def prepare_prompt(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, prefix: str = ""
    ) -> PreparedPrompt: ...

    def stream_prepared(
        self, prepared: PreparedPrompt, params: SamplingParams
    ) -> AsyncIterator[ModelEvent]: ...


def prepare_prompt(
    messages: Sequence[Message],
    tools: Sequence[ToolSpec],
    *,
    prefix: str = "",
    options: PromptOptions | None = None,
) -> PreparedPrompt:
    """The prompt a native client sends for this conversation, rendered with `options`, then `prefix`:
    as ids with kept turns spliced in when reasoning is kept, `exact_tokens` is on and some turn kept
    its ids; else as text."""
    opts = options or PromptOptions()
    # The text traces record, even of ids: from the renderer's per-turn caches, a fraction of a
    # millisecond where tokenizing a long transcript takes tens of them.
    text = render(
        list(messages),
        list(tools),
        keep_reasoning=opts.keep_reasoning,
        profile=opts.profile,
        written_order=opts.written_order,
    )
    if not (opts.exact_tokens and opts.keep_reasoning):
        return PreparedPrompt(text + prefix)
    from qwq_agent.agent.exact_tokens import TokenSpan, encode_segments

    segments = render_segments(
        list(messages),
        list(tools),
        keep_reasoning=True,
        profile=opts.profile,
        written_order=opts.written_order,
    )
    if not any(isinstance(segment, TokenSpan) for segment in segments):
        return PreparedPrompt(text + prefix)
    # The prefix joins the last text run (the generation prompt), tokenized with it as the text is.
    return PreparedPrompt(text + prefix, encode_segments([*segments, prefix]))


def rendered_prompt_tokens(
    messages: Sequence[Message],
    tools: Sequence[ToolSpec],
    *,
    prefix: str = "",
    options: PromptOptions | None = None,
) -> int | None:
    """The tokens of the prompt a native client sends for this conversation (`prepare_prompt`): with
    kept reasoning and `exact_tokens`, the ids it sends with kept turns spliced in; else its text
    tokenized, as the server tokenizes it. None without the tokenizer."""
    if _tokenizer() is None:
        return None
    return prepare_prompt(messages, tools, prefix=prefix, options=options).tokens


def estimate_prompt_tokens(
    messages: Sequence[Message], tools: Sequence[ToolSpec], *, prefix: str = "", written_order: bool = True
) -> int | None:
    """The prompt a server rendering QwQ's chat template would count for these messages, erring high
    (`ESTIMATE_MARGIN_*`); None without the tokenizer."""
    counted = rendered_prompt_tokens(
        messages, tools, prefix=prefix, options=PromptOptions(written_order=written_order)
    )
    if counted is None:
        return None
    return counted + math.ceil(counted * ESTIMATE_MARGIN_SHARE) + ESTIMATE_MARGIN_TOKENS


def prompt_tokens(
    model: object, messages: Sequence[Message], tools: Sequence[ToolSpec], prefix: str
) -> int | None:
    """What `model` says the prompt of a request with this conversation and `prefix` will hold; None
    when it cannot tell (it counts nothing, or has no tokenizer)."""
    if isinstance(model, PromptCounter):
        return model.count_prompt_tokens(messages, tools, prefix=prefix)
    return None
