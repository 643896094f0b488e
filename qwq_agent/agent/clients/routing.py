"""Session affinity behind SGLang's router: a routing key per run, sent as a header.

An agent's turns share a growing prefix; served by the replica that already holds it in its KV cache,
each turn recomputes only its new tokens. SGLang's router (`sglang-router`, policy `manual`, which
`qwq-agent serve --dp N --router-policy affinity` selects) pins every request carrying the same
`x-smg-routing-key` header to one worker. Without the header (or under another policy) the router
places requests itself, e.g. by its cache-aware prefix tree.
"""

from __future__ import annotations

import copy
from typing import Self

import httpx

from qwq_agent.agent.clients.errors import ModelClientClosed

ROUTING_KEY_HEADER = "x-smg-routing-key"


def routing_headers(key: str | None) -> dict[str, str]:
    """The header that pins a request to the worker of `key` (none when `key` is None)."""
    if key is None:
        return {}
    if not key or any(c in key for c in "\r\n") or len(key) > 256:
        raise ValueError("a routing key is 1-256 characters without line breaks")
    return {ROUTING_KEY_HEADER: key}


class RoutingKeyMixin:
    """`with_routing_key` for the clients: a per-run copy that shares the connection pool; and `aclose`,
    which only the pool's owner (the client that created it) acts on."""

    routing_key: str | None
    _routing: dict[str, str]
    _http: httpx.AsyncClient
    _borrows_pool = False
    """True on a `with_routing_key` copy: the pool is its parent's, shared with every other copy."""

    def with_routing_key(self, key: str | None) -> Self:
        """A client for one run that sends `key` as its routing key (session affinity behind SGLang's
        router); it shares this client's connection pool, which this client still owns and closes:
        closing the copy (`async with client.with_routing_key(run_id) as model:`) leaves the pool open
        for the other runs."""
        clone = copy.copy(self)
        clone._routing = routing_headers(key)
        clone.routing_key = key
        clone._borrows_pool = True
        return clone

    async def aclose(self) -> None:
        """Close the connection pool (a no-op on a `with_routing_key` copy, which does not own it)."""
        if not self._borrows_pool:
            await self._http.aclose()

    def _check_open(self) -> None:
        """Raise `ModelClientClosed` once the pool is closed (httpx would raise a bare RuntimeError)."""
        if self._http.is_closed:
            raise ModelClientClosed(f"{self!r} is closed: its connection pool was closed by aclose()")
