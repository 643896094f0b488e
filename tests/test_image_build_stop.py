"""`qwq-agent sandbox build` stopped from outside, and two builds at once.

The CLI runs as a real process from a copy of the package whose `mkrootfs.sh` stands in for mmdebstrap:
it records its pids and waits like a long build (or, told so, fails at once), so the Debian path runs
for real up to the root filesystem without minutes of apt. The changed recipe file names an image that
does not exist, so nothing is ever tagged and the project's own image is never touched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

DEADLINE_S = 60.0

STANDIN = """#!/bin/bash
# Stands in for mmdebstrap (mkrootfs.sh OUTPUT_TAR DEB_CACHE PACKAGES): records the tarball path and
# the pids of itself and of a child, then waits on that child like a long build.
set -u
if [ -n "${STANDIN_FAIL:-}" ]; then echo "E: stand-in failed as told"; exit 3; fi
echo "I: stand-in building $1"
sleep 600 &
echo "$1 $$ $!" > "$STANDIN_DIR/started.tmp" && mv "$STANDIN_DIR/started.tmp" "$STANDIN_DIR/started"
wait
"""


def wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of qwq_agent whose recipe builds its root filesystem with the stand-in."""
    import qwq_agent

    if os.geteuid() != 0:
        pytest.skip("the Debian build path needs root")
    root = tmp_path_factory.mktemp("package")
    shutil.copytree(
        Path(qwq_agent.__file__).parent, root / "qwq_agent", ignore=shutil.ignore_patterns("__pycache__")
    )
    (root / "qwq_agent/sandbox/image/recipe/mkrootfs.sh").write_text(STANDIN)
    # ensure_mmdebstrap only looks for it on PATH (the stand-in never runs it): no apt-get in a test.
    (root / "bin").mkdir()
    fake = root / "bin/mmdebstrap"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    return root


@pytest.fixture()
def env(package_copy: Path, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "standin").mkdir()
    drop = ("QWQ_DEBUG", "QWQ_SANDBOX_IMAGE", "PYTHONPATH", "QWQ_SANDBOX_BUILD_WAIT")
    return {k: v for k, v in os.environ.items() if k not in drop} | {
        "PYTHONPATH": str(package_copy),
        "PATH": f"{package_copy / 'bin'}:{os.environ['PATH']}",
        "TMPDIR": str(tmp_path / "tmp"),  # where the build's qwq-image-* folder goes
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # the build lock and the deb cache
        "QWQ_SANDBOX_BUILD": "debian",
        "STANDIN_DIR": str(tmp_path / "standin"),
    }


def start_build(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "qwq_agent.cli.main", "sandbox", "build"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )


@pytest.fixture()
def reaper() -> Iterator[list[int]]:
    """Pids to kill at the end, whatever the test did (the old code left them running)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _signal_mid_build(
    proc: subprocess.Popen[str], tmp_path: Path, reaper: list[int], signum: int
) -> tuple[str, str]:
    """Send `signum` to the CLI once the stand-in mmdebstrap runs; its (stdout, stderr) once it has
    exited, after checking that the build's processes, its folder and its temporary files are gone."""
    started = tmp_path / "standin/started"
    try:
        wait_for(lambda: started.exists() or proc.poll() is not None, "the stand-in mmdebstrap")
        assert proc.poll() is None, proc.communicate()
        tarball, *pids = started.read_text().split()
        reaper.extend(int(p) for p in pids)
        build_dir = Path(tarball).parent
        assert build_dir.name.startswith("qwq-image-") and build_dir.is_dir()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [p for p in reaper if alive(p)] == [], "the build's processes outlived the CLI"
    assert not build_dir.exists(), f"{build_dir} was left behind"
    assert list((tmp_path / "tmp").iterdir()) == []
    return out, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_stops_the_build_its_child_processes_and_removes_the_build_folder(
    signum: int, env: dict[str, str], tmp_path: Path, reaper: list[int]
) -> None:
    # to the CLI alone, as systemd or a supervisor sends it
    proc = start_build(env, tmp_path)
    out, err = _signal_mid_build(proc, tmp_path, reaper, signum)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, (out, err)
    assert "Traceback" not in out + err
    assert err.strip() == f"qwq-agent sandbox build: interrupted by {name}", err


def _hold_the_build_lock(env: dict[str, str], holder_pid: int) -> int:
    """Take the build lock as another build would (its pid in the file); return the open descriptor."""
    lock = Path(env["XDG_CACHE_HOME"]) / "qwq-agent" / "image-build.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{holder_pid}\n".encode())
    return fd


