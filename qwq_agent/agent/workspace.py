"""Opening a sandbox for a run, with the user's folder copied into its workspace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from qwq_agent.agent.per_sandbox import PerSandbox

WORKSPACE = "/workspace"
# Bytecode caches are the host's business; `.git` goes in, so the agent can `git diff` and `git log`.
NOT_COPIED = ("__pycache__",)

# Per sandbox: the host folder its /workspace was uploaded from, so that a `tests:` check of a branch's
# patch can start from the user's folder itself rather than from what a run left in the sandbox.
_origins: PerSandbox[Path] = PerSandbox()


def origin_of(sandbox: Any) -> Path | None:
    """The host folder `sandbox`'s /workspace was uploaded from (`upload_workspace`), or None."""
    return _origins.get(sandbox)


def inherit_origin(sandbox: Any, parent: Any) -> None:
    """Give `sandbox` the origin of `parent`, whose snapshot (and baseline) it was restored from."""
    _origins.inherit(sandbox, parent)


async def upload_workspace(sandbox: Any, workspace: str | Path) -> None:
    """Copy `workspace`'s contents into `sandbox`'s /workspace (bytecode caches left out), record the
    baseline its patch is computed against, and remember the folder (`origin_of`)."""
    from qwq_agent.agent.patch import record_baseline

    folder = await asyncio.to_thread(Path(workspace).absolute)  # against the cwd of now
    await sandbox.upload(folder, WORKSPACE, contents=True, exclude=NOT_COPIED)
    await record_baseline(sandbox)
    _origins.set(sandbox, folder)


@asynccontextmanager
async def open_sandbox(*, workspace: str | Path | None = None, **config: Any) -> AsyncIterator[Any]:
    """A started `DockerSandbox` (image built if missing), with `workspace`'s contents in /workspace.

    The upload is snapshotted (`qwq_agent.agent.patch`), so an `Agent` on this sandbox ends its run with
    the patch of what it changed in `RunResult.patch`.
    """
    from qwq_agent.sandbox.docker_sandbox import DockerSandbox

    async with DockerSandbox.create(**config) as sandbox:
        if workspace is not None:
            await upload_workspace(sandbox, workspace)
        yield sandbox
