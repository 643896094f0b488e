"""Opening a sandbox for a run, with the user's folder copied into its workspace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

WORKSPACE = "/workspace"
# Version-control and bytecode caches are the host's business, not the agent's.
NOT_COPIED = (".git", "__pycache__")


@asynccontextmanager
async def open_sandbox(*, workspace: str | Path | None = None, **config: Any) -> AsyncIterator[Any]:
    """A started `DockerSandbox` (image built if missing), with `workspace`'s contents in /workspace."""
    from qwq_agent.sandbox.docker_sandbox import DockerSandbox

    async with DockerSandbox.create(**config) as sandbox:
        if workspace is not None:
            await sandbox.upload(Path(workspace), WORKSPACE, contents=True, exclude=NOT_COPIED)
        yield sandbox
