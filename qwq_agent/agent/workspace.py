"""Opening a sandbox for a run, with the user's folder copied into its workspace."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

WORKSPACE = "/workspace"


def pack_contents(folder: Path) -> bytes:
    """A tar of `folder`'s contents (not the folder itself), so they land directly in /workspace."""
    if not folder.is_dir():
        raise ValueError(f"workspace {folder} is not a directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for child in sorted(folder.iterdir()):
            if child.name in ("__pycache__", ".git"):
                continue
            tar.add(child, arcname=child.name, filter=_skip_caches)
    return buf.getvalue()


def _skip_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in Path(info.name).parts else info


@asynccontextmanager
async def open_sandbox(*, workspace: str | Path | None = None, **config: Any) -> AsyncIterator[Any]:
    """A started `DockerSandbox` (image built if missing), with `workspace`'s contents in /workspace."""
    from qwq_agent.sandbox.docker_sandbox import DockerSandbox

    async with DockerSandbox.create(**config) as sandbox:
        if workspace is not None:
            data = await asyncio.to_thread(pack_contents, Path(workspace))
            await sandbox.upload_archive(data, WORKSPACE)
        yield sandbox
