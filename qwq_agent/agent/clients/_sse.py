"""Reading `text/event-stream` bodies as JSON events, with every failure mapped to our typed errors."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx

from qwq_agent.agent.clients.errors import ModelConnectionError, ModelProtocolError, ModelTimeoutError
from qwq_agent.surrogates import may_decode_to_surrogates, replace_surrogates_in

DONE = object()
"""Sentinel yielded for `data: [DONE]`."""


MAX_LINE_CHARS = 64 * 1024 * 1024
"""The longest SSE line read (a cumulative `/generate` event of a long output is a few MB): a server that
sends more without a newline is refused before it fills the host's memory."""

MAX_EVENT_CHARS = MAX_LINE_CHARS
"""The most one event's `data:` lines may hold together: an event spread over many short lines, with no
blank line to end it, is refused as a single long line is."""

_FIELDS = frozenset({"data", "event", "id", "retry"})


async def iter_sse_json(response: httpx.Response) -> AsyncIterator[dict[str, Any] | object]:
    """Yield each `data:` payload of an SSE response, decoded as a JSON object, or `DONE`.

    Comments, `event:`/`id:` fields and blank lines are skipped. Multi-line `data:` fields are joined,
    as the SSE spec says. Transport failures become `ModelConnectionError`/`ModelTimeoutError`; a payload
    that is not a JSON object, a line longer than `MAX_LINE_CHARS`, and a body that is not an event stream
    at all (a proxy's HTML error page sent with status 200) become `ModelProtocolError`, as does an
    event whose data lines together pass `MAX_EVENT_CHARS`.
    """
    data_lines: list[str] = []
    data_chars = 0  # in data_lines, with the newlines that will join them
    events = 0
    other = ""  # the start of any text that is not SSE, to show if no event ever comes
    try:
        async for line in _bounded_lines(response):
            if line == "":
                if data_lines:
                    payload = "\n".join(data_lines)
                    data_lines, data_chars = [], 0
                    events += 1
                    yield _decode(payload)
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                data_chars += len(value) + 1
                if data_chars > MAX_EVENT_CHARS:
                    raise ModelProtocolError(
                        f"the server sent an event of more than {MAX_EVENT_CHARS} characters "
                        f"(over {len(data_lines) + 1} data lines)"
                    )
                data_lines.append(value)
            elif field not in _FIELDS and len(other) < 200:
                other += line.strip()[: 200 - len(other)] + " "
        if data_lines:  # a last event without its blank line still counts
            events += 1
            yield _decode("\n".join(data_lines))
    except httpx.TimeoutException as exc:
        raise ModelTimeoutError(f"stream stalled: {type(exc).__name__}") from exc
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise ModelConnectionError(f"stream broke off: {type(exc).__name__}: {exc}") from exc
    if not events and other:
        kind = response.headers.get("content-type") or "no content type"
        raise ModelProtocolError(
            f"the server answered {response.status_code} with {kind}, not an event stream "
            f"(a proxy's error page?): {other.strip()[:200]!r}"
        )


# The SSE spec's line ends: CRLF, LF, or CR alone. Not str.splitlines' (nor httpx's `aiter_lines`'), which
# also break at U+0085, U+2028, U+2029 and a few controls: SGLang writes its events with orjson (pydantic
# for the OpenAI API), which leaves those raw inside JSON strings, so an output holding one would be cut.
_BREAK = re.compile("\r\n|\r|\n")


async def _bounded_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of the body (SSE line ends only), refusing one longer than `MAX_LINE_CHARS`."""
    parts: list[str] = []  # the line read so far, in pieces (no copying while a long line comes in)
    pending = 0
    async for text in response.aiter_text():
        if parts and parts[-1] == "\r":  # a "\r\n" split between two chunks is one break
            text = "\r" + text
            parts.pop()
        hold = text.endswith("\r")  # maybe the first half of "\r\n": decided with the next chunk
        lines = _BREAK.split(text[:-1] if hold else text)
        if len(lines) > 1:
            yield "".join(parts) + lines[0]
            for line in lines[1:-1]:
                yield line
            parts, pending = [], 0
        parts.append(lines[-1])
        pending += len(lines[-1])
        if hold:
            parts.append("\r")
        if pending > MAX_LINE_CHARS:
            raise ModelProtocolError(f"the server sent a line of more than {MAX_LINE_CHARS} characters")
    rest = "".join(parts)
    if rest:
        yield rest.removesuffix("\r")


def _decode(payload: str) -> dict[str, Any] | object:
    if payload.strip() == "[DONE]":
        return DONE
    try:
        obj = json.loads(payload)
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's 4300-digit limit
        raise ModelProtocolError(f"malformed stream event: {payload[:200]!r}") from exc
    except RecursionError:
        raise ModelProtocolError(f"stream event nested too deeply to read: {payload[:50]!r}...") from None
    if not isinstance(obj, dict):
        raise ModelProtocolError(f"stream event is not a JSON object: {payload[:200]!r}")
    if may_decode_to_surrogates(payload):
        # A server (or a proxy) escaping half a surrogate pair hands us text nothing can encode again:
        # the next request would fail on it, and the trace with it.
        try:
            obj = replace_surrogates_in(obj)
        except RecursionError:
            raise ModelProtocolError(f"stream event nested too deeply to read: {payload[:50]!r}...") from None
    return obj
