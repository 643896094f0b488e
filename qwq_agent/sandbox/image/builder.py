"""`ensure_image`: make the sandbox image exist, building only the stages whose recipe changed."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import docker

from qwq_agent.sandbox.connector import Connector
from qwq_agent.sandbox.image.build_dir import remove_abandoned
from qwq_agent.sandbox.image.debian import build_base
from qwq_agent.sandbox.image.errors import BuildLockTimeout, BuildStopped, ImageBuildError
from qwq_agent.sandbox.image.final import build_final
from qwq_agent.sandbox.image.mode import choose_mode, requested_mode
from qwq_agent.sandbox.image.progress import ProgressFn, Stopwatch
from qwq_agent.sandbox.image.recipe import Recipe
from qwq_agent.sandbox.transport import default_connector, docker_from_env

# How often a build waiting for another one tries the lock again (flock itself has no deadline).
LOCK_POLL_S = 0.5
# Each docker-py call of a build (lookups, the import, the build stream's reads) is bounded by this.
DOCKER_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BuildResult:
    """What `build_image` did: the tag, whether anything was built, how long it took, image size."""

    tag: str
    built: bool
    seconds: float
    size_bytes: int
    mode: str | None


def image_tag(recipe: Recipe | None = None) -> str:
    """The final image's tag for the current recipe, computed without building or touching Docker."""
    return (recipe or Recipe()).image_tag()


def image_exists(tag: str, client: docker.DockerClient | None = None) -> bool:
    """True when the local engine has an image with this tag."""
    if not tag or not isinstance(tag, str):
        raise ValueError(f"image tag must be a non-empty string, got {tag!r}")
    own = client is None
    client = client or docker_from_env()
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        if own:
            client.close()


def ensure_image(
    *, progress: ProgressFn = print, force: bool = False, connector: Connector | None = None
) -> str:
    """Make sure the sandbox image exists and return its tag (`qwq-agent-sandbox:<hash>`).

    Does nothing when the tag exists (unless `force`). Otherwise builds the base stage if its own
    tag is missing (or `force`) and then the final stage. `connector` names the engine the image must
    exist on (default: the `DOCKER_HOST` one). Raises `ImageBuildError` on failure.
    """
    return build_image(progress=progress, force=force, connector=connector).tag


def build_image(
    *,
    progress: ProgressFn = print,
    force: bool = False,
    recipe: Recipe | None = None,
    stop: threading.Event | None = None,
    connector: Connector | None = None,
) -> BuildResult:
    """Like `ensure_image`, returning a `BuildResult` with timing and size.

    `stop`, set from another thread (a caller running the build in a worker thread, where no signal
    reaches it), ends the build soon: the lock wait, the root filesystem's process group and the
    `docker build` stream watch it. The build's processes are stopped and its folder removed before
    `BuildStopped` is raised.
    """
    try:
        requested_mode()  # a bad QWQ_SANDBOX_BUILD is reported before any work, built or not
    except ValueError as exc:
        raise ImageBuildError(str(exc)) from exc
    recipe = recipe or Recipe()
    log = Stopwatch(progress)
    tag = recipe.image_tag()
    # The engine the sandboxes will start on: each Docker host of a pool needs the image in its own store.
    connector = connector or default_connector()
    try:
        client = connector.docker_client(DOCKER_TIMEOUT_S)  # asks the engine its API version
    except docker.errors.DockerException as exc:
        raise ImageBuildError(
            f"cannot ask the Docker engine at {connector.url} for the sandbox image: {exc}"
        ) from exc
    try:
        if not force and image_exists(tag, client):
            return BuildResult(tag, False, log.elapsed, _size(client, tag), None)
        # Several test sessions may ask at once; one builds, the others find the tag afterwards.
        with _build_lock(log, stop):
            remove_abandoned(log)  # what a build that was killed left (its processes: its watchdog's)
            if not force and image_exists(tag, client):
                log(f"{tag} was built by another process meanwhile")
                return BuildResult(tag, False, log.elapsed, _size(client, tag), None)
            mode = choose_mode(client, connector)
            log(f"building {tag} ({mode} path)")
            if mode == "dockerfile":
                build_final(client, recipe, log, dockerfile="slim.Dockerfile", pull=True, stop=stop)
            else:
                base = recipe.base_tag()
                if force or not image_exists(base, client):
                    build_base(client, recipe, log, stop=stop)
                else:
                    log(f"stage base: {base} exists, reused")
                build_final(
                    client, recipe, log, dockerfile="final.Dockerfile", buildargs={"BASE": base}, stop=stop
                )
            size = _size(client, tag)
            log(f"done: {tag} built in {log.elapsed:.1f}s, image size {size / 1e6:.0f} MB")
            return BuildResult(tag, True, log.elapsed, size, mode)
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"Docker engine error while building the sandbox image: {exc}") from exc
    finally:
        client.close()


def _size(client: docker.DockerClient, tag: str) -> int:
    return int(client.images.get(tag).attrs.get("Size", 0))


def _lock_path() -> Path:
    from qwq_agent.settings import get_settings

    base = get_settings().cache_home / "qwq-agent"
    base.mkdir(parents=True, exist_ok=True)
    return base / "image-build.lock"


@contextlib.contextmanager
def _build_lock(log: Stopwatch, stop: threading.Event | None = None) -> Iterator[None]:
    """Hold the lock that serialises builds; wait for another holder at most `QWQ_SANDBOX_BUILD_WAIT`.

    The holder writes its pid into the file, so a waiter can say whom it waits for. Raises
    `BuildLockTimeout` when the wait runs out, `BuildStopped` when `stop` is set during it.
    """
    from qwq_agent.settings import get_settings

    path = _lock_path()
    # Opened without truncating: the pid in it is the holder's, for waiters to read.
    with open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+") as fh:
        if not _try_lock(fh):
            wait_s = get_settings().sandbox_build_wait_s
            holder = _holder_pid(fh)
            who = f"pid {holder}" if holder is not None else "pid unknown"
            log(f"another build ({who}) is building the image; waiting (at most {wait_s:.0f}s, lock {path})")
            deadline = time.monotonic() + wait_s
            while not _try_lock(fh):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BuildLockTimeout(path, _holder_pid(fh) or holder, wait_s)
                if stop is None:
                    time.sleep(min(LOCK_POLL_S, left))
                elif stop.wait(min(LOCK_POLL_S, left)):
                    raise BuildStopped()
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def _try_lock(fh: IO[str]) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder_pid(fh: IO[str]) -> int | None:
    """The pid the lock's holder wrote, None when there is none (an older qwq-agent writes none)."""
    fh.seek(0)
    text = fh.read(32).strip()
    return int(text) if text.isascii() and text.isdigit() else None