def test_a_build_waiting_for_another_says_so_and_gives_up_at_its_deadline(
    env: dict[str, str], tmp_path: Path
) -> None:
    lock = Path(env["XDG_CACHE_HOME"]) / "qwq-agent" / "image-build.lock"
    fd = _hold_the_build_lock(env, 424242)
    proc = start_build(env | {"QWQ_SANDBOX_BUILD_WAIT": "1"}, tmp_path)
    try:
        # The old code waited on the lock forever: this bound is one it misses by any margin.
        out, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(fd)  # only once the waiter is gone: it must not go on to build
    assert "another build (pid 424242) is building the image; waiting" in out, (out, err)
    assert proc.returncode == 4, (out, err)
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith("qwq-agent sandbox build: ") and str(lock) in first, err
    assert not (tmp_path / "standin/started").exists()  # it never went on to build


def test_a_waiting_build_goes_on_once_the_other_one_ends(env: dict[str, str], tmp_path: Path) -> None:
    fd = _hold_the_build_lock(env, 424242)
    released = False
    proc = start_build(env | {"STANDIN_FAIL": "1"}, tmp_path)  # a build that gets that far fails at once
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: (
                any("is building the image; waiting" in line for line in lines) or proc.poll() is not None
            ),
            "the waiting line",
        )
        assert proc.poll() is None, (lines, proc.communicate())
        os.close(fd)
        released = True
        proc.wait(timeout=DEADLINE_S)
        reader.join(timeout=DEADLINE_S)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not released:
            os.close(fd)
    out = "".join(lines)
    assert "E: stand-in failed as told" in out, (out, err)  # it took the lock and went on to build
    assert proc.returncode == 4, (out, err)


def test_a_corrupt_owner_file_in_tmpdir_does_not_fail_the_build(env: dict[str, str], tmp_path: Path) -> None:
    # A build folder whose owner file is garbage (a torn write, a pid `str.isdigit` takes and `int`
    # refuses): the clean-up under the build lock raised, and every build after it failed with a traceback.
    left = tmp_path / "tmp" / "qwq-image-corrupt"
    left.mkdir()
    (left / "owner").write_bytes("\u00b2 123 x y\n".encode() + b"\xff\n")
    proc = subprocess.run(
        [sys.executable, "-m", "qwq_agent.cli.main", "sandbox", "build"],
        capture_output=True,
        text=True,
        env=env | {"STANDIN_FAIL": "1"},  # a build that gets that far fails at once
        cwd=tmp_path,
        timeout=DEADLINE_S,
    )
    assert "E: stand-in failed as told" in proc.stdout, (proc.stdout, proc.stderr)  # it went on to build
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)
    assert left.is_dir()  # whose owner cannot be told: left alone


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(name))
    return found


@pytest.mark.parametrize(
    ("rc", "child_output"),
    [(0, ">/dev/null 2>&1"), (3, ">/dev/null 2>&1"), (0, "")],
    ids=["succeeds", "fails", "succeeds-child-holds-the-output"],
)
def test_what_a_finished_build_left_in_its_group_is_stopped(
    rc: int, child_output: str, tmp_path: Path, reaper: list[int]
) -> None:
    # mkrootfs.sh's stand-in starts a background child (a daemon apt or gpg started, a hook's job) and
    # exits. The old code waited for its leader (or, the child holding the output, for ever), stood the
    # watchdog down and returned, the child still running in a group nobody watched any more.
    from qwq_agent.sandbox.image import debian
    from qwq_agent.sandbox.image.errors import ImageBuildError

    leader, child = tmp_path / "leader", tmp_path / "child"
    script = f"echo $$ > {leader}; sleep 600 </dev/null {child_output} & echo $! > {child}; exit {rc}"
    outcome: list[object] = []

    def build() -> None:
        try:
            debian._run_logged(["bash", "-c", script], lambda line: None)
            outcome.append("returned")
        except ImageBuildError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=build, daemon=True)
    worker.start()
    wait_for(child.exists, "the stand-in's child")
    reaper.append(int(child.read_text()))
    worker.join(DEADLINE_S)
    assert not worker.is_alive(), "_run_logged waited for the build's left-over child"
    pgid = int(leader.read_text())
    assert group_members(pgid) == [], "the build's process group outlived _run_logged"
    if rc == 0:
        assert outcome == ["returned"]
    else:
        assert len(outcome) == 1 and isinstance(outcome[0], ImageBuildError)
        assert f"exited with {rc}" in str(outcome[0])


