"""The interpreter (`boot.py --worker`, runs as the user): executes cells in one namespace, notebook-style.

Fd 3 carries `{"code", "nonce"}` frames in, fd 4 carries results out; each result echoes its cell's
nonce, which the supervisor checks. Between cells fd 3 may bring `{"reap": true}`: the interpreter
reaps its ended children (`_reap_children`) and writes a byte to fd 5 once done. A process forked
inside a cell has a copy of these fds, but it only ever knows the nonce of the cell it was forked in,
and the supervisor kills it when that cell ends; one that reaches the cell's end exits there without
writing a result (`end_forked_child`).
"""

import base64
import gc
import io
import json
import os
import signal
import struct
import sys
import types

from .framing import cap_text, encode_frame, read_exact, write_all
from .settings import IMAGE_BUDGET, MAX_FIGURES, OUT_HEAD, OUT_TAIL

CMD_FD, RES_FD, REAPED_FD = 3, 4, 5
# The objects through which code waits for a child it started: such a child's status is theirs to take.
POPEN_CLASSES = (("subprocess", "Popen"), ("multiprocessing.popen_fork", "Popen"))
# The zombies a Popen held at the last search of the heap, as (pid, start time): `_reap_children`.
_looked_for: set = set()


def _restore_output(saved):
    """Put fds 1/2 and sys.stdout/stderr back if the previous cell closed them (output stays captured)."""
    for fd, keep in saved.items():
        try:
            os.dup2(keep, fd)
        except OSError:
            pass  # the cell closed our private copy too: that stream is gone for good
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is None or getattr(stream, "closed", True):
            setattr(
                sys,
                name,
                open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1),
            )


def _reap_children():
    """Reap the children that have ended and that no `Popen` still holds unwaited: those of finished
    cells, which the supervisor killed and then asked for this (between cells). Left unreaped, each
    zombie holds a pid of the sandbox's limit for as long as the interpreter lives.

    A child a `Popen` (subprocess's, multiprocessing's) holds is left for it: a thread, or a later cell,
    may wait for it yet, and reaped here it would get no status (subprocess then says 0 for a child that
    exited 3, or was killed). Such a zombie goes when its Popen is waited for or dropped. A child known
    only by its pid (a bare `os.fork`) cannot be told apart from a forgotten one, and is reaped.

    The heap is searched for Popens only when there are zombies it was not searched for already: one a
    Popen holds stays until it is waited for, and a scan at every cell's end would cost a second a cell
    with millions of objects, to find the same again. A zombie is known by its pid and start time (a
    pid is used again only once it is reaped). One whose Popen was dropped since is reaped with the
    next ended child.
    """
    global _looked_for
    ended = _ended_children()
    if not ended or ended.items() <= _looked_for:
        return
    held = _held_by_popen()
    if held is None:
        return  # left for the reclaim of the pids limit (`server.reclaim`), which restarts if it must
    _looked_for = {(pid, started) for pid, started in ended.items() if pid in held}
    for pid in ended:
        if pid in held:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, InterruptedError):
            pass  # waited for meanwhile (by a thread), or to be reaped next time


