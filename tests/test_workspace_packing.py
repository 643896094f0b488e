"""The workspace upload's archive, and the start-up check that it fits in one request.

The check counted a 512-byte header and the data per file; the archive also has a header per folder,
each file's data padded to 512 bytes, pax headers (long or non-ASCII names, long link targets, the
sub-second mtime of every entry), end blocks and record padding. A folder of 40 MiB and 22,000 empty
sub-folders passed the check, a sandbox was started, and only the upload refused it.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from qwq_agent.agent.workspace import NOT_COPIED
from qwq_agent.cli.errors import CliError
from qwq_agent.cli.preflight import check_workspace_fits
from qwq_agent.sandbox.config import SandboxConfig
from qwq_agent.sandbox.packing import fits_in_request, pack, packed_size
from qwq_agent.testing.scripted_server import ScriptedModelServer

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
MAX_REQUEST = SandboxConfig().max_request_bytes


def odd_workspace(root: Path) -> Path:
    """Every kind of entry whose size in a tar differs from "a header and the data"."""
    ws = root / "ws"
    ws.mkdir()
    for size in (0, 1, 511, 512, 513, 5000):
        (ws / f"f{size}").write_bytes(b"x" * size)
    (ws / ("long-name-" * 15)).write_text("a name over 100 characters\n")
    deep = ws.joinpath(*["folder-of-twenty-chr"] * 6)
    deep.mkdir(parents=True)
    (deep / "file.txt").write_text("a path over 100 characters\n")
    (ws / "café-ünïcode.txt").write_text("non-ASCII name\n")
    (ws / os.fsdecode(b"latin1-\xe9.txt")).write_bytes(b"a name that is not UTF-8\n")
    (ws / "link-long").symlink_to("target-" * 20)
    (ws / "link-dir").symlink_to("folder-of-twenty-chr")
    (ws / "f5000").rename(ws / "hard-a")
    os.link(ws / "hard-a", ws / "hard-b")
    (ws / "__pycache__").mkdir()
    (ws / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0" * 3000)
    (ws / "sub").mkdir()
    (ws / "sub" / "__pycache__").write_text("a file named like an excluded folder\n")
    for i in range(50):
        (ws / "empty" / str(i)).mkdir(parents=True)
    os.mkfifo(ws / "fifo")
    with socket.socket(socket.AF_UNIX) as s:  # tarfile has no type for a socket: left out
        s.bind(str(ws / "sock"))
    return ws


def tar_add(path: Path, exclude: tuple[str, ...]) -> bytes:
    """The archive as `FileOps.upload` made it before: `TarFile.add` of each entry."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.isfifo() or info.isdev():  # left out now: the sandbox refuses an archive holding one
            return None
        return None if set(exclude).intersection(Path(info.name).parts) else info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in sorted(path.iterdir()):
            tar.add(entry, arcname=entry.name, filter=keep)
    return buf.getvalue()


@pytest.mark.parametrize("exclude", [NOT_COPIED, ()])
def test_packed_size_is_the_size_of_the_archive_pack_makes(tmp_path, exclude):
    ws = odd_workspace(tmp_path)
    data = pack(ws, contents=True, exclude=exclude)
    assert data == tar_add(ws, exclude)  # the upload's archive is unchanged, byte for byte
    assert packed_size(ws, contents=True, exclude=exclude) == len(data)
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert ("__pycache__" in names) == (not exclude) and "sock" not in names and "fifo" not in names
    one = tmp_path / "ws" / "f513"
    assert packed_size(one) == len(pack(one)) == 10240  # a file, not a folder's contents


def test_the_start_up_check_refuses_exactly_what_the_upload_refuses(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.md").write_text("# notes\n")
    big = ws / "data.bin"

    def resize(size: int) -> None:
        with big.open("wb") as fh:
            fh.truncate(size)  # sparse: nothing on disk

    # The largest file with which the archive still fits (found without packing: sizes only).
    low, high = 0, MAX_REQUEST
    while low < high:
        mid = (low + high + 1) // 2
        resize(mid)
        if fits_in_request(packed_size(ws, contents=True, exclude=NOT_COPIED), MAX_REQUEST):
            low = mid
        else:
            high = mid - 1
    for size, fits in ((low, True), (low + 1, False)):
        resize(size)
        uploaded = pack(ws, contents=True, exclude=NOT_COPIED)  # what `FileOps.upload` sends, or refuses
        assert fits_in_request(len(uploaded), MAX_REQUEST) is fits
        if fits:
            check_workspace_fits(ws)
        else:
            with pytest.raises(CliError, match="packs to more than 48 MiB"):
                check_workspace_fits(ws)


def test_run_refuses_a_workspace_of_many_folders_before_any_sandbox(tmp_path):
    ws = tmp_path / "ws"
    (ws / "d").mkdir(parents=True)
    with (ws / "big.bin").open("wb") as fh:
        fh.truncate(40 * 2**20)  # under the 48 MiB
    for i in range(22000):  # a header each in the archive: 0 bytes in the old count
        (ws / "d" / str(i)).mkdir()
    # Docker cannot be reached: refused any later, it would be for that (exit 4), not the workspace.
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"}
    with ScriptedModelServer(["ok\n</think>\n\nDone."]) as model:
        proc = subprocess.run(
            [*CLI, "run", "hi", "--model-url", model.url, "--tools", "python", "--workspace", str(ws),
             "--trace", str(tmp_path / "t.jsonl")],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        asked = len(model.requests)
    assert proc.returncode == 2, proc.stderr
    what, fix = proc.stderr.splitlines()
    assert f"workspace {ws} packs to more than 48 MiB" in what and fix.startswith("  fix: pass a folder")
    assert asked == 0


async def test_a_fifo_in_the_workspace_is_left_out_of_the_upload_and_named(tmp_path, sandbox_image):
    """A FIFO passed the start-up check, a sandbox started, and the upload was refused whole ("entry
    'pipe': not a regular file or directory"): one stray named pipe failed every run on its folder.
    FIFOs are left out as sockets are, and named, both, in what the upload says it skipped."""
    from qwq_agent.agent.workspace import open_sandbox

    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "main.py").write_text("print('hi')\n")
    os.mkfifo(ws / "pipe")
    os.mkfifo(ws / "sub" / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(ws / "sock"))
    left_out: list[str] = []
    data = pack(ws, contents=True, left_out=left_out)
    assert sorted(left_out) == ["pipe", "sock", os.path.join("sub", "fifo")]
    assert tarfile.open(fileobj=io.BytesIO(data)).getnames() == ["main.py", "sub"]
    assert packed_size(ws, contents=True) == len(data)
    check_workspace_fits(ws)
    async with open_sandbox(workspace=ws, image=sandbox_image) as sb:
        listing = await sb.shell("cd /workspace && find . -mindepth 1 | sort")
        uploaded = sb.last_upload
    assert listing.stdout.split() == ["./main.py", "./sub"]
    assert uploaded is not None
    assert sorted(uploaded.skipped) == sorted(left_out) and uploaded.skipped_count == 3
