"""What a test scripts: the turns the model writes (with their faults) and the requests it was sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

IM_END_ID = 151645  # QwQ-32B's <|im_end|>, reported as the matched EOS like SGLang does


@dataclass
class Turn:
    """What the model writes for one request, and how the server misbehaves while writing it.

    Token counts in the fault fields count streamed tokens (events, for the OpenAI API).
    """

    text: str = ""
    http_status: int | None = None
    """Answer with this HTTP status (and an error body) instead of any output."""
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    drop_after: int | None = None
    """Drop the connection after this many tokens (0: right after the headers)."""
    malformed_after: int | None = None
    """Send a malformed event after this many tokens, then end the stream."""
    hold_after: int | None = None
    """After this many tokens, send nothing more until the request is aborted or `hold_timeout` passes."""
    hold_timeout: float = 30.0
    hold_until_requests: int | None = None
    """With `hold_after`: hold until the server has received this many requests in all (not until an
    abort), e.g. until side requests made while this stream is open (answer-stability probes) arrive."""
    hold_until: asyncio.Event | None = None
    """With `hold_after`: hold until this event is set (or the request is aborted, or `hold_timeout`
    passes): a test releases the answer when it chooses. The server must run on the test's event loop."""
    error_event_after: int | None = None
    """Send an in-stream error event (as SGLang does on a failure mid-request) after this many tokens."""
    stop_order: Literal["text", "listed", "ignore"] = "text"
    """Where several stop strings occur: "text" cuts at the earliest in the text; "listed" cuts at the
    first one in the request's list that occurs anywhere, as SGLang 0.5.17 was seen to do; "ignore"
    applies none (as SGLang does under a grammar)."""
    keepalive_after: int | None = None
    """After this many tokens, send only SSE keep-alive comments (`: keep-alive`), one every
    `keepalive_interval` seconds, until the request is aborted or `hold_timeout` passes (streams only)."""
    keepalive_interval: float = 0.05
    ids: list[int] | None = None
    """Generate these token ids instead of tokenizing `text` (then ignored): a model that samples a split the
    tokenizer would not choose, as real models do. Each id streams as its own decoded piece; stop strings
    do not apply, `max_new_tokens` does."""


@dataclass
class ScriptedRequest:
    """One request the server received, as a test wants to inspect it."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    prompt: str | None = None
    """The text prompt (native text requests, or the rendered OpenAI messages)."""
    input_ids: list[int] | None = None
    prompt_ids: list[int] = field(default_factory=list)
    rid: str | None = None
    stream: bool = False
    cached_tokens: int = 0
    turn_index: int = -1

    @property
    def sampling_params(self) -> dict[str, Any]:
        """The native request's `sampling_params` (empty for OpenAI requests)."""
        return dict(self.body.get("sampling_params") or {})


TurnSource = str | Turn | Callable[[ScriptedRequest], "str | Turn"]


class ScriptExhausted(RuntimeError):
    """More requests arrived than the script has turns for."""
