"""A minimal asyncio client of the Docker Engine API over its unix socket (or another transport).

One connection per request (connecting to a local socket costs microseconds), so nothing here is bound to
an event loop and sandboxes can be created from any loop. `attach` returns the hijacked stream. How a
connection is opened is the `Connector`'s job (`qwq_agent.sandbox.transport`: a unix socket, an ssh
tunnel, TLS over TCP); this module speaks HTTP over whatever it opens.

Every call has a timeout (the engine's default, or the caller's `timeout=`): a daemon that accepts
connections but never answers raises `DockerUnreachable` naming the socket and the call, instead of
hanging whatever waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from qwq_agent.sandbox.errors import DockerAPIError, DockerUnreachable, SandboxError
from qwq_agent.urls import redact_url

if TYPE_CHECKING:
    from qwq_agent.sandbox.connector import Connector

API_VERSION = "v1.41"
DEFAULT_TIMEOUT_S = 60.0


def default_socket() -> str:
    """The path of the configured unix socket (`DOCKER_HOST`); other schemes go through `transport`."""
    from qwq_agent.settings import get_settings

    host = get_settings().docker_host
    if not host.startswith("unix://"):
        raise SandboxError(
            f"{redact_url(host)!r} is not a unix socket; use DockerEngine() for ssh:// and tcp:// hosts"
        )
    return host[len("unix://") :]


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


class DockerEngine:
    """Async calls to the Docker Engine API (the subset sandboxes need).

    `timeout` (seconds) bounds each call from connecting to the last byte of the answer; every method
    also takes `timeout=` for a tighter limit (e.g. what is left of a sandbox's start time). Without
    `socket_path` or `connector`, the engine is the one `DOCKER_HOST` names (unix://, ssh:// or tcp://).
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        connector: Connector | None = None,
    ) -> None:
        from qwq_agent.sandbox import transport

        if connector is None:
            connector = transport.UnixConnector(socket_path) if socket_path else transport.default_connector()
        self.connector = connector
        self.url = connector.url
        self.timeout = timeout

    def no_answer(self, what: str, limit: float) -> DockerUnreachable:
        """The error for a call (`what`, e.g. "POST /containers/create") not answered within `limit` s."""
        return DockerUnreachable(
            f"the Docker engine at {self.url} did not answer {what} within {limit:g} s "
            "(is dockerd hung? `docker info` should answer)"
        )

    async def unreachable(self, timeout: float) -> str | None:
        """Why the engine does not answer a ping within `timeout` s, or None when it does."""
        try:
            await self.request("GET", "/_ping", timeout=timeout)
        except DockerUnreachable as exc:
            return str(exc)
        except DockerAPIError:
            return None  # it answered, if oddly
        return None

    @contextlib.asynccontextmanager
    async def _bounded(self, what: str, timeout: float | None) -> AsyncIterator[None]:
        """Map a hung or unreachable engine onto `DockerUnreachable` naming the socket and the call."""
        limit = self.timeout if timeout is None else max(0.0, timeout)
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError:
            raise self.no_answer(what, limit) from None
        except (OSError, asyncio.IncompleteReadError) as exc:  # refused, reset, no socket, TLS failure
            raise DockerUnreachable(
                f"cannot talk to the Docker engine at {self.url} ({what}): {exc or type(exc).__name__} "
                "(is dockerd running, and may this user use its socket?)"
            ) from None

    async def _open(self, method: str, path: str, params: dict[str, Any] | None, body: Any, extra: str = ""):
        reader, writer = await self.connector.open()
        payload = b"" if body is None else json.dumps(body).encode()
        query = f"?{urlencode(params)}" if params else ""
        head = (
            f"{method} /{API_VERSION}{path}{query} HTTP/1.1\r\nHost: docker\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        await writer.drain()
        return reader, writer

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """One API call; returns (status, decoded JSON body or None). Raises `DockerUnreachable` on timeout."""
        writer = None
        try:
            async with self._bounded(f"{method} {path}", timeout):
                reader, writer = await self._open(method, path, params, body, "Connection: close\r\n")
                status, headers = await _read_head(reader)
                raw = await _read_body(reader, headers)
        finally:
            if writer is not None:
                writer.close()
        data = (
            json.loads(raw)
            if raw and headers.get("content-type", "").startswith("application/json")
            else None
        )
        if status >= 400:
            message = (
                data.get("message", raw.decode(errors="replace"))
                if isinstance(data, dict)
                else raw.decode(errors="replace")
            )
            raise DockerAPIError(status, message)
        return status, data

    async def create(self, name: str, body: dict[str, Any], *, timeout: float | None = None) -> str:
        _, data = await self.request(
            "POST", "/containers/create", params={"name": name}, body=body, timeout=timeout
        )
        return data["Id"]

    async def start(self, cid: str, *, timeout: float | None = None) -> None:
        await self.request("POST", f"/containers/{quote(cid)}/start", timeout=timeout)

    async def kill(self, cid: str, *, timeout: float | None = None) -> None:
        try:
            await self.request("POST", f"/containers/{quote(cid)}/kill", timeout=timeout)
        except DockerAPIError as exc:
            if exc.status not in (404, 409):
                raise

    async def remove(self, cid: str, *, timeout: float | None = None) -> None:
        """Kill and remove; returns once the container is gone (also when AutoRemove got there first)."""
        try:
            await self.request(
                "DELETE", f"/containers/{quote(cid)}", params={"force": "1", "v": "1"}, timeout=timeout
            )
        except DockerAPIError as exc:
            if exc.status == 404:
                return
            if exc.status != 409:  # 409: removal already in progress, so wait for it to finish
                raise
            try:
                await self.request(
                    "POST", f"/containers/{quote(cid)}/wait", params={"condition": "removed"}, timeout=timeout
                )
            except DockerAPIError as exc2:
                if exc2.status != 404:
                    raise

    async def inspect(self, cid: str, *, timeout: float | None = None) -> dict[str, Any]:
        _, data = await self.request("GET", f"/containers/{quote(cid)}/json", timeout=timeout)
        return data

    async def list(
        self, labels: list[str], all_: bool = True, *, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        params = {"all": "1" if all_ else "0", "filters": json.dumps({"label": labels})}
        _, data = await self.request("GET", "/containers/json", params=params, timeout=timeout)
        return data

    async def stats(self, cid: str, *, timeout: float | None = None) -> dict[str, Any]:
        _, data = await self.request(
            "GET", f"/containers/{quote(cid)}/stats", params={"stream": "0"}, timeout=timeout
        )
        return data

    async def image_exists(self, image: str, *, timeout: float | None = None) -> bool:
        try:
            await self.request("GET", f"/images/{quote(image, safe='')}/json", timeout=timeout)
        except DockerAPIError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def attach(
        self, cid: str, *, timeout: float | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Hijack the container's stdio: raw stdin going in, Docker's 8-byte-header frames coming out.

        `timeout` bounds the hijack itself; the stream it returns lives as long as the container.
        """
        params = {"stream": "1", "stdin": "1", "stdout": "1", "stderr": "1"}
        writer = None
        try:
            async with self._bounded("POST /containers/{id}/attach", timeout):
                reader, writer = await self._open(
                    "POST",
                    f"/containers/{quote(cid)}/attach",
                    params,
                    None,
                    "Connection: Upgrade\r\nUpgrade: tcp\r\n",
                )
                status, headers = await _read_head(reader)
                if status not in (101, 200):
                    body = await _read_body(reader, headers)
                    raise DockerAPIError(status, body.decode(errors="replace"))
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        return reader, writer
