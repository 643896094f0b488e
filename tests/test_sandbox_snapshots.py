"""Sandbox snapshots on real containers: round trips, hostile sandboxes and archives, caps, replay, pool."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from qwq_agent.sandbox import (
    DockerSandbox,
    InvalidRequest,
    SandboxConfig,
    SandboxPool,
    ToolError,
    UnsafeArchive,
)
from qwq_agent.sandbox.cells import CellLog
from qwq_agent.sandbox.errors import SnapshotTooLarge
from qwq_agent.sandbox.protocol import PythonResult
from qwq_agent.sandbox.snapshot import RestoreRequest, Snapshot
from qwq_agent.sandbox.snapshotting import _Receiver

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="module")]

# Every path, its mode, owner, type, size, link target and link count; and every file's sha256.
LISTING = (
    "cd / && find /workspace /home/sandbox -mindepth 1 -printf '%p|%m|%u|%g|%y|%s|%l|%n\\n' | sort"
    " && find /workspace /home/sandbox -type f -perm -u=r -exec sha256sum {} + | sort"
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(sandbox_image: str) -> AsyncIterator[tuple[DockerSandbox, DockerSandbox]]:
    """A source and a destination sandbox, shared by this module's tests (each restore empties them)."""
    config = SandboxConfig(image=sandbox_image)
    async with DockerSandbox.create(config) as src, DockerSandbox.create(config) as dst:
        yield src, dst


