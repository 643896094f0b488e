"""The supervisor's side of the persistent Python interpreter (`worker.py`).

Every cell gets a fresh random nonce; the only frame accepted from the result pipe is one well-formed
result carrying that nonce. Anything else (garbage, another nonce, a second frame) is a protocol
violation: the interpreter is replaced and the call says that state was lost, so the result of one cell
is never delivered as another's. When a cell ends (result, timeout, cancellation), every process it
forked is killed; the interpreter itself lives on.

No wait is unbounded: the cell is written to the interpreter inside the cell's deadline (an interpreter
that does not read it, stopped or busy in a thread holding the GIL, is killed at the deadline as one
that ignores its interrupt would be), and a reset ends a running cell at once (`turns.Turns`).

Each interpreter started gets an id of its own (`ident`): a cell's result names the interpreter that
holds what the cell did, and a snapshot the one running, so the host can tell which of the cells it
recorded still have their effects (a cell whose reply it dropped may have cost the interpreter).
"""

import contextlib
import json
import os
import secrets
import select
import signal
import struct
import sys
import time

from .framing import Capture, cap_text, drain, encode_frame
from .procs import Spawned, continue_tree, stop_tree, wait_reaped
from .settings import (
    IMAGE_BUDGET,
    INTERRUPT_GRACE,
    KILL_BUDGET,
    MAX_FIGURES,
    OUT_HEAD,
    OUT_TAIL,
    WORKSPACE,
    child_env,
)
from .turns import Turns

BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot.py")
MAX_RESULT_FRAME = 64 * 1024 * 1024
REAP = encode_frame({"reap": True})  # between cells: the interpreter reaps its dead children (`end_strays`)
REAP_WAIT = 2.0
REAPED_FD = 5  # the interpreter's end of the pipe on which it says it has reaped (a byte per `REAP`)


def _drain_pipe(fd):
    """Read and drop what the non-blocking pipe `fd` holds."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


class ProtocolViolation(Exception):
    """The result pipe carried something that is not this cell's result."""


def _sanitize(msg, nonce):
    """This cell's result from a frame of the (user-controlled) interpreter, capped; or ProtocolViolation.

    Images are held to the worker's own limits (`MAX_FIGURES`, `IMAGE_BUDGET`): a frame user code wrote
    itself could otherwise bring 64 MB of them into the host's result and the trace. What is dropped is
    said under `_note`, for the cell's stderr.
    """
    if not isinstance(msg, dict) or not secrets.compare_digest(str(msg.get("nonce")), nonce):
        raise ProtocolViolation("a frame that does not carry this cell's nonce")
    value, error, images = msg.get("value"), msg.get("error"), msg.get("images") or []
    if value is not None and not isinstance(value, str):
        raise ProtocolViolation("a malformed result")
    if error is not None:
        if not isinstance(error, dict):
            raise ProtocolViolation("a malformed error")
        error = {k: cap_text(str(error.get(k, ""))) for k in ("ename", "evalue", "traceback")}
        error["ename"] = error["ename"][:200]
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise ProtocolViolation("malformed images")
    kept: list = []
    total = 0
    for image in images:
        if len(kept) < MAX_FIGURES and total + len(image) <= IMAGE_BUDGET:
            kept.append(image)
            total += len(image)
    note = (
        f"[{len(images) - len(kept)} image(s) dropped: the interpreter sent more than {MAX_FIGURES} or "
        f"{IMAGE_BUDGET // 2**20} MB of them]\n"
        if len(kept) < len(images)
        else None
    )
    return {"value": None if value is None else cap_text(value, OUT_HEAD, OUT_TAIL), "error": error,
            "images": kept, "_note": note}  # fmt: skip


