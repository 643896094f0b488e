"""Typed failures of the sandbox layer; every error the supervisor reports maps onto one of these."""

from __future__ import annotations


class SandboxError(Exception):
    """Base class of every sandbox failure."""


class SandboxStartError(SandboxError):
    """The container could not be created or its supervisor did not say hello in time."""


class SandboxDead(SandboxError):
    """The container or its supervisor is gone (killed, crashed, idle or lifetime limit reached).

    With `SandboxConfig.auto_replace` the next call starts a fresh sandbox and its result says so.
    """


class SandboxTimeout(SandboxError):
    """The supervisor did not answer in time; the container was killed so it cannot linger."""


class InvalidRequest(SandboxError):
    """The request was malformed, oversized or refused before anything ran."""


class DeadlineTooNear(InvalidRequest):
    """Too little of the call's deadline was left to start it: a command the sandbox cannot stop once it
    runs (an editor command) would outlive its reply wait, and the sandbox be killed for it. Nothing ran."""


class PathOutsideWorkspace(InvalidRequest):
    """A file operation named a path that resolves outside the workspace (directly or through a link)."""


class UnsafeArchive(InvalidRequest):
    """A tar archive had absolute paths, `..` components, links leaving it or special files.

    Raised by a download with the whole archive in hand, `archive` holds it as it came (unchecked), as
    `DownloadNotWritten` does: a caller whose sandbox holds the only copy can keep it elsewhere."""

    archive: bytes | None = None


class DestinationExists(InvalidRequest):
    """A download would overwrite something already on the host; nothing was written. `archive` holds
    the tar the sandbox sent (unchecked), for a caller whose sandbox holds the only copy to keep."""

    archive: bytes | None = None


class DownloadNotWritten(OSError):
    """The host's disk failed a download (full, read-only, out of inodes): what it wrote was removed
    again. `archive` is the tar the sandbox sent, unchecked (it is the sandbox's: list it before
    extracting it), so that a caller whose sandbox holds the only copy can keep it elsewhere. The
    errno, message and file name are the disk's own error's."""

    def __init__(self, cause: OSError, archive: bytes) -> None:
        if cause.errno is None:
            super().__init__(*cause.args)
        else:
            super().__init__(cause.errno, cause.strerror, cause.filename, None, cause.filename2)
        self.archive = archive


class SnapshotTooLarge(SandboxError):
    """A snapshot's archive would exceed its size cap (`max_bytes`); nothing was kept."""


class ResourceExhausted(SandboxError):
    """The supervisor could not start a thread for the request (the sandbox's pids limit is spent)."""


class ToolError(SandboxError):
    """A file operation failed the way `str_replace_editor` reports it (no match, bad range, ...).

    The message is meant for the model, worded like the tool reasoning models were trained on.
    """


class SandboxConfigError(SandboxStartError):
    """The start failed for a reason of the configuration or image, not of the host: the image's supervisor
    does not run under its own uid. Another host would fail the same, so a pool over several does not
    try them, nor set this one aside."""


class DockerUnreachable(SandboxStartError):
    """The Docker engine could not be reached, or did not answer within the call's timeout.

    A subclass of `SandboxStartError` because no sandbox can start without the engine; its message names
    the engine's socket and the call that failed.
    """


class SandboxAcquireTimeout(SandboxStartError):
    """`SandboxPool.acquire()` found no working sandbox within its time limit."""


class SandboxPoolClosed(SandboxError):
    """`SandboxPool.acquire()` on a pool that is closed, or that closed while the acquire waited."""


class DockerAPIError(SandboxError):
    """The Docker engine refused a request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Docker API error {status}: {message}")
        self.status = status


_BY_KIND: dict[str, type[SandboxError]] = {
    "InvalidRequest": InvalidRequest,
    "PathOutsideWorkspace": PathOutsideWorkspace,
    "UnsafeArchive": UnsafeArchive,
    "ResourceExhausted": ResourceExhausted,
    "ToolError": ToolError,
    "SnapshotTooLarge": SnapshotTooLarge,
}


def error_from_reply(error: dict[str, str]) -> SandboxError:
    """The exception for a supervisor error reply `{"type": ..., "message": ...}`."""
    kind = error.get("type", "InternalError")
    message = error.get("message", "")
    cls = _BY_KIND.get(kind, SandboxError)
    return cls(message if cls is not SandboxError else f"{kind}: {message}")


class SandboxHostLost(SandboxDead):
    """The Docker host the sandbox ran on went away (the engine, or the ssh/TLS link to it, stopped
    answering): the sandbox and its state are gone, and no replacement can start there.

    A `SandboxPool` over several hosts keeps serving from the others; acquire again to go on.
    """
