"""A bound on a stream's length that does not trust the server to keep `max_new_tokens`.

A server that ignores the limit (a proxy that drops the field, a broken build, a hostile endpoint) would
stream forever: no stop string comes, the read timeout never fires because bytes keep arriving, and an
unattended run hangs while its memory grows. The clients feed every event to an `OverrunGuard` and end
the stream themselves, as the server should have, with finish reason ``length``.

Only what the client can count is trusted: events (each carries at least one token), output ids, and
characters (a Qwen token is at most 128 bytes). The server's own `completion_tokens` is not: a server
that misreports it must neither end a good stream early nor keep a bad one going.
"""

from __future__ import annotations

__all__ = ["MAX_CHARS_PER_TOKEN", "OverrunGuard"]

MAX_CHARS_PER_TOKEN = 128
"""The longest token of QwQ's vocabulary, in bytes (so at most this many characters)."""

_SLACK_TOKENS = 16  # a stop token, a chunk boundary: never a reason to cut an honest stream
_SLACK_CHARS = 4096


class OverrunGuard:
    """Counts a stream against `max_new_tokens`; `feed` says when it has gone past it for sure."""

    def __init__(self, max_new_tokens: int | None) -> None:
        self.limit = max_new_tokens
        self.events = 0
        self.chars = 0
        self.ids = 0

    def feed(self, chars: int, *, ids: int = 0, cumulative_ids: int | None = None) -> bool:
        """Count one event of `chars` characters (`ids` new ids, or `cumulative_ids` in all).

        True once the stream overran.
        """
        self.events += 1
        self.chars += chars
        self.ids = cumulative_ids if cumulative_ids is not None else self.ids + ids
        return self.overran

    @property
    def overran(self) -> bool:
        """Whether more was received than `max_new_tokens` allows (never with no limit)."""
        if self.limit is None:
            return False
        tokens = max(self.events, self.ids)
        return (
            tokens > self.limit + _SLACK_TOKENS
            or self.chars > self.limit * MAX_CHARS_PER_TOKEN + _SLACK_CHARS
        )

    def describe(self) -> str:
        """One line for a log or a warning: what was received against the limit."""
        return (
            f"the server kept generating past max_new_tokens={self.limit} "
            f"({self.events} events, {self.chars} characters); the client ended the stream"
        )
