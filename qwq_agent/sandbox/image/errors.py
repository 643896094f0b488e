"""The errors the image build raises: `ImageBuildError`, and its kind for a build lock waited on in vain."""

from __future__ import annotations

from pathlib import Path


class ImageBuildError(RuntimeError):
    """Building the sandbox image failed; the message says which stage and why."""


class BuildLockTimeout(ImageBuildError):
    """Another process held the build lock past the wait's deadline (`QWQ_SANDBOX_BUILD_WAIT`).

    `holder_pid` is the pid that process wrote into `lock_path`, None when unknown.
    """

    def __init__(self, lock_path: Path, holder_pid: int | None, waited_s: float) -> None:
        holder = f"pid {holder_pid}" if holder_pid is not None else "pid unknown"
        super().__init__(
            f"another build ({holder}) still held the lock {lock_path} after {waited_s:.0f}s of waiting"
        )
        self.lock_path = lock_path
        self.holder_pid = holder_pid
        self.waited_s = waited_s


class BuildStopped(ImageBuildError):
    """The caller's stop flag was set: the build gave up, its processes stopped and build folder removed."""

    def __init__(self) -> None:
        super().__init__("the image build was stopped")
