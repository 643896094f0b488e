"""Build folders left by dead image builds: which the next build removes, and which it must leave.

Real folders in a private `$TMPDIR`, real (finished) processes as their owners; no image is built.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwq_agent.process_identity import BOOT_ID, PID_NS, start_ticks
from qwq_agent.sandbox.image import build_dir

DEADLINE_S = 30.0


@pytest.fixture()
def tmpdir_(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A `$TMPDIR` of the test's own, where `remove_abandoned` looks."""
    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    yield base


def dead_owner_line() -> str:
    """An owner line as `build_dir` writes it, of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    ticks = start_ticks(proc.pid)  # unreaped, even once exited: its /proc entry stays until the wait
    proc.wait()
    assert ticks is not None and PID_NS
    return f"{proc.pid} {ticks} {BOOT_ID} {PID_NS}\n"


def folder(base: Path, name: str, owner: bytes | None = None) -> Path:
    path = base / f"{build_dir.PREFIX}{name}"
    path.mkdir(mode=0o700)
    if owner is not None:
        (path / build_dir.OWNER_FILE).write_bytes(owner)
    return path


def test_a_dead_builds_folder_is_removed_and_said(tmpdir_: Path) -> None:
    path = folder(tmpdir_, "dead", dead_owner_line().encode())
    logged: list[str] = []
    build_dir.remove_abandoned(logged.append)
    assert not path.exists()
    assert len(logged) == 1 and logged[0].startswith(f"removed {path}, left by a build that died"), logged


@pytest.mark.parametrize(
    "content",
    [
        # str.isdigit() takes "²"; int() refuses it (a ValueError out of the build lock, every build)
        f"\u00b2 123 {BOOT_ID} {PID_NS}\n".encode(),
        b"\xff\xfe\x00garbage\x80\n",  # not UTF-8: a torn or garbage write
        f"{(1 << 22) + 1} 123 {BOOT_ID} {PID_NS}\n".encode(),  # no such pid: not "dead"
        f"1 \u00b9\u00b2 {BOOT_ID} {PID_NS}\n".encode(),  # start ticks no ASCII number
        b"1" * 10_000_000,  # no owner line: not read in full either
    ],
    ids=["superscript-pid", "not-utf8", "pid-out-of-range", "superscript-ticks", "huge"],
)
def test_a_folder_whose_owner_file_is_corrupt_is_left_and_the_others_still_handled(
    tmpdir_: Path, content: bytes
) -> None:
    corrupt = folder(tmpdir_, "corrupt", content)
    dead = folder(tmpdir_, "zz-dead", dead_owner_line().encode())
    logged: list[str] = []
    build_dir.remove_abandoned(logged.append)  # used to raise ValueError/UnicodeDecodeError
    assert corrupt.is_dir() and (corrupt / build_dir.OWNER_FILE).read_bytes() == content
    assert not dead.exists()
    assert len(logged) == 1 and logged[0].startswith(f"removed {dead}, left by a build that died"), logged


def test_an_owner_file_that_is_a_link_is_not_followed(tmpdir_: Path, tmp_path: Path) -> None:
    # The link's target reads as a dead build's owner line: followed, the folder would go.
    target = tmp_path / "elsewhere"
    target.write_text(dead_owner_line())
    path = folder(tmpdir_, "link")
    (path / build_dir.OWNER_FILE).symlink_to(target)
    logged: list[str] = []
    build_dir.remove_abandoned(logged.append)
    assert path.is_dir() and logged == []


def test_a_fifo_named_owner_does_not_hang_the_clean_up(tmpdir_: Path) -> None:
    path = folder(tmpdir_, "fifo")
    fifo = path / build_dir.OWNER_FILE
    os.mkfifo(fifo)
    logged: list[str] = []
    errors: list[BaseException] = []

    def clean() -> None:
        try:
            build_dir.remove_abandoned(logged.append)
        except BaseException as exc:  # reported below
            errors.append(exc)

    worker = threading.Thread(target=clean, daemon=True)
    worker.start()
    worker.join(DEADLINE_S)
    hung = worker.is_alive()
    if hung:  # the old code waits in open() for a writer: give it one so the thread ends
        os.close(os.open(fifo, os.O_RDWR))
        worker.join(DEADLINE_S)
    assert not hung, "remove_abandoned waited on a FIFO named owner"
    assert errors == [] and logged == [] and path.is_dir()
