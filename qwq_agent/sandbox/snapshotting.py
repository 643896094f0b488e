"""Taking and restoring snapshots over the supervisor channel (the logic behind `DockerSandbox.snapshot`).

Why the channel rather than docker-py's `get_archive`/`put_archive`: the archive is produced and
unpacked by the supervisor with the user's file rights, so restored files are the user's and nothing
is ever extracted by root (dockerd's extraction runs as root and follows the archive's owners); the
archive streams over the connection that is already open, in chunks, with no extra Docker API round
trips; and both ends vet it (`check_archive`). `benchmarks/snapshot_bench.py` measures both paths.

The host trusts nothing the sandbox sends: chunks are counted against the cap as they arrive (beyond it
they are dropped and the call fails), the sha256 is computed here from the bytes received and must match
the supervisor's, and the archive's headers are vetted before the snapshot is handed out.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from qwq_agent.deadline import Deadline
from qwq_agent.sandbox.calls import DEADLINE_SLACK_S, MIN_TIMEOUT_S, SandboxCalls
from qwq_agent.sandbox.errors import (
    InvalidRequest,
    SandboxDead,
    SnapshotTooLarge,
    ToolError,
    UnsafeArchive,
)
from qwq_agent.sandbox.snapshot import (
    DEFAULT_MAX_BYTES,
    PythonState,
    ReplayFailure,
    RestoreChunkRequest,
    RestoreRequest,
    RestoreResult,
    Snapshot,
    SnapshotRequest,
)
from qwq_agent.sandbox.supervisor.framing import RequestError
from qwq_agent.sandbox.supervisor.snapshots import check_archive

# Archives that fit in one request go as its blob; bigger ones are staged in chunks of this size.
CHUNK_BYTES = 64 * 1024 * 1024
_REQUEST_SLACK = 4096


class _Receiver:
    """Collects the streamed chunks of one snapshot, counting them against the cap as they come."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.received = 0
        self.problem: str | None = None
        self.too_large = False

    def __call__(self, frame: dict[str, Any]) -> None:
        if frame.get("event") != "snapshot_chunk" or self.problem or self.too_large:
            return
        raw = frame.get("_blob")
        if not isinstance(raw, bytes):
            self.problem, self.chunks = "a chunk without its bytes", []
            return
        self.received += len(raw)
        if self.received > self.max_bytes:
            self.too_large, self.chunks = True, []  # keep nothing more from it
            return
        self.chunks.append(raw)


def _vet(data: bytes) -> None:
    try:
        check_archive(data)
    except RequestError as exc:
        raise UnsafeArchive(str(exc)) from None


async def take_snapshot(
    sandbox: SandboxCalls, *, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = 120.0
) -> Snapshot:
    """Archive the sandbox's workspace and home; see `DockerSandbox.snapshot`."""
    if max_bytes <= 0:
        raise InvalidRequest("max_bytes must be positive")
    receiver = _Receiver(max_bytes)
    request = SnapshotRequest(max_bytes=max_bytes, timeout=timeout)
    asked = sandbox.cells.as_of()
    raw, replaced = await sandbox._call_raw(request, sandbox._grace(timeout), receiver)
    if replaced:
        raise SandboxDead(
            f"sandbox {sandbox.id} had died and was replaced by a fresh one; its files are gone, "
            "so no snapshot was taken"
        )
    if receiver.too_large:
        raise SnapshotTooLarge(f"the sandbox sent more than the snapshot limit of {max_bytes} bytes")
    if receiver.problem:
        raise UnsafeArchive(f"the sandbox sent {receiver.problem}; no snapshot was taken")
    data = b"".join(receiver.chunks)
    receiver.chunks = []
    digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    if raw.get("bytes") != len(data) or raw.get("sha256") != digest:
        raise UnsafeArchive(
            f"the snapshot arrived as {len(data)} bytes with sha256 {digest}, but the sandbox reported "
            f"{raw.get('bytes')!r} bytes with sha256 {raw.get('sha256')!r}; no snapshot was taken"
        )
    await asyncio.to_thread(_vet, data)
    cells = asked.cells
    if "interpreter" in raw:
        # Only the cells of the interpreter running when it was taken have their effects in it: a cell
        # cancelled before it may have cost it, and the host dropped the reply that said so.
        live = raw["interpreter"]
        cells = sandbox.cells.for_snapshot(asked, live if isinstance(live, str) else None)
    skipped = raw.get("skipped")
    snapshot = Snapshot(
        id=uuid.uuid4().hex[:12],
        created_at=datetime.now(UTC),
        size_bytes=len(data),
        sha256=digest,
        data=data,
        entries=_count(raw.get("entries")),
        skipped=[str(s)[:300] for s in skipped[:50]] if isinstance(skipped, list) else [],
        skipped_count=_count(raw.get("skipped_count")),
        cells=cells,
        source=sandbox.id,
    )
    snapshot.mark_verified()  # its sha256 was just computed from these very bytes
    return snapshot


