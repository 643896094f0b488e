"""The stdio transport of `MCPConnection`: the SDK's `stdio_client`, with the server's process in hand.

The SDK's transport keeps the process to itself, so a server's death shows only as EOF on its stdout.
A child the server started without redirecting its stdio (a helper, a language server, `npx`'s own
children) holds that pipe too, and when the server crashes the EOF never comes: the call in flight
waits for a reply that cannot come and later calls are written into a dead server's stdin. Here the
process itself is watched: when it exits, its process group (the server runs in a session of its
own) is killed, which releases the pipe, and the session ends as it does on EOF. The group is killed
too when the session ends, so nothing the server started outlives it. The server's stderr goes to a
`StderrTail`, which keeps its last lines only.

POSIX only (process groups), like the rest of qwq-agent's process handling.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream

__all__ = ["StderrTail", "stdio_transport"]

log = logging.getLogger(__name__)

# How often the process is checked for having exited. Its return code (set by asyncio's child
# watcher) is polled: no event says that the process exited on every anyio version; on some,
# `wait()` also waits for the pipes to close, which a surviving child prevents.
_EXIT_POLL_S = 0.1
# Once a dead server's process group is killed, how long its stdout gets to reach EOF (what the server
# wrote before dying is read first); only a child that left the group can keep it open that long.
_DRAIN_S = 2.0
# How long the writer gets to send what the session already handed it before stdin closes.
_FLUSH_S = 0.5
# The MCP way to stop a stdio server is to close its stdin; it gets this long to exit, then the
# process group gets SIGTERM and, this long after, SIGKILL (the SDK's own steps and deadlines).
_EXIT_GRACE_S = 2.0
_TERM_GRACE_S = 2.0
# At most this much of a server's stderr is read in one go, so that a server writing without pause
# cannot keep the event loop (or a caller asking for the tail) reading forever.
_STDERR_READ_BYTES = 64 * 1024
_STDERR_READS_AT_ONCE = 16


class StderrTail:
    """Where a stdio server's stderr goes: a pipe of which only the last `keep` characters are kept.

    `fileno()` is the pipe's write end, the stderr of every start of the server; what arrives is read
    on the event loop as it comes (`watch()`), and again when the tail is asked for, so that what a
    dying server wrote last is in it. However much a server writes, nothing grows: a file kept it
    all, on disk, for the life of the connection.
    """

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._text = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._loop: asyncio.AbstractEventLoop | None = None

    def fileno(self) -> int:
        """The pipe's write end, for a server process's stderr."""
        return self._write_fd

    def watch(self) -> None:
        """Read the pipe as data arrives, on the running event loop."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._unwatch()
            loop.add_reader(self._read_fd, self._read)
            self._loop = loop

    def tail(self) -> str:
        """The last characters the server wrote (at most `keep`)."""
        self._read()
        return self._text

    def close(self) -> None:
        self._unwatch()
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _read(self) -> None:
        for _ in range(_STDERR_READS_AT_ONCE):
            try:
                data = os.read(self._read_fd, _STDERR_READ_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            if not data:  # we hold the write end ourselves, so this is not expected
                return
            text = self._decoder.decode(data)
            self._text = (self._text + text[-self._keep :])[-self._keep :]

    def _unwatch(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._read_fd)


@contextlib.asynccontextmanager
async def stdio_transport(
    command: list[str], env: dict[str, str] | None, stderr: StderrTail
) -> AsyncIterator[tuple[Any, Any]]:
    """Start `command` as an MCP stdio server in a session of its own; yield the SDK's stream pair.

    The environment is the SDK's default one plus `env`, as the SDK's `stdio_client` gives it; the
    server's stderr goes to `stderr`. The read stream ends when the server's stdout closes or when the
    server exits, whichever comes first.
    """
    from mcp.client.stdio import get_default_environment
    from mcp.shared.message import SessionMessage

    stderr.watch()
    process = await anyio.open_process(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr.fileno(),
        env=get_default_environment() | (env or {}),
        start_new_session=True,
    )
    # No awaits until the task group is entered: a cancellation in between would leak the process.
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    reading, watching = anyio.CancelScope(), anyio.CancelScope()
    stdout_done, writer_done = anyio.Event(), anyio.Event()

    async def read_stdout() -> None:
        try:
            async with read_send:
                with reading:
                    buffer = ""
                    # A byte that is not UTF-8 becomes U+FFFD: one bad byte must not end the session.
                    async for chunk in TextReceiveStream(stdout, errors="replace"):
                        lines = (buffer + chunk).split("\n")
                        buffer = lines.pop()
                        for line in lines:
                            try:
                                await read_send.send(_parse(line))
                            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                                # The session is gone; keep the pipe drained so that a server
                                # still writing can read its stdin's EOF and exit.
                                await _discard(stdout)
                                return
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass  # our own shutdown closed stdout under the read
        finally:
            stdout_done.set()

    async def write_stdin() -> None:
        try:
            async with write_recv:
                async for message in write_recv:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await stdin.send((data + "\n").encode())
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            # The server no longer reads: end the session rather than leave a request waiting.
            await read_send.aclose()
        finally:
            writer_done.set()

    async def watch_process() -> None:
        with watching:
            while process.returncode is None:  # noqa: ASYNC110 (see _EXIT_POLL_S)
                await anyio.sleep(_EXIT_POLL_S)
            # The server is dead, whoever still holds its stdout: kill what it left in its group (they
            # hold the pipe, and nothing is left to stop them), read what it wrote before dying,
            # then end the session even if a child outside the group keeps the pipe open.
            _kill_group(process.pid)
            with anyio.move_on_after(_DRAIN_S):
                await stdout_done.wait()
            reading.cancel()

    async def stop() -> None:
        watching.cancel()  # the steps below stop the server; the watcher must not race them
        write_send.close()
        with anyio.move_on_after(_FLUSH_S):
            await writer_done.wait()
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stdin.aclose()
        if not await _exited(process, _EXIT_GRACE_S):
            from mcp.os.posix.utilities import terminate_posix_process_tree

            await terminate_posix_process_tree(process, _TERM_GRACE_S)
            if not await _exited(process, _EXIT_GRACE_S):
                log.warning("MCP server process %d is still alive after SIGKILL; abandoning it", process.pid)
        # Whatever the server started is stopped with it: a server that exits on its stdin's EOF (or
        # crashed) leaves its children running, and the steps above signal the group only when the
        # server itself is slow to exit.
        _kill_group(process.pid)
        # A child outside the group may hold stdout open: stop reading it, and close the pipes'
        # transports (`aclose`; the process is gone, so its wait ends at once).
        reading.cancel()
        read_recv.close()
        if process.returncode is not None:
            with anyio.move_on_after(_EXIT_GRACE_S):
                await process.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_stdout)
        tg.start_soon(write_stdin)
        tg.start_soon(watch_process)
        try:
            yield read_recv, write_send
        finally:
            # Shielded: the server must be stopped even when our caller is cancelled; every wait in
            # it is bounded.
            with anyio.CancelScope(shield=True):
                await stop()
            tg.cancel_scope.cancel()


def _parse(line: str) -> Any:
    """One stdout line as a message, or the error the session reports for it."""
    from mcp.shared.message import SessionMessage
    from mcp.types import jsonrpc_message_adapter

    try:
        return SessionMessage(jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        # One line, with the traceback only under `--debug` (cli/log_setup.py); the line is the
        # server's free text, so it is cut.
        log.warning("Failed to parse JSONRPC message from server: %.200r", line, exc_info=True)
        return exc


async def _discard(stream: anyio.abc.ByteReceiveStream) -> None:
    with contextlib.suppress(
        anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError
    ):
        while True:
            await stream.receive()


async def _exited(process: anyio.abc.Process, timeout: float) -> bool:
    with anyio.move_on_after(timeout):
        while process.returncode is None:  # noqa: ASYNC110 (see _EXIT_POLL_S)
            await anyio.sleep(0.01)
    return process.returncode is not None


def _kill_group(pgid: int) -> None:
    """SIGKILL a server's process group (its pid: it leads a session of its own).

    Not `os.getpgid(pid)`: that fails once the leader is reaped, while its group lives on in the
    processes it left behind.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
