"""Sandbox snapshots: the data that crosses the host/sandbox boundary, and the size cap's error.

A `Snapshot` holds its archive in host memory (`data`, a plain uncompressed tar of `/workspace` and the
home directory): nothing is written to the host's disk, and the snapshot lives exactly as long as the
caller keeps the object (no directory to fill, no eviction policy to get wrong). Its size is capped when
it is taken (`max_bytes`, `SnapshotTooLarge`). `sha256` is computed by the host from the bytes it received
and checked again before every restore, in the host and in the sandbox.

Take one with `await sandbox.snapshot()`; put it back with `await sandbox.restore(snap)` or get a warm
sandbox holding it with `pool.acquire(snapshot=snap)`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from qwq_agent.sandbox.errors import SnapshotTooLarge
from qwq_agent.sandbox.protocol import Request, Result

__all__ = [
    "DEFAULT_MAX_BYTES",
    "PythonState",
    "RecordedCell",
    "ReplayFailure",
    "RestoreResult",
    "Snapshot",
    "SnapshotTooLarge",
]

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
PythonState = Literal["fresh", "replay"]


class RecordedCell(BaseModel):
    """A Python cell that ran in the sandbox, in order, and how it ended."""

    code: str
    ok: bool = Field(description="it ran without raising")
    completed: bool = Field(default=True, description="it ran to its end (not timed out or cancelled)")
    timeout: float | None = Field(
        default=None, description="the in-sandbox time limit it ran under; a replay gives it the same"
    )


class Snapshot(BaseModel):
    """The file state of a sandbox's workspace and home, kept by the host (in memory)."""

    # JSON carries the archive as base64 both ways, so a snapshot can be saved and loaded as JSON.
    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    id: str
    created_at: datetime
    size_bytes: int = Field(description="size of the archive (`data`)")
    sha256: str = Field(description="of `data`, computed by the host when the snapshot was taken")
    data: bytes = Field(repr=False, description="the uncompressed tar archive, kept in host memory")
    covers: tuple[str, ...] = ("/workspace", "/home/sandbox")
    entries: int = Field(default=0, description="files, directories and links archived")
    skipped: list[str] = Field(
        default_factory=list, description="entries left out (FIFOs, sockets, unreadable files), first 50"
    )
    skipped_count: int = 0
    cells: list[RecordedCell] | None = Field(
        default_factory=list,
        description="the Python cells run before the snapshot; None if too many were run to record",
    )
    source: str = Field(default="", description="id of the sandbox it was taken from")
    # id() of the `data` object last found to match: bytes are immutable and a frozen model cannot swap
    # them, so it stays verified; a copy with other data (`model_copy(update=...)`) is hashed again.
    _verified_id: int | None = PrivateAttr(default=None)

    @property
    def verified(self) -> bool:
        """Whether `data` was already found to match (no hashing)."""
        return self._verified_id == id(self.data)

    def verify(self) -> bool:
        """True when `data` matches `size_bytes` and `sha256`; hashes once per data object."""
        if not self.verified:
            if len(self.data) != self.size_bytes or hashlib.sha256(self.data).hexdigest() != self.sha256:
                return False
            self._verified_id = id(self.data)
        return True

    def mark_verified(self) -> None:
        """Record that `sha256` was computed from `data` itself (by whoever built this snapshot)."""
        self._verified_id = id(self.data)


class ReplayFailure(BaseModel):
    """A recorded cell that ran without error originally but raised (or timed out) on replay."""

    index: int
    code: str
    error: str


class RestoreResult(Result):
    """What a restore did: the files put back, and how the Python interpreter was left."""

    snapshot_id: str
    entries: int = 0
    bytes: int = Field(default=0, description="file bytes written in the sandbox")
    python_state: Literal["fresh", "replayed", "partly_replayed"] = Field(
        default="fresh",
        description="`replayed`: the recorded cells were re-run; `partly_replayed`: re-run, but some "
        "that had run fine did not this time, or were not run in time (`failed_cells`); `fresh`: an "
        "empty interpreter",
    )
    replayed_cells: int = 0
    skipped_cells: int = Field(
        default=0,
        description="recorded cells not replayed: they had not run to their end (timed out, or the host "
        "cancelled them)",
    )
    unreplayed_cells: int = Field(
        default=0,
        description="recorded cells not run because the restore's time limit came first (the first "
        "of them is in `failed_cells`)",
    )
    failed_cells: list[ReplayFailure] = Field(default_factory=list)
    note: str = ""
    duration_s: float = 0.0
    sandbox_seconds: dict[str, float] = Field(
        default_factory=dict, description="time spent in the sandbox: sha256, check, clear, extract"
    )


# ------------------------------------------------------------------------------ supervisor requests


class SnapshotRequest(Request):
    op: Literal["snapshot"] = "snapshot"
    max_bytes: int = Field(gt=0)
    timeout: float = Field(gt=0)


class RestoreChunkRequest(Request):
    """One piece of an archive too big for one request; its bytes follow the frame as a blob."""

    op: Literal["restore_chunk"] = "restore_chunk"
    token: str
    seq: int = Field(ge=0)


class RestoreRequest(Request):
    """Restore the archive sent as this request's blob, or the one staged under `token`."""

    op: Literal["restore"] = "restore"
    sha256: str
    token: str | None = Field(default=None, description="an archive staged with restore_chunk")
    keep_python: bool = Field(
        default=False, description="leave the interpreter as it is (the files again, after a replay)"
    )
    # Seconds, not a time: the sandbox's clock (another machine's, over ssh or TLS) need not be the host's.
    start_within: float | None = Field(
        default=None,
        ge=0,
        description="the host's limit, in seconds from when the request reaches the sandbox: a restore "
        "that cannot begin replacing the files by then (waiting for another restore, or a cell) is "
        "refused with nothing changed, as is one the host cancels before it begins; None: no limit",
    )
