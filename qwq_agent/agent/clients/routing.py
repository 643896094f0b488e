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

ROUTING_KEY_HEADER = "x-smg-routing-key"


def routing_headers(key: str | None) -> dict[str, str]:
    """The header that pins a request to the worker of `key` (none when `key` is None)."""
    if key is None:
        return {}
    if not key or any(c in key for c in "\r\n") or len(key) > 256:
        raise ValueError("a routing key is 1-256 characters without line breaks")
    return {ROUTING_KEY_HEADER: key}


class RoutingKeyMixin:
    """`with_routing_key` for the clients: a per-run copy that shares the connection pool."""

    routing_key: str | None
    _routing: dict[str, str]

    def with_routing_key(self, key: str | None) -> Self:
        """A client for one run that sends `key` as its routing key (session affinity behind SGLang's
        router); it shares this client's connection pool, which this client still owns and closes."""
        clone = copy.copy(self)
        clone._routing = routing_headers(key)
        clone.routing_key = key
        return clone