def archive(build: Callable[[tarfile.TarFile], None]) -> Snapshot:
    """A snapshot made by hand around a tar built by `build` (what a tampered host copy could hold)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root in ("workspace", "home"):
            info = tarfile.TarInfo(root)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        build(tar)
    return raw_snapshot(buf.getvalue())


def raw_snapshot(data: bytes) -> Snapshot:
    return Snapshot(
        id="handmade",
        created_at=datetime.now(UTC),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        data=data,
    )


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, len(data), linkname, 0o644
    return info


def add(
    tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""
) -> None:
    tar.addfile(entry(name, kind, data, link), io.BytesIO(data) if data else None)


async def empty(sb: DockerSandbox) -> None:
    await sb.restore(archive(lambda tar: None))


async def sh(sb: DockerSandbox, command: str) -> str:
    r = await sb.shell(command)
    assert r.exit_code == 0, (command, r.stdout, r.stderr)
    return r.stdout


async def test_round_trip_keeps_files_modes_links_owners_and_home(pair) -> None:
    src, dst = pair
    await empty(src)
    await sh(
        src,
        "cd /workspace && mkdir -p pkg/sub empty locked private && echo 'print(1)' > pkg/main.py"
        " && printf 'x%.0s' $(seq 3000) > pkg/sub/data.txt && chmod 640 pkg/sub/data.txt"
        " && printf '#!/bin/sh\\necho run\\n' > run.sh && chmod 755 run.sh && echo s > private/key && chmod 700 private"
        " && echo ro > locked/file && chmod 555 locked && ln -s pkg/main.py rel_link && ln -s /workspace/run.sh abs_link"
        " && ln -s missing dangling && ln pkg/main.py hard && echo u > 'name with spaces é' && touch $'raw\\xff'"
        " && touch -d '2001-02-03 04:05:06' pkg/main.py && mkdir -p ~/.config && echo cfg > ~/.config/tool.toml",
    )
    await sh(dst, "echo stale > /workspace/stale && echo stale > ~/stale")
    before = await sh(src, LISTING)
    snap = await src.snapshot()
    assert snap.skipped == [] and snap.entries >= 15 and snap.verify()
    result = await dst.restore(snap)
    assert result.python_state == "fresh" and result.entries == snap.entries
    assert await sh(dst, LISTING) == before  # same tree, same modes, the user's, the same bytes
    assert "|sandbox|sandbox|" in before and "|root|" not in before
    assert await sh(dst, "stat -c %Y /workspace/pkg/main.py") == await sh(
        src, "stat -c %Y /workspace/pkg/main.py"
    )
    assert await sh(dst, "cd /workspace && ./run.sh && cat rel_link && readlink abs_link")
    assert (await dst.shell("echo no > /workspace/locked/new")).exit_code != 0  # still read-only
    assert "stale" not in await sh(dst, "ls -A /workspace ~")


async def test_snapshot_of_a_hostile_sandbox_skips_specials_and_restores_links_as_links(pair) -> None:
    src, dst = pair
    await empty(src)
    passwd = await sh(dst, "sha256sum /etc/passwd")
    await sh(
        src,
        "cd /workspace && ln -s /etc/passwd pw && ln -s / root && ln -s a b && ln -s b a && mkfifo fifo"
        " && echo secret > unreadable && chmod 000 unreadable && mkdir closed && chmod 000 closed"
        " && python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('/workspace/sock')\""
        " && d=deep; for i in $(seq 120); do d=$d/d; done; mkdir -p $d && echo bottom > $d/f",
    )
    snap = await src.snapshot()  # neither the FIFO nor the unreadable file may block or fail it
    skipped = " ".join(snap.skipped)
    for name in ("fifo: FIFO", "sock: socket", "unreadable", "closed/"):
        assert name in skipped, snap.skipped
    await dst.restore(snap)
    out = await sh(
        dst, "cd /workspace && readlink pw root a && ls -A && cat deep/$(printf 'd/%.0s' $(seq 120))f"
    )
    assert out.splitlines()[:3] == ["/etc/passwd", "/", "b"]
    assert "fifo" not in out and "sock" not in out and out.endswith("bottom\n")
    assert await sh(dst, "sha256sum /etc/passwd") == passwd


def _symlink_parent(tar: tarfile.TarFile) -> None:
    add(tar, "workspace/evil", tarfile.SYMTYPE, link="/etc")
    add(tar, "workspace/evil/passwd", data=b"owned\n")


def _dir_then_link(tar: tarfile.TarFile) -> None:
    add(tar, "workspace/d", tarfile.DIRTYPE)
    add(tar, "workspace/d", tarfile.SYMTYPE, link="/etc")
    add(tar, "workspace/d/passwd", data=b"owned\n")


HOSTILE: dict[str, Callable[[tarfile.TarFile], None]] = {
    "dot-dot": lambda tar: add(tar, "workspace/../etc/x", data=b"x"),
    "absolute": lambda tar: add(tar, "/etc/x", data=b"x"),
    "outside the roots": lambda tar: add(tar, "tmp/x", data=b"x"),
    "file under a symlink": _symlink_parent,
    "a directory replaced by a link": _dir_then_link,
    "parent not in the archive": lambda tar: add(tar, "workspace/nodir/x", data=b"x"),
    "character device": lambda tar: add(tar, "workspace/null", tarfile.CHRTYPE),
    "fifo": lambda tar: add(tar, "workspace/p", tarfile.FIFOTYPE),
    "hard link out": lambda tar: add(tar, "workspace/pw", tarfile.LNKTYPE, link="/etc/passwd"),
    "hard link to a dir": lambda tar: add(tar, "workspace/h", tarfile.LNKTYPE, link="workspace"),
    "gnu sparse": lambda tar: add(tar, "workspace/s", tarfile.GNUTYPE_SPARSE),
    "a root as a file": lambda tar: add(tar, "home", data=b"x"),
    "overlong link target": lambda tar: add(tar, "workspace/l", tarfile.SYMTYPE, link="a" * 5000),
    "overlong name": lambda tar: add(tar, "workspace/" + "n" * 300, data=b"x"),
}


async def test_a_snapshot_survives_json_and_a_tampered_one_fails_to_verify() -> None:
    snap = archive(lambda tar: add(tar, "workspace/f", data=bytes(range(256))))
    back = Snapshot.model_validate_json(snap.model_dump_json())
    assert back == snap and back.verify()
    forged = Snapshot.model_validate_json(snap.model_dump_json().replace(snap.sha256, "0" * 64))
    assert not forged.verify()


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_hostile_archives_are_refused_and_change_nothing(pair, kind: str) -> None:
    _, dst = pair
    await sh(dst, "echo keep > /workspace/marker")
    with pytest.raises(UnsafeArchive):
        await dst.restore(archive(HOSTILE[kind]))
    assert await sh(dst, "cat /workspace/marker && test ! -e /etc/x") == "keep\n"
    assert "owned" not in await sh(dst, "cat /etc/passwd")


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * 1024 + os.urandom(1000),  # not a tar at all
        b"",  # empty
    ],
)
async def test_garbage_archives_are_refused(pair, data: bytes) -> None:
    _, dst = pair
    await sh(dst, "echo keep > /workspace/marker")
    with pytest.raises(UnsafeArchive):
        await dst.restore(raw_snapshot(data))
    assert await sh(dst, "cat /workspace/marker") == "keep\n"


async def test_an_archive_claiming_more_data_than_it_holds_is_refused(pair) -> None:
    _, dst = pair
    good = archive(lambda tar: add(tar, "workspace/big", data=b"y" * 4096)).data
    cut = good[: good.index(b"y" * 512) + 512]  # the header says 4096 bytes; 512 are there
    await sh(dst, "echo keep > /workspace/marker")
    with pytest.raises(UnsafeArchive):
        await dst.restore(raw_snapshot(cut))
    assert await sh(dst, "cat /workspace/marker") == "keep\n"


async def test_checksums_are_verified_on_the_host_and_in_the_sandbox(pair) -> None:
    _, dst = pair
    good = archive(lambda tar: add(tar, "workspace/f", data=b"fine"))
    assert good.verify() and good.verified
    tampered = good.model_copy(update={"data": good.data.replace(b"fine", b"evil")})
    assert not tampered.verified  # a copy with other data is hashed again, not trusted
    with pytest.raises(UnsafeArchive, match="does not match its sha256"):
        await dst.restore(tampered)
    await sh(dst, "echo keep > /workspace/marker")
    with pytest.raises(UnsafeArchive, match="sha256"):  # what the sandbox checks by itself
        await dst._call_raw(RestoreRequest(sha256="0" * 64), 30, blob=good.data)
    assert await sh(dst, "cat /workspace/marker") == "keep\n"


async def test_the_cap_refuses_big_and_sparse_workspaces_and_the_sandbox_lives_on(pair) -> None:
    src, _ = pair
    await empty(src)
    await sh(src, "head -c 2000000 /dev/urandom > /workspace/blob")
    with pytest.raises(SnapshotTooLarge, match="1000000"):
        await src.snapshot(max_bytes=1_000_000)
    await sh(src, "truncate -s 900M /workspace/sparse")  # 900 MB claimed, nothing stored
    with pytest.raises(SnapshotTooLarge):
        await src.snapshot()
    await sh(src, "rm /workspace/sparse")
    assert (await src.snapshot(max_bytes=3_000_000)).size_bytes > 2_000_000
    assert (await src.ping()).pong


async def test_replay_rebuilds_the_interpreter_and_fresh_says_so(pair) -> None:
    src, dst = pair
    await empty(src)
    await sh(src, "echo 20 > /workspace/n.txt && echo tmp > /tmp/scratch")
    assert (await src.python("x = 41")).ok
    assert (await src.python("def f():\n    return int(open('/workspace/n.txt').read())")).ok
    assert not (await src.python("1 / 0")).ok  # failed originally: a failure on replay is expected
    assert (await src.python("s = open('/tmp/scratch').read()")).ok  # /tmp is not in a snapshot
    assert (await src.python("import time; time.sleep(30)", timeout=0.5)).timed_out
    snap = await src.snapshot()
    assert snap.cells is not None and [c.ok for c in snap.cells] == [True, True, False, True, False]

    replayed = await dst.restore(snap, python_state="replay")
    # A cell that ran fine originally raised on replay: the interpreter is only partly rebuilt.
    assert replayed.python_state == "partly_replayed" and replayed.replayed_cells == 4
    assert replayed.skipped_cells == 1  # the cell that timed out is not run again
    assert [f.index for f in replayed.failed_cells] == [3]
    assert "FileNotFoundError" in replayed.failed_cells[0].error
    assert (await dst.python("x + f() + 1")).value == "62"

    fresh = await dst.restore(snap)
    assert fresh.python_state == "fresh" and fresh.replayed_cells == 0 and "fresh" in fresh.note
    r = await dst.python("x")
    assert r.error is not None and r.error.ename == "NameError"
    assert (await dst.python("open('/workspace/n.txt').read()")).value == "'20\\n'"


async def test_replay_leaves_the_files_exactly_as_the_snapshot_holds_them(pair) -> None:
    src, dst = pair
    await empty(src)
    await sh(src, "echo hello > /workspace/scratch.txt")
    assert (await src.python("with open('/workspace/results.csv', 'a') as f:\n    f.write('row\\n')")).ok
    consume = "import os\ndata = open('/workspace/scratch.txt').read()\nos.remove('/workspace/scratch.txt')"
    assert (await src.python(consume)).ok
    assert (await src.python("kept = 7")).ok
    snap = await src.snapshot()
    want = await sh(src, LISTING)
    assert "results.csv" in want and "scratch.txt" not in want

    result = await dst.restore(snap, python_state="replay")
    # The replayed cells appended their row again and found no scratch file: the files were put back
    # after the replay, exactly as the snapshot holds them.
    assert await sh(dst, LISTING) == want
    assert await sh(dst, "cat /workspace/results.csv") == "row\n"
    # The interpreter keeps what the replay built; the cell that failed is named, and said so.
    assert result.replayed_cells == 3 and [f.index for f in result.failed_cells] == [1]
    assert "FileNotFoundError" in result.failed_cells[0].error
    assert result.python_state == "partly_replayed" and "1 failed on replay" in result.note
    assert (await dst.python("kept")).value == "7"
    missing = await dst.python("data")
    assert missing.error is not None and missing.error.ename == "NameError"


async def test_a_replayed_cell_gets_the_limit_it_ran_under(pair) -> None:
    src, dst = pair
    await empty(src)
    await sh(src, "echo 0.1 > /workspace/d")
    nap = "import time\ntime.sleep(float(open('/workspace/d').read()))\nslept = 1"
    assert (await src.python(nap, timeout=2)).ok
    await sh(src, "echo 30 > /workspace/d")  # the same cell, replayed, would now sleep 30 s
    assert (await src.python("after = 2")).ok
    snap = await src.snapshot()
    assert snap.cells is not None and [c.timeout for c in snap.cells] == [2, src.config.python_timeout_s]

    started = time.monotonic()
    result = await dst.restore(snap, python_state="replay")
    # Its own 2 s limit, not the 60 s default (which let the replay sleep the whole 30 s).
    assert time.monotonic() - started < 10
    assert [f.index for f in result.failed_cells] == [0] and "timed out" in result.failed_cells[0].error
    assert result.python_state == "partly_replayed" and result.replayed_cells == 2
    assert (await dst.python("after")).value == "2"


async def test_a_replay_ends_within_the_restores_time_limit(pair) -> None:
    src, dst = pair
    await empty(src)
    assert (await src.python("x = 1")).ok
    assert (await src.python("import time\ntime.sleep(4)\ny = 2", timeout=30)).ok
    assert (await src.python("z = 3")).ok
    snap = await src.snapshot()

    started = time.monotonic()
    result = await dst.restore(snap, python_state="replay", timeout=5)
    # The first cell runs; the 4 s one gets only what is left of the 5 s (less the interrupt's grace)
    # and is interrupted; then no time is left to start the last one. The old replay took the whole
    # history again, whatever the limit.
    assert time.monotonic() - started < 3.5
    assert result.replayed_cells == 2 and result.unreplayed_cells == 1
    [cut, unrun] = result.failed_cells
    assert cut.index == 1 and "timed out" in cut.error and "5 s limit" in cut.error
    assert unrun.index == 2 and "not run" in unrun.error and "5 s limit" in unrun.error
    assert result.python_state == "partly_replayed" and "not run" in result.note
    assert (await dst.python("x")).value == "1"
    assert (await dst.python("y")).error is not None


async def test_restore_stops_the_old_interpreter_writing_into_the_workspace(pair) -> None:
    src, dst = pair
    await empty(src)
    await sh(src, "echo only > /workspace/only")
    snap = await src.snapshot()
    writer = (
        "import threading, time\n"
        "def scribble():\n"
        "    i = 0\n"
        "    while True:\n"
        "        open(f'/workspace/junk{i % 20}', 'w').write('x'); i += 1; time.sleep(0.001)\n"
        "threading.Thread(target=scribble, daemon=True).start()"
    )
    assert (await dst.python(writer)).ok
    # Wait (bounded) until it is writing.
    await sh(dst, "for i in $(seq 100); do ls /workspace | grep -q junk && exit 0; sleep 0.1; done; exit 1")
    await dst.restore(snap)
    assert (await dst.python("import threading; threading.active_count()")).value == "1"  # the writer is gone
    assert await sh(dst, "ls -A /workspace") == "only\n"


async def holding_python(sb: DockerSandbox, flag: str) -> asyncio.Task[PythonResult]:
    """A cell that holds the interpreter (so a restore waits for it) until `flag` exists; it sets
    `held = 'kept'` first. Returns once the cell runs."""
    running = asyncio.Event()
    code = (
        "import os, time\nheld = 'kept'\nprint('running', flush=True)\n"
        f"while not os.path.exists({flag!r}):\n    time.sleep(0.01)"
    )
    cell = asyncio.create_task(sb.python(code, timeout=120, on_output=lambda _: running.set()))
    await running.wait()
    return cell


async def test_a_restore_whose_limit_went_on_its_archive_says_so_not_that_something_held_it(pair) -> None:
    """A limit used up before anything could hold the sandbox (a big archive, a slow link: here a limit
    shorter than any transfer) was refused as if another restore or a cell had held it, which sent the
    operator looking for one. Now the refusal says where the time went."""
    src, dst = pair
    await empty(src)
    await sh(src, "echo kept > /workspace/kept")
    snap = await src.snapshot()
    await empty(dst)
    await sh(dst, "echo mine > /workspace/mine")
    with pytest.raises(InvalidRequest, match="used up receiving and checking the archive") as refused:
        await dst.restore(snap, timeout=1e-6)
    assert "another restore" not in str(refused.value) and "nothing was changed" in str(refused.value)
    assert await sh(dst, "ls -A /workspace") == "mine\n"


async def test_a_restore_that_cannot_start_within_its_limit_is_refused_and_never_runs_later(pair) -> None:
    """A restore's limit was kept only by the host: one queued behind another restore (here held up by
    a running cell) waited in the sandbox with no limit and cleared the files whenever it got its turn,
    long after the host had given up on it. Now the sandbox refuses to start it once its limit has
    passed, says nothing was changed, and the restore ahead of it runs as ever."""
    src, dst = pair
    await empty(src)
    await sh(src, "echo first > /workspace/first")
    first = await src.snapshot()
    await sh(src, "rm /workspace/first && echo late > /workspace/late")
    late = await src.snapshot()
    await empty(dst)
    await sh(dst, "echo mine > /workspace/mine")
    cell = await holding_python(dst, "/tmp/go-limit")
    ahead = asyncio.create_task(dst.restore(first, timeout=120))
    queued = asyncio.create_task(dst.restore(late, timeout=2.0))
    # Bounded for the old code, where no answer came before the host's reply grace killed the sandbox.
    await asyncio.wait({queued}, timeout=30)
    assert queued.done(), "the restore was still waiting in the sandbox past its limit"
    with pytest.raises(
        InvalidRequest, match=r"it waited [0-9.]+ s for another restore or a running Python cell"
    ):
        queued.result()
    assert await sh(dst, "ls -A /workspace") == "mine\n"  # the cell still holds: neither ran yet
    await sh(dst, "touch /tmp/go-limit")
    assert (await cell).ok
    await ahead
    assert await sh(dst, "ls -A /workspace") == "first\n"


async def test_a_restore_the_host_gave_up_on_never_starts_later(pair) -> None:
    """The host gives up on a restore (cancelled) long before its limit while it waits behind a cell:
    the cancel the host sends must keep it from starting. It used to run once the cell ended (the
    interpreter stopped, the files replaced) under whatever the host had done meanwhile."""
    src, dst = pair
    await empty(src)
    await sh(src, "echo first > /workspace/first")
    first = await src.snapshot()
    await empty(dst)
    cell = await holding_python(dst, "/tmp/go-cancel")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await dst.restore(first, timeout=60)
    await sh(dst, "touch /tmp/go-cancel")
    assert (await cell).ok
    # The files again, keeping the interpreter: this one waits for any restore still queued ahead of it,
    # so a given-up restore that ran after all has stopped the interpreter (and `held` with it) by now.
    await dst._call_raw(RestoreRequest(sha256=first.sha256, keep_python=True), 60, blob=first.data)
    assert (await dst.python("held")).value == "'kept'"
    assert await sh(dst, "ls -A /workspace") == "first\n"


async def test_the_host_counts_streamed_chunks_against_the_cap() -> None:
    receiver = _Receiver(max_bytes=10)
    receiver({"event": "snapshot_chunk", "_blob": b"12345"})
    receiver({"event": "other", "_blob": b"ignored"})
    assert receiver.received == 5 and not receiver.too_large
    receiver({"event": "snapshot_chunk", "_blob": b"678901"})
    assert receiver.too_large and receiver.chunks == []  # nothing more is kept from it
    bad = _Receiver(max_bytes=10)
    bad({"event": "snapshot_chunk", "data": "base64?"})
    assert bad.problem and bad.chunks == []


async def test_a_log_too_long_to_replay_is_reported_fresh(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = pair
    await empty(src)
    monkeypatch.setattr("qwq_agent.sandbox.cells.MAX_CELLS", 2)
    src.cells = CellLog()
    for i in range(3):
        await src.python(f"v{i} = {i}")
    snap = await src.snapshot()
    assert snap.cells is None
    result = await dst.restore(snap, python_state="replay")
    assert result.python_state == "fresh" and "too many cells" in result.note


async def test_a_replaced_container_leaves_no_cells_to_replay(sandbox_image: str, pair) -> None:
    """The cells of a container that died are not the replacement's: a non-python call that replaced it
    forgets them, so a snapshot of the replacement replays none (before: it re-ran `secret = 41`, which
    the snapshotted interpreter never ran)."""
    _, dst = pair
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        assert (await sb.python("secret = 41")).ok
        await sb.engine.kill(sb.id)
        await sb.wait_closed()
        r = await sb.shell("echo hi")
        assert r.sandbox_replaced and r.state_lost and r.stdout == "hi\n"
        assert sb.cells.recorded() == []
        assert (await sb.python("after = 1")).ok
        snap = await sb.snapshot()
        assert snap.cells is not None and [c.code for c in snap.cells] == ["after = 1"]
    restored = await dst.restore(snap, python_state="replay")
    assert restored.replayed_cells == 1 and restored.python_state == "replayed"
    assert (await dst.python("'secret' in globals(), after")).value == "(False, 1)"


async def test_a_snapshot_after_a_cancelled_cell_that_cost_the_interpreter_replays_none_of_its_cells(
    pair,
) -> None:
    """The host drops a cancelled cell's reply, so until the next cell its log still held the cells of
    the interpreter that cell cost: a snapshot taken in between recorded them, and a replay rebuilt
    `gone = 1`, which the snapshotted sandbox's interpreter did not have."""
    src, dst = pair
    await empty(src)
    assert (await src.python("gone = 1")).ok
    before = (await src.ping()).worker_pid
    stubborn = asyncio.create_task(
        src.python(
            "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "open('/tmp/stubborn', 'w').close()\nwhile True:\n    time.sleep(0.01)",
            timeout=60,
        )
    )
    await sh(src, "while [ ! -f /tmp/stubborn ]; do sleep 0.01; done; rm /tmp/stubborn")
    stubborn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stubborn
    await sh(src, f"while kill -0 {before} 2>/dev/null; do sleep 0.01; done")  # interrupt ignored: killed
    snap = await src.snapshot()
    assert snap.cells == []
    restored = await dst.restore(snap, python_state="replay")
    assert restored.replayed_cells == 0
    assert (await dst.python("'gone' in globals()")).value == "False"
    # The source's next cell still says what the cancelled one cost, and is the first of a new record.
    r = await src.python("'gone' in globals()")
    assert r.value == "False" and r.state_lost
    assert [c.code for c in (await src.snapshot()).cells or []] == ["'gone' in globals()"]


