"""`ScriptedModel`: the model side of the scripted server, behind both wire formats.

Which turn answers a request, the simulated prefix cache, stop strings and token limits, and the pacing
and faults of a stream (delays, drops, malformed or error events, holds, keep-alives).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from qwq_agent.testing._http import HttpResponder
from qwq_agent.testing._tokens import ScriptTokenizer, common_prefix_len
from qwq_agent.testing.scripted.script import (
    IM_END_ID,
    ScriptedRequest,
    ScriptExhausted,
    Turn,
    TurnSource,
)


class ScriptedModel:
    """The script's state: requests seen, turns served, aborts, the prefix cache and its counters."""

    context_length: int
    check_context: bool

    def __init__(
        self,
        turns: Sequence[TurnSource] | Callable[[ScriptedRequest], str | Turn] = (),
        *,
        when_exhausted: str = "error",
        use_project_tokenizer: bool = True,
    ) -> None:
        self._turns = turns
        self.when_exhausted = when_exhausted
        self.tokenizer = ScriptTokenizer(use_project_tokenizer)
        self.requests: list[ScriptedRequest] = []
        self.refused: list[ScriptedRequest] = []  # refused for the context (`check_context`): no turn used
        self.aborted_rids: list[str] = []
        self.abort_requests: list[str] = []
        self.errors: list[str] = []
        self._next_turn = 0
        self._cache: list[list[int]] = []
        self._aborts: dict[str, asyncio.Event] = {}
        self._changed: asyncio.Condition | None = None
        self._stopping: asyncio.Event | None = None
        self.prompt_tokens_total = 0
        self.cached_tokens_total = 0

    async def wait_for_requests(self, n: int) -> ScriptedRequest:
        """Wait until `n` requests to the model endpoints arrived; returns the n-th (server's loop only)."""
        assert self._changed is not None, "server not started"
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= n)
        return self.requests[n - 1]

    async def wait_for_abort(self, rid: str) -> None:
        """Wait until `/abort_request` named `rid` (server's loop only)."""
        assert self._changed is not None, "server not started"
        async with self._changed:
            await self._changed.wait_for(lambda: rid in self.aborted_rids)

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def _context_refusal(self, request: ScriptedRequest, max_new_tokens: object) -> str | None:
        """With `check_context`, SGLang's refusal of a request that does not fit the context length
        (`TokenizerManager._validate_one_request`, without --allow-auto-truncate), word for word: the
        prompt alone must be shorter than the context, and the prompt plus `max_new_tokens` too."""
        if not self.check_context:
            return None
        n, c = len(request.prompt_ids), self.context_length
        if n >= c:
            message = f"The input ({n} tokens) is longer than the model's context length ({c} tokens)."
        elif isinstance(max_new_tokens, int) and n + max_new_tokens >= c:
            message = (
                f"Requested token count exceeds the model's maximum context length of {c} tokens. You "
                f"requested a total of {n + max_new_tokens} tokens: {n} tokens from the input messages and "
                f"{max_new_tokens} tokens for the completion. Please reduce the number of tokens in the "
                "input messages or the completion to fit within the limit."
            )
        else:
            return None
        self.refused.append(request)
        return message

    async def _turn_for(self, request: ScriptedRequest, out: HttpResponder) -> Turn | None:
        """The scripted turn for `request`, or None once an error answer (500, scripted status) is sent."""
        try:
            turn = await self._record(request)
        except ScriptExhausted as exc:
            self.errors.append(str(exc))
            await out.send_json(500, {"error": {"message": str(exc)}})
            return None
        if turn.http_status is not None:
            await out.send_json(turn.http_status, {"error": {"message": "scripted server failure"}})
            return None
        return turn

    async def _record(self, request: ScriptedRequest) -> Turn:
        """Record the request, simulate the prefix cache and pick its turn."""
        cached = max((common_prefix_len(request.prompt_ids, seq) for seq in self._cache), default=0)
        request.cached_tokens = max(0, min(cached, len(request.prompt_ids) - 1))
        self.prompt_tokens_total += len(request.prompt_ids)
        self.cached_tokens_total += request.cached_tokens
        self.requests.append(request)
        await self._notify()
        if callable(self._turns):
            source: TurnSource = self._turns
        else:
            if self._next_turn >= len(self._turns):
                if self.when_exhausted != "repeat" or not self._turns:
                    raise ScriptExhausted(f"request {len(self.requests)} but only {len(self._turns)} turns")
                self._next_turn = 0
            source = self._turns[self._next_turn]
            request.turn_index = self._next_turn
            self._next_turn += 1
        if callable(source):
            source = source(request)
        return Turn(text=source) if isinstance(source, str) else source

    def _finish(
        self, request: ScriptedRequest, turn: Turn, params: dict[str, Any]
    ) -> tuple[list[tuple[int, str]], dict[str, Any]]:
        """Apply stop strings and the token limit; return the tokens to stream and SGLang's finish reason."""
        text = turn.text
        finish: dict[str, Any] = {"type": "stop", "matched": IM_END_ID}
        stops = [] if turn.stop_order == "ignore" or turn.ids is not None else params.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        hits = [(text.find(s), s) for s in stops if s and s in text]
        if hits:
            at, matched = hits[0] if turn.stop_order == "listed" else min(hits)
            text = text[:at]
            finish = {"type": "stop", "matched": matched}
        if turn.ids is not None:
            pieces = [(i, self.tokenizer.decode([i])) for i in turn.ids]
        else:
            pieces = self.tokenizer.pieces(text)
        limit = params.get("max_new_tokens", params.get("max_tokens", params.get("max_completion_tokens")))
        if limit is not None and len(pieces) > int(limit):
            pieces = pieces[: int(limit)]
            finish = {"type": "length", "length": int(limit)}
        self._cache.append(request.prompt_ids + [i for i, _ in pieces])
        return pieces, finish

    async def _pace(self, turn: Turn, index: int, request: ScriptedRequest, out: HttpResponder) -> str | None:
        """Before token `index`: apply delays and faults. Returns "stop" when the stream must end here."""
        if index == 0 and turn.first_token_delay:
            await asyncio.sleep(turn.first_token_delay)
        elif index > 0 and turn.token_delay:
            await asyncio.sleep(turn.token_delay)
        if turn.drop_after == index:
            out.abort()
            return "stop"
        if turn.malformed_after == index:
            await out.chunk(b'data: {"text": "half an event\n\n')
            await out.end_chunked()
            return "stop"
        if turn.error_event_after == index:
            err = {"error": {"message": "scripted failure mid-stream", "type": "internal_error", "code": 500}}
            await out.chunk(b"data: " + json.dumps(err).encode() + b"\n\n")
            await out.chunk(b"data: [DONE]\n\n")
            await out.end_chunked()
            return "stop"
        event = self._aborts.get(request.rid or "")
        if turn.keepalive_after == index and event is not None and request.stream:
            until = time.monotonic() + turn.hold_timeout
            while not event.is_set() and time.monotonic() < until:
                await out.chunk(b": keep-alive\n\n")
                try:
                    await asyncio.wait_for(event.wait(), turn.keepalive_interval)
                except TimeoutError:
                    pass
        if turn.hold_after == index and turn.hold_until is not None:
            waits = [asyncio.ensure_future(turn.hold_until.wait())]
            if event is not None:
                waits.append(asyncio.ensure_future(event.wait()))
            try:
                await asyncio.wait(waits, timeout=turn.hold_timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        elif turn.hold_after == index and turn.hold_until_requests is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait_for_requests(turn.hold_until_requests), turn.hold_timeout)
        elif turn.hold_after == index and event is not None:
            try:
                await asyncio.wait_for(event.wait(), turn.hold_timeout)
            except TimeoutError:
                pass
        if event is not None and event.is_set():
            return "aborted"
        return None
