"""`DockerSandbox`: one hardened container, driven through its supervisor channel.

Calls on one sandbox may run concurrently: they are multiplexed by request id. Python cells queue on
the single interpreter inside (they share its state); shell, file and search calls run side by side.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from qwq_agent.sandbox.config import SandboxConfig
from qwq_agent.sandbox.container import resolve_image
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.file_ops import FileOps
from qwq_agent.sandbox.snapshotting import SnapshotOps

__all__ = ["DockerSandbox", "resolve_image"]


class _Starting:
    """What `DockerSandbox.create()` returns: await it for a sandbox, or use it as `async with`."""

    def __init__(self, sandbox: DockerSandbox) -> None:
        self._sandbox = sandbox

    def __await__(self) -> Generator[Any, None, DockerSandbox]:
        return self._start().__await__()

    async def _start(self) -> DockerSandbox:
        await self._sandbox._start()
        return self._sandbox

    async def __aenter__(self) -> DockerSandbox:
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        await self._sandbox.close()


class DockerSandbox(FileOps, SnapshotOps):
    """A sandbox container with a persistent Python interpreter, a shell, an editor and search.

    Satisfies `qwq_agent.protocols.Sandbox`; `snapshot()` and `restore()` come from `SnapshotOps`. Use `async with DockerSandbox.create() as sb: ...` or
    `sb = await DockerSandbox.create()` followed by `await sb.close()`.
    """

    @classmethod
    def create(
        cls, config: SandboxConfig | None = None, *, engine: DockerEngine | None = None, **overrides: Any
    ) -> _Starting:
        """Start a sandbox; keyword overrides are `SandboxConfig` fields (e.g. `memory="256m"`)."""
        if overrides:
            config = (config or SandboxConfig()).model_copy(
                update=SandboxConfig(**overrides).model_dump(include=set(overrides))
            )
        return _Starting(cls(config, engine=engine))

    async def __aenter__(self) -> DockerSandbox:
        if self._channel is None:
            await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