async def test_a_cell_the_host_cancelled_is_in_the_snapshot_as_one_that_did_not_run_to_its_end(pair) -> None:
    """A cancelled cell is interrupted with its interpreter kept, and what it did before the interrupt
    stays there; the host dropped its reply and never recorded it, so a snapshot said nothing of it."""
    src, dst = pair
    await empty(src)
    assert (await src.python("base = 1")).ok
    cell = asyncio.create_task(
        src.python(
            "data = [1, 2, 3]\nopen('/tmp/running', 'w').close()\nimport time\ntime.sleep(60)", timeout=90
        )
    )
    await sh(src, "while [ ! -f /tmp/running ]; do sleep 0.01; done; rm /tmp/running")
    cell.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cell
    live = await src.python("'data' in globals(), 'base' in globals()")
    assert live.value == "(True, True)" and not live.state_lost
    snap = await src.snapshot()
    assert snap.cells is not None
    assert [(c.code.split("\n")[0], c.ok, c.completed) for c in snap.cells] == [
        ("base = 1", True, True),
        ("data = [1, 2, 3]", False, False),
        ("'data' in globals(), 'base' in globals()", True, True),
    ]
    restored = await dst.restore(snap, python_state="replay")
    assert restored.replayed_cells == 2 and restored.skipped_cells == 1
    assert "cancelled" in restored.note