def _count(value: object) -> int:
    """A count from the sandbox's reply, or 0 if it is not one (nothing it sends is trusted)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


async def restore_snapshot(
    sandbox: SandboxCalls,
    snapshot: Snapshot,
    *,
    python_state: PythonState = "fresh",
    timeout: float = 120.0,
) -> RestoreResult:
    """Replace the sandbox's workspace and home with `snapshot`; see `DockerSandbox.restore`."""
    if python_state not in ("fresh", "replay"):
        raise InvalidRequest(f"python_state must be 'fresh' or 'replay', not {python_state!r}")
    started = time.perf_counter()
    # Hashed once per object, off the event loop; later restores of the same snapshot skip the hop.
    if not (snapshot.verified or await asyncio.to_thread(snapshot.verify)):
        raise UnsafeArchive(
            f"snapshot {snapshot.id}'s archive does not match its sha256 (changed since it was taken); "
            "nothing was restored"
        )
    # One limit for the files and the replay; the replay ends early enough, by the time the files took,
    # for putting them back once more to end about then too.
    ends = time.monotonic() + timeout
    reply = sandbox._grace(timeout)
    try:
        sending = time.monotonic()
        raw, replaced = await _send(sandbox, snapshot, reply, ends)
    except ToolError:
        sandbox.cells.reset()  # it failed after the interpreter was restarted and the roots emptied
        raise
    sandbox.cells.reset()
    result = RestoreResult(
        snapshot_id=snapshot.id,
        entries=_count(raw.get("entries")),
        bytes=_count(raw.get("bytes")),
        sandbox_replaced=replaced,
        state_lost=True,
        sandbox_seconds=_seconds(raw.get("seconds")),
    )
    if python_state == "replay":
        # The cells get what is left, less the time to put the files back once more afterwards (as
        # long as they took now, and some slack).
        files_s = time.monotonic() - sending
        await _replay(sandbox, snapshot, result, Deadline(at=ends - files_s - DEADLINE_SLACK_S), timeout)
        if result.replayed_cells:
            # The cells ran on the restored files, so their file side effects happened a second time (a
            # row appended again, a file written over): put the files back exactly as the snapshot holds
            # them, keeping the interpreter the replay built.
            _, replaced = await _send(sandbox, snapshot, reply, ends, keep_python=True)
            if replaced:  # the container died during the replay: its replacement's interpreter is empty
                sandbox.cells.reset()
                result.sandbox_replaced, result.python_state = True, "fresh"
                result.note = (
                    "the sandbox died during the replay: its files are back, its interpreter is fresh"
                )
    else:
        result.note = "the interpreter is fresh: no cell of the snapshot was run"
    result.duration_s = time.perf_counter() - started
    return result


async def _send(
    sandbox: SandboxCalls, snapshot: Snapshot, reply: float, ends: float, *, keep_python: bool = False
) -> tuple[dict[str, Any], bool]:
    """The restore request: the archive as its blob, or staged first in chunks when it is too big.

    The sandbox refuses to begin it after `ends` (this host's monotonic clock, sent as the seconds left):
    by then the caller has given up on it, and a restore that began later would replace whatever was
    done in the sandbox since.
    """
    data = snapshot.data
    step = min(CHUNK_BYTES, sandbox.config.max_request_bytes - _REQUEST_SLACK)
    token = None
    if len(data) > step:
        token = secrets.token_hex(8)
        view = memoryview(data)
        for seq, at in enumerate(range(0, len(data), step)):
            chunk = RestoreChunkRequest(token=token, seq=seq)
            await sandbox._call_raw(chunk, reply, blob=view[at : at + step])
    request = RestoreRequest(
        sha256=snapshot.sha256,
        token=token,
        keep_python=keep_python,
        start_within=max(0.0, ends - time.monotonic()),
    )
    return await sandbox._call_raw(request, reply, blob=data if token is None else None)


def _seconds(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}


