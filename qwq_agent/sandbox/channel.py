"""The host end of the supervisor channel: request ids over the container's attached stdio.

Outgoing frames are written raw to stdin; incoming bytes arrive in Docker's stream framing (8-byte
header: stream, 0, 0, 0, big-endian size) and carry, on stdout, the supervisor's own frames (4-byte
big-endian length + JSON). Replies are matched to callers by id, so calls are multiplexed: any number may
be in flight at once on one channel.

Why attached stdio rather than a unix socket in a per-sandbox directory: a socket needs a host directory
bind-mounted into the container, i.e. a writable piece of the host's filesystem that user code can reach
(fill it, plant links, race the host on it). The attach stream needs no mount at all: the container can
only write bytes to its own stdout, which dockerd relays. Measured here, a round trip through dockerd
costs well under a millisecond (see benchmarks/sandbox_bench.py), inside the 2 ms budget, so the safer
channel is also fast enough. With `StdinOnce` the supervisor sees EOF when the host's connection drops,
so a dead host takes its sandboxes with it.

Nothing from the container is trusted: replies are size-capped and parsed defensively, and a corrupt
stream closes the channel (every pending call gets `SandboxDead`) rather than being guessed at. Every
request carries a random nonce that its reply must echo: a reply whose id is pending but whose nonce is
not that request's is a protocol violation (the channel closes, the sandbox is replaced on the next call),
so one call's result is never delivered as another's. A call the host gives up on (cancelled, timed out)
sends a `cancel` frame, and the supervisor kills or interrupts that call's work.

Bulk bytes (snapshot archives) travel as a *blob*, both ways: raw bytes right after a frame that says
`"blob": n`, so an archive is neither base64-encoded nor parsed as JSON; a blob is capped like a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import re
import secrets
import struct
import sys
import termios
from collections import deque
from collections.abc import Callable
from typing import Any

from qwq_agent.sandbox.errors import InvalidRequest, SandboxDead, SandboxTimeout, error_from_reply
from qwq_agent.sandbox.surrogates import clean

_DOCKER_HEADER = struct.Struct(">BxxxI")
_FRAME = struct.Struct(">I")
# A JSON escape of a UTF-16 surrogate: decoded alone, it is a string that cannot be encoded again.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Called with each frame the supervisor streams for a call (e.g. `{"event": "output", ...}`) before its reply.
OnEvent = Callable[[dict[str, Any]], None]
_PROGRESS_CHECK_S = 1.0  # how often a waiting send looks whether the peer is still taking bytes
# Loop steps in a row in which the reader takes nothing before a late reply is given up (`_take_arrived`).
_STALL_STEPS = 4


class Channel:
    """A multiplexed request/reply channel to one supervisor."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_request_bytes: int,
        max_reply_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._max = max_request_bytes
        self._max_reply = max_reply_bytes
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[dict[str, Any]], str, OnEvent | None]] = {}
        self._queued = 0  # bytes ever handed to the writer: less what it still buffers, what the peer took
        self._buf = bytearray()
        self._taken = 0  # bytes the reader has taken off the stream: `_take_arrived` watches it grow
        self._need = 4  # bytes `_buf` must hold before the next frame (and its blob) can be taken
        self._stderr: deque[bytes] = deque(maxlen=64)
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.closed_reason: str | None = None
        self.exit_reason: str | None = None
        self.closed_event = asyncio.Event()
        self._task = asyncio.create_task(self._read_loop())

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    def stderr_tail(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")[-2000:]

    async def call(
        self,
        op: str,
        args: dict[str, Any],
        reply_timeout: float | None,
        on_event: OnEvent | None = None,
        blob: bytes | memoryview | None = None,
    ) -> dict[str, Any]:
        """Send one request and wait for its reply; raises a typed `SandboxError` on failure.

        `on_event` receives the frames the supervisor streams for this request while it runs (checked
        against the request's nonce like the reply); an exception it raises is not the call's concern.
        `blob` (bulk bytes, e.g. an archive) is sent raw right after the request's frame; frames the
        supervisor sends with a blob reach `on_event` or the caller with the bytes under `_blob`.
        """
        if self.closed:
            raise SandboxDead(self.closed_reason or "closed")
        rid, nonce = next(self._ids), secrets.token_hex(16)
        frame: dict[str, Any] = {"id": rid, "nonce": nonce, "op": op, "args": args}
        if blob is not None:
            frame["blob"] = len(blob)
        body = json.dumps(frame, separators=(",", ":")).encode()
        if len(body) > self._max or (blob is not None and len(blob) > self._max):
            raise InvalidRequest(
                f"request of {len(body)} bytes exceeds the limit of {self._max} bytes; nothing was sent"
            )
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, nonce, on_event)
        try:
            self._write(_FRAME.pack(len(body)) + body)
            if blob is not None:  # no await in between: no other frame can slip between the two
                self._write(blob)
            loop = asyncio.get_running_loop()
            try:
                await self._drain(op, reply_timeout)
            except (ConnectionError, OSError) as exc:
                self._close(f"the channel broke while sending: {exc}")
            # The reply's deadline starts once the request is out: a ping queued behind a big upload
            # waited for the upload's bytes, not for the sandbox.
            deadline = None if reply_timeout is None else loop.time() + reply_timeout
            if deadline is not None:
                # asyncio.wait, not asyncio.timeout: a timeout cancels `fut` in the very loop step in which
                # a host that did not run for a while (Ctrl-Z) wakes, before the reader can hand over a
                # reply that arrived meanwhile. Nor wait_for: Python 3.11's swallows a cancellation that
                # lands as the awaited thing finishes. A cancel of this task still ends the wait at once.
                await asyncio.wait({fut}, timeout=max(0.0, deadline - loop.time()))
                if not fut.done():
                    await self._take_arrived(fut)
                if not fut.done():
                    raise SandboxTimeout(f"no reply to {op!r} within {reply_timeout:g}s")
            reply = await fut
        finally:
            self._pending.pop(rid, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # failed by a close while still sending: the caller got its own error
            if not fut.done() or fut.cancelled():
                # Cancelled or timed out here: stop the work in the sandbox too (no reply is awaited).
                self._send_cancel(rid)
        if reply.get("ok"):
            return reply["result"]
        raise error_from_reply(reply.get("error") or {})

    async def _drain(self, op: str, stall_timeout: float | None) -> None:
        """Wait until the write buffer drains, failing only if the peer took no bytes for `stall_timeout`.

        A paused container or a stalled link stops reading, and a request bigger than the buffers would
        otherwise wait in drain() for ever. The buffer is shared: a short call's own deadline must not
        abort a big request that the sandbox is still reading steadily, so progress (bytes the transport
        handed on) restarts the clock, whoever's bytes they are.
        """
        if stall_timeout is None:
            await self._writer.drain()
            return
        loop = asyncio.get_running_loop()
        transport = self._writer.transport
        accepted = self._queued - transport.get_write_buffer_size()
        stalled_since = loop.time()
        while True:
            left = stall_timeout - (loop.time() - stalled_since)
            try:
                async with asyncio.timeout(max(0.0, min(left, _PROGRESS_CHECK_S))):  # not wait_for: above
                    await self._writer.drain()
                return
            except TimeoutError:  # before OSError, of which it is a subclass
                now = self._queued - transport.get_write_buffer_size()
                if now > accepted:
                    accepted, stalled_since = now, loop.time()
                elif loop.time() - stalled_since >= stall_timeout:
                    # Half a frame may be out: nothing more can go on this stream, so it is closed for good.
                    self._close(f"sending {op!r} stalled for {stall_timeout:g}s", abort=True)
                    raise SandboxTimeout(
                        f"the sandbox took no {op!r} request within {stall_timeout:g}s (it stopped reading)"
                    ) from None

    async def _take_arrived(self, fut: asyncio.Future[dict[str, Any]]) -> None:
        """Let the reader take what had already arrived when a reply's deadline passed.

        A host process that did not run for a while (Ctrl-Z, SIGSTOP, a suspended laptop or VM) wakes
        with the deadline past and the reply perhaps waiting in its socket: the loop sees the timer due
        and the socket readable in the same step, and the reader runs only after that. The lateness is
        the host's then, not the sandbox's, and killing the sandbox would throw away a reply it gave in
        time. So the reader gets the bytes that were there at the deadline (the socket's and the
        stream's buffers), one loop step at a time; no sleep, no guess at how long a thaw takes.

        Bounded twice: bytes that arrive later do not count (a sandbox streaming output cannot hold the
        call), and `_STALL_STEPS` steps in which the reader takes nothing end it (a byte in the socket
        reaches the reader within two steps: the poll that reads it, the step that wakes the reader).
        """
        target = self._taken + self._backlog()
        idle = 0
        while not fut.done() and self._taken < target and idle < _STALL_STEPS and not self.closed:
            before = self._taken
            await asyncio.sleep(0)  # one loop step: the selector is polled, the reader may run
            idle = 0 if self._taken > before else idle + 1

    def _backlog(self) -> int:
        """Bytes that have arrived but the reader has not taken: the stream's buffer and the socket's."""
        buffered = len(getattr(self._reader, "_buffer", b""))  # StreamReader's own buffer (no public size)
        sock = self._writer.transport.get_extra_info("socket")
        if sock is None:
            return buffered
        try:
            # FIONREAD: what the kernel holds for this socket (under TLS, ciphertext: a slight overcount).
            raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except (OSError, ValueError):
            return buffered
        return buffered + int.from_bytes(raw, sys.byteorder, signed=True)

    def _write(self, data: bytes | memoryview) -> None:
        """Hand `data` to the writer and count it: `_drain` reads progress from that count."""
        self._writer.write(data)
        self._queued += len(data)

    def _send_cancel(self, rid: int) -> None:
        if self.closed:
            return
        body = json.dumps({"id": None, "op": "cancel", "args": {"target": rid}}).encode()
        with contextlib.suppress(Exception):
            self._write(_FRAME.pack(len(body)) + body)

    async def _read_loop(self) -> None:
        reason = "the channel closed"
        try:
            while True:
                header = await self._reader.readexactly(_DOCKER_HEADER.size)
                self._taken += _DOCKER_HEADER.size
                stream, size = _DOCKER_HEADER.unpack(header)
                payload = await self._reader.readexactly(size)
                self._taken += size
                if stream == 2:
                    self._stderr.append(payload)
                    continue
                self._buf += payload
                self._dispatch_frames()
        except asyncio.IncompleteReadError:
            reason = "the container exited"
        except (ConnectionError, OSError) as exc:
            reason = f"the channel broke: {exc}"
        except asyncio.CancelledError:
            reason = "the channel was closed by the host"
        except Exception as exc:  # a corrupt frame: nothing further on this stream can be trusted
            reason = f"protocol error: {exc!r}"
        self._close(reason)

    def _dispatch_frames(self) -> None:
        # While a blob streams in (thousands of Docker frames), nothing is parsed until all of it is here.
        while len(self._buf) >= self._need:
            (n,) = _FRAME.unpack_from(self._buf)
            if n > self._max_reply:  # a hostile sandbox must not make the host buffer without bound
                raise ValueError(f"reply frame of {n} bytes exceeds the limit of {self._max_reply}")
            if len(self._buf) < 4 + n:
                self._need = 4 + n
                return
            raw = bytes(self._buf[4 : 4 + n])
            msg = json.loads(raw)
            if _SURROGATE_ESCAPE.search(raw):  # a non-UTF-8 file name may be among them
                msg = clean(msg)
            blob = msg.get("blob")
            if blob is not None:
                # Raw bytes follow the frame: wait for all of them (the frame is parsed again then).
                # The buffer stays bounded: at most a frame and a blob, each within `max_reply_bytes`.
                if not isinstance(blob, int) or isinstance(blob, bool) or not 0 <= blob <= self._max_reply:
                    raise ValueError(f"a blob length of {blob!r} (the limit is {self._max_reply})")
                if len(self._buf) < 4 + n + blob:
                    self._need = 4 + n + blob
                    return
                with memoryview(self._buf) as view:  # one copy, not two (slice, then bytes)
                    msg["_blob"] = bytes(view[4 + n : 4 + n + blob])
            del self._buf[: 4 + n + (blob or 0)]
            self._need = 4
            rid = msg.get("id")
            if rid is None:
                self._event(msg)
                continue
            pending = self._pending.get(rid)
            if pending is None:
                continue  # the answer to a call the host gave up on
            fut, nonce, on_event = pending
            if not isinstance(msg.get("nonce"), str) or not secrets.compare_digest(msg["nonce"], nonce):
                raise ValueError(f"protocol violation: a reply to request {rid} without that request's nonce")
            if "event" in msg:
                if on_event is not None and not fut.done():
                    with contextlib.suppress(Exception):
                        on_event(msg)
                continue
            if not fut.done():
                fut.set_result(msg)

    def _event(self, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event == "hello" and not self.hello.done():
            self.hello.set_result(msg)
        elif event == "exit":
            self.exit_reason = msg.get("reason")

    def _close(self, reason: str, *, abort: bool = False) -> None:
        if self.closed:
            return
        if self.exit_reason:
            reason = (
                f"the supervisor exited ({self.exit_reason} limit reached)"
                if self.exit_reason in ("idle", "lifetime")
                else f"the supervisor exited ({self.exit_reason})"
            )
        tail = self.stderr_tail().strip()
        self.closed_reason = reason + (f"; its last words: {tail}" if tail else "")
        self.closed_event.set()
        error = SandboxDead(self.closed_reason)
        for fut, _, _ in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(error)
        if not self.hello.done():
            self.hello.set_exception(error)
            self.hello.exception()  # retrieved here so an unawaited hello does not warn
        with contextlib.suppress(Exception):
            if abort:  # close() would first wait, unbounded, for the stuck buffer to drain
                self._writer.transport.abort()
            else:
                self._writer.close()

    async def aclose(self) -> None:
        """Close the stream (the supervisor sees EOF and exits) and stop the reader."""
        self._close("the channel was closed by the host")
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
