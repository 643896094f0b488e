"""Probes of a model server that end: a body read under a size cap, a whole probe under one deadline.

httpx's `timeout` limits each read, not a request: a server that sends its headers (or its headers
themselves) a byte at a time keeps every read under it, and `get()` buffers a body of any size. The
probes made outside a run's deadline (the CLI's model check, `serve`'s `/health` polls, the router's
`/workers` and `/readiness`) and the client's `/server_info` reads go through here instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from qwq_agent.http_env import client_options

__all__ = [
    "MAX_CONCURRENT_WORKER_PROBES",
    "MAX_PROBED_WORKERS",
    "PROBE_MAX_BYTES",
    "AnswerTooLarge",
    "ProbeAnswer",
    "get_capped",
    "get_within",
    "probe_each",
    "run_bounded",
]

PROBE_MAX_BYTES = 1 << 20
"""The most body a probe reads: `/health` is empty and `/server_info` a few KiB; a MiB leaves room for
a large fleet's `/workers`."""

MAX_PROBED_WORKERS = 256
"""The most workers of a router's `/workers` that are probed (far more replicas than one router fronts
in practice; a listing is capped at `PROBE_MAX_BYTES`, room for ~40,000 entries)."""

MAX_CONCURRENT_WORKER_PROBES = 16
"""How many of a router's workers are probed at once (each probe is a connection of its own)."""

T = TypeVar("T")
A = TypeVar("A")


class AnswerTooLarge(Exception):
    """A probed endpoint's body went past what the probe reads (`PROBE_MAX_BYTES`)."""


class ProbeAnswer(BaseModel):
    """A probe's answer: its status and (unless only the status was asked for) its whole body."""

    status_code: int
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json_body(self) -> Any:
        """The body as JSON; raises `ValueError` when it is not."""
        return json.loads(self.body)


async def get_capped(
    http: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int = PROBE_MAX_BYTES,
    headers: dict[str, str] | None = None,
) -> ProbeAnswer:
    """GET `url` with at most `max_bytes` of its body read (0: the status only, the body left unread).

    Raises `AnswerTooLarge` past `max_bytes`, and `httpx.HTTPError` as `http.get` does. It has no deadline
    of its own: the caller's `asyncio.timeout` (or `run_bounded`) bounds it.
    """
    async with http.stream("GET", url, headers=headers) as response:
        if max_bytes <= 0:
            return ProbeAnswer(status_code=response.status_code)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise AnswerTooLarge(f"GET {response.url.path} answered more than {max_bytes} bytes")
        return ProbeAnswer(status_code=response.status_code, body=bytes(body))


async def probe_each(
    items: Sequence[A],
    probe: Callable[[A], Awaitable[T | None]],
    found: list[T | None],
    *,
    at_once: int = MAX_CONCURRENT_WORKER_PROBES,
) -> None:
    """`probe` of each of `items`, `at_once` at a time, each answer put in `found` at its item's index.

    A router's `/workers` may list thousands: probed all at once they were as many connections. It has
    no deadline of its own: the caller's bounds it, and `found` (filled with None beforehand) keeps what
    was found by then, a probe still waiting for its turn left as it was. `probe` must not raise.
    """
    slots = asyncio.Semaphore(at_once)

    async def one(i: int) -> None:
        async with slots:
            found[i] = await probe(items[i])

    await asyncio.gather(*(one(i) for i in range(len(items))))


def run_bounded(probe: Coroutine[Any, Any, T], seconds: float) -> T:
    """`probe` run to its end within `seconds`, for a synchronous caller; raises `TimeoutError` after.

    httpx's sync client cannot bound a whole request, so the probe runs on an event loop: this thread's
    own, or, when this thread already runs one (a sync helper called from async code), a fresh one in a
    worker thread, since event loops do not nest.
    """

    async def bounded() -> T:
        async with asyncio.timeout(seconds):
            return await probe

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwq-probe") as pool:
        return pool.submit(asyncio.run, bounded()).result()


def get_within(url: str, seconds: float, *, max_bytes: int = PROBE_MAX_BYTES) -> ProbeAnswer:
    """`get_capped` of `url` for a synchronous caller, the whole request within `seconds`.

    Raises `TimeoutError` after `seconds`, `AnswerTooLarge` past `max_bytes`, `httpx.HTTPError` (and
    `httpx.InvalidURL`) as `httpx.get` does.
    """

    async def get() -> ProbeAnswer:
        async with httpx.AsyncClient(timeout=seconds, **client_options(url)) as http:
            return await get_capped(http, url, max_bytes=max_bytes)

    return run_bounded(get(), seconds)
