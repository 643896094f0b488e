"""Stage 1: the Debian bookworm base image, built with mmdebstrap and `docker import`ed.

No registry is needed: the root filesystem comes from the Debian mirrors over apt.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import docker

from qwq_agent.group_watchdog import GroupWatchdog
from qwq_agent.process_group import exited, group_lives
from qwq_agent.sandbox.image.build_dir import build_dir
from qwq_agent.sandbox.image.errors import BuildStopped, ImageBuildError
from qwq_agent.sandbox.image.progress import Stopwatch
from qwq_agent.sandbox.image.recipe import HASH_LABEL, LABEL, Recipe

# How long mmdebstrap, stopped mid-build, may take to clean up (unmount, remove its chroot).
STOP_GRACE_S = 10.0
# How often the wait on the root filesystem's output looks at the caller's stop flag.
STOP_POLL_S = 0.2

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

IMPORT_CHANGES = (
    "USER 1000:1000",
    "WORKDIR /workspace",
    f"ENV PATH={PATH}",
    "ENV LANG=C.UTF-8",
    "ENV MPLBACKEND=Agg",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    "ENV HOME=/home/sandbox",
    'CMD ["/bin/bash"]',
)


def import_changes(base_hash: str) -> list[str]:
    """The `docker import --change` instructions of the base image whose recipe hash is `base_hash`.

    `Recipe.base_hash` hashes this very list, so an edit here names a new base image.
    """
    return [*IMPORT_CHANGES, f"LABEL {LABEL}=1 {HASH_LABEL}={base_hash}"]


def deb_cache_dir() -> Path:
    """Where downloaded .debs are kept between builds (`QWQ_SANDBOX_DEB_CACHE` overrides)."""
    from qwq_agent.settings import get_settings

    settings = get_settings()
    return settings.sandbox_deb_cache or settings.cache_home / "qwq-agent" / "debs"


def ensure_mmdebstrap(log: Stopwatch) -> None:
    """Install mmdebstrap with apt when it is missing (a fresh CI machine has never built the image)."""
    if shutil.which("mmdebstrap"):
        return
    if os.geteuid() != 0:
        raise ImageBuildError(
            "mmdebstrap is not installed and installing it needs root: apt-get install mmdebstrap"
        )
    log("installing mmdebstrap with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "mmdebstrap"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageBuildError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def build_base(
    client: docker.DockerClient, recipe: Recipe, log: Stopwatch, *, stop: threading.Event | None = None
) -> str:
    """Build and import the base image; return its tag. `stop` set ends it with `BuildStopped`."""
    if os.geteuid() != 0:
        raise ImageBuildError("building the Debian base image needs root (mmdebstrap --mode=root)")
    ensure_mmdebstrap(log)
    tag = recipe.base_tag()
    cache = deb_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with build_dir() as tmp:
        tarball = tmp / "rootfs.tar"
        log(f"stage base: mmdebstrap bookworm (deb cache {cache})")
        _run_logged(
            [
                "bash",
                str(recipe.file("mkrootfs.sh")),
                str(tarball),
                str(cache),
                str(recipe.file("packages.txt")),
            ],
            log,
            stop,
        )
        size_mb = tarball.stat().st_size / 1e6
        log(f"stage base: docker import ({size_mb:.0f} MB root filesystem) as {tag}")
        repo, _, version = tag.partition(":")
        changes = import_changes(recipe.base_hash())
        try:
            client.api.import_image_from_file(str(tarball), repository=repo, tag=version, changes=changes)
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"docker import of the base image failed: {exc}") from exc
    return tag


def _run_logged(cmd: list[str], log: Stopwatch, stop: threading.Event | None = None) -> None:
    """Run `cmd`, forwarding mmdebstrap's `I:` lines; on failure, raise with the output's tail.

    `cmd` runs in a process group of its own. Whatever ends the wait early (a signal the CLI turned
    into `KeyboardInterrupt`, `stop` set from another thread, a broken progress sink) stops that whole
    group before it propagates: left running, mmdebstrap would go on writing into the build folder
    that is being removed. So does the end of `cmd` itself, done or failed: what it left in its group
    (a daemon, a background job) is stopped before this returns or raises. What this process cannot do, killed (SIGKILL), a watchdog does
    (`GroupWatchdog`): the group, in a session of its own, would run on with no owner, and the next
    build would start a second mmdebstrap beside it.
    """
    tail: collections.deque[str] = collections.deque(maxlen=60)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    with subprocess.Popen(
        # `cmd` starts once a line comes on stdin, when the watchdog is in place: this process killed
        # before that closes the pipe, and the shell exits at EOF without running anything.
        ["bash", "-c", 'read -r _ || exit 1; exec "$@" </dev/null', cmd[0], *cmd],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,  # a group to signal as one, apart from ours
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        watchdog: GroupWatchdog | None = None
        # Lines are read in a thread of their own: a read blocks until mmdebstrap writes, and this
        # thread must keep looking at `stop` (no signal reaches a worker thread).
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        try:
            watchdog = GroupWatchdog(proc.pid, STOP_GRACE_S)
            try:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            except OSError:
                pass  # it died already: its output and status say why
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            # Until the output ends or the leader exits: what it left behind (a daemon apt or gpg
            # started, a hook's background job) may hold the output open for ever.
            while (line := _next_line(lines, stop, lambda: exited(proc))) is not None:
                _take(line, tail, log)
            # The leader is done, the group not necessarily: what is left of it is stopped before the
            # watchdog stands down, as on the way out below, so nothing goes on writing into the build
            # folder (nor runs on, unwatched) once this returns.
            _stop_group(proc, before_reaping=watchdog.stand_down)
            rc = proc.wait()
        except BaseException:
            _stop_group(proc, before_reaping=watchdog.stand_down if watchdog is not None else None)
            raise
        finally:
            reader.join(timeout=STOP_GRACE_S)  # EOF once the group is gone; the pipe is closed next
    while True:  # what the reader took after the leader exited: the error's last lines, say
        try:
            line = lines.get_nowait()
        except queue.Empty:
            break
        if line is not None:
            _take(line, tail, log)
    if rc != 0:
        raise ImageBuildError(f"{cmd[0]} {cmd[1]} exited with {rc}:\n" + "\n".join(tail))


def _take(line: str, tail: collections.deque[str], log: Stopwatch) -> None:
    """Keep `line` for the error message; forward mmdebstrap's own progress and error lines."""
    tail.append(line)
    if line.startswith(("I: ", "E: ")):
        log(f"  {line}")


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Put each line of `stream` into `lines`, then None at its end."""
    try:
        for line in stream:
            lines.put(line.rstrip())
    except (OSError, ValueError):
        pass  # the pipe closed under us: the build is being given up
    finally:
        lines.put(None)


def _next_line(
    lines: queue.Queue[str | None], stop: threading.Event | None, done: Callable[[], bool]
) -> str | None:
    """The next line; None at the output's end, or once nothing came for a while and `done()` (the
    leader exited: lines still on their way are the caller's to collect). Raises `BuildStopped` once
    `stop` is set."""
    while True:
        if stop is not None and stop.is_set():
            raise BuildStopped()
        try:
            return lines.get(timeout=STOP_POLL_S)
        except queue.Empty:
            if done():
                return None


def _stop_group(
    proc: subprocess.Popen[str],
    grace_s: float = STOP_GRACE_S,
    before_reaping: Callable[[], None] | None = None,
) -> None:
    """SIGTERM the process group `proc` leads; SIGKILL what is left of it after `grace_s` (or at once
    when a second signal cuts the grace short). `before_reaping` is called once the group is dead,
    just before `proc` is reaped (the group's watchdog stands down there).

    The grace lets mmdebstrap unmount and remove its own chroot; the script that started it exits
    first, so the group, not `proc` alone, is waited for. `proc` is reaped only once its group is dead:
    until then its pid surely names its group (`qwq_agent.process_group`), after that it may be anyone's.
    """
    pgid = proc.pid
    try:
        if proc.returncode is None:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while group_lives(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if proc.returncode is None and group_lives(proc):  # `proc` unreaped: the id is its group's
            _signal_group(pgid, signal.SIGKILL)
        if before_reaping is not None:
            before_reaping()
        proc.wait()


def _signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to process group `pgid`; False when no process is left in it."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True
