"""`DockerProxy`: a unix socket in front of the real Docker engine that misbehaves on request.

The faults are those of a real daemon: it refuses connections (restarting), holds an answer back (slow or
hung, while the request itself goes through and takes effect), gets to a request late (it takes effect
after the client may have given up on it), or answers a chosen request with an error (a removal dockerd
cannot do). Every other byte is the real engine's. The container listing is
filtered to containers carrying `proxy.mark` (label `MARK_LABEL`), so a janitor run through the proxy never
sees, let alone prunes, other users' containers on a shared engine.

Each connection carries one request (`Connection: close` is forced), so every request is seen and judged.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import uuid

from qwq_agent.sandbox.engine import DockerEngine, _read_body, _read_head
from qwq_agent.sandbox.errors import DockerAPIError

UPSTREAM = "/var/run/docker.sock"
MARK_LABEL = "qwq-test-proxy"


class DockerProxy:
    """`async with DockerProxy() as proxy: DockerEngine(proxy.path)`; set the fault attributes at any time."""

    def __init__(self, upstream: str = UPSTREAM) -> None:
        self.upstream = upstream
        self.dir = tempfile.mkdtemp(prefix="qwq-proxy-", dir="/tmp")  # short: unix socket paths are capped
        self.path = os.path.join(self.dir, "docker.sock")
        self.url = f"unix://{self.path}"
        self.mark = uuid.uuid4().hex[:12]
        self.refusing = False
        """Close every new connection at once, as a daemon that is restarting."""
        self.delays: dict[str, float] = {}
        """Request-line substring -> seconds the engine's answer is held back (the request goes through)."""
        self.late: dict[str, float] = {}
        """Request-line substring -> seconds before the request is passed on to the engine at all."""
        self.late_done = asyncio.Event()
        """Set once the engine has answered a request passed on late (it took effect)."""
        self.failures: dict[str, tuple[int, str]] = {}
        """Request-line substring -> (status, message) answered instead; the engine never sees it."""
        self.seen: list[str] = []
        self.held = asyncio.Event()
        """Set once the engine has answered a request whose answer is being held back (it took effect)."""
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DockerProxy:
        self._server = await asyncio.start_unix_server(self._handle, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if not self.refusing:
                await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        line = lines[0]
        self.seen.append(line)
        length = next((int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:")), 0)
        body = await reader.readexactly(length)
        failure = next((f for key, f in self.failures.items() if key in line), None)
        if failure is not None:
            payload = json.dumps({"message": failure[1]}).encode()
            writer.write(_response_head(failure[0], len(payload)) + payload)
            await writer.drain()
            return
        if not any(h.lower() == "connection: upgrade" for h in lines):
            kept = [h for h in lines[:-2] if not h.lower().startswith("connection:")]
            head = "\r\n".join([*kept, "Connection: close", "", ""]).encode("latin-1")
        late = next((d for key, d in self.late.items() if key in line), 0.0)
        if late:
            await asyncio.sleep(late)  # the fault under test: a daemon that gets to the request late
        up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        try:
            up_writer.write(head + body)
            await up_writer.drain()
            if line.split(" ")[1].split("?")[0].endswith("/containers/json"):
                await self._filtered_listing(up_reader, writer)
                return
            delay = next((d for key, d in self.delays.items() if key in line), 0.0)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer, delay, self.held))
            if late:
                self.late_done.set()
        finally:
            up_writer.close()

    async def _filtered_listing(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, headers = await _read_head(up_reader)
        containers = json.loads(await _read_body(up_reader, headers))
        if status == 200:
            containers = [c for c in containers if (c.get("Labels") or {}).get(MARK_LABEL) == self.mark]
        payload = json.dumps(containers).encode()
        writer.write(_response_head(status, len(payload)) + payload)
        await writer.drain()


def _response_head(status: int, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float = 0.0,
    held: asyncio.Event | None = None,
) -> None:
    """Copy until EOF; with `delay`, the first bytes (the answer's start) are held back that long."""
    try:
        first = True
        while data := await reader.read(65536):
            if first and delay:
                if held is not None:
                    held.set()
                await asyncio.sleep(delay)  # the fault under test: a daemon slow to answer
            first = False
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass


async def removed(engine: DockerEngine, cid: str) -> None:
    """Return once the container is gone (the engine's own wait, bounded)."""
    try:
        await engine.request("POST", f"/containers/{cid}/wait", params={"condition": "removed"}, timeout=60)
    except DockerAPIError as exc:
        if exc.status != 404:
            raise