def start_run(env: dict[str, str], tmp_path: Path, model_url: str) -> subprocess.Popen[str]:
    """`qwq-agent run` with a sandbox tool, so it builds the (missing) image before the run starts."""
    argv = ["run", "hi", "--model-url", model_url, "--tools", "python", "--trace", str(tmp_path / "t.jsonl")]
    return subprocess.Popen(
        [sys.executable, "-m", "qwq_agent.cli.main", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def test_sigterm_during_runs_image_build_stops_it_and_removes_the_build_folder(
    env: dict[str, str], tmp_path: Path, reaper: list[int]
) -> None:
    # run builds in a worker thread, where no signal reaches: the old code went on waiting for the
    # stand-in's 600 s child (the whole build) before it exited.
    from qwq_agent.testing.scripted_server import ScriptedModelServer

    with ScriptedModelServer(["unused"]) as server:
        proc = start_run(env, tmp_path, server.url)
        out, err = _signal_mid_build(proc, tmp_path, reaper, signal.SIGTERM)  # once, as `timeout` sends it
        generated = [r for r in server.requests if r.path == "/generate"]
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "Traceback" not in out + err
    assert "exiting without clean-up" not in err
    assert "SIGTERM: stopped before the run started; no trace was written" in out, (out, err)
    assert generated == []


def test_sigterm_while_runs_build_waits_for_the_lock_stops_the_wait(
    env: dict[str, str], tmp_path: Path
) -> None:
    from qwq_agent.testing.scripted_server import ScriptedModelServer

    fd = _hold_the_build_lock(env, 424242)
    # A wait the old code sat out in full: the CLI only exited once it ended.
    env = env | {"QWQ_SANDBOX_BUILD_WAIT": "3600"}
    lines: list[str] = []
    try:
        with ScriptedModelServer(["unused"]) as server:
            proc = start_run(env, tmp_path, server.url)
            assert proc.stdout is not None
            reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
            reader.start()
            try:
                wait_for(
                    lambda: (
                        any("is building the image; waiting" in line for line in lines)
                        or proc.poll() is not None
                    ),
                    "the waiting line",
                )
                assert proc.poll() is None, (lines, proc.communicate())
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=DEADLINE_S)
                reader.join(timeout=DEADLINE_S)
                err = proc.stderr.read() if proc.stderr else ""
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        os.close(fd)  # only once the waiter is gone: it must not go on to build
    out = "".join(lines)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "Traceback" not in out + err
    assert "SIGTERM: stopped before the run started; no trace was written" in out, (out, err)
    assert not (tmp_path / "standin/started").exists()  # it never went on to build


def test_a_sigkilled_build_leaves_nothing_running_and_the_next_build_removes_only_its_folder(
    env: dict[str, str], tmp_path: Path, reaper: list[int]
) -> None:
    # SIGKILL (the OOM killer, `kill -9`, a CI job's timeout) runs no clean-up: mmdebstrap, in a session
    # of its own, went on unowned, and its `qwq-image-*` folder stayed for good; the next build took the
    # freed lock and started a second mmdebstrap beside the first.
    def started(name: str) -> tuple[Path, list[int]]:
        path = tmp_path / name / "started"
        tarball, *pids = path.read_text().split()
        reaper.extend(int(p) for p in pids)
        return Path(tarball).parent, [int(p) for p in pids]

    for name in ("killed", "live"):
        (tmp_path / name).mkdir()
    killed = start_build(env | {"STANDIN_DIR": str(tmp_path / "killed")}, tmp_path)
    # Another build at the same time, of another cache (another user's, or a CI job's own): another
    # lock, the same $TMPDIR. It is alive: its folder must stay.
    live = start_build(
        env | {"STANDIN_DIR": str(tmp_path / "live"), "XDG_CACHE_HOME": str(tmp_path / "cache-live")},
        tmp_path,
    )
    try:
        for name, proc in (("killed", killed), ("live", live)):
            done = tmp_path / name / "started"
            wait_for(lambda done=done, proc=proc: done.exists() or proc.poll() is not None, name)
            assert proc.poll() is None, proc.communicate()
        killed_dir, killed_pids = started("killed")
        live_dir, live_pids = started("live")
        killed.kill()
        killed.communicate()
        wait_for(lambda: not any(alive(p) for p in killed_pids), "the killed build's processes to end")
        assert killed_dir.is_dir()  # nothing of the killed build could remove it

        after = subprocess.run(
            [sys.executable, "-m", "qwq_agent.cli.main", "sandbox", "build"],
            capture_output=True,
            text=True,
            env=env | {"STANDIN_FAIL": "1"},  # a build that gets that far fails at once
            cwd=tmp_path,
            timeout=DEADLINE_S,
        )
        assert "E: stand-in failed as told" in after.stdout, (after.stdout, after.stderr)
        assert not killed_dir.exists(), "the next build left the killed build's folder"
        assert f"removed {killed_dir}" in after.stdout, after.stdout
        assert live_dir.is_dir() and all(alive(p) for p in live_pids), "a live build's folder was removed"
        assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == [live_dir.name]
    finally:
        for proc in (killed, live):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # stops its mmdebstrap and removes its folder
                try:
                    proc.communicate(timeout=DEADLINE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
    assert list((tmp_path / "tmp").iterdir()) == []
