"""The stdio transport of `MCPConnection`: the SDK's `stdio_client`, with the server's process in hand.

The SDK's transport keeps the process to itself, so a server's death shows only as EOF on its stdout.
A child the server started without redirecting its stdio (a helper, a language server, `npx`'s own
children) holds that pipe too, and when the server crashes the EOF never comes: the call in flight
waits for a reply that cannot come and later calls are written into a dead server's stdin. Here the
process itself is watched: when it exits, its process group (the server runs in a session of its
own) is killed, which releases the pipe, and the session ends as it does on EOF. The group is killed
too when the session ends, so nothing the server started outlives it. The server's stderr goes to a
`StderrTail`, which keeps its last characters only.

The group's id is the server's pid, and once the server is reaped (and the last member of its group
gone) the kernel may give that number to any new process, whose own group (another MCP server, a
user's job) a signal to the old id would kill. So the process is started with `subprocess` and reaped
here, not by asyncio's child watcher (which reaps at once, when nothing has been signalled yet): its
exit is seen without reaping it (`waitid(WNOWAIT)`), its group is killed while the zombie still holds
the id, and only then is it reaped; a reaped server's group is never signalled again.

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
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import IO, Any

import anyio

from qwq_agent.process_group import exited, group_lives

__all__ = ["MAX_LINE_BYTES", "STOP_BOUND_S", "StderrTail", "stdio_transport"]

log = logging.getLogger(__name__)

# How often the process is checked for having exited (without reaping it; see the module's docstring).
_EXIT_POLL_S = 0.1
# Once a dead server's process group is killed, how long its stdout gets to reach EOF (what the server
# wrote before dying is read first); only a child that left the group can keep it open that long.
_DRAIN_S = 2.0
# Once a server's group is SIGKILLed, how long its processes get to die before the server is reaped and
# the session ends without them: a process dies only when it next runs, and one with much memory takes
# tens of milliseconds to free it.
_KILL_WAIT_S = 5.0
# How long the writer gets to send what the session already handed it before stdin closes.
_FLUSH_S = 0.5
# The MCP way to stop a stdio server is to close its stdin; it gets this long to exit, then the
# process group gets SIGTERM and, this long after, SIGKILL (the SDK's own steps and deadlines).
_EXIT_GRACE_S = 2.0
_TERM_GRACE_S = 2.0
# The longest `stop()` takes: flush, exit on EOF, SIGTERM, exit again, SIGKILL and the group's death.
STOP_BOUND_S = _FLUSH_S + _EXIT_GRACE_S + _TERM_GRACE_S + _EXIT_GRACE_S + _KILL_WAIT_S
# At most this much of a server's stderr is read in one go, so that a server writing without pause
# cannot keep the event loop (or a caller asking for the tail) reading forever.
_STDERR_READ_BYTES = 64 * 1024
_STDERR_READS_AT_ONCE = 16
# One read of the server's stdout (a pipe holds 64 KiB).
_STDOUT_READ_BYTES = 64 * 1024
# The longest line (one JSON-RPC message) read from a server's stdout, as the model clients' longest SSE
# line: a server that writes more without a newline is stopped before it fills the host's memory.
MAX_LINE_BYTES = 64 * 1024 * 1024


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
    command: list[str],
    env: dict[str, str] | None,
    stderr: StderrTail,
    on_protocol_error: Callable[[str], None] = lambda why: None,
) -> AsyncIterator[tuple[Any, Any]]:
    """Start `command` as an MCP stdio server in a session of its own; yield the SDK's stream pair.

    The environment is the SDK's default one plus `env`, as the SDK's `stdio_client` gives it; the
    server's stderr goes to `stderr`. The read stream ends when the server's stdout closes or when the
    server exits, whichever comes first. A line longer than `MAX_LINE_BYTES` on its stdout is a protocol
    error: the server is killed, which ends the read stream, and `on_protocol_error` is told why first.
    """
    from mcp.client.stdio import get_default_environment
    from mcp.shared.message import SessionMessage

    stderr.watch()
    # Not `anyio.open_process`: asyncio would reap the process the moment it exits (see the module's
    # docstring). Starting it blocks no longer than there too: asyncio calls the same `Popen`.
    process = subprocess.Popen(  # noqa: ASYNC220
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr.fileno(),
        env=get_default_environment() | (env or {}),
        start_new_session=True,
        bufsize=0,
    )
    # No awaits until the task group is entered: a cancellation in between would leak the process.
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    os.set_blocking(stdin.fileno(), False)
    os.set_blocking(stdout.fileno(), False)
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    reading, watching = anyio.CancelScope(), anyio.CancelScope()
    stdout_done, writer_done = anyio.Event(), anyio.Event()

    async def read_stdout() -> None:
        try:
            async with read_send:
                with reading:
                    try:
                        async with contextlib.aclosing(_lines(stdout)) as lines:
                            async for line in lines:
                                try:
                                    await read_send.send(_parse(line))
                                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                                    # The session is gone; keep the pipe drained so that a server
                                    # still writing can read its stdin's EOF and exit.
                                    while await _receive(stdout):
                                        pass
                                    return
                    except _LineTooLong as exc:
                        # Neither that message nor any after it can be read: the server is stopped,
                        # and the session ends (the calls in flight fail), saying why.
                        log.warning("MCP server process %d: %s", process.pid, exc)
                        on_protocol_error(str(exc))
                        _signal_group(process, signal.SIGKILL)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass  # our own shutdown closed stdout under the read
        finally:
            stdout_done.set()

    async def write_stdin() -> None:
        try:
            async with write_recv:
                async for message in write_recv:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await _send(stdin, (data + "\n").encode())
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            # The server no longer reads: end the session rather than leave a request waiting.
            await read_send.aclose()
        finally:
            writer_done.set()

    async def watch_process() -> None:
        with watching:
            while not exited(process):  # noqa: ASYNC110 (see _EXIT_POLL_S)
                await anyio.sleep(_EXIT_POLL_S)
            # The server is dead, whoever still holds its stdout: kill what it left in its group (they
            # hold the pipe, and nothing is left to stop them), read what it wrote before dying,
            # then end the session even if a child outside the group keeps the pipe open.
            await _end_group(process)
            with anyio.move_on_after(_DRAIN_S):
                await stdout_done.wait()
            reading.cancel()

    async def stop() -> None:
        watching.cancel()  # the steps below stop the server; the watcher must not race them
        write_send.close()
        with anyio.move_on_after(_FLUSH_S):
            await writer_done.wait()
        _close(stdin)
        # The SDK's steps: stdin's EOF, then SIGTERM to the group, then SIGKILL.
        if not await _exited(process, _EXIT_GRACE_S):
            _signal_group(process, signal.SIGTERM)
            if not await _exited(process, _TERM_GRACE_S):
                _signal_group(process, signal.SIGKILL)
                if not await _exited(process, _EXIT_GRACE_S):
                    log.warning(
                        "MCP server process %d is still alive after SIGKILL; abandoning it", process.pid
                    )
        # Whatever the server started is stopped with it, and gone when the session has ended: a server
        # that exits on its stdin's EOF (or crashed) leaves its children running.
        await _end_group(process)
        # A child outside the group may hold stdout open: stop reading it, and close it.
        reading.cancel()
        read_recv.close()
        _close(stdout)

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


class _LineTooLong(Exception):
    """A server wrote more than `MAX_LINE_BYTES` on its stdout without a newline."""

    def __init__(self) -> None:
        super().__init__(
            f"it wrote a line (one message) of more than {MAX_LINE_BYTES:,} bytes on stdout, more than "
            "one may be, and was stopped"
        )


async def _lines(pipe: IO[bytes]) -> AsyncGenerator[str, None]:
    """The lines of a server's stdout, until it closes; raises `_LineTooLong` for one longer than
    `MAX_LINE_BYTES`. Each byte is copied once into its line (the SDK's buffer was copied at every
    read: quadratic in the line's length, seconds for one of a few MB)."""
    parts: list[bytes] = []  # of the line being read
    size = 0
    while chunk := await _receive(pipe):
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            size += end - start
            if size > MAX_LINE_BYTES:
                raise _LineTooLong
            parts.append(chunk[start:end])
            line = b"".join(parts)
            parts, size, start = [], 0, end + 1
            # A byte that is not UTF-8 becomes U+FFFD: one bad byte must not end the session. (A
            # newline byte is never part of another character, so lines can be split before decoding.)
            yield line.decode("utf-8", errors="replace")
        size += len(chunk) - start
        if size > MAX_LINE_BYTES:
            raise _LineTooLong
        if start < len(chunk):
            parts.append(chunk[start:])


async def _receive(pipe: IO[bytes]) -> bytes:
    """The next bytes of a non-blocking pipe; b"" at its end. Always a checkpoint: a server writing
    without pause cannot keep the event loop reading."""
    while True:
        await anyio.wait_readable(_fileno(pipe))
        # The pipe's own `read`, never `os.read` of its number: once `_close` has run (it may have,
        # while this task waited to resume) that number may be another file's.
        if pipe.closed:
            raise anyio.ClosedResourceError
        data = pipe.read(_STDOUT_READ_BYTES)
        if data is not None:  # None: nothing to read after all
            return data


async def _send(pipe: IO[bytes], data: bytes) -> None:
    """All of `data` into a non-blocking pipe."""
    view = memoryview(data)
    while view:
        await anyio.wait_writable(_fileno(pipe))
        if pipe.closed:
            raise anyio.ClosedResourceError
        view = view[pipe.write(view) or 0 :]  # None: no room after all


def _fileno(pipe: IO[bytes]) -> int:
    if pipe.closed:
        raise anyio.ClosedResourceError
    return pipe.fileno()


def _close(pipe: IO[bytes]) -> None:
    """Close one of the process's pipes, waking (ClosedResourceError) a task waiting on it."""
    if not pipe.closed:
        anyio.notify_closing(pipe.fileno())
        with contextlib.suppress(OSError):
            pipe.close()


async def _exited(process: subprocess.Popen[bytes], timeout: float) -> bool:
    with anyio.move_on_after(timeout):
        while not exited(process):  # noqa: ASYNC110 (see _EXIT_POLL_S)
            await anyio.sleep(0.01)
    return exited(process)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the server's process group (its pid: it leads a session of its own), only while the server
    is unreaped: then the id is surely its group's (see the module's docstring).

    Not `os.getpgid(pid)`: that fails once the leader has exited, while its group lives on in the
    processes it left behind.
    """
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


async def _end_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of the server's group, wait (`_KILL_WAIT_S` at most) until it has died, then
    reap the server if it has exited. Idempotent."""
    _signal_group(process, signal.SIGKILL)
    # While the server is unreaped, its pid names its group alone (see the module's docstring).
    with anyio.move_on_after(_KILL_WAIT_S):
        delay = 0.001
        while process.returncode is None and await anyio.to_thread.run_sync(group_lives, process):
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)
    if exited(process):
        process.poll()