async def _replay(
    sandbox: SandboxCalls, snapshot: Snapshot, result: RestoreResult, deadline: Deadline, limit_s: float
) -> None:
    """Re-run the snapshot's cells, each under the limit it ran under, all of them by `deadline`.

    A cell that cannot start with time enough to report back before it is not run, nor is any after it
    (they build on it); the first such cell is named in `failed_cells`, all are counted.
    """
    if snapshot.cells is None:
        result.note = "the interpreter is fresh: the snapshot's sandbox ran too many cells to record"
        return
    # What a cell's result needs after its limit: the interrupt's grace and the reply (`clamp_timeout`).
    reserve = sandbox.config.interrupt_grace_s + DEADLINE_SLACK_S
    for index, cell in enumerate(snapshot.cells):
        if not cell.completed:
            result.skipped_cells += 1
            continue
        left = deadline.left(reserve)
        if left is not None and left <= MIN_TIMEOUT_S:
            result.unreplayed_cells = sum(c.completed for c in snapshot.cells[index:])
            late = f"not run: the restore's {limit_s:.3g} s limit was reached (nor were the cells after it)"
            result.failed_cells.append(ReplayFailure(index=index, code=cell.code[:500], error=late))
            break
        own = cell.timeout or sandbox.config.python_timeout_s
        given = sandbox.clamp_timeout(own, deadline)
        out = await sandbox.python(cell.code, timeout=given, deadline=deadline)
        result.replayed_cells += 1
        error: str | None = None
        if cell.ok and out.timed_out:
            why = f"cut to fit the restore's {limit_s:.3g} s limit" if given < own else "its original limit"
            error = f"timed out on replay after {given:.3g} s ({why})"
            if out.state_lost:  # it did not end at its interrupt (a busy machine: still starting, say)
                error += "; the interpreter was restarted: what the cells before it defined is gone"
        elif out.state_lost:  # the interpreter died and a fresh one ran this cell
            error = "the interpreter was restarted here: what the cells before it defined is gone"
        elif out.error is not None and cell.ok:
            error = f"{out.error.ename}: {out.error.evalue}"[:500]
        if error is not None:
            result.failed_cells.append(ReplayFailure(index=index, code=cell.code[:500], error=error))
    result.python_state = "partly_replayed" if result.failed_cells else "replayed"
    failed = len(result.failed_cells) - (1 if result.unreplayed_cells else 0)
    result.note = (
        f"the interpreter was rebuilt by re-running {result.replayed_cells} recorded cell(s)"
        + (f"; {failed} failed on replay" if failed else "")
        + (
            f"; {result.skipped_cells} that had not run to their end (timed out or cancelled) were skipped"
            if result.skipped_cells
            else ""
        )
        + (
            f"; {result.unreplayed_cells} not run: the restore's {limit_s:.3g} s limit was reached"
            if result.unreplayed_cells
            else ""
        )
    )


class SnapshotOps(SandboxCalls):
    """`snapshot()` and `restore()` of `DockerSandbox`, kept here with the rest of the snapshot logic."""

    async def snapshot(self, *, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = 120.0) -> Snapshot:
        """Archive /workspace and the home directory into a `Snapshot` kept in host memory.

        Raises `SnapshotTooLarge` past `max_bytes` (archive size), `UnsafeArchive` if what arrived does
        not check out. FIFOs, sockets and unreadable files are left out and listed in `skipped`.
        """
        return await take_snapshot(self, max_bytes=max_bytes, timeout=timeout)

    async def restore(
        self, snapshot: Snapshot, *, python_state: PythonState = "fresh", timeout: float = 120.0
    ) -> RestoreResult:
        """Replace /workspace and home with `snapshot`'s files (owned by the user), verified by sha256.

        The interpreter is restarted (if it ran anything); with `python_state="replay"` the snapshot's
        recorded cells are re-run, each under the limit it ran under, and the result says which failed,
        else it reports `fresh`. `timeout` bounds all of it, the replay included: cells that no longer
        fit are not run (`unreplayed_cells`).

        A restore that cannot begin within `timeout` (another restore, or a running cell, holds the
        sandbox) raises `InvalidRequest` with nothing changed; one cancelled before it begins never
        begins later. One that has begun replacing the files runs to its end in the sandbox even when
        its caller stops waiting: the sandbox's files are then unknown until it is done.
        """
        self.last_restore = await restore_snapshot(self, snapshot, python_state=python_state, timeout=timeout)
        return self.last_restore
