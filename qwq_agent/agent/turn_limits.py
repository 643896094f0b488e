"""How far one assistant turn may go: a cap on its requests, and room left in the model's context.

A turn can take several requests (a retry, a nudge, a forced `</think>`, each tool call generated under a
grammar and the continuation after it). A model that keeps opening tool calls, or a server that ignores
the grammar and answers every constrained request with a whole new turn, would otherwise make requests
until the prompt no longer fits, growing the trace with each one. `TurnLimits` stops that with a clear
error after `max_requests` requests.

Every request must also fit the model's context: SGLang refuses one whose prompt plus `max_new_tokens`
reaches the context length, and sent again it is refused again. So before each request (the first of a
turn too) its prompt is counted (`prompt_size`), its `max_new_tokens` is lowered to what fits, and when
less than `AgentConfig.min_context_room_tokens` fits the run ends `context_full` without sending.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from qwq_agent.protocols import Usage

ContextLength = Callable[[], Awaitable[int | None]]
PromptSize = Callable[[], int | None]  # the next request's prompt in tokens; None: it cannot be told
# Before `min_context_room_tokens` existed (None), only a turn's later requests were checked: against the
# last request's size, with this much room needed. Traces recorded then replay with that check.
LEGACY_MIN_ROOM_TOKENS = 32
# Where nothing counts the prompt (no tokenizer), a later request of the turn is taken to hold the last
# one's prompt and output plus this much text written since (a nudge, a forced `</think>`, a hint).
UNCOUNTED_GROWTH_TOKENS = 256


class Refusal(NamedTuple):
    """Why the next request may not be sent, and the status the turn ends the run with."""

    status: str  # `model_error` (the request cap) or `context_full`
    message: str
    # For `context_full`: the prompt's size and the context length it did not fit.
    prompt_tokens: int | None = None
    context_length: int | None = None


class TurnLimits:
    """Counts a turn's requests and the tokens of its last one; says how many new tokens the next one
    may ask for, or why it may not be sent."""

    def __init__(
        self,
        max_requests: int | None,
        context_length: ContextLength | None = None,
        *,
        min_room: int | None = None,
    ) -> None:
        self.max_requests = max_requests
        self._context_length = context_length
        self.min_room = min_room
        self.requests = 0
        self.last_tokens = 0
        self.limit: int | None = None  # the context length the last request was checked against

    def record(self, usage: Usage) -> None:
        """Note a finished request's size (its prompt plus what it generated)."""
        self.last_tokens = usage.prompt_tokens + usage.completion_tokens

    def count(self) -> Refusal | None:
        """Count the next request against the cap alone (a replayed request the recording holds)."""
        if self.max_requests is not None and self.requests >= self.max_requests:
            return Refusal(
                "model_error",
                f"the turn made {self.requests} requests to the model without finishing "
                f"(the cap is AgentConfig.max_requests_per_turn={self.max_requests})",
            )
        self.requests += 1
        return None

    async def before_request(self, wanted: int, prompt_size: PromptSize | None = None) -> int | Refusal:
        """Count the next request: the `max_new_tokens` it may ask for (`wanted`, or fewer so that its
        prompt, as `prompt_size` counts it, and its output fit the context), else why it may not be sent.
        """
        if (capped := self.count()) is not None:
            return capped
        if self._context_length is None:
            return wanted
        if self.min_room is None:
            return await self._as_recorded_before(wanted)
        limit = self.limit = await self._context_length()
        if limit is None:
            return wanted
        size = prompt_size() if prompt_size is not None else None
        if size is None:
            if not self.last_tokens:
                return wanted  # nothing counted nor reported yet: the server alone can tell
            size = self.last_tokens + UNCOUNTED_GROWTH_TOKENS
        room = limit - size - 1  # SGLang takes a request only while prompt + max_new_tokens < context
        need = min(self.min_room, wanted)
        if room < need:
            grown = f"the prompt holds {size} tokens, which"
            if room <= 0:
                return Refusal(
                    "context_full",
                    f"{grown} fills the model's context length of {limit} tokens: no room is left to write",
                    size,
                    limit,
                )
            why = (
                f"AgentConfig.min_context_room_tokens={self.min_room}"
                if need == self.min_room
                else f"the {need} the request asks for"
            )
            return Refusal(
                "context_full",
                f"{grown} leaves room for {room} new tokens in the model's context length of {limit} "
                f"tokens, fewer than {why}",
                size,
                limit,
            )
        return min(wanted, room)

    async def _as_recorded_before(self, wanted: int) -> int | Refusal:
        """The check before `min_context_room_tokens` existed: a later request of the turn only, against
        the last one's size, and nothing lowered."""
        if self.requests == 1 or not self.last_tokens or self._context_length is None:
            return wanted
        limit = await self._context_length()
        if limit is not None and self.last_tokens + LEGACY_MIN_ROOM_TOKENS > limit:
            return Refusal(
                "model_error",
                f"the turn's prompt has grown to {self.last_tokens} tokens, which leaves no room in the "
                f"model's context length of {limit} tokens",
            )
        return wanted
