"""A minimal HTTP/1.1 server on asyncio streams, enough for JSON requests and chunked SSE responses.

No framework: the scripted server must start in milliseconds, need no extra dependency, and be able to
misbehave on purpose (drop a connection mid-body), which frameworks make hard.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class HttpRequest:
    """One parsed request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None


@dataclass
class HttpResponder:
    """Writes one response on a connection; the handler picks plain or chunked."""

    writer: asyncio.StreamWriter
    started: bool = field(default=False)

    async def send_json(self, status: int, obj: Any) -> None:
        """A complete JSON response."""
        await self.send_bytes(status, json.dumps(obj).encode(), "application/json")

    async def send_bytes(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        """A complete response with a Content-Length."""
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        self.started = True
        await self.writer.drain()

    async def start_chunked(self, status: int = 200, content_type: str = "text/event-stream") -> None:
        """Begin a chunked body; a connection closed before `end_chunked` is a truncated body to clients."""
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
        )
        self.writer.write(head.encode())
        self.started = True
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        """One chunk of the body."""
        if data:
            self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await self.writer.drain()

    async def end_chunked(self) -> None:
        """The terminating zero-length chunk."""
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    def abort(self) -> None:
        """Drop the connection now, mid-response."""
        transport = self.writer.transport
        if transport is not None:
            transport.abort()


Handler = Callable[[HttpRequest, HttpResponder], Awaitable[None]]


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    """Read one request from the connection, hand it to `handler`, close the connection."""
    responder = HttpResponder(writer)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(length) if length else b""
        await handler(HttpRequest(method, target.split("?", 1)[0], headers, body), responder)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass  # the client went away or sent garbage: nothing to answer
    finally:
        try:
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
