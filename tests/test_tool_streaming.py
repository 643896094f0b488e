"""Issue 13: output of long `shell`/`python` calls streams to the host while they run, tied to the
request's nonce, coalesced and bounded; the final result is what it always was.

Every test waits on conditions (a streamed line, a file the test creates) with deadlines; only the
sandboxed commands sleep, to poll for the file the test creates once it has seen the first output."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest
import pytest_asyncio

from qwq_agent.sandbox import DockerSandbox, OutputChunk, SandboxConfig, SandboxDead
from qwq_agent.sandbox.channel import Channel

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="session")]

WAIT_S = 30.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sb(sandbox_image: str):
    cfg = SandboxConfig(image=sandbox_image, output_head_bytes=65536, output_tail_bytes=4096)
    async with DockerSandbox.create(cfg) as box:
        yield box


class Collector:
    """Records streamed chunks and lets a test wait until some text has arrived."""

    def __init__(self) -> None:
        self.chunks: list[OutputChunk] = []
        self.changed = asyncio.Event()

    def __call__(self, chunk: OutputChunk) -> None:
        self.chunks.append(chunk)
        self.changed.set()

    def text(self, stream: str | None = None) -> str:
        return "".join(c.text for c in self.chunks if stream is None or c.stream == stream)

    async def wait_for(self, needle: str) -> None:
        async with asyncio.timeout(WAIT_S):
            while needle not in self.text():
                self.changed.clear()
                await self.changed.wait()


async def test_shell_output_streams_before_the_result(sb: DockerSandbox) -> None:
    await sb.shell("rm -f /tmp/go-shell")
    seen = Collector()
    command = "echo first; echo warn >&2; until [ -e /tmp/go-shell ]; do sleep 0.05; done; echo second"
    call = asyncio.create_task(sb.shell(command, timeout=60, on_output=seen))
    await seen.wait_for("first")
    assert not call.done()  # the output came while the command was still waiting for us
    await sb.shell("touch /tmp/go-shell")
    result = await call
    assert result.exit_code == 0
    assert result.stdout == "first\nsecond\n" and result.stderr == "warn\n"  # the result is unchanged
    await seen.wait_for("second")  # already there: streamed frames precede the reply
    assert seen.text("stdout") == "first\nsecond\n" and seen.text("stderr") == "warn\n"


async def test_python_output_streams_before_the_result(sb: DockerSandbox) -> None:
    seen = Collector()
    code = (
        "import os, sys, time\n"
        "print('cell started')\n"
        "while not os.path.exists('/tmp/go-python'):\n"
        "    time.sleep(0.05)\n"
        "print('cell done', file=sys.stderr)\n"
        "41 + 1"
    )
    call = asyncio.create_task(sb.python(code, timeout=60, on_output=seen))
    await seen.wait_for("cell started")
    assert not call.done()
    await sb.shell("touch /tmp/go-python")
    result = await call
    assert result.value == "42" and result.stdout == "cell started\n"
    assert seen.text("stderr") == "cell done\n"


async def test_calls_without_a_callback_stream_nothing(sb: DockerSandbox) -> None:
    # The request only asks for a stream when someone listens: a plain call's request has no limit.
    sent: list[dict] = []
    chan = sb._channel
    assert chan is not None
    original = chan.call

    async def spy(op, args, reply_timeout, on_event=None):
        sent.append({"op": op, "args": args, "on_event": on_event})
        return await original(op, args, reply_timeout, on_event)

    chan.call = spy  # type: ignore[method-assign]
    try:
        r = await sb.shell("echo hi")
    finally:
        del chan.call
    assert r.stdout == "hi\n"
    assert sent[0]["args"]["stream_limit"] is None and sent[0]["on_event"] is None


async def test_small_writes_are_coalesced(sb: DockerSandbox) -> None:
    seen = Collector()
    result = await sb.shell("for i in $(seq 3000); do printf x; done", on_output=seen)
    assert result.stdout == "x" * 3000
    assert seen.text() == "x" * 3000
    # 3000 writes, a handful of frames: one per interval or per 4 KiB pending, never one per write.
    assert len(seen.chunks) < 100


@pytest.mark.parametrize(
    "command",
    [
        "head -c 5000000 /dev/urandom",  # binary
        "head -c 4000000 /dev/zero | tr '\\0' 'a'",  # megabytes without a newline
        "for i in $(seq 200); do head -c 20000 /dev/zero | tr '\\0' 'b'; echo; done >&2",  # stderr floods
    ],
    ids=["binary", "no-newlines", "stderr"],
)
async def test_hostile_output_streams_bounded(sb: DockerSandbox, command: str) -> None:
    seen = Collector()
    limit = 8192
    result = await sb.shell(command, timeout=60, on_output=seen, stream_limit=limit)
    streamed = seen.text()
    # Never more than the limit (binary bytes are escaped, so a byte may be several characters).
    assert len(streamed) <= limit
    assert seen.chunks[-1].capped and sum(c.capped for c in seen.chunks) == 1
    assert len(seen.chunks) <= limit // 4096 + 4  # coalesced: a flood is a few frames
    captured = result.stdout + result.stderr
    assert result.stdout_dropped + result.stderr_dropped > 1_000_000  # the result is capped as ever
    if "urandom" not in command:
        # What streamed is the beginning of what was captured: nothing beyond it.
        assert captured.startswith(streamed) or result.stderr.startswith(streamed)


async def test_the_stream_never_exceeds_the_capture(sandbox_image: str) -> None:
    # A capture of 1 KiB head: asking to stream 64 KiB still streams only what the head keeps.
    cfg = SandboxConfig(image=sandbox_image, output_head_bytes=1024, output_tail_bytes=1024)
    async with DockerSandbox.create(cfg) as box:
        seen = Collector()
        result = await box.shell("seq 100000", on_output=seen, stream_limit=65536)
    assert len(seen.text()) <= 1024
    assert result.stdout.startswith(seen.text())


async def _fake_channel():
    host, container = socket.socketpair()
    container.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=host)
    return Channel(reader, writer, max_request_bytes=1 << 20, max_reply_bytes=1 << 20), container


async def _requests(container: socket.socket, count: int) -> list[dict]:
    loop = asyncio.get_running_loop()
    sent = b""
    while sent.count(b'"op"') < count:
        sent += await loop.sock_recv(container, 65536)
    reqs = []
    while sent:
        (n,) = struct.unpack(">I", sent[:4])
        reqs.append(json.loads(sent[4 : 4 + n]))
        sent = sent[4 + n :]
    return reqs


async def _send(container: socket.socket, obj: dict) -> None:
    frame = json.dumps(obj).encode()
    body = struct.pack(">I", len(frame)) + frame
    await asyncio.get_running_loop().sock_sendall(container, struct.pack(">BxxxI", 1, len(body)) + body)


async def test_host_rejects_streamed_output_without_its_requests_nonce() -> None:
    chan, container = await _fake_channel()
    got: list[dict] = []
    try:
        first = asyncio.create_task(chan.call("shell", {}, 10, got.append))
        second = asyncio.create_task(chan.call("shell", {}, 10, got.append))
        reqs = await _requests(container, 2)
        # Output for request 1 carrying request 2's nonce: forged, so the channel is not trusted any more.
        await _send(container, {"id": reqs[0]["id"], "nonce": reqs[1]["nonce"], "event": "output",
                                "stream": "stdout", "data": "forged"})  # fmt: skip
        for task in (first, second):
            with pytest.raises(SandboxDead, match="nonce"):
                await task
        assert got == []
    finally:
        await chan.aclose()
        container.close()


async def test_host_caps_what_a_hostile_supervisor_streams() -> None:
    from qwq_agent.sandbox.output_stream import OutputRelay

    chan, container = await _fake_channel()
    seen = Collector()
    try:
        call = asyncio.create_task(chan.call("shell", {}, 10, OutputRelay(seen, limit=100)))
        (req,) = await _requests(container, 1)
        for data in ("a" * 80, "b" * 80, "c" * 80, 42):  # ignores its own cap; then a malformed frame
            await _send(
                container,
                {"id": req["id"], "nonce": req["nonce"], "event": "output", "stream": "stdout", "data": data},
            )
        await _send(
            container, {"id": req["id"], "nonce": req["nonce"], "ok": True, "result": {"exit_code": 0}}
        )
        assert (await call) == {"exit_code": 0}
    finally:
        await chan.aclose()
        container.close()
    assert seen.text() == "a" * 80 + "b" * 20
    assert [c.capped for c in seen.chunks] == [False, True]


async def test_hostile_python_output_streams_bounded(sb: DockerSandbox) -> None:
    seen = Collector()
    code = "import sys, os\nsys.stdout.write('y' * 3_000_000)\nsys.stdout.flush()\nos.write(2, bytes(range(256)) * 4000)"
    result = await sb.python(code, timeout=60, on_output=seen, stream_limit=4096)
    assert len(seen.text()) <= 4096 and seen.chunks[-1].capped
    assert result.stdout_dropped > 2_000_000 and result.error is None
    assert result.stdout.startswith(seen.text("stdout"))
