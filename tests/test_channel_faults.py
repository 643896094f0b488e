"""The host end of the channel against a peer that misbehaves at the byte level (a real socket pair).

A sandbox that stops reading its stdin (paused, SIGSTOPped supervisor, stalled ssh link) must not hold a
call past its deadline while the request is still being sent; and a reply holding names that were not
UTF-8 in the sandbox must arrive as text that can be encoded again.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import pytest

from qwq_agent.sandbox.channel import Channel
from qwq_agent.sandbox.errors import SandboxDead, SandboxTimeout

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


async def test_a_send_to_a_peer_that_stopped_reading_times_out_and_closes_the_channel() -> None:
    host, container = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=host)
    chan = Channel(reader, writer, max_request_bytes=64 << 20)
    try:
        big = {"command": "x" * (16 << 20)}  # far more than the socket buffers hold; the peer reads nothing
        t0 = time.monotonic()
        with pytest.raises(SandboxTimeout, match=r"took no 'shell' request within 0\.5s"):
            await asyncio.wait_for(chan.call("shell", big, 0.5), 30)
        assert time.monotonic() - t0 < 5
        assert chan.closed  # half a frame may be out: the stream cannot carry another call
        with pytest.raises(SandboxDead, match="stalled"):
            await chan.call("ping", {}, 1)
    finally:
        await chan.aclose()
        container.close()


async def test_surrogates_in_a_reply_arrive_as_escapes() -> None:
    host, container = socket.socketpair()
    container.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=host)
    chan = Channel(reader, writer, max_request_bytes=1 << 20)
    loop = asyncio.get_running_loop()
    try:
        call = asyncio.create_task(chan.call("view", {"path": "/workspace"}, 10))
        sent = b""
        while not sent or len(sent) < 4 + struct.unpack(">I", sent[:4])[0]:
            sent += await loop.sock_recv(container, 65536)
        req = json.loads(sent[4:])
        # What the supervisor's JSON makes of os.scandir()'s name for b"r\xe9sum\xe9.txt" (and a stray high surrogate).
        output = "/workspace/r\udce9sum\udce9.txt \ud800"
        reply = json.dumps({"id": req["id"], "nonce": req["nonce"], "ok": True, "result": {"output": output}})
        body = struct.pack(">I", len(reply)) + reply.encode()
        await loop.sock_sendall(container, struct.pack(">BxxxI", 1, len(body)) + body)
        result = await asyncio.wait_for(call, 10)
        assert result["output"] == "/workspace/r\\xe9sum\\xe9.txt \\ud800"
        result["output"].encode("utf-8")
    finally:
        await chan.aclose()
        container.close()


async def _slow_peer(sock: socket.socket) -> None:
    """Reads steadily at ~2 MB/s and answers every request: a slow but live link."""
    loop = asyncio.get_running_loop()
    buf = b""
    while data := await loop.sock_recv(sock, 64 * 1024):
        buf += data
        await asyncio.sleep(0.03)
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
            n = struct.unpack(">I", buf[:4])[0]
            req, buf = json.loads(buf[4 : 4 + n]), buf[4 + n :]
            if req.get("op") == "cancel":
                continue
            reply = json.dumps(
                {"id": req["id"], "nonce": req["nonce"], "ok": True, "result": {"op": req["op"]}}
            )
            body = struct.pack(">I", len(reply)) + reply.encode()
            await loop.sock_sendall(sock, struct.pack(">BxxxI", 1, len(body)) + body)


async def test_a_short_call_behind_a_big_one_on_a_slow_link_kills_neither() -> None:
    """drain() waits for the shared buffer: a ping's 2 s deadline once aborted the channel under a 12 MB
    create that the sandbox was reading all along (SandboxDead for both, the container killed)."""
    host, container = socket.socketpair()
    container.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=host)
    chan = Channel(reader, writer, max_request_bytes=64 << 20)
    serve = asyncio.create_task(_slow_peer(container))
    try:
        big = asyncio.create_task(chan.call("create", {"file_text": "x" * (12 << 20)}, 60))
        await asyncio.sleep(0)  # one step of the task: the big request is written, its drain awaited
        assert writer.transport.get_write_buffer_size() > 0
        ping = await asyncio.wait_for(chan.call("ping", {}, 2), 60)
        assert ping == {"op": "ping"} and await asyncio.wait_for(big, 60) == {"op": "create"}
        assert not chan.closed
    finally:
        serve.cancel()
        await chan.aclose()
        container.close()


async def test_a_cancel_accepted_as_the_reply_arrives_is_never_swallowed() -> None:
    """Python 3.11's `asyncio.wait_for` returns the result when a cancel lands as the awaited future
    finishes, dropping the cancel: a cancelled acquire then ran on to its deadline. Whatever the order,
    a cancel the task accepted (`cancel()` returned True) must end it with CancelledError."""
    host, container = socket.socketpair()
    container.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=host)
    chan = Channel(reader, writer, max_request_bytes=1 << 20)
    loop = asyncio.get_running_loop()
    try:
        call = asyncio.create_task(chan.call("ping", {}, 10))
        sent = b""
        while len(sent) < 4 or len(sent) < 4 + struct.unpack(">I", sent[:4])[0]:
            sent += await loop.sock_recv(container, 65536)
        req = json.loads(sent[4:])
        accepted: list[bool] = []
        # Cancel in the very loop iteration the reply is handed over (after the waiter's own callbacks).
        chan._pending[req["id"]][0].add_done_callback(lambda _f: accepted.append(call.cancel()))
        reply = json.dumps({"id": req["id"], "nonce": req["nonce"], "ok": True, "result": {}})
        body = struct.pack(">I", len(reply)) + reply.encode()
        await loop.sock_sendall(container, struct.pack(">BxxxI", 1, len(body)) + body)
        done, _ = await asyncio.wait({call}, timeout=10)
        assert done and accepted
        if accepted[0]:
            assert call.cancelled(), "the call accepted a cancel and then returned as if none had come"
    finally:
        await chan.aclose()
        container.close()


def _docker_frames(id_: int, nonce: str, result: dict[str, object], *, frame: int) -> bytes:
    """A reply as the supervisor frames it, cut into Docker stream frames of `frame` bytes."""
    reply = json.dumps({"id": id_, "nonce": nonce, "ok": True, "result": result}).encode()
    body = struct.pack(">I", len(reply)) + reply
    chunks = [body[i : i + frame] for i in range(0, len(body), frame)]
    return b"".join(struct.pack(">BxxxI", 1, len(c)) + c for c in chunks)


async def _request(loop: asyncio.AbstractEventLoop, container: socket.socket) -> dict[str, object]:
    sent = b""
    while len(sent) < 4 or len(sent) < 4 + struct.unpack(">I", sent[:4])[0]:
        sent += await loop.sock_recv(container, 65536)
    return json.loads(sent[4:])  # type: ignore[no-any-return]


def _host_stopped_for(seconds: float) -> None:
    """The host does not run (as under Ctrl-Z): the event loop is blocked, and on return it finds the
    socket readable and the timers due at once, as a SIGSTOPped process does on SIGCONT."""
    time.sleep(seconds)


async def test_a_reply_that_arrived_while_the_host_was_stopped_is_delivered() -> None:
    """A host process stopped (Ctrl-Z) past a call's deadline, while the sandbox answered in time, wakes
    with the timer due and the socket readable in the same loop step. A timeout that cancels the reply's
    future there discards the reply before the reader can hand it over (and the sandbox was killed)."""
    host, container = socket.socketpair()
    container.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=host)
    chan = Channel(reader, writer, max_request_bytes=1 << 20)
    loop = asyncio.get_running_loop()
    try:
        call = asyncio.create_task(chan.call("shell", {}, 0.5))
        req = await _request(loop, container)
        # A long reply in Docker frames, more than the loop's transport reads at once (256 KiB): the
        # reader needs several loop steps after the deadline to take it all.
        result = {"stdout": "y" * (320 << 10)}
        data = _docker_frames(req["id"], req["nonce"], result, frame=16384)  # type: ignore[arg-type]
        container.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, len(data) * 2)
        assert container.send(data) == len(data), "the socket buffers hold less than the reply"
        _host_stopped_for(1.0)  # past the call's deadline, 0.5 s after its request went out
        assert await asyncio.wait_for(call, 10) == result
        assert not chan.closed
    finally:
        await chan.aclose()
        container.close()


async def test_a_late_reply_wait_is_bounded_by_what_had_arrived() -> None:
    """The wait for what had arrived at the deadline must not be stretched by a sandbox that keeps
    streaming frames for the call (and never answers): the call still times out."""
    host, container = socket.socketpair()
    container.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=host)
    chan = Channel(reader, writer, max_request_bytes=1 << 20)
    loop = asyncio.get_running_loop()
    stream: asyncio.Task[None] | None = None
    try:
        call = asyncio.create_task(chan.call("shell", {}, 0.3))
        req = await _request(loop, container)
        event = json.dumps({"id": req["id"], "nonce": req["nonce"], "event": "output", "data": "z"}).encode()
        body = struct.pack(">I", len(event)) + event
        frame = struct.pack(">BxxxI", 1, len(body)) + body

        async def chatter() -> None:
            while True:  # a frame every loop step: the reader always has something to take
                await loop.sock_sendall(container, frame)
                await asyncio.sleep(0)

        stream = asyncio.create_task(chatter())
        with pytest.raises(SandboxTimeout, match=r"no reply to 'shell' within 0\.3s"):
            await asyncio.wait_for(call, 10)
    finally:
        if stream is not None:
            stream.cancel()
        await chan.aclose()
        container.close()
