"""Hardened Docker sandboxes driven through a persistent supervisor channel.

async with DockerSandbox.create() as sb:
    result = await sb.python("1 + 1")

async with SandboxPool(size=4) as pool:
    async with pool.acquire() as sb:
        await sb.shell("ls")
        snap = await sb.snapshot()  # workspace + home, kept in host memory
    async with pool.acquire(snapshot=snap) as sb2:  # a warm sandbox with those files
        ...
"""

from qwq_agent.sandbox.config import SandboxConfig
from qwq_agent.sandbox.docker_sandbox import DockerSandbox
from qwq_agent.sandbox.errors import (
    DeadlineTooNear,
    DestinationExists,
    DockerUnreachable,
    DownloadNotWritten,
    InvalidRequest,
    PathOutsideWorkspace,
    ResourceExhausted,
    SandboxAcquireTimeout,
    SandboxConfigError,
    SandboxDead,
    SandboxError,
    SandboxHostLost,
    SandboxPoolClosed,
    SandboxStartError,
    SandboxTimeout,
    SnapshotTooLarge,
    ToolError,
    UnsafeArchive,
)
from qwq_agent.sandbox.hosts import HostFull
from qwq_agent.sandbox.pool import SandboxPool
from qwq_agent.sandbox.protocol import (
    DownloadResult,
    FileResult,
    OutputChunk,
    PythonResult,
    SearchLine,
    SearchMatch,
    SearchResult,
    ShellResult,
    UploadResult,
)
from qwq_agent.sandbox.snapshot import RestoreResult, Snapshot
from qwq_agent.sandbox.transport import DockerHost, TLSFiles

__all__ = [
    "DeadlineTooNear",
    "DestinationExists",
    "DockerHost",
    "DockerSandbox",
    "DockerUnreachable",
    "DownloadNotWritten",
    "DownloadResult",
    "FileResult",
    "HostFull",
    "InvalidRequest",
    "OutputChunk",
    "PathOutsideWorkspace",
    "PythonResult",
    "ResourceExhausted",
    "RestoreResult",
    "SandboxAcquireTimeout",
    "SandboxConfig",
    "SandboxConfigError",
    "SandboxDead",
    "SandboxError",
    "SandboxHostLost",
    "SandboxPool",
    "SandboxPoolClosed",
    "SandboxStartError",
    "SandboxTimeout",
    "SearchLine",
    "SearchMatch",
    "SearchResult",
    "ShellResult",
    "Snapshot",
    "SnapshotTooLarge",
    "TLSFiles",
    "ToolError",
    "UnsafeArchive",
    "UploadResult",
]
