"""The request loop: frames in from the host, one thread per request, replies tied to request and nonce."""

import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import threading
import time

from . import archives, procs, search, snapshots
from .accounts import write_accounts
from .editor import Editor
from .framing import RequestError, cap_text, encode_frame, path_text, read_exact, read_into, skip
from .interpreter import Interpreter
from .privileges import act_on_files_as_user, become_supervisor
from .settings import IDLE_TIMEOUT, LIFETIME, MAX_FRAME, MAX_STAGED, OUT_HEAD, OUT_TAIL, WORKSPACE
from .shell import run_shell
from .streaming import OutputStream

# Operations the host can stop mid-call: they get a cancel pipe it can trip. Those that start user
# processes, and restore (refused once cancelled, until it has begun clearing the files).
CANCELLABLE = ("python", "shell", "restore")
# The most one write to the host hands over: how often a long reply shows that the host still reads.
WRITE_CHUNK = 1 << 20
# How long `exit` may try to tell the host why (per step): it must end the process whatever the channel does.
EXIT_WAIT = 1.0
# Operations that stream their result as events (`args["_send"]` sends a frame tied to the request).
STREAMING = ("snapshot", "download")


class Supervisor:
    def __init__(self, out_fd, split, accounts_error=None):
        self.out_fd = out_fd
        self.split = split
        self.accounts_error = accounts_error
        self.out_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.inflight = 0
        self.cancels = {}  # request id -> write end of its cancel pipe
        self.cancelled_early = set()  # cancels that overtook their request's thread
        self.last_activity = self.started = time.monotonic()
        self.blocked_since = None  # set while a write to the host waits (see `_write`)
        procs.on_containment_failure = lambda: self.exit("a process tree could not be killed")
        self.interpreter = Interpreter()
        self.editor = Editor()
        self.staging = snapshots.Staging(MAX_STAGED)
        self.restore_lock = threading.Lock()
        self.ops = {
            "ping": lambda a: {"pong": True, "worker_pid": self.interpreter.pid},
            "python": self.python,
            "shell": self.shell,
            "view": self.editor.view,
            "create": self.editor.create,
            "str_replace": self.editor.str_replace,
            "insert": self.editor.insert,
            "undo_edit": self.editor.undo_edit,
            "search": search.search,
            "upload": archives.upload,
            "download": archives.download,
            "snapshot": self.snapshot,
            "restore_chunk": self.staging.add,
            "restore": lambda a: snapshots.restore(a, self.staging, self.files_replaced),
            "python_reset": lambda a: (
                self.reset_interpreter(
                    restart=a.get("restart") is not False,
                    deadline=a["_arrived"] + float(a.get("timeout") or 60),
                )
                or {"worker_pid": self.interpreter.pid}
            ),
        }

    def send(self, obj, blob=None):
        """One frame; with `blob`, its raw bytes follow the frame (which says `"blob": len`)."""
        if blob is not None:
            obj = {**obj, "blob": len(blob)}
        data = encode_frame(obj)
        with self.out_lock:
            self._write(data)
            if blob is not None:
                self._write(blob)

    def _write(self, data):
        """All of `data` to the host, a pipe's worth at a time: `blocked_since` says since when the host
        has taken nothing (a blocking write of 96 MB would return only at its end, however fast it went)."""
        view = memoryview(data)
        while view:
            with self.state_lock:  # the watchdog moves it forward over a freeze: never onto a finished write
                self.blocked_since = time.monotonic()
            try:
                view = view[os.write(self.out_fd, view[:WRITE_CHUNK]) :]
            finally:
                with self.state_lock:
                    self.blocked_since = None

    def shell(self, args):
        try:
            return run_shell(args)
        except RequestError as exc:
            if exc.kind != "ResourceExhausted":
                raise
            note = self.reclaim()
            if note is None:
                raise RequestError(exc.kind, f"{exc} ({self.pids_holders()})") from None
        try:
            result = run_shell(args)
        except RequestError as exc:
            if exc.kind != "ResourceExhausted":
                raise
            raise RequestError(exc.kind, f"{exc} ({self.pids_holders()})") from None
        return with_note(result, note) if note else result

    def pids_holders(self):
        """Who holds the pids limit, for a call that could start no process."""
        keeper = self.interpreter.proc.keeper if self.interpreter.proc else None
        held = 0 if keeper is None else procs.tasks_under(keeper)
        return (
            f"{pids_current() or '?'} of {pids_limit() or '?'} in use, {held} of them by the Python interpreter "
            "and what it started; the rest belong to calls still running (a fork bomb in one?), and are "
            "freed when those end"
        )

    def reclaim(self):
        """Free the pids the interpreter holds between cells when they are most of the limit: the note
        for the call's result ("" when Python lost nothing), or None when the interpreter is not the hog.

        Threads count against the pids limit like processes. A cell's end kills what it forked, but a
        thread it left running in the interpreter may fork more after it: those processes (no call's)
        are killed first, which costs nothing. Threads parked inside the interpreter end only with it,
        and so do ended children a Popen of it still holds unwaited: it is restarted when they are still
        most of the limit.
        """
        interpreter, limit = self.interpreter, pids_limit()
        keeper = interpreter.proc.keeper if interpreter.proc else None
        held = 0 if keeper is None else procs.tasks_under(keeper)
        # Only when most of the limit and most of what is in use: a library's pools (OpenBLAS, torch: a
        # thread per core) are not worth the variables while a fork bomb in a running call is the hog.
        if not hogs(held, limit):
            return None
        what = f"the Python interpreter holds {held} of the sandbox's limit of {limit or '?'} processes and threads"
        if not interpreter.lock.acquire(blocking=False):
            raise RequestError(
                "ResourceExhausted",
                f"no process could be started: {what}, and a cell is running; interrupt it or reset Python",
            )
        try:
            if interpreter.proc is None:
                return ""  # stopped meanwhile: what it held is free
            interpreter.end_strays()
            # Its threads, and the ended children a Popen of it still holds (they keep their pids until
            # it is waited for: `worker._reap_children`).
            held = procs.tasks_under(interpreter.proc.keeper)
            if not hogs(held, limit):
                return ""
            what = (
                f"the Python interpreter holds {held} threads and unwaited children of the sandbox's "
                f"limit of {limit or '?'} processes and threads"
            )
            try:
                interpreter.restart()
                restarted = "Python was restarted to free them"
            except RequestError as exc:
                if exc.kind != "ResourceExhausted":
                    raise
                restarted = "Python was stopped to free them (the next python call starts it)"
        finally:
            interpreter.lock.release()
        return f"[{what}, left by an earlier cell; {restarted} and its variables are gone]\n"

    def reset_interpreter(self, restart=True, deadline=None):
        """A fresh interpreter (its processes killed), unless the current one never ran a cell.

        `restart=False`: stop it in any case (one that ran no cell may still have run the HOME's
        `usercustomize.py` at its start) and start none; the next python call starts one. A cell that
        is running is ended at once (its result says the reset stopped it), not waited for; should it
        still hold the interpreter at `deadline` (monotonic), the reset fails with a ToolError. Cells
        that had not begun when it was asked wait for it, and run in the interpreter it leaves.
        """
        interpreter = self.interpreter
        with interpreter.turns.resetting(deadline):
            if not restart:
                interpreter.stop("the interpreter had been stopped (a reset that started none)")
            elif interpreter.used:
                interpreter.restart()

    def snapshot(self, args):
        """The files (`snapshots.snapshot`), and the interpreter running once they are taken: the host
        keeps, of the cells it recorded, only those that ran in it (a cell whose reply it dropped, being
        cancelled, may have cost the interpreter since)."""
        return {**snapshots.snapshot(args), "interpreter": self.interpreter.live_ident()}

    @contextlib.contextmanager
    def files_replaced(self, keep_python, start_by=None, cancel_fd=None):
        """Held while a restore replaces the workspace and home.

        One restore at a time: one that already began clearing runs to its end even when the host gave
        up on it, and the next (a hand-over putting the parent's own files back) must not clear and
        extract beside it. A restore never starts late, though: the host's limit for it ends at
        `start_by` (monotonic), and the locks are waited for until then at most; one still waiting then,
        or one the host cancelled meanwhile (`cancel_fd` readable), is refused with nothing changed.
        Otherwise it would run whenever its turn came, over what the host did since it gave up.
        Nothing of the interpreter runs meanwhile: one that ran cells is stopped, and a fresh one starts
        once the files are in (it starts on the new HOME); with `keep_python` (the files again after a
        replay) the interpreter the replay built is paused, so a thread it left writing under the
        workspace cannot refill what is being cleared or take a name before it is extracted.
        """
        entered = time.monotonic()
        with contextlib.ExitStack() as held:
            for lock in (self.restore_lock, self.interpreter.lock):
                if not lock.acquire(
                    timeout=-1 if start_by is None else max(0.0, start_by - time.monotonic())
                ):
                    raise too_late(start_by, entered)
                held.callback(lock.release)
            if cancel_fd is not None and select.select([cancel_fd], [], [], 0)[0]:
                raise RequestError(
                    "InvalidRequest",
                    "the restore was cancelled by the host before it began; nothing was changed",
                )
            if start_by is not None and time.monotonic() > start_by:
                raise too_late(start_by, entered)
            fresh = not keep_python and self.interpreter.used
            if fresh:
                self.interpreter.stop()
            try:
                with self.interpreter.paused():
                    yield
            finally:
                if fresh and self.interpreter.proc is None:
                    try:
                        self.interpreter.start()
                    except (RequestError, OSError):
                        pass  # the next python call starts one, and says that state was lost

    def python(self, args):
        code = args.get("code")
        if not isinstance(code, str):
            raise RequestError("InvalidRequest", "`code` must be a string")
        return self.interpreter.run(
            code, float(args.get("timeout") or 60), args["_arrived"], args["_cancel"], args.get("_stream")
        )

    def handle(self, req, arrived, note=None):
        rid, nonce = req.get("id"), req.get("nonce")
        cancel_r = None
        try:
            # Files are touched with the user's rights, so the editor can do no more than user code could.
            act_on_files_as_user()
            op = self.ops.get(req.get("op"))
            if op is None:
                raise RequestError("InvalidRequest", f"unknown operation {req.get('op')!r}")
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise RequestError("InvalidRequest", "`args` must be an object")
            args["_arrived"] = arrived
            args["_began"] = req.get("_began", arrived)
            args["_blob"] = req.get("_blob")
            if req.get("op") in CANCELLABLE:
                cancel_r, cancel_w = os.pipe()
                with self.state_lock:
                    self.cancels[rid] = cancel_w
                    if rid in self.cancelled_early:
                        self.cancelled_early.discard(rid)
                        os.write(cancel_w, b"x")
                args["_cancel"] = cancel_r
                args["_id"], args["_nonce"] = rid, nonce
                args["_stream"] = OutputStream.for_request(self.send, args)
            if req.get("op") in STREAMING:
                args["_send"] = lambda frame, blob=None: self.send({"id": rid, "nonce": nonce, **frame}, blob)
            result = op(args)
            reply = {
                "id": rid,
                "nonce": nonce,
                "ok": True,
                "result": with_note(result, note) if note else result,
            }
        except RequestError as exc:
            reply = self.error(rid, nonce, exc.kind, str(exc))
        except RecursionError:
            reply = self.error(
                rid, nonce, "ToolError", "the path or structure is nested too deeply for this operation"
            )
        except OSError as exc:
            reply = self.error(
                rid,
                nonce,
                "ToolError",
                path_text(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")),
            )
        except Exception as exc:
            reply = self.error(rid, nonce, "InternalError", f"{type(exc).__name__}: {exc}")
        finally:
            if cancel_r is not None:
                with self.state_lock:
                    os.close(self.cancels.pop(rid))
                os.close(cancel_r)
        try:
            self.send(reply)
        except (TypeError, ValueError) as exc:
            self.send(self.error(rid, nonce, "InternalError", f"unencodable result: {exc}"))
        finally:
            with self.state_lock:
                self.inflight -= 1
                self.last_activity = time.monotonic()

    @staticmethod
    def error(rid, nonce, kind, message):
        # Error observations are capped like output: a 5 MB message is not a 5 MB observation.
        return {
            "id": rid,
            "nonce": nonce,
            "ok": False,
            "error": {"type": kind, "message": cap_text(message, OUT_HEAD, OUT_TAIL)},
        }

    def cancel(self, target):
        """Trip the cancel pipe of request `target` (answered in the reader thread: needs no new thread)."""
        with self.state_lock:
            fd = self.cancels.get(target)
            if fd is None and len(self.cancelled_early) < 10_000:
                self.cancelled_early.add(target)
            if fd is not None:
                try:
                    os.write(fd, b"x")
                except OSError:
                    pass

    def dispatch(self, req):
        with self.state_lock:
            self.inflight += 1
            self.last_activity = time.monotonic()
        arrived, note = time.monotonic(), None
        for _ in range(2):
            try:
                threading.Thread(target=self.handle, args=(req, arrived, note), daemon=True).start()
                return
            except RuntimeError as exc:  # no threads left: the pids limit is exhausted
                why = (
                    f"{exc}: the sandbox's limit on processes and threads is used up ({self.pids_holders()})"
                )
            if note is not None:
                break
            # This is the reader thread: whatever happens, the request gets its answer.
            try:
                note = self.reclaim()
            except Exception as exc:
                why = str(exc)
            if note is None:
                break
        with self.state_lock:
            self.inflight -= 1
        self.send(self.error(req.get("id"), req.get("nonce"), "ResourceExhausted", why))

    def exit(self, reason):
        """Tell the host why, if the channel takes the frame at once, and end the process.

        Never waits on the channel: a host that stopped reading (Ctrl-Z'd, its link hung) leaves a request
        thread blocked writing under `out_lock`, and an exit that waited for it kept the sandbox alive
        past every limit. The lock is kept to the end, so no frame can follow (or cut into) this one.
        """
        try:
            if self.out_lock.acquire(timeout=EXIT_WAIT):
                frame = encode_frame({"id": None, "event": "exit", "reason": str(reason)[:1000]})
                if select.select([], [self.out_fd], [], EXIT_WAIT)[1]:
                    os.set_blocking(self.out_fd, False)
                    os.write(self.out_fd, frame)  # under PIPE_BUF: written whole or not at all
        except OSError:
            pass
        finally:
            os._exit(0)  # tini exits with its only child, and the pid namespace (every process) with it

    def watchdog(self):
        tick = min(1.0, IDLE_TIMEOUT / 4, LIFETIME / 4)
        last = time.monotonic()
        while True:
            time.sleep(tick)
            now = time.monotonic()
            if now - self.started > LIFETIME:
                self.exit("lifetime")
            with self.state_lock:
                # A tick that took far longer than its sleep: this process did not run (`docker pause`
                # froze it, or the whole machine stalled). The monotonic clock ran on meanwhile, but the
                # host's silence did not: its pings wait unread in stdin, and would lose the race to this
                # check on thaw. Frozen time is not idle time (the lifetime limit still counts it).
                stalled = now - last - tick
                if stalled > tick:
                    self.last_activity = min(now, self.last_activity + stalled)
                    if self.blocked_since is not None:  # a reply's write waited through the freeze too
                        self.blocked_since = min(now, self.blocked_since + stalled)
                last = now
                idle = self.inflight == 0 and now - self.last_activity > IDLE_TIMEOUT
                blocked_since = self.blocked_since
            # A request stuck sending its reply to a host that has read nothing for the idle limit is
            # idle too: that host stopped (it pings while alive), and only this limit can reap its sandbox.
            if idle or (blocked_since is not None and now - blocked_since > IDLE_TIMEOUT):
                self.exit("idle")

    def serve(self, in_fd):
        threading.Thread(target=self.watchdog, daemon=True).start()
        self.send({"id": None, "event": "hello", "pid": os.getpid(), "version": 2, "uid": os.getuid(),
                   "privilege_split": self.split, "accounts_error": self.accounts_error})  # fmt: skip
        while True:
            head = read_exact(in_fd, 4)
            if head is None:
                self.exit("eof")  # the host went away: nobody can use this sandbox any more
            # When the request began to arrive: a restore's limit counts from here, not from the end of
            # its archive (megabytes later), so the host's deadline for it is not overrun by their transfer.
            began = time.monotonic()
            (n,) = struct.unpack(">I", head)
            if n > MAX_FRAME:
                if not skip(in_fd, n):
                    self.exit("eof")
                self.send(
                    {"id": None, "event": "error", "message": f"frame of {n} bytes exceeds {MAX_FRAME}"}
                )
                continue
            body = read_exact(in_fd, n)
            if body is None:
                self.exit("eof")
            try:
                req = json.loads(body)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                self.send({"id": None, "event": "error", "message": f"malformed request: {exc}"})
                continue
            blob = req.get("blob")
            if blob is not None:
                # Bulk bytes (archives) travel raw after their frame: no base64, no JSON parse of them.
                if not isinstance(blob, int) or isinstance(blob, bool) or blob < 0:
                    self.exit("a request with a malformed blob length: the stream cannot be followed")
                if blob > MAX_FRAME:
                    if not skip(in_fd, blob):
                        self.exit("eof")
                    error = f"a blob of {blob} bytes exceeds {MAX_FRAME}"
                    self.send(self.error(req.get("id"), req.get("nonce"), "InvalidRequest", error))
                    continue
                req["_blob"] = read_into(in_fd, blob)
                if req["_blob"] is None:
                    self.exit("eof")
            req["_began"] = began
            if req.get("op") == "cancel":
                self.cancel((req.get("args") or {}).get("target"))
                continue
            self.dispatch(req)


def main():
    # The channel keeps private (close-on-exec) copies of fds 0/1; the originals point at /dev/null so
    # nothing a child inherits or a stray print can corrupt the framing.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    for fd in (in_fd, out_fd):
        # Bigger pipes mean fewer wake-ups per MB for archives (snapshots); 1 MiB is the unprivileged cap.
        try:
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass  # not a pipe, or the cap is lower: the default size works, only slower
    # While still root: the files are root's, so user code cannot rewrite them.
    accounts_error = write_accounts() if os.getuid() == 0 else "the supervisor did not start as root"
    split = become_supervisor()
    os.makedirs(WORKSPACE, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    Supervisor(out_fd, split, accounts_error).serve(in_fd)


def too_late(start_by, entered):
    """The refusal of a restore past its limit, saying where the time went: on receiving and checking
    its archive (a big one, a slow link), or on waiting for another restore or a running cell."""
    if start_by <= entered:
        why = "it was used up receiving and checking the archive, before anything held the sandbox"
    else:
        why = f"it waited {time.monotonic() - entered:.1f} s for another restore or a running Python cell"
    return RequestError(
        "InvalidRequest",
        f"the restore could not begin within its time limit ({why}); nothing was changed: give it more time",
    )


def with_note(result, note):
    """A result that says the interpreter was restarted (its state is gone) to free the pids limit."""
    if not isinstance(result, dict):
        return result
    extra = {"stderr": note + result["stderr"]} if isinstance(result.get("stderr"), str) else {}
    return {**result, **extra, "state_lost": True}


def hogs(held, limit):
    """Whether `held` pids are most of the limit and most of what is in use."""
    return held * 2 >= (limit or 64) and held * 2 >= (pids_current() or 0)


def pids_limit():
    """The container's pids limit (cgroup v2), or None when there is none or it cannot be read."""
    try:
        with open("/sys/fs/cgroup/pids.max") as f:
            value = f.read().strip()
    except OSError:
        return None
    return int(value) if value.isdigit() else None


def pids_current():
    """How many processes and threads the container runs now (cgroup v2), or None."""
    try:
        with open("/sys/fs/cgroup/pids.current") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