async def test_a_stale_snapshot_reply_neither_wipes_newer_cells_nor_loses_its_own() -> None:
    """The interpreter a snapshot's reply names was applied to the live log after the archive was
    vetted: a reset and a cell done meanwhile were wiped by the stale id, and the snapshot got none of
    the cells recorded when it was asked for."""
    log = CellLog()
    log.record("old = 1", PythonResult(interpreter="first"))
    asked = log.as_of()
    log.reset()  # a python_reset while the snapshot's archive was vetted
    log.record("new = 2", PythonResult(interpreter="second"))
    assert [c.code for c in log.for_snapshot(asked, "first") or []] == ["old = 1"]
    assert [c.code for c in log.recorded() or []] == ["new = 2"] and log.interpreter == "second"
    # Nothing recorded since it was asked for: a reply naming another interpreter forgets the cells.
    asked = log.as_of()
    assert log.for_snapshot(asked, "third") == [] and log.recorded() == []


async def test_big_archives_are_staged_in_chunks_under_a_cap(sandbox_image: str, pair) -> None:
    src, _ = pair
    await empty(src)
    await sh(src, "head -c 3000000 /dev/urandom > /workspace/r && sha256sum /workspace/r > ~/sum")
    snap = await src.snapshot()
    small = SandboxConfig(image=sandbox_image, max_request_bytes=1 << 20, env={"QWQ_MAX_STAGED": "2000000"})
    async with DockerSandbox.create(small) as sb:
        with pytest.raises(SnapshotTooLarge, match="staged"):
            await sb.restore(snap)  # 3 chunks of 1 MiB would pass the sandbox's 2 MB staging cap
    full = small.model_copy(update={"env": {}, "workspace_size": 1 << 20})
    async with DockerSandbox.create(full) as sb:
        with pytest.raises(ToolError, match="left empty"):
            await sb.restore(snap)  # 3 MB into a 1 MiB workspace: the disk fills up
        assert await sh(sb, "find /workspace /home/sandbox -mindepth 1") == ""
    roomy = small.model_copy(update={"env": {}})
    async with DockerSandbox.create(roomy) as sb:
        result = await sb.restore(snap)
        assert result.bytes > 3_000_000
        assert await sh(sb, "sha256sum -c ~/sum")


