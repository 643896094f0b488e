"""A raw HTTP server on 127.0.0.1 for tests that need a model server to send exactly what they say.

The scripted server (`scripted_server`) speaks the APIs correctly, token by token; this one answers
every POST with status 200 and whatever bytes the test writes: a hostile or odd server (an HTML page,
endless lines, lying counts, a whole reasoning batched into one event).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["RawServer"]


class RawServer:
    """Answers every POST with status 200, `content_type` and what `write` sends, then closes (anything
    else with a 404: `requests` counts the POSTs)."""

    def __init__(self, content_type: str, write: Callable[[asyncio.StreamWriter], object]) -> None:
        self.content_type = content_type
        self.write = write
        self.requests = 0
        self.url = ""

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            length = next(
                (int(h.split(":")[1]) for h in head.split("\r\n") if h.lower().startswith("content-length:")),
                0,
            )
            await reader.readexactly(length)
            if head.startswith("POST /abort_request"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                return
            if not head.startswith("POST "):  # the agent asking /server_info for the context length
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            self.requests += 1
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\nConnection: close\r\n\r\n".encode()
            )
            result = self.write(writer)
            if asyncio.iscoroutine(result):
                await result
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
