"""A minimal asyncio client of the Docker Engine API over its unix socket.

One connection per request (connecting to a local socket costs microseconds), so nothing here is bound to
an event loop and sandboxes can be created from any loop. `attach` returns the hijacked stream.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import quote, urlencode

from qwq_agent.sandbox.errors import DockerAPIError, SandboxError

API_VERSION = "v1.41"


def default_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise SandboxError(f"only unix-socket Docker hosts are supported, not {host!r}")
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
        parts = []
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
    """Async calls to the Docker Engine API (the subset sandboxes need)."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.socket_path = socket_path or default_socket()

    async def _open(self, method: str, path: str, params: dict[str, Any] | None, body: Any, extra: str = ""):
        reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=1 << 20)
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
        self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None
    ) -> tuple[int, Any]:
        """One API call; returns (status, decoded JSON body or None)."""
        reader, writer = await self._open(method, path, params, body, "Connection: close\r\n")
        try:
            status, headers = await _read_head(reader)
            raw = await _read_body(reader, headers)
        finally:
            writer.close()
        data = json.loads(raw) if raw and headers.get("content-type", "").startswith("application/json") else None
        if status >= 400:
            message = data.get("message", raw.decode(errors="replace")) if isinstance(data, dict) else raw.decode(errors="replace")
            raise DockerAPIError(status, message)
        return status, data

    async def create(self, name: str, body: dict[str, Any]) -> str:
        _, data = await self.request("POST", "/containers/create", params={"name": name}, body=body)
        return data["Id"]

    async def start(self, cid: str) -> None:
        await self.request("POST", f"/containers/{quote(cid)}/start")

    async def kill(self, cid: str) -> None:
        try:
            await self.request("POST", f"/containers/{quote(cid)}/kill")
        except DockerAPIError as exc:
            if exc.status not in (404, 409):
                raise

    async def remove(self, cid: str) -> None:
        """Kill and remove; returns once the container is gone (also when AutoRemove got there first)."""
        try:
            await self.request("DELETE", f"/containers/{quote(cid)}", params={"force": "1", "v": "1"})
        except DockerAPIError as exc:
            if exc.status == 404:
                return
            if exc.status != 409:  # 409: removal already in progress, so wait for it to finish
                raise
            try:
                await self.request("POST", f"/containers/{quote(cid)}/wait", params={"condition": "removed"})
            except DockerAPIError as exc2:
                if exc2.status != 404:
                    raise

    async def inspect(self, cid: str) -> dict[str, Any]:
        _, data = await self.request("GET", f"/containers/{quote(cid)}/json")
        return data

    async def list(self, labels: list[str], all_: bool = True) -> list[dict[str, Any]]:
        params = {"all": "1" if all_ else "0", "filters": json.dumps({"label": labels})}
        _, data = await self.request("GET", "/containers/json", params=params)
        return data

    async def stats(self, cid: str) -> dict[str, Any]:
        _, data = await self.request("GET", f"/containers/{quote(cid)}/stats", params={"stream": "0"})
        return data

    async def image_exists(self, image: str) -> bool:
        try:
            await self.request("GET", f"/images/{quote(image, safe='')}/json")
        except DockerAPIError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def attach(self, cid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Hijack the container's stdio: raw stdin going in, Docker's 8-byte-header frames coming out."""
        params = {"stream": "1", "stdin": "1", "stdout": "1", "stderr": "1"}
        reader, writer = await self._open(
            "POST", f"/containers/{quote(cid)}/attach", params, None, "Connection: Upgrade\r\nUpgrade: tcp\r\n"
        )
        status, headers = await _read_head(reader)
        if status not in (101, 200):
            body = await _read_body(reader, headers)
            writer.close()
            raise DockerAPIError(status, body.decode(errors="replace"))
        return reader, writer
