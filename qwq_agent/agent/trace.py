"""JSONL traces of agent runs: writing and reading (replay and resume are in `replay.py`).

Each line is one event (see `qwq_agent.agent.events`). `model_call` events hold the exact prompt and
completion of every model request, so the recorded completions can serve as the model again. One file
holds one run, and nothing about writing it can fail the run: a failure is reported, not raised.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from qwq_agent.agent.events import EVENT_ADAPTER, Event, Final, ModelCall, RunStarted, Warning_
from qwq_agent.surrogates import replace_surrogates_in

# How often at most a writer checks that its file was not removed (one fstat); also at `final` and close.
NAME_CHECK_INTERVAL_S = 1.0


class TraceError(Exception):
    """A trace that cannot be written or read as asked; `str(exc)` says which file and why, in one line."""


class TracePathError(TraceError, OSError):
    """The trace file cannot be created: a bad folder, no permission, or a path that is not a file."""


class NotATraceFileError(TracePathError):
    """The trace path names a FIFO, a device, a socket or a folder: no trace is written to or read from it.

    Opening a FIFO waits for its other end, forever and out of Ctrl-C's reach (the open blocks the
    event loop's thread), so such a path is refused, never opened for blocking I/O. `kind` says what
    the path is instead ("a FIFO (named pipe)", "a folder", ...).
    """

    def __init__(self, path: str | Path, kind: str) -> None:
        super().__init__(f"trace path {path} is {kind}, not a file")
        self.path = str(path)
        self.kind = kind


class TraceExistsError(TracePathError):
    """The trace file already holds a run (or another writer has it open): one file holds one run."""


class MixedTraceError(TraceError, ValueError):
    """A trace file holds several runs (written before one file held one run) and none was chosen."""


class TraceWriter:
    """Appends one run's events to a JSONL file, one line per event, so a crash loses at most one event.

    One file holds one run. The file is created, or taken only when it is empty, under an exclusive
    lock held until `close()`: a file that already holds events, or that another writer (in this
    process or another) holds, is refused with `TraceExistsError`, or with `if_exists="new"` a fresh
    file next to it is used (`path` says which: `<stem>.<tag><suffix>`, then `.2`, `.3`...).

    Writing never raises. The first failure (a full disk, a folder that cannot be made) is kept in
    `error`, and nothing more is written: what is in the file stays a readable trace (a torn last line
    is skipped by `read_trace`).

    A file removed while it is written (`rm -rf traces/` by a cleanup job, `git clean -xdf`) would take
    every later event with it, every write still succeeding on the unlinked file. So the writer checks
    that its file still has a name (at most once a second, at the `final` event and at `close()`) and,
    when it has none, writes it again at its path (folders made; a fresh name beside it when something
    else, a file, a folder or a FIFO, is there now; else in the temporary folder) with all it holds so
    far, read back from the open file, and goes on there: `recreated` says so, `path` where. While no
    place takes it, the open file (the only copy) is kept and written, and the next check tries again;
    when none has by `close()`, `error` says why. (A file moved elsewhere keeps its name there and is
    not followed.)

    An event is never a reason to stop: lone surrogates in it are written as U+FFFD, and one that cannot
    be serialised at all (nested past pydantic's limit) is replaced by a `trace_event_dropped` warning,
    noted in `error`, and the events after it are written as usual.

    Each prompt extends the previous one almost entirely, so a `model_call` line stores only what
    follows the prefix it shares with the previous prompt (`prompt_shared_prefix_chars` says how
    long that is); `read_trace` puts the whole prompt back, or `PromptRestorer` one at a time. The chat
    messages an OpenAI-API request sent are stored the same way: only those after the ones it shares
    with the previous request (`messages_shared_prefix`). A trace grows with the conversation, not with
    its square.
    """

    def __init__(
        self, path: str | Path, *, if_exists: Literal["refuse", "new"] = "refuse", tag: str | None = None
    ) -> None:
        self.requested_path = Path(path)
        self.error: str | None = None
        self.final_written = False
        self._last_prompt = ""
        self._last_messages: list[dict[str, Any]] = []
        self._fd: int | None  # None once closed
        self._tag = tag
        # A note when the file was removed during the run and written again (`_keep_named`).
        self.recreated: str | None = None
        self.path, self._fd, lock_error = _claim(self.requested_path, if_exists=if_exists, tag=tag)
        # A note when the file system cannot lock (NFS without a lock manager, some FUSE or SMB mounts).
        self.unlocked: str | None = None
        if lock_error is not None:
            self.unlocked = (
                f"the trace file {self.path} cannot be locked ({lock_error}); it is written all the same, "
                "but a run started at the same moment with the same trace path could write to it too"
            )
        self._checked_at = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write(self, event: Event) -> bool:
        """Append `event`; False when it was not written (closed, or the trace failed before or now)."""
        if self._fd is None:
            return False
        now = time.monotonic()
        if isinstance(event, Final) or now - self._checked_at >= NAME_CHECK_INTERVAL_S:
            self._checked_at = now
            self._keep_named()
            if self._fd is None:
                return False
        last_prompt, last_messages = self._last_prompt, self._last_messages
        if isinstance(event, ModelCall) and event.prompt is not None:
            shared = common_prefix_len(self._last_prompt, event.prompt)
            self._last_prompt = event.prompt
            event = event.model_copy(
                update={"prompt": event.prompt[shared:], "prompt_shared_prefix_chars": shared}
            )
        if isinstance(event, ModelCall) and event.messages is not None:
            shared = common_prefix_count(self._last_messages, event.messages)
            self._last_messages = event.messages
            event = event.model_copy(
                update={"messages": event.messages[shared:], "messages_shared_prefix": shared}
            )
        data = _encode(event)
        written = data is not None
        if data is None:
            # Not even with its surrogates replaced (nesting past pydantic's limit): a placeholder says
            # what is missing here, and the trace goes on with the run's later events.
            self.error = self.error or f"{self.path}: could not record a {event.type} event (left out)"
            # the next prompt is stored against the last one on disk
            self._last_prompt, self._last_messages = last_prompt, last_messages
            data = _encode(_dropped(event))
            assert data is not None  # a Warning_ of short strings always serialises
        try:
            view = memoryview(data)
            while view:  # unbuffered: a line is on disk (or the failure known) when write returns
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            self.close()
            return False
        if written and isinstance(event, Final):
            self.final_written = True
        return written

    def write_final(
        self,
        status: str,
        *,
        error: str | None = None,
        answer: str | None = None,
        run_id: str = "",
        step: int = 0,
        totals: dict[str, float] | None = None,
    ) -> bool:
        """Write a `final` event unless one was written already; for runs stopped from outside.

        After Ctrl-C or SIGTERM the stream is not iterated again, so nothing else ends the trace:
        call this (or `Agent.end_run`, which also sets the result), then `close()`.
        """
        if self.final_written:
            return False
        final = Final(
            status=status, error=error, answer=answer, totals=totals or {}, run_id=run_id, step=step
        )
        return self.write(final)

    def close(self) -> None:
        """Release the file (and its lock), written again first if it was removed. Idempotent."""
        if self._fd is not None and self.error is None:
            self._keep_named(last=True)
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)  # releases the flock too
            except OSError:
                pass

    def _keep_named(self, *, last: bool = False) -> None:
        """When the file was removed (no name left), write what it holds to a new file and go on there:
        at its path or a free name beside it, else in the temporary folder. The open file is the only copy
        of the run so far: when no place takes it, writing goes on into it and the next check tries
        again; only at the `last` check (close) does that become `error`, the run's trace lost."""
        assert self._fd is not None
        try:
            if os.fstat(self._fd).st_nlink > 0:
                return
        except OSError:
            return  # the next write says what is wrong with the fd
        removed = self.path
        try:
            self.path, fd, why = _recreate(self._fd, removed, self._tag)
        except TraceError as exc:
            if last:
                self.error = (
                    f"{removed}: the trace file was removed during the run and could not be written "
                    f"again anywhere: {exc}"
                )
            return
        _close_quietly(self._fd)
        self._fd = fd
        where = "" if self.path == removed else f" ({why})"
        self.recreated = (
            f"the trace file {removed} was removed during the run; it was written again, whole, "
            f"in {self.path}{where}"
        )

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recreate(old: int, removed: Path, tag: str | None) -> tuple[Path, int, str]:
    """A new file holding all the open file `old` holds: (its path, its fd, why it is not at `removed`).

    Tried at `removed` (folders made), a free name beside it (whatever sits at the path now, a file,
    a folder or a FIFO, is passed over), then `qwq-agent-<name>` in the temporary folder, as
    `cli.kept_files` keeps a run's patch or archive. `TraceError` when none takes it."""
    failures: list[str] = []
    fallback = Path(tempfile.gettempdir()) / f"qwq-agent-{removed.name}"
    for place in (removed, fallback):
        try:
            path, fd, _ = _claim(place, if_exists="new", tag=tag, pass_over=True)
        except TraceError as exc:
            failures.append(str(exc))
            continue
        try:
            _copy_all(old, fd)
        except OSError as exc:
            failures.append(f"{path}: {exc.strerror or exc}")
            with contextlib.suppress(OSError):
                os.unlink(path)  # a part of the run is no copy to point anyone at
            _close_quietly(fd)
            continue
        if place == fallback:
            return path, fd, f"its folder could not take it: {failures[0]}"
        return path, fd, f"something else is at {removed} now"
    raise TraceError("; ".join(failures))


def _copy_all(src: int, dst: int) -> None:
    """Everything in the file open at `src`, appended to `dst`."""
    offset, chunk = 0, 1 << 20
    while piece := os.pread(src, chunk, offset):
        view = memoryview(piece)
        while view:
            view = view[os.write(dst, view) :]
        offset += len(piece)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _encode(event: Event) -> bytes | None:
    """`event` as one JSONL line; None when it cannot be written even with lone surrogates replaced."""
    try:
        return (event.model_dump_json(exclude_none=False) + "\n").encode("utf-8")
    except ValueError:
        pass  # pydantic refuses lone surrogates (UnicodeEncodeError) and nesting past its limit
    # A lone surrogate slipped past the boundaries that replace them (a user's own event, a tool's
    # output streamed before the registry saw it): the event is kept, the surrogates become U+FFFD.
    try:
        fields = replace_surrogates_in(event.model_dump(mode="json", exclude_none=False))
        return (json.dumps(fields, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    except (ValueError, RecursionError):
        return None


def _dropped(event: Event) -> Warning_:
    return Warning_(
        kind="trace_event_dropped",
        message=f"a {event.type} event could not be recorded (nested too deeply to serialise) and was left out",
        run_id=event.run_id,
        step=event.step,
        ts=event.ts,
    )


def _candidates(path: Path, tag: str | None) -> Iterator[Path]:
    yield path
    base = f"{path.stem}.{tag or 'run'}"
    yield path.with_name(f"{base}{path.suffix}")
    for i in range(2, 10_000):
        yield path.with_name(f"{base}.{i}{path.suffix}")


def _claim(
    path: Path, *, if_exists: str, tag: str | None, pass_over: bool = False
) -> tuple[Path, int, str | None]:
    """Open the first free candidate for `path`: created or empty, and locked by us. With `pass_over`,
    a candidate that is no regular file (a folder, a FIFO) is passed over rather than refused.

    The third value says why the file could not be locked, when the file system cannot lock at all:
    then a candidate is free when it is empty, as on a file system that can.
    """
    if pass_over:
        _ready_folder(path)
    else:
        check_trace_folder(path)
    for candidate in _candidates(path, tag):
        try:
            _refuse_special(candidate)
            # Readable too: a file removed while it is written is copied back out (`_keep_named`).
            fd = open_regular(candidate, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        except IsADirectoryError:
            if pass_over:
                continue
            raise NotATraceFileError(candidate, "a folder") from None
        except NotATraceFileError:
            if pass_over:
                continue
            raise
        except OSError as exc:
            raise TracePathError(f"cannot create trace file {candidate}: {exc.strerror or exc}") from None
        lock_error = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            busy = os.fstat(fd).st_size > 0
        except BlockingIOError:  # another writer holds it
            busy = True
        except OSError as exc:
            # ENOLCK, EOPNOTSUPP...: no lock here, whoever asks. Taking that for "busy" would create and
            # leave an empty file for every candidate name, and trace nothing.
            lock_error = exc.strerror or str(exc)
            try:
                busy = os.fstat(fd).st_size > 0
            except OSError as stat_exc:
                os.close(fd)
                raise TracePathError(
                    f"cannot use trace file {candidate}: {stat_exc.strerror or stat_exc}"
                ) from None
        if not busy:
            return candidate, fd, lock_error
        os.close(fd)
        if if_exists != "new":
            raise TraceExistsError(
                f"trace file {candidate} already holds a run; give a new path (one file holds one run)"
            )
    raise TraceExistsError(f"no free trace file name next to {path}")


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _not_a_file(path: Path, mode: int) -> NotATraceFileError:
    return NotATraceFileError(path, _KINDS.get(stat.S_IFMT(mode), "a special file"))


def _refuse_special(path: Path) -> None:
    """Raise `NotATraceFileError` when `path` exists and is no regular file (a stat never blocks)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing (it will be created) or unreadable: opening it says why
    if not stat.S_ISREG(mode):
        raise _not_a_file(path, mode)


def open_regular(path: Path, flags: int) -> int:
    """`os.open` that cannot block, and that keeps the fd only when it is a regular file.

    O_NONBLOCK makes opening a FIFO return (or fail with ENXIO) at once instead of waiting for its
    other end; fstat then checks what was opened, since the path may have been swapped since any
    earlier check. On a regular file O_NONBLOCK changes nothing, but it is cleared all the same.
    """
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_a_file(path, mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def writer_holds(fd: int) -> bool | None:
    """Whether a `TraceWriter` (of this process or another) still writes the trace open as `fd`.

    A writer holds the file's lock from its claim until `close()`: at the run's end, or at its first
    failed write (a full disk), or when its process dies. So a trace whose lock nobody holds gets no
    more lines, and one read after that with no `final` was cut short. Ask before reading the file: a
    writer may append the final and let go between a read and a probe made after it. None when it
    cannot be told: an empty file (the probe takes a shared lock for a moment, and a writer claiming
    an empty file at that moment would take it as busy and write under another name), or a file
    system without flock.
    """
    try:
        if os.fstat(fd).st_size == 0:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def check_trace_folder(path: str | Path) -> None:
    """Raise `TracePathError` unless a trace file can be created at `path` (folders are made).

    Cheap enough to call before any sandbox or model request, so a bad folder costs nothing.
    """
    path = Path(path)
    if "\0" in str(path):  # every os call on it raises ValueError, which no caller takes for a path error
        raise TracePathError(f"trace path {str(path)!r} holds a NUL byte, which no file name can")
    _refuse_special(path)
    _ready_folder(path)


def _ready_folder(path: Path) -> None:
    """Raise `TracePathError` unless the folder of `path` exists (made if missing) and takes new files."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TracePathError(f"cannot create trace folder {folder}: {exc.strerror or exc}") from None
    if not folder.is_dir():
        raise TracePathError(f"trace folder {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".qwq-trace-check-"):
            pass
    except OSError as exc:
        raise TracePathError(f"cannot write in trace folder {folder}: {exc.strerror or exc}") from None


def check_trace_path(path: str | Path) -> None:
    """`check_trace_folder`, and refuse (`TraceExistsError`) a file that already holds events.

    A path that is no regular file (a FIFO, a device) is refused with `NotATraceFileError`.
    """
    path = Path(path)
    check_trace_folder(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TracePathError(f"cannot use trace file {path}: {exc.strerror or exc}") from None
    if size > 0 and path.is_file():
        raise TraceExistsError(
            f"trace file {path} already holds a run; give a new path (one file holds one run)"
        )


def common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix, by bisection over C-level slice compares.

    A character loop in Python (`os.path.commonprefix`) costs milliseconds on a long prompt, on
    every step; this costs O(log n) compares.
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class PromptRestorer:
    """Puts back the whole prompts of model calls read with `prompts="stored"`, one call at a time.

    Give it a run's `model_call` events in their order: each stored prompt extends the one before it,
    which is all it keeps, so restoring a run costs its longest prompt, not the sum of them all. A
    call whose prompt is whole already (`prompt_shared_prefix_chars` None) is taken as it is.
    """

    def __init__(self) -> None:
        self._last = ""

    def prompt(self, call: ModelCall) -> str | None:
        """The whole prompt of `call`, the next model call of the run (None where none was recorded)."""
        if call.prompt is None:  # an OpenAI-API request renders no prompt; the next one extends the last
            return None
        shared = call.prompt_shared_prefix_chars
        self._last = call.prompt if shared is None else self._last[:shared] + call.prompt
        return self._last

    def whole(self, call: ModelCall) -> ModelCall:
        """`call` (the next model call) as a copy with its whole prompt; `call` is left as read."""
        if call.prompt is None:
            return call
        return call.model_copy(update={"prompt": self.prompt(call), "prompt_shared_prefix_chars": None})


def restore_prompts(events: Iterable[Event]) -> Iterator[Event]:
    """`events` of one run (read with `prompts="stored"`), each `model_call` with its whole prompt.

    Lazily: only the prompt of the event being looked at, and the one before it, are held.
    """
    restorer = PromptRestorer()
    return (restorer.whole(e) if isinstance(e, ModelCall) else e for e in events)


def common_prefix_count(a: Sequence[object], b: Sequence[object]) -> int:
    """How many leading items `a` and `b` share."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _read_lines(path: str | Path) -> list[Event]:
    """Every event of the file, `model_call` prompts as stored (see `PromptRestorer`)."""
    events: list[Event] = []
    last_messages: list[dict[str, Any]] = []
    # JSON lines end at "\n" only; splitlines() would also split inside strings at U+0085, U+2028, ...
    # Split the bytes, not the text: a write torn by a full disk can end inside a multi-byte character,
    # and decoding the whole file would lose every event to that one torn line. (b"\n" never occurs
    # inside a multi-byte UTF-8 sequence, so the split is exact.)
    fd = open_regular(Path(path), os.O_RDONLY)  # a FIFO is refused, not waited on
    with open(fd, "rb") as f:
        lines = f.read().split(b"\n")
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A torn write leaves at most an unfinished character at the end; bytes that are wrong
            # anywhere else mean the file is not UTF-8 (not a trace), which is reported as such.
            if last and exc.reason == "unexpected end of data":
                break
            raise
        if not line.strip():
            continue
        try:
            event = EVENT_ADAPTER.validate_json(line)
        except ValueError:
            if last:
                break
            raise
        if isinstance(event, ModelCall) and event.messages is not None:
            # The lists share their message dicts: a run's messages are held once, not once per call.
            event.messages = last_messages[: event.messages_shared_prefix or 0] + event.messages
            last_messages = event.messages
        events.append(event)
    return events


def starts_new_run(*, is_start: bool, run_id: str, started: bool, current_id: str) -> bool:
    """Whether an event ends the run read so far and begins another: a second `run_started`
    (`is_start`, when the current run has `started`), or a run id other than the current run's.

    The one rule for telling runs apart, shared by `split_runs` and the viewer's line-by-line scan.
    """
    return (is_start and started) or bool(run_id and current_id and run_id != current_id)


def several_runs_message(path: str | Path, ids: Sequence[str]) -> str:
    """What `MixedTraceError` says of the trace at `path` holding the runs `ids` ("" for a run
    without an id) when none was chosen."""
    names = ", ".join(i or "(no id)" for i in ids)
    return f"trace {path} holds {len(ids)} runs ({names}); choose one by its run id"


def split_runs(events: Sequence[Event]) -> list[list[Event]]:
    """The runs in a list of events: a new one at a second `run_started`, or where the run id changes."""
    runs: list[list[Event]] = []
    current_id = ""
    started = False  # whether the current run has had its run_started
    for ev in events:
        is_start = isinstance(ev, RunStarted)
        if not runs or starts_new_run(
            is_start=is_start, run_id=ev.run_id, started=started, current_id=current_id
        ):
            runs.append([])
            started = False
        runs[-1].append(ev)
        started = started or is_start
        current_id = ev.run_id or current_id
    return runs


def trace_runs(path: str | Path) -> list[str]:
    """The run id of each run a trace file holds, in order (one, unless written by an old version)."""
    return [_run_id(r) for r in split_runs(_read_lines(path))]


def _run_id(run: list[Event]) -> str:
    return next((e.run_id for e in run if e.run_id), "")


def read_trace(
    path: str | Path, *, run_id: str | None = None, prompts: Literal["whole", "stored"] = "whole"
) -> list[Event]:
    """Events of one run in a trace file; a torn last line (an interrupted write) is skipped.

    A file holding several runs (appended by versions before one file held one run) raises
    `MixedTraceError` naming them, unless `run_id` picks one: runs are never silently mixed.

    `prompts="whole"` gives each `model_call` its whole prompt, all held at once: memory grows with
    the square of the run's length (a few hundred steps of a long context take hundreds of MB).
    Readers that need no prompt, or one at a time, read `prompts="stored"`: each prompt as the file
    holds it, the part after the `prompt_shared_prefix_chars` it shares with the run's previous one,
    so memory grows with the file; `restore_prompts` / `PromptRestorer` put them back in order.
    """
    runs = split_runs(_read_lines(path))
    if run_id is not None:
        chosen = [i for i, r in enumerate(runs) if _run_id(r) == run_id]
        if len(chosen) != 1:
            what = "no run" if not chosen else f"{len(chosen)} runs"
            raise MixedTraceError(f"trace {path} holds {what} with id {run_id!r} (runs: {_names(runs)})")
        at = chosen[0]
    elif len(runs) > 1:
        raise MixedTraceError(several_runs_message(path, [_run_id(r) for r in runs]))
    elif not runs:
        return []
    else:
        at = 0
    run = _first_prompt_whole(runs[at], runs[:at])
    return list(restore_prompts(run)) if prompts == "whole" else run


def _first_prompt_whole(run: list[Event], before: list[list[Event]]) -> list[Event]:
    """`run` with its first prompt whole when it was stored against a run before it in the file.

    Writers before one file held one run may have gone on from one run's prompts to the next's; the
    chosen run's prompts are then restorable on their own. (Restores the earlier runs only then.)
    """
    at, call = next(
        ((i, e) for i, e in enumerate(run) if isinstance(e, ModelCall) and e.prompt is not None), (0, None)
    )
    if call is None or not before or not call.prompt_shared_prefix_chars:
        return run
    restorer = PromptRestorer()
    for earlier in before:
        for e in earlier:
            if isinstance(e, ModelCall):
                restorer.prompt(e)
    return [*run[:at], restorer.whole(call), *run[at + 1 :]]


def _names(runs: list[list[Event]]) -> str:
    return ", ".join(_run_id(r) or "(no id)" for r in runs)


def recorded_completions(events: Iterable[Event]) -> list[ModelCall]:
    return [e for e in events if isinstance(e, ModelCall)]


def task_of(events: Sequence[Event]) -> str:
    for e in events:
        if isinstance(e, RunStarted):
            return e.task
    raise ValueError("trace has no run_started event")
