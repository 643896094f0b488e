"""Reading `text/event-stream` bodies as JSON events, with every failure mapped to our typed errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from qwq_agent.agent.clients.errors import ModelConnectionError, ModelProtocolError, ModelTimeoutError

DONE = object()
"""Sentinel yielded for `data: [DONE]`."""


async def iter_sse_json(response: httpx.Response) -> AsyncIterator[dict[str, Any] | object]:
    """Yield each `data:` payload of an SSE response, decoded as a JSON object, or `DONE`.

    Comments, `event:`/`id:` fields and blank lines are skipped. Multi-line `data:` fields are joined,
    as the SSE spec says. Transport failures become `ModelConnectionError`/`ModelTimeoutError`; a payload
    that is not a JSON object becomes `ModelProtocolError`.
    """
    data_lines: list[str] = []
    try:
        async for line in response.aiter_lines():
            if line == "":
                if data_lines:
                    payload = "\n".join(data_lines)
                    data_lines = []
                    yield _decode(payload)
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                data_lines.append(value)
        if data_lines:  # a last event without its blank line still counts
            yield _decode("\n".join(data_lines))
    except httpx.TimeoutException as exc:
        raise ModelTimeoutError(f"stream stalled: {type(exc).__name__}") from exc
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise ModelConnectionError(f"stream broke off: {type(exc).__name__}: {exc}") from exc


def _decode(payload: str) -> dict[str, Any] | object:
    if payload.strip() == "[DONE]":
        return DONE
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise ModelProtocolError(f"malformed stream event: {payload[:200]!r}") from exc
    if not isinstance(obj, dict):
        raise ModelProtocolError(f"stream event is not a JSON object: {payload[:200]!r}")
    return obj
