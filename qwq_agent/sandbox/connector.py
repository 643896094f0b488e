"""The seam between the engine client and a Docker engine: `Connector`, and the plain local one.

`UnixConnector` is the engine's socket on this machine, and the local end that an ssh tunnel
(`ssh_tunnel`) forwards; `transport` picks the connector a host URL needs.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

STREAM_LIMIT = 1 << 20


class Connector(Protocol):
    """Opens connections to one Docker engine."""

    url: str
    """The engine as the user named it (for messages)."""

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new byte stream to the engine API; raises OSError (or `DockerUnreachable`) when it cannot."""
        ...

    def docker_client(self, timeout: float) -> Any:
        """A docker-py client of the same engine, each call bounded by `timeout` s (blocking: call in a thread)."""
        ...


class UnixConnector:
    """The engine's unix socket on this machine."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = f"unix://{path}"

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(self.path, limit=STREAM_LIMIT)

    def docker_client(self, timeout: float) -> Any:
        import docker

        # docker-py wants whole seconds or more; a zero timeout would mean "no timeout" to requests.
        return docker.DockerClient(base_url=self.url, timeout=max(1, round(timeout)))