class Interpreter:
    """A persistent Python process under its own keeper, replaced when it dies, hangs or misbehaves."""

    def __init__(self):
        self.turns = Turns()
        # Held by whoever uses the interpreter (a cell, a reset, a restore, a reclaim): `turns`.
        self.lock = self.turns.lock
        # The running interpreter's process and id, replaced as one (a snapshot reads them without the lock).
        self._instance = None
        # What the next cell's note says when it finds no interpreter (see `_run`).
        self.stopped_why = None
        # Why a cancelled cell cost the interpreter: the host drops a cancelled call's reply, so the
        # next cell reports the loss (see `_run`). Cleared by `stop`: a reset or restore reports its own.
        self.unreported_loss = None
        # A cell was sent to the running interpreter: a reset or restore need not replace one that ran
        # none. Set only once a cell holds its turn and has been handed over, and cleared only with the
        # interpreter itself (`start`, `stop`): a cell that queued behind a reset runs in the interpreter
        # the reset left, so a flag the reset cleared at its end would forget that cell.
        self.used = False
        self.start()

    @property
    def proc(self):
        """The interpreter's process (`Spawned`) from `start` to `stop`, else None."""
        instance = self._instance
        return instance[0] if instance else None

    @property
    def pid(self):
        proc = self.proc
        return proc.pid if proc else None

    def live_ident(self):
        """The id of the interpreter running now; None when none runs or it has died (its state is gone).

        Safe without the lock: the process and its id are read together, and only looked at."""
        instance = self._instance
        if instance is None:
            return None
        proc, ident = instance
        try:
            if proc.exit_code is not None or select.select([proc.status_fd], [], [], 0)[0]:
                return None  # its status (or its keeper's end) is there: it has exited
        except (OSError, ValueError):
            return None  # stopped meanwhile (the status pipe closed)
        return ident

    def _live(self):
        """The interpreter's process; there is one from `start` to `stop` (a cell never runs outside)."""
        if self.proc is None:
            raise RuntimeError("the interpreter is stopped")
        return self.proc

    def start(self):
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        reaped_r, reaped_w = os.pipe()
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            proc = Spawned(
                [sys.executable, "-u", BOOT, "--worker"],
                cwd=WORKSPACE,
                env=child_env(),
                fds={0: devnull, 1: out_w, 2: err_w, 3: cmd_r, 4: res_w, REAPED_FD: reaped_w},
            )
        except BaseException:
            for fd in (cmd_w, res_r, out_r, err_r, reaped_r):
                os.close(fd)
            raise
        finally:
            for fd in (cmd_r, res_w, out_w, err_w, reaped_w, devnull):
                os.close(fd)
        self.cmd_w, self.res_r, self.out, self.err, self.reaped = cmd_w, res_r, out_r, err_r, reaped_r
        # The command pipe too: a cell larger than its buffer is written as the interpreter reads it,
        # under the cell's deadline (see `_run`).
        for fd in (self.cmd_w, self.out, self.err, self.res_r, self.reaped):
            os.set_blocking(fd, False)
        self.closed_streams = set()
        self.used = False
        self._instance = (proc, secrets.token_hex(8))

    def stop(self, why="the interpreter had been stopped (a restart could not start a new one)"):
        """Kill the interpreter and all it started; the next cell starts a fresh one, noting `why`."""
        self.stopped_why, self.unreported_loss = why, None
        self.used = False
        proc = self.proc
        if proc is None:
            return
        self._instance = None
        proc.close(budget=KILL_BUDGET)
        for fd in (self.cmd_w, self.res_r, self.out, self.err, self.reaped):
            os.close(fd)

    def restart(self):
        self.stop()
        self.start()

    def _send(self, data):
        """How much of `data` the command pipe took now (0 when it is full); OSError once it is closed."""
        try:
            return os.write(self.cmd_w, data)
        except BlockingIOError:
            return 0

    def end_strays(self):
        """Kill every process of the interpreter but itself, and have it reap them (call with the lock held,
        between cells): a cell's end, or the pids a thread of an earlier cell forked after it ended.

        The interpreter never waits for children a cell forked and left: killed, they stay its zombies,
        holding the pids limit until it ends. Asked between cells, it reaps those that no `Popen` of its
        own still holds (`worker._reap_children`: one that does may be waited for yet, and must then get
        its real status), and says so on its `REAPED_FD`.
        """
        proc = self._live()
        proc.kill_all(spare_main=True, budget=KILL_BUDGET)
        if wait_reaped(proc.pid, 0):
            return
        _drain_pipe(self.reaped)  # the answers to earlier asks that came after their wait
        try:
            asked = self._send(REAP) == len(REAP)  # under PIPE_BUF: written whole or not at all
        except OSError:
            return  # the interpreter is gone (the next cell says so), and its zombies with it
        if asked:
            # A thread holding the GIL may delay the answer: the zombies are reaped later then.
            select.select([self.reaped, proc.status_fd], [], [], REAP_WAIT)

    @contextlib.contextmanager
    def paused(self):
        """Nothing of the interpreter runs inside: its processes (each of their threads) are stopped,
        and continued on the way out. RequestError("ToolError") when they could not all be stopped."""
        if self.proc is None:
            yield
            return
        pids = stop_tree(self.proc.keeper)
        try:
            yield
        finally:
            continue_tree(pids)

    def run(self, code, timeout, arrived, cancel_fd, stream=None):
        # The timeout covers waiting behind other cells (and resets) too, so the host's own deadline holds.
        if not self.turns.take(arrived + timeout):
            note = f"the interpreter was busy with other cells for the whole {timeout:g}s timeout; this cell did not run"
            return self._not_run(note, arrived, timed_out=True)
        try:
            if select.select([cancel_fd], [], [], 0)[0]:
                return self._not_run(
                    "the call was cancelled by the host before the cell ran", arrived, cancelled=True
                )
            return self._run(code, arrived + timeout - time.monotonic(), cancel_fd, stream, limit=timeout)
        finally:
            self.turns.end()

    @staticmethod
    def _not_run(note, arrived, *, timed_out=False, cancelled=False):
        return {"value": None, "images": [], "error": {"ename": "TimeoutError" if timed_out else "Cancelled", "evalue": note,
                "traceback": note}, "stdout": "", "stderr": "", "stdout_dropped": 0, "stderr_dropped": 0,
                "timed_out": timed_out, "cancelled": cancelled, "state_lost": False,
                "duration_s": time.monotonic() - arrived}  # fmt: skip

    def _stray_output(self):
        """True if the result pipe holds bytes although no cell is running (something wrote out of turn)."""
        try:
            return bool(os.read(self.res_r, 65536))
        except BlockingIOError:
            return False

    def _died(self):
        code = self._live().read_status()
        if code is None:
            return "the interpreter's keeper went away"
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        if code == -signal.SIGKILL:
            how += " (out of memory?)"
        return f"the interpreter {how}"

    def _run(self, code, timeout, cancel_fd, stream=None, limit=None):
        """Run `code` for at most `timeout` more seconds (`limit`: the call's own, as messages name it)."""
        limit = timeout if limit is None else limit
        started = time.monotonic()
        lost: list = []  # why earlier state is gone
        if self.unreported_loss:
            lost.append(self.unreported_loss)
            self.unreported_loss = None
        if self.proc is None:
            # A reset that started none, or a restart whose start() failed (the pids limit taken again in
            # between), left none: start one now; should that fail too, the call says ResourceExhausted
            # and the next one tries again.
            self.start()
            lost.append(self.stopped_why or "the interpreter had been stopped")
        elif self._live().read_status() is not None:  # e.g. a background thread called os._exit
            lost.append(self._died() + " between cells")
            self.restart()
        elif self._stray_output():
            lost.append(
                "something wrote into the interpreter's result pipe between cells (protocol violation)"
            )
            self.restart()
        stale = {self.out: Capture(0, 0), self.err: Capture(0, 0)}
        drain([fd for fd in (self.out, self.err) if fd not in self.closed_streams], stale, time.monotonic())
        nonce = secrets.token_hex(16)
        unsent = memoryview(encode_frame({"code": code, "nonce": nonce}))
        try:
            unsent = unsent[self._send(unsent) :]
        except OSError:
            lost.append(self._died())
            self.restart()
            unsent = unsent[self._send(unsent) :]
        self.used = True  # in the interpreter that runs it: any start or restart above came first
        out, err = self.out, self.err  # this cell's pipes (a restart below replaces self.out/err)
        caps = {out: Capture(), err: Capture()}
        deadline = started + timeout
        interrupted = cancelled = False
        result, failure, buf = None, None, bytearray()
        while result is None and failure is None:
            wait = deadline - time.monotonic()
            if wait <= 0 and unsent:
                # Not even read: an interrupt cannot reach the cell (the worker ignores SIGINT between
                # cells), so it is killed now, as one that ignored its interrupt would be.
                interrupted = True
                why = "host's cancel" if cancelled else f"{limit:g}s timeout"
                failure = (f"the interpreter did not read the cell before the {why} (a thread of an "
                           "earlier cell holding it busy, or the process stopped) and was killed")  # fmt: skip
                break
            if wait <= 0:
                if not interrupted:
                    interrupted = True
                    try:
                        os.kill(self._live().pid, signal.SIGINT)
                    except ProcessLookupError:
                        pass
                    deadline = time.monotonic() + INTERRUPT_GRACE
                    continue
                why = "host's cancel" if cancelled else f"{limit:g}s timeout"
                failure = (f"the interpreter ignored the interrupt for {INTERRUPT_GRACE:g}s after the {why} and was "
                           "killed")  # fmt: skip
                break
            watched = [fd for fd in (self.out, self.err) if fd not in self.closed_streams]
            watched += [self.res_r, self._live().status_fd, self.turns.abort_fd]
            watched += [] if cancelled else [cancel_fd]
            if stream is not None:
                wait = stream.wait(wait)
            ready, writable, _ = select.select(watched, [self.cmd_w] if unsent else [], [], wait)
            if stream is not None:
                stream.tick()
            if self.turns.abort_fd in ready:  # cleared when the cell's turn ends
                failure = "the interpreter was reset (python_reset) during this cell"
                break
            if writable:
                try:
                    unsent = unsent[self._send(unsent) :]
                except OSError:  # the read end is closed: the interpreter died (or closed it)
                    failure = (
                        self._died()
                        if self._live().read_status() is not None
                        else "the interpreter closed its command pipe"
                    )
                    break
            if cancel_fd in ready:
                cancelled = True
                deadline = time.monotonic()  # interrupt now, exactly as a timeout would
                continue
            for fd in (self.out, self.err):
                if fd in ready:
                    data = os.read(fd, 65536)
                    if data:
                        caps[fd].add(data)
                        if stream is not None:
                            stream.add("stdout" if fd == out else "stderr", data)
                    else:
                        self.closed_streams.add(fd)  # user code closed every copy: never select on EOF again
            if self.res_r in ready:
                try:
                    piece = os.read(self.res_r, 1 << 20)
                except BlockingIOError:
                    piece = None
                if piece == b"":
                    failure = (
                        self._died()
                        if self._live().read_status() is not None
                        else "the interpreter closed its result pipe"
                    )
                elif piece:
                    buf += piece
                    try:
                        result = self._take(buf, nonce)
                    except ProtocolViolation as exc:
                        failure = f"protocol violation on the interpreter's result pipe: {exc}"
            if result is None and failure is None and self._live().status_fd in ready:
                failure = self._died()
        if result is not None:
            # Whatever the cell forked dies with it: no process of a finished cell outlives it.
            self.end_strays()
            drain(
                [fd for fd in (self.out, self.err) if fd not in self.closed_streams], caps, time.monotonic()
            )
            note = result.pop("_note", None)
            if note:
                caps[err].add(note.encode())
        else:
            drain(
                [fd for fd in (self.out, self.err) if fd not in self.closed_streams],
                caps,
                time.monotonic() + 0.2,
            )
            self.restart()
            if cancelled:  # nobody reads this result: the next cell says it
                self.unreported_loss = f"during a cell the host cancelled, {failure}"
            note = f"{failure}; a fresh interpreter was started and all state was lost"
            ename = (
                "ProtocolViolation"
                if failure is not None and failure.startswith("protocol")
                else "InterpreterReset"
                if failure is not None and "python_reset" in failure
                else "TimeoutError"
                if interrupted
                else "InterpreterDied"
            )
            result = {
                "value": None,
                "images": [],
                "error": {"ename": ename, "evalue": note, "traceback": note},
            }
            lost.append(failure)
        if lost and failure is None:
            # The cell ran fine in a fresh interpreter; say why the old one is gone.
            caps[err].add(
                f"[note: {'; '.join(lost)}; a fresh interpreter ran this cell and earlier state was lost]\n".encode()
            )
        if stream is not None:
            stream.flush(final=True)  # before the reply, which the host takes as the end of the call
        result.update(
            stdout=caps[out].text(),
            stderr=caps[err].text(),
            stdout_dropped=caps[out].dropped(),
            stderr_dropped=caps[err].dropped(),
            timed_out=interrupted and not cancelled,
            cancelled=cancelled,
            state_lost=bool(lost),
            duration_s=time.monotonic() - started,
            # What the cell did lives in this interpreter; in none when the cell cost its interpreter.
            interpreter=self._instance[1] if failure is None and self._instance else None,
        )
        return result

    @staticmethod
    def _take(buf, nonce):
        """This cell's result once a whole frame is in `buf`; None while incomplete."""
        if len(buf) < 4:
            return None
        (n,) = struct.unpack(">I", buf[:4])
        if n > MAX_RESULT_FRAME:
            raise ProtocolViolation(f"a frame of {n} bytes")
        if len(buf) < 4 + n:
            return None
        if len(buf) > 4 + n:
            raise ProtocolViolation("more than one frame for one cell")
        try:
            msg = json.loads(bytes(buf[4:]))
        except ValueError:
            raise ProtocolViolation("a frame that is not JSON") from None
        return _sanitize(msg, nonce)
