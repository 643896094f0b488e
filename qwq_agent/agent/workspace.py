"""Opening a sandbox for a run, with the user's folder copied into its workspace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

WORKSPACE = "/workspace"
# Bytecode caches are the host's business; `.git` goes in, so the agent can `git diff` and `git log`.
NOT_COPIED = ("__pycache__",)


@asynccontextmanager
async def open_sandbox(*, workspace: str | Path | None = None, **config: Any) -> AsyncIterator[Any]:
    """A started `DockerSandbox` (image built if missing), with `workspace`'s contents in /workspace.

    The upload is snapshotted (`qwq_agent.agent.patch`), so an `Agent` on this sandbox ends its run with
    the patch of what it changed in `RunResult.patch`.
    """
    from qwq_agent.agent.patch import record_baseline
    from qwq_agent.sandbox.docker_sandbox import DockerSandbox

    async with DockerSandbox.create(**config) as sandbox:
        if workspace is not None:
            await sandbox.upload(Path(workspace), WORKSPACE, contents=True, exclude=NOT_COPIED)
            await record_baseline(sandbox)
        yield sandbox
