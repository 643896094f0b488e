"""How far one assistant turn may go: a cap on its requests, and room left in the model's context.

A turn can take several requests (a retry, a nudge, a forced `</think>`, each tool call generated under a
grammar and the continuation after it). A model that keeps opening tool calls, or a server that ignores
the grammar and answers every constrained request with a whole new turn, would otherwise make requests
until the prompt no longer fits, growing the trace with each one. `TurnLimits` stops that with a clear
error: after `max_requests` requests, or when the last request already filled the model's context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from qwq_agent.protocols import Usage

ContextLength = Callable[[], Awaitable[int | None]]
# Tokens the next request needs beyond its prompt to be worth sending.
MIN_ROOM_TOKENS = 32


class TurnLimits:
    """Counts a turn's requests and the tokens of its last one; says why the next may not be sent."""

    def __init__(self, max_requests: int, context_length: ContextLength | None = None) -> None:
        self.max_requests = max_requests
        self._context_length = context_length
        self.requests = 0
        self.last_tokens = 0

    def record(self, usage: Usage) -> None:
        """Note a finished request's size (its prompt plus what it generated)."""
        self.last_tokens = usage.prompt_tokens + usage.completion_tokens

    async def before_request(self) -> str | None:
        """Count the next request; None when it may be sent, else the reason it may not."""
        if self.requests >= self.max_requests:
            return (
                f"the turn made {self.requests} requests to the model without finishing "
                f"(the cap is AgentConfig.max_requests_per_turn={self.max_requests})"
            )
        self.requests += 1
        if self.requests == 1 or not self.last_tokens or self._context_length is None:
            return None
        limit = await self._context_length()
        if limit is not None and self.last_tokens + MIN_ROOM_TOKENS > limit:
            return (
                f"the turn's prompt has grown to {self.last_tokens} tokens, which leaves no room in the "
                f"model's context length of {limit} tokens"
            )
        return None
