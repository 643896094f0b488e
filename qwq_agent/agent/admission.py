"""Admission control against the server's KV-cache capacity.

Sessions that together need more KV cache than the server holds evict each other's prefixes and
every turn recomputes its whole prompt (a measured H100 run at 32 sessions of 4k tokens: TTFT p90
46 s). A session therefore reserves its expected footprint for its whole run; sessions beyond
capacity wait for a reservation instead of thrashing the cache.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager


class KVAdmission:
    """A fair (FIFO) weighted semaphore over KV-cache tokens."""

    def __init__(self, capacity_tokens: int, *, headroom: float = 0.9) -> None:
        """Admit sessions into `capacity_tokens * headroom` tokens of KV cache.

        Raises `ValueError` when `headroom` is not in (0, 1] (above 1 would admit more than the cache
        holds) or when the usable capacity rounds to 0 tokens: every reservation takes at least one
        token, so nothing could ever be admitted and every session would wait forever.
        """
        if capacity_tokens <= 0:
            raise ValueError("capacity_tokens must be positive")
        if not 0 < headroom <= 1:  # also refuses NaN
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        self.capacity = int(capacity_tokens * headroom)
        if self.capacity < 1:
            raise ValueError(
                f"{capacity_tokens} tokens at headroom {headroom} leave no usable KV capacity "
                "(every session would wait forever)"
            )
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @classmethod
    def for_workers(cls, capacities: Sequence[int], *, headroom: float = 0.9) -> KVAdmission:
        """One admission over data-parallel replicas: their capacities summed.

        The router (not the client) chooses the replica of a new routing key, and SGLang's router 0.3.2
        reports that choice nowhere, so a client cannot reserve on the right replica; the sum is right
        while the router spreads keys evenly (`serve --dp --router-policy affinity` assigns a new key to
        the worker holding fewest). `PerWorkerAdmission` is the exact form for a caller that pins keys
        to workers itself.
        """
        usable = [int(c) for c in capacities if c and c > 0]
        if not usable:
            raise ValueError("no worker reported a KV capacity")
        return cls(sum(usable), headroom=headroom)

    @property
    def waiting(self) -> int:
        """Sessions queued for a reservation."""
        return sum(1 for _, fut in self._waiters if not fut.done())

    def _wake(self) -> None:
        # FIFO: a large request at the head is not overtaken, so it cannot starve.
        while self._waiters:
            tokens, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.in_use + tokens > self.capacity:
                return
            self.in_use += tokens
            self._waiters.popleft()
            fut.set_result(None)

    async def acquire(self, tokens: int) -> int:
        """Reserve `tokens` (clamped to capacity); returns the amount reserved."""
        tokens = max(1, min(int(tokens), self.capacity))
        if not self.waiting and self.in_use + tokens <= self.capacity:
            self.in_use += tokens
            return tokens
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((tokens, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(tokens)  # granted just as it was cancelled: give the tokens back
            else:
                # Leave the queue now, and let those behind in: a dead entry at the head would hold
                # back every later session (even one that fits) until an unrelated release.
                self._waiters = deque(w for w in self._waiters if w[1] is not fut)
                self._wake()
            raise
        return tokens

    def release(self, tokens: int) -> None:
        self.in_use -= tokens
        self._wake()

    @asynccontextmanager
    async def reserve(self, tokens: int) -> AsyncIterator[int]:
        got = await self.acquire(tokens)
        try:
            yield got
        finally:
            self.release(got)


class PerWorkerAdmission:
    """Admission per replica: each worker's own `KVAdmission`, a routing key reserving on its worker.

    For callers that know which worker a key lands on (a key pinned to a worker, or a deployment that
    routes by key itself); `reserve(tokens, key=...)` picks the worker with the most free tokens for a
    new key and keeps the key there while it holds reservations.
    """

    def __init__(self, capacities: Mapping[str, int], *, headroom: float = 0.9) -> None:
        if not capacities:
            raise ValueError("no workers")
        self.workers = {url: KVAdmission(cap, headroom=headroom) for url, cap in capacities.items()}
        self._keys: dict[str, str] = {}
        self._holds: dict[str, int] = {}

    @property
    def capacity(self) -> int:
        """The usable tokens over all workers."""
        return sum(a.capacity for a in self.workers.values())

    def worker_of(self, key: str) -> str:
        """The worker `key` is pinned to, choosing the one with most free tokens for a new key."""
        if key not in self._keys:
            self._keys[key] = max(
                self.workers, key=lambda url: self.workers[url].capacity - self.workers[url].in_use
            )
        return self._keys[key]

    @asynccontextmanager
    async def reserve(self, tokens: int, *, key: str) -> AsyncIterator[int]:
        """Reserve `tokens` on the worker of `key` (FIFO per worker)."""
        url = self.worker_of(key)
        self._holds[key] = self._holds.get(key, 0) + 1
        try:
            async with self.workers[url].reserve(tokens) as got:
                yield got
        finally:
            self._holds[key] -= 1
            if not self._holds[key]:  # an idle key may move to a freer worker next time
                del self._holds[key]
                del self._keys[key]