def _ended_children():
    """This process's children that have ended and are not yet reaped (zombies): {pid: start time}."""
    me, pids = os.getpid(), {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split(b" ")
        # After the name: state, ppid, ... and the start time, field 22 of proc(5).
        if fields[0] == b"Z" and int(fields[1]) == me:
            pids[int(name)] = int(fields[19])
    return pids


def _held_by_popen():
    """Pids of the children a live Popen object holds unwaited; None when looking failed (an object of
    user code raised), so that nothing is reaped from under one."""
    classes = tuple(
        cls
        for module, name in POPEN_CLASSES
        if isinstance(cls := getattr(sys.modules.get(module), name, None), type)
    )
    if not classes:
        return set()
    held = set()
    try:
        for obj in gc.get_objects():
            # issubclass of the type, not isinstance: no user-defined `__class__` runs here.
            if issubclass(type(obj), classes):
                state = getattr(obj, "__dict__", None)
                if isinstance(state, dict) and state.get("returncode") is None:
                    pid = state.get("pid")
                    if isinstance(pid, int):
                        held.add(pid)
    except Exception:
        return None
    return held


def _as_a_notebook(builtins):
    """Make the process look to user code like `python` in /workspace; return the cells' namespace.

    Cells run in a real `__main__` module (pickle, and so multiprocessing, find a cell's classes and
    functions by `__main__.<name>`). The supervisor's folders leave `sys.path`, and its modules
    `sys.modules`, so `import settings` or `import supervisor` finds the workspace's own module; the
    current directory comes first, as for `python -c`. Called once the worker has imported all it uses.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    ours = {package, os.path.dirname(package)}
    sys.path[:] = [p for p in sys.path if p == "" or os.path.abspath(p) not in ours]
    if not sys.flags.safe_path and "" not in sys.path:
        sys.path.insert(0, "")
    name = __name__.rpartition(".")[0]
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]  # this module's functions keep their globals: they run on unaffected
    sys.argv = [""]  # not boot.py's `--worker`, which argparse in a cell would choke on
    main = types.ModuleType("__main__")
    vars(main)["__builtins__"] = builtins
    sys.modules["__main__"] = main
    return main.__dict__


def worker_main():
    import ast
    import builtins
    import linecache
    import traceback
    import warnings

    # The pipes must not cross exec into programs the cell runs (forks keep them; see the docstring).
    for fd in (CMD_FD, RES_FD, REAPED_FD):
        os.set_inheritable(fd, False)
    os.set_blocking(REAPED_FD, False)
    # Not dumpable: other user processes (a concurrent shell call) cannot ptrace the interpreter or open
    # /proc/<interpreter>/fd/*, so they cannot read a cell's nonce or write into its result pipe.
    from .privileges import PR_SET_DUMPABLE, prctl

    prctl(PR_SET_DUMPABLE, 0)
    saved = {1: os.dup(1), 2: os.dup(2)}  # non-inheritable private copies
    warnings.filterwarnings("ignore", message=".*non-interactive.*")

    def no_input(prompt=""):
        raise EOFError("input() is not available: the sandbox has no interactive stdin")

    builtins.input = no_input
    namespace = _as_a_notebook(builtins)
    interpreter_pid = os.getpid()

    def note(text):
        try:
            print(text, file=sys.stderr)
        except Exception:
            pass  # the cell closed or replaced stderr: the result still comes back

    def figures():
        """The cell's open figures as base64 PNGs. Every figure is closed at the end, whatever happened:
        one left open is rendered again at the end of every later cell, and fails (or hangs) there too."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return []
        images: list[str] = []
        failed: list[str] = []
        total = dropped = 0
        try:
            for num in plt.get_fignums():
                if len(images) >= MAX_FIGURES:
                    dropped += 1
                    continue
                buf = io.BytesIO()
                try:
                    plt.figure(num).savefig(buf, format="png", bbox_inches="tight")
                except Exception as exc:  # one figure Agg cannot draw (too large...) costs only itself
                    failed.append(f"figure {num}: {type(exc).__name__}: {str(exc)[:500]}")
                    continue
                encoded = base64.b64encode(buf.getvalue()).decode("ascii")
                # Past the budget a figure is dropped, not sent: a result frame over the pipe's limit is a
                # protocol violation that costs the interpreter and every variable in it.
                if total + len(encoded) > IMAGE_BUDGET:
                    dropped += 1
                    continue
                images.append(encoded)
                total += len(encoded)
        except KeyboardInterrupt:
            # The timeout (or the host's cancel) hit inside savefig: say why no figure came back.
            note(
                "[figures not returned: the cell was interrupted while its figures were being rendered "
                "(a timeout or cancellation); they were closed. Plot less per figure, or save it with "
                "savefig in a cell of its own]"
            )
            raise
        finally:
            # SIGINT is held off while closing: an interrupt landing here would leave figures open again.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                plt.close("all")
            finally:
                signal.signal(signal.SIGINT, previous)
        if failed:
            note(f"[{len(failed)} figure(s) could not be rendered and were closed: {'; '.join(failed)}]")
        if dropped:
            note(
                f"[{dropped} figure(s) not returned: more than {MAX_FIGURES} figures or "
                f"{IMAGE_BUDGET // 2**20} MB of images in one cell; save them with savefig, or plot "
                "fewer or smaller ones per cell]"
            )
        return images

    def error_of(exc, skip_frames):
        tb = exc.__traceback__
        for _ in range(skip_frames):
            if tb is not None:
                tb = tb.tb_next
        try:
            lines = traceback.format_exception(type(exc), exc, tb)
            evalue = str(exc.code) if isinstance(exc, SystemExit) else str(exc)
        except BaseException as inner:  # a hostile __str__ must not take the interpreter down
            lines, evalue = [f"{type(exc).__name__}: <unprintable: {type(inner).__name__}>"], "<unprintable>"
        # Capped here too so a 5 MB message never crosses the pipe (the supervisor caps again).
        return {
            "ename": type(exc).__name__,
            "evalue": cap_text(evalue),
            "traceback": cap_text("".join(lines)),
        }

    def end_forked_child(error):
        """A process the cell forked that ran off the cell's end (no os._exit) ends as a script's child
        would: its traceback on stderr, status 1 (or its SystemExit code). It never writes a result: a
        second frame for the cell is a protocol violation that costs the interpreter all its state."""
        status = 0
        if error is not None and error["ename"] == "SystemExit":
            code = error["evalue"]
            status = int(code) if code.lstrip("-").isdigit() else (0 if code == "None" else 1)
        elif error is not None:
            note(error["traceback"].rstrip("\n"))
            status = 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(status & 0xFF)

    def run_cell(code, n):
        filename = f"<cell {n}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        value, error = None, None
        try:
            tree = ast.parse(code, filename, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, filename, "exec"), namespace)
            if last is not None:
                result = eval(compile(last, filename, "eval"), namespace)
                if result is not None:
                    namespace["_"] = result
                    value = repr(result)
                    if len(value) > OUT_HEAD + OUT_TAIL:
                        value = f"{value[:OUT_HEAD]}\n[... {len(value) - OUT_HEAD - OUT_TAIL} characters dropped ...]\n{value[-OUT_TAIL:]}"
        except SyntaxError as exc:
            error = error_of(exc, 99)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the interpreter lives on
            error = error_of(exc, 1)
        if os.getpid() != interpreter_pid:
            end_forked_child(error)
        try:
            images = figures()
        except Exception as exc:
            images = []
            error = error or error_of(exc, 0)
        return {"value": value, "error": error, "images": images}

    count = 0
    while True:
        # Interrupts only land inside a cell: one arriving while reading or answering would desync the pipes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        head = read_exact(CMD_FD, 4)
        if head is None:
            os._exit(0)
        msg = json.loads(read_exact(CMD_FD, struct.unpack(">I", head)[0]))
        if msg.get("reap"):
            _reap_children()
            try:
                os.write(REAPED_FD, b".")
            except OSError:
                pass  # full (nobody read the last ones) or closed by a cell: the supervisor stops waiting
            continue
        count += 1
        _restore_output(saved)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            result = run_cell(msg["code"], count)
        except KeyboardInterrupt as exc:  # arrived between the cell's end and here
            result = {"value": None, "error": error_of(exc, 0), "images": []}
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        result["nonce"] = msg["nonce"]
        write_all(RES_FD, encode_frame(result))
