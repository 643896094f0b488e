"""Watching the event loop while a block runs: how long it went without running a task."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Watch:
    """The times a ticker task ran; `longest` is the longest gap between two of them."""

    def __init__(self) -> None:
        self.ticks: list[float] = []

    @property
    def longest(self) -> float:
        return max((b - a for a, b in itertools.pairwise(self.ticks)), default=0.0)


@asynccontextmanager
async def watch_loop(interval: float = 0.02, warm_up: float = 0.1) -> AsyncIterator[Watch]:
    """Run a task that ticks every `interval` seconds while the block runs (after `warm_up` seconds
    of ticking first, so the first gap is a real one)."""
    watch = Watch()

    async def ticker() -> None:
        while True:
            watch.ticks.append(time.monotonic())
            await asyncio.sleep(interval)

    ticking = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(warm_up)
        yield watch
    finally:
        ticking.cancel()
