"""`mcp-serve`'s stdin, read on the event loop so that a signal never waits for the next line.

The SDK's `stdio_server` reads stdin with a blocking `readline` in a worker thread. Cancelling the
server (asyncio.run's Ctrl-C handler does) cannot interrupt that read: the cancellation waited for it,
so after Ctrl-C the server and its sandbox stayed up until the client (or the person at the terminal)
sent another line. Here the wire is read only once the event loop says it is readable, and a cancelled
wait is just a removed reader.

A descriptor that epoll refuses (a regular file, /dev/null) is always readable and its reads end on
their own, so those are read in a thread. As the SDK does, fd 0 points at the null device while the
server runs (what the server starts reads EOF, not the client's requests) and is restored afterwards.

A line is capped as the client caps a server's (`_stdio.MAX_LINE_BYTES`): a longer one is refused with
`LineTooLong`, which ends the session, rather than held in memory for as long as the client writes.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from qwq_agent.mcp._stdio import MAX_LINE_BYTES

__all__ = ["LineTooLong", "StdinLines", "claimed_stdin"]

CHUNK = 65536


class LineTooLong(Exception):
    """The client wrote more than `MAX_LINE_BYTES` on stdin without a newline."""

    def __init__(self) -> None:
        super().__init__(
            f"the MCP client sent a line (one message) of more than {MAX_LINE_BYTES:,} bytes on stdin, "
            "more than one may be"
        )


@contextmanager
def claimed_stdin() -> Iterator[int]:
    """A private duplicate of fd 0 (the client's wire), with fd 0 itself on /dev/null until the end."""
    wire = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            os.dup2(null, 0)
        finally:
            os.close(null)
        try:
            yield wire
        finally:
            os.dup2(wire, 0)
    finally:
        os.close(wire)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():  # the loop may see the wire readable again before the waiter has run
        ready.set_result(None)


class StdinLines:
    """The lines (UTF-8, bad bytes replaced, newline kept) read from `fd`, as an async iterator.

    Stands in for the text file `stdio_server(stdin=...)` iterates over; it ends at EOF. A line longer
    than `MAX_LINE_BYTES` (its newline aside) raises `LineTooLong`.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pollable = True

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        # Each byte is copied once into its line: only a new chunk is searched for the newline, and
        # the pieces are joined once the line is whole (re-splitting all that was pending at every read
        # was quadratic in the line's length, seconds of a blocked event loop for a line of a few MB).
        parts: list[bytes] = []  # of the line being read
        size = 0
        while chunk := await self._read():
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                size += end - start
                if size > MAX_LINE_BYTES:
                    raise LineTooLong
                parts.append(chunk[start : end + 1])
                line = b"".join(parts)
                parts, size, start = [], 0, end + 1
                # A newline byte is never part of another character, so lines are split before decoding.
                yield line.decode("utf-8", errors="replace")
            size += len(chunk) - start
            if size > MAX_LINE_BYTES:
                raise LineTooLong
            if start < len(chunk):
                parts.append(chunk[start:])
        if parts:
            yield b"".join(parts).decode("utf-8", errors="replace")

    async def _read(self) -> bytes:
        """The next bytes from the wire (b"" at EOF), waiting on the loop, never in a thread that a
        cancellation would have to wait for."""
        while self._pollable:
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()
            try:
                loop.add_reader(self._fd, _wake, ready)
            except PermissionError:  # epoll refuses regular files and /dev/null: always readable
                self._pollable = False
                break
            try:
                await ready
            finally:
                loop.remove_reader(self._fd)
            try:
                return os.read(self._fd, CHUNK)
            except BlockingIOError:  # a non-blocking wire whose data another reader took: wait again
                continue
        return await asyncio.to_thread(os.read, self._fd, CHUNK)