async def test_pool_acquire_with_a_snapshot(sandbox_image: str, pair) -> None:
    src, _ = pair
    await empty(src)
    await sh(src, "echo from-snapshot > /workspace/f")
    await src.python("z = 7")
    snap = await src.snapshot()
    async with SandboxPool(size=1, config=SandboxConfig(image=sandbox_image)) as pool:
        async with pool.acquire(snapshot=snap, python_state="replay") as sb:
            assert sb.last_restore is not None and sb.last_restore.python_state == "replayed"
            assert await sh(sb, "cat /workspace/f") == "from-snapshot\n"
            assert (await sb.python("z * 6")).value == "42"
            assert await sh(sb, "stat -c %U /workspace/f") == "sandbox\n"
        async with pool.acquire() as sb:  # without one: an empty workspace, as ever
            assert await sh(sb, "ls -A /workspace") == ""
        bad = raw_snapshot(b"not a tar" * 100)
        with pytest.raises(UnsafeArchive):  # the sandbox it restored into is destroyed, not handed out
            async with pool.acquire(snapshot=bad):
                pytest.fail("a sandbox was handed out although its restore failed")
        async with pool.acquire(snapshot=snap) as sb:  # the pool still works
            assert await sh(sb, "cat /workspace/f") == "from-snapshot\n"
