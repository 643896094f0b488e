#!/usr/bin/env python3
"""The in-container supervisor of a qwq-agent sandbox (stdlib only; runs as tini's child).

The host talks to it over the container's attached stdin/stdout: frames of a 4-byte big-endian length
followed by one JSON object. Requests carry an `id` and are answered out of order (one thread each);
Python cells are serialised on the one persistent interpreter, everything else runs concurrently.
Events with `"id": null` (hello, exit) are unsolicited.

The same file is also the interpreter (`--worker CMD_FD RES_FD`), so the image ships one file.
"""

import base64
import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time

WORKSPACE = os.environ.get("QWQ_WORKSPACE", "/workspace")
MAX_FRAME = int(os.environ.get("QWQ_MAX_FRAME", str(96 * 1024 * 1024)))
IDLE_TIMEOUT = float(os.environ.get("QWQ_IDLE_TIMEOUT", "900"))
LIFETIME = float(os.environ.get("QWQ_LIFETIME", "3600"))
OUT_HEAD = int(os.environ.get("QWQ_OUTPUT_HEAD", "32768"))
OUT_TAIL = int(os.environ.get("QWQ_OUTPUT_TAIL", "32768"))
INTERRUPT_GRACE = float(os.environ.get("QWQ_INTERRUPT_GRACE", "2"))
MAX_DOWNLOAD = int(os.environ.get("QWQ_MAX_DOWNLOAD", str(64 * 1024 * 1024)))
MAX_EDIT_BYTES = 10 * 1024 * 1024
MAX_RESPONSE_LEN = 16000
MAX_DIR_ENTRIES = 1000
SNIPPET_LINES = 4
TRUNCATED_NOTE = (
    "<response clipped><NOTE>To save on context only part of this file has been shown to you. You should "
    "retry this tool after you have searched inside the file with `grep -n` in order to find the line "
    "numbers of what you are looking for.</NOTE>"
)
# Lets the kernel's OOM killer pick user code rather than the supervisor (raising is unprivileged).
OOM_PRELUDE = "{ echo 1000 >/proc/$$/oom_score_adj; } 2>/dev/null; "


class RequestError(Exception):
    """An error reported to the host as `{"type": kind, "message": ...}`."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------------------------------- framing


def encode_frame(obj):
    body = json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return struct.pack(">I", len(body)) + body


def read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Capture:
    """Keeps the first `head` and last `tail` bytes of a stream and counts what fell between."""

    def __init__(self, head=OUT_HEAD, tail=OUT_TAIL):
        self.head_cap, self.tail_cap = head, tail
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def add(self, data):
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    def dropped(self):
        return self.total - len(self.head) - len(self.tail)

    def text(self):
        head = self.head.decode("utf-8", "backslashreplace")
        tail = self.tail.decode("utf-8", "backslashreplace")
        dropped = self.dropped()
        if dropped:
            return f"{head}\n[... {dropped} bytes dropped ...]\n{tail}"
        return head + tail


def drain(fds, captures, deadline):
    """Read the pipes in `fds` into `captures` until EOF on all, or nothing arrives before `deadline`.

    Returns the fds still open. A writer that never pauses is cut off half a second past the deadline.
    """
    open_fds = list(fds)
    while open_fds:
        wait = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select(open_fds, [], [], wait)
        if not ready or time.monotonic() > deadline + 0.5:
            break
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if data:
                captures[fd].add(data)
            else:
                open_fds.remove(fd)
    return open_fds


def kill_group(pgid):
    # A few rounds because a fork bomb may add members while the first kill is delivered.
    for _ in range(3):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.002)


def child_env():
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("QWQ_")]:
        del env[key]
    return env


# ---------------------------------------------------------------------------------------------- python


class Interpreter:
    """A persistent Python process (`--worker`), replaced when it dies or ignores an interrupt."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proc = None
        self.start()

    def start(self):
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(__file__), "--worker", str(cmd_r), str(res_w)],
            pass_fds=(cmd_r, res_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=WORKSPACE,
            env=child_env(),
            start_new_session=True,
        )
        os.close(cmd_r)
        os.close(res_w)
        self.cmd_w, self.res_r = cmd_w, res_r
        self.out, self.err = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        for fd in (self.out, self.err, self.res_r):
            os.set_blocking(fd, False)
        self.resbuf = bytearray()

    def stop(self):
        if self.proc is None:
            return
        kill_group(self.proc.pid)
        self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
        for fd in (self.cmd_w, self.res_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def _take_result(self):
        while len(self.resbuf) >= 4:
            (n,) = struct.unpack(">I", self.resbuf[:4])
            if len(self.resbuf) < 4 + n:
                return None
            msg = json.loads(bytes(self.resbuf[4 : 4 + n]))
            del self.resbuf[: 4 + n]
            if not msg.get("ready"):
                return msg
        return None

    def run(self, code, timeout, arrived):
        # The timeout covers waiting behind other cells too, so the host's own deadline always holds.
        if not self.lock.acquire(timeout=max(0.0, arrived + timeout - time.monotonic())):
            note = f"the interpreter was busy with other cells for the whole {timeout:g}s timeout; this cell did not run"
            return {"value": None, "images": [], "error": {"ename": "TimeoutError", "evalue": note, "traceback": note},
                    "stdout": "", "stderr": "", "stdout_dropped": 0, "stderr_dropped": 0, "timed_out": True,
                    "state_lost": False, "duration_s": time.monotonic() - arrived}
        try:
            return self._run(code, arrived + timeout - time.monotonic())
        finally:
            self.lock.release()

    def _run(self, code, timeout):
        started = time.monotonic()
        died_between_cells = self.proc.poll() is not None  # e.g. a background thread called os._exit
        if died_between_cells:
            self.restart()
        stale = {self.out: Capture(0, 0), self.err: Capture(0, 0)}
        drain([self.out, self.err], stale, time.monotonic())  # output of background threads between cells
        caps = {self.out: Capture(), self.err: Capture()}
        try:
            write_all(self.cmd_w, encode_frame({"code": code}))
        except (BrokenPipeError, OSError):
            self.restart()
            write_all(self.cmd_w, encode_frame({"code": code}))
        deadline = started + timeout
        interrupted = state_lost = False
        result, exit_note = None, None
        while result is None:
            wait = deadline - time.monotonic()
            if wait <= 0:
                if not interrupted:
                    interrupted = True
                    try:
                        os.kill(self.proc.pid, signal.SIGINT)
                    except ProcessLookupError:
                        pass
                    deadline = time.monotonic() + INTERRUPT_GRACE
                    continue
                exit_note = (
                    f"the interpreter ignored the interrupt for {INTERRUPT_GRACE:g}s after the {timeout:g}s "
                    "timeout and was killed; a fresh interpreter was started and all state was lost"
                )
                break
            ready, _, _ = select.select([self.out, self.err, self.res_r], [], [], wait)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if fd == self.res_r:
                    if not data:
                        code_ = self.proc.wait()
                        how = f"was killed by signal {-code_}" if code_ < 0 else f"exited with status {code_}"
                        if code_ == -signal.SIGKILL:
                            how += " (out of memory?)"
                        exit_note = f"the interpreter {how}; a fresh interpreter was started and all state was lost"
                        break
                    self.resbuf += data
                    result = self._take_result()
                elif data:
                    caps[fd].add(data)
                else:
                    # The worker closed stdout/stderr itself: keep waiting on the result pipe only.
                    os.set_blocking(fd, True)
            if exit_note:
                break
        if result is None:
            drain([self.out, self.err], caps, time.monotonic() + 0.2)
            self.restart()
            state_lost = True
            result = {
                "value": None,
                "images": [],
                "error": {"ename": "TimeoutError" if interrupted else "InterpreterDied", "evalue": exit_note,
                          "traceback": exit_note},
            }
        else:
            drain([self.out, self.err], caps, time.monotonic())  # what was written before the result
        result.update(
            stdout=caps[self.out].text(),
            stderr=caps[self.err].text(),
            stdout_dropped=caps[self.out].dropped(),
            stderr_dropped=caps[self.err].dropped(),
            timed_out=interrupted,
            state_lost=state_lost or died_between_cells,
            duration_s=time.monotonic() - started,
        )
        return result


def worker_main(cmd_fd, res_fd):
    """The interpreter: executes cells in one namespace, notebook-style."""
    import ast
    import builtins
    import linecache
    import traceback
    import warnings

    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    warnings.filterwarnings("ignore", message=".*non-interactive.*")

    def no_input(prompt=""):
        raise EOFError("input() is not available: the sandbox has no interactive stdin")

    builtins.input = no_input
    namespace = {"__name__": "__main__", "__builtins__": builtins}

    def figures():
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return []
        images = []
        for num in plt.get_fignums()[:20]:
            buf = io.BytesIO()
            plt.figure(num).savefig(buf, format="png", bbox_inches="tight")
            images.append(base64.b64encode(buf.getvalue()).decode("ascii"))
        plt.close("all")
        return images

    def error_of(exc, skip_frames):
        tb = exc.__traceback__
        for _ in range(skip_frames):
            if tb is not None:
                tb = tb.tb_next
        lines = traceback.format_exception(type(exc), exc, tb)
        evalue = str(exc.code) if isinstance(exc, SystemExit) else str(exc)
        return {"ename": type(exc).__name__, "evalue": evalue, "traceback": "".join(lines)}

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
        try:
            images = figures()
        except Exception as exc:
            images = []
            error = error or error_of(exc, 0)
        return {"value": value, "error": error, "images": images}

    write_all(res_fd, encode_frame({"ready": True}))
    count = 0
    while True:
        # Interrupts only land inside a cell: one arriving while reading or answering would desync the pipes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        head = read_exact(cmd_fd, 4)
        if head is None:
            os._exit(0)
        msg = json.loads(read_exact(cmd_fd, struct.unpack(">I", head)[0]))
        count += 1
        signal.signal(signal.SIGINT, signal.default_int_handler)
        result = run_cell(msg["code"], count)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        write_all(res_fd, encode_frame(result))


# ---------------------------------------------------------------------------------------------- shell


def run_shell(args):
    command, timeout = args.get("command"), float(args.get("timeout") or 60)
    if not isinstance(command, str) or not command.strip():
        raise RequestError("InvalidRequest", "`command` must be a non-empty string")
    cwd = resolve(args.get("cwd") or WORKSPACE)[1]
    started = time.monotonic()
    proc = subprocess.Popen(
        ["/bin/bash", "-c", OOM_PRELUDE + command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=child_env(),
        start_new_session=True,
    )
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    caps = {out: Capture(), err: Capture()}
    open_fds, timed_out = [out, err], False
    deadline = started + timeout
    while open_fds:
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        # Short waits so that a background job holding the pipes open cannot stall the call.
        open_fds = drain(open_fds, caps, min(deadline, now + 0.02))
        if proc.poll() is not None:
            break
    if not timed_out:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(0.5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    kill_group(proc.pid)  # background jobs left behind die with the call
    proc.wait()
    drain(open_fds, caps, time.monotonic() + 0.1)
    proc.stdout.close()
    proc.stderr.close()
    return {
        "exit_code": proc.returncode,
        "stdout": caps[out].text(),
        "stderr": caps[err].text(),
        "stdout_dropped": caps[out].dropped(),
        "stderr_dropped": caps[err].dropped(),
        "timed_out": timed_out,
        "duration_s": time.monotonic() - started,
    }


# ---------------------------------------------------------------------------------------------- files


def resolve(path, *, allow_missing=True):
    """Returns (display path, real path), refusing anything that resolves outside the workspace."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise RequestError("InvalidRequest", "`path` must be a non-empty string without NUL bytes")
    shown = os.path.normpath(path if os.path.isabs(path) else os.path.join(WORKSPACE, path))
    real = os.path.realpath(shown)
    root = os.path.realpath(WORKSPACE)
    if real != root and not real.startswith(root + "/"):
        raise RequestError(
            "PathOutsideWorkspace", f"The path {path} is outside the workspace {WORKSPACE}; only paths in it can be used."
        )
    if not allow_missing and not os.path.lexists(real):
        raise RequestError("ToolError", f"The path {shown} does not exist. Please provide a valid path.")
    return shown, real


def numbered(text, init_line=1):
    return "\n".join(f"{i + init_line:6}\t{line}" for i, line in enumerate(text.split("\n")))


def cat_n(text, descriptor, init_line=1):
    return f"Here's the result of running `cat -n` on {descriptor}:\n" + numbered(text, init_line) + "\n"


def count_lines(real):
    """Lines as `str.split("\\n")` counts them (a trailing newline starts an empty last line)."""
    n = 1
    with open(real, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


class Editor:
    """`str_replace_editor` semantics (OpenHands / SWE-agent), messages kept close to the original."""

    def __init__(self):
        self.history = {}
        self.lock = threading.Lock()

    def read_text(self, shown, real):
        if os.path.isdir(real):
            raise RequestError("ToolError", f"The path {shown} is a directory and only the `view` command can be used on directories.")
        size = os.path.getsize(real)
        if size > MAX_EDIT_BYTES:
            raise RequestError("ToolError", f"The file {shown} is too large to edit ({size} bytes; the limit is {MAX_EDIT_BYTES}). Use the shell instead.")
        with open(real, "rb") as f:
            data = f.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError("ToolError", f"The file {shown} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None

    def write_text(self, real, text):
        with open(real, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    def view(self, args):
        shown, real = resolve(args.get("path"), allow_missing=False)
        view_range = args.get("view_range")
        if os.path.isdir(real):
            if view_range:
                raise RequestError("ToolError", "The `view_range` parameter is not allowed when `path` points to a directory.")
            return {"output": self.list_dir(shown, real)}
        if view_range is not None:
            if not (isinstance(view_range, list) and len(view_range) == 2 and all(type(v) is int for v in view_range)):
                raise RequestError("ToolError", "Invalid `view_range`. It should be a list of two integers.")
            n_lines = count_lines(real)
            init, final = view_range
            if init < 1 or init > n_lines:
                raise RequestError("ToolError", f"Invalid `view_range`: {view_range}. Its first element `{init}` should be within the range of lines of the file: {[1, n_lines]}")
            if final > n_lines:
                raise RequestError("ToolError", f"Invalid `view_range`: {view_range}. Its second element `{final}` should be smaller than the number of lines in the file: `{n_lines}`")
            if final != -1 and final < init:
                raise RequestError("ToolError", f"Invalid `view_range`: {view_range}. Its second element `{final}` should be larger or equal than its first `{init}`")
        else:
            init, final = 1, -1
        out, size, clipped, lineno, line = [], 0, False, 0, ""
        with open(real, encoding="utf-8", errors="replace", newline="") as f:
            for lineno, line in enumerate(f, 1):
                if lineno < init:
                    continue
                if final != -1 and lineno > final:
                    break
                entry = f"{lineno:6}\t{line.rstrip(chr(10))}"
                size += len(entry) + 1
                if size > MAX_RESPONSE_LEN:
                    clipped = True
                    break
                out.append(entry)
            else:
                last = lineno + 1  # like split("\\n"): after a final newline comes an empty last line
                if (lineno == 0 or line.endswith("\n")) and init <= last and (final == -1 or final >= last):
                    out.append(f"{last:6}\t")
        text = f"Here's the result of running `cat -n` on {shown}:\n" + "\n".join(out) + "\n"
        return {"output": text + TRUNCATED_NOTE if clipped else text}

    def list_dir(self, shown, real):
        entries, omitted = [shown], 0

        def visit(dirpath, shown_dir, depth):
            nonlocal omitted
            try:
                items = sorted(os.scandir(dirpath), key=lambda e: e.name)
            except OSError:
                return
            for item in items:
                if item.name.startswith("."):
                    continue
                if len(entries) > MAX_DIR_ENTRIES:
                    omitted += 1
                    continue
                entries.append(f"{shown_dir}/{item.name}")
                if depth < 2 and item.is_dir(follow_symlinks=False):
                    visit(item.path, f"{shown_dir}/{item.name}", depth + 1)

        visit(real, shown.rstrip("/") or "/", 1)
        text = f"Here's the files and directories up to 2 levels deep in {shown}, excluding hidden items:\n"
        text += "\n".join(entries) + "\n"
        if omitted:
            text += f"[... {omitted} more entries not shown ...]\n"
        return text

    def create(self, args):
        shown, real = resolve(args.get("path"))
        text = args.get("file_text")
        if not isinstance(text, str):
            raise RequestError("ToolError", "Parameter `file_text` is required for command: create")
        if os.path.lexists(real):
            raise RequestError("ToolError", f"File already exists at: {shown}. Cannot overwrite files using command `create`.")
        os.makedirs(os.path.dirname(real), exist_ok=True)
        self.write_text(real, text)
        return {"output": f"File created successfully at: {shown}"}

    def str_replace(self, args):
        shown, real = resolve(args.get("path"), allow_missing=False)
        old, new = args.get("old_str"), args.get("new_str") or ""
        if not isinstance(old, str):
            raise RequestError("ToolError", "Parameter `old_str` is required for command: str_replace")
        with self.lock:
            content = self.read_text(shown, real)
            if old == new:
                raise RequestError("ToolError", "No replacement was performed. `new_str` and `old_str` must be different.")
            occurrences = content.count(old) if old else 0
            if occurrences == 0:
                raise RequestError("ToolError", f"No replacement was performed, old_str `{old}` did not appear verbatim in {shown}.")
            if occurrences > 1:
                lines, pos = [], content.find(old)
                while pos != -1:
                    lines.append(content.count("\n", 0, pos) + 1)
                    pos = content.find(old, pos + 1)
                raise RequestError("ToolError", f"No replacement was performed. Multiple occurrences of old_str `{old}` in lines {lines}. Please ensure it is unique")
            new_content = content.replace(old, new, 1)
            self.write_text(real, new_content)
            self.history.setdefault(real, []).append(content)
            line = content[: content.index(old)].count("\n")
            start = max(0, line - SNIPPET_LINES)
            end = line + SNIPPET_LINES + new.count("\n")
            snippet = "\n".join(new_content.split("\n")[start : end + 1])
        return {
            "output": f"The file {shown} has been edited. " + cat_n(snippet, f"a snippet of {shown}", start + 1)
            + "Review the changes and make sure they are as expected. Edit the file again if necessary."
        }

    def insert(self, args):
        shown, real = resolve(args.get("path"), allow_missing=False)
        line, new = args.get("insert_line"), args.get("new_str")
        if not isinstance(new, str):
            raise RequestError("ToolError", "Parameter `new_str` is required for command: insert")
        with self.lock:
            content = self.read_text(shown, real)
            lines = content.split("\n")
            if type(line) is not int or line < 0 or line > len(lines):
                raise RequestError("ToolError", f"Invalid `insert_line` parameter: {line}. It should be within the range of lines of the file: {[0, len(lines)]}")
            new_lines = new.split("\n")
            self.write_text(real, "\n".join(lines[:line] + new_lines + lines[line:]))
            self.history.setdefault(real, []).append(content)
            snippet = lines[max(0, line - SNIPPET_LINES) : line] + new_lines + lines[line : line + SNIPPET_LINES]
        return {
            "output": f"The file {shown} has been edited. "
            + cat_n("\n".join(snippet), "a snippet of the edited file", max(1, line - SNIPPET_LINES + 1))
            + "Review the changes and make sure they are as expected (correct indentation, no duplicate lines, etc). Edit the file again if necessary."
        }

    def undo_edit(self, args):
        shown, real = resolve(args.get("path"), allow_missing=False)
        with self.lock:
            if not self.history.get(real):
                raise RequestError("ToolError", f"No edit history found for {shown}.")
            old = self.history[real].pop()
            self.write_text(real, old)
        return {"output": f"Last edit to {shown} undone successfully. " + cat_n(old, shown)}


# ---------------------------------------------------------------------------------------------- search


def _rg_text(obj):
    if obj is None:
        return ""
    if "text" in obj:
        return obj["text"]
    return base64.b64decode(obj.get("bytes", "")).decode("utf-8", "backslashreplace")


def search(args):
    pattern = args.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise RequestError("InvalidRequest", "`pattern` must be a non-empty string")
    shown, real = resolve(args.get("path") or WORKSPACE, allow_missing=False)
    max_results = int(args.get("max_results", 100))
    context = int(args.get("context_lines", 0))
    cmd = ["rg", "--json", "--no-config", "--max-filesize", "50M"]
    cmd += ["-F"] if args.get("literal") else []
    cmd += {"sensitive": ["-s"], "insensitive": ["-i"], "smart": ["-S"]}[args.get("case", "smart")]
    cmd += ["-C", str(context)] if context else []
    cmd += ["--hidden"] if args.get("include_hidden") else []
    for glob in args.get("globs") or []:
        cmd += ["-g", glob]
    cmd += ["-e", pattern, "--", real]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=real if os.path.isdir(real) else WORKSPACE, start_new_session=True)
    deadline = time.monotonic() + float(args.get("timeout") or 30)
    matches, total, pending, last, complete = [], 0, [], None, True
    root = os.path.realpath(WORKSPACE)
    killer = threading.Timer(max(0.0, deadline - time.monotonic()), kill_group, (proc.pid,))
    killer.start()
    try:
        for raw in proc.stdout:
            msg = json.loads(raw)
            kind = msg.get("type")
            if kind not in ("match", "context"):
                continue
            data = msg["data"]
            path = _rg_text(data["path"])
            if path.startswith(root + "/"):
                path = WORKSPACE + path[len(root) :]
            entry = {"path": path, "line_number": data.get("line_number"), "line": _rg_text(data["lines"]).rstrip("\n")[:2000]}
            if kind == "context":
                if last is not None and last["path"] == path and len(last["after"]) < context and entry["line_number"] > last["line_number"]:
                    last["after"].append(entry["line"])
                else:
                    pending = ([*pending, entry])[-context:]
                continue
            total += 1
            if len(matches) < max_results:
                entry["before"] = [c["line"] for c in pending if c["path"] == path][-context:] if context else []
                entry["after"] = []
                matches.append(entry)
                last = entry
            else:
                last = None
            pending = []
            if total >= max_results * 100 + 10000:
                complete = False  # counting everything could take forever on a huge tree
                kill_group(proc.pid)
                break
        stderr = proc.stderr.read().decode("utf-8", "replace")
        proc.wait()
    finally:
        killer.cancel()
        proc.stdout.close()
        proc.stderr.close()
    if time.monotonic() >= deadline:
        complete = False
    if proc.returncode == 2 and not matches and complete:
        raise RequestError("InvalidRequest", f"ripgrep failed: {stderr.strip()[-2000:]}")
    return {"matches": matches, "total_matches": total, "omitted": total - len(matches), "complete": complete, "path": shown}


# ---------------------------------------------------------------------------------------------- archives


def check_member(member):
    """Why a tar entry is unsafe to extract (absolute, `..`, a link leaving, a special file), or None."""
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or os.path.isabs(name):
        return "absolute path"
    if ".." in parts:
        return "`..` in the path"
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/") or ".." in target.split("/"):
            return f"link to {target!r} leaves the destination"
    elif not (member.isfile() or member.isdir()):
        return "not a regular file or directory"
    return None


def upload(args):
    import tarfile

    shown, dest = resolve(args.get("dest") or WORKSPACE)
    try:
        data = base64.b64decode(args.get("data") or "", validate=True)
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = archive.getmembers()
    except (ValueError, tarfile.TarError) as exc:
        raise RequestError("InvalidRequest", f"not a valid tar archive: {exc}") from None
    for member in members:
        problem = check_member(member)
        if problem:
            raise RequestError("UnsafeArchive", f"refusing the archive: entry {member.name!r}: {problem}; nothing was extracted")
    os.makedirs(dest, exist_ok=True)
    root = os.path.realpath(WORKSPACE)
    written = 0
    for member in members:
        target = os.path.join(dest, member.name)
        parent = os.path.realpath(os.path.dirname(target))
        if parent != root and not parent.startswith(root + "/"):
            raise RequestError("UnsafeArchive", f"entry {member.name!r} would be written outside the workspace through a link")
        if member.isdir():
            os.makedirs(target, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target) and not os.path.isdir(target):
            os.unlink(target)
        if member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            os.link(os.path.join(dest, member.linkname), target)
        else:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, (member.mode & 0o755) | 0o600)
            with os.fdopen(fd, "wb") as out, archive.extractfile(member) as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            written += member.size
    return {"dest": shown, "entries": len(members), "bytes": written}


def download(args):
    import tarfile

    shown, real = resolve(args.get("path"), allow_missing=False)
    total = 0

    def budget(info):
        nonlocal total
        total += info.size
        if total > MAX_DOWNLOAD:
            raise RequestError("InvalidRequest", f"{shown} is larger than the download limit of {MAX_DOWNLOAD} bytes")
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        archive.add(real, arcname=os.path.basename(shown.rstrip("/")) or "workspace", filter=budget)
    return {"data": base64.b64encode(buf.getvalue()).decode("ascii"), "bytes": total}


# ---------------------------------------------------------------------------------------------- server


class Supervisor:
    def __init__(self, out_fd):
        self.out_fd = out_fd
        self.out_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.inflight = 0
        self.last_activity = self.started = time.monotonic()
        self.interpreter = Interpreter()
        self.editor = Editor()
        self.ops = {
            "ping": lambda a: {"pong": True, "worker_pid": self.interpreter.proc.pid if self.interpreter.proc else None},
            "python": self.python,
            "shell": run_shell,
            "view": self.editor.view,
            "create": self.editor.create,
            "str_replace": self.editor.str_replace,
            "insert": self.editor.insert,
            "undo_edit": self.editor.undo_edit,
            "search": search,
            "upload": upload,
            "download": download,
        }

    def send(self, obj):
        data = encode_frame(obj)
        with self.out_lock:
            write_all(self.out_fd, data)

    def python(self, args):
        code = args.get("code")
        if not isinstance(code, str):
            raise RequestError("InvalidRequest", "`code` must be a string")
        return self.interpreter.run(code, float(args.get("timeout") or 60), args["_arrived"])

    def handle(self, req, arrived):
        rid = req.get("id")
        try:
            op = self.ops.get(req.get("op"))
            if op is None:
                raise RequestError("InvalidRequest", f"unknown operation {req.get('op')!r}")
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise RequestError("InvalidRequest", "`args` must be an object")
            args["_arrived"] = arrived
            reply = {"id": rid, "ok": True, "result": op(args)}
        except RequestError as exc:
            reply = {"id": rid, "ok": False, "error": {"type": exc.kind, "message": str(exc)}}
        except OSError as exc:
            reply = {"id": rid, "ok": False, "error": {"type": "ToolError", "message": f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")}}
        except Exception as exc:
            reply = {"id": rid, "ok": False, "error": {"type": "InternalError", "message": f"{type(exc).__name__}: {exc}"}}
        try:
            self.send(reply)
        except (TypeError, ValueError) as exc:
            self.send({"id": rid, "ok": False, "error": {"type": "InternalError", "message": f"unencodable result: {exc}"}})
        finally:
            with self.state_lock:
                self.inflight -= 1
                self.last_activity = time.monotonic()

    def dispatch(self, req):
        with self.state_lock:
            self.inflight += 1
            self.last_activity = time.monotonic()
        try:
            threading.Thread(target=self.handle, args=(req, time.monotonic()), daemon=True).start()
        except RuntimeError as exc:  # no threads left: the pids limit is exhausted
            with self.state_lock:
                self.inflight -= 1
            self.send({"id": req.get("id"), "ok": False, "error": {"type": "ResourceExhausted", "message": str(exc)}})

    def exit(self, reason):
        try:
            self.send({"id": None, "event": "exit", "reason": reason})
        finally:
            if self.interpreter.proc is not None:
                kill_group(self.interpreter.proc.pid)
            os._exit(0)

    def watchdog(self):
        while True:
            time.sleep(min(1.0, IDLE_TIMEOUT / 4, LIFETIME / 4))
            now = time.monotonic()
            if now - self.started > LIFETIME:
                self.exit("lifetime")
            with self.state_lock:
                idle = self.inflight == 0 and now - self.last_activity > IDLE_TIMEOUT
            if idle:
                self.exit("idle")

    def serve(self, in_fd):
        threading.Thread(target=self.watchdog, daemon=True).start()
        self.send({"id": None, "event": "hello", "pid": os.getpid(), "version": 1})
        while True:
            head = read_exact(in_fd, 4)
            if head is None:
                self.exit("eof")  # the host went away: nobody can use this sandbox any more
            (n,) = struct.unpack(">I", head)
            if n > MAX_FRAME:
                remaining = n
                while remaining:
                    chunk = os.read(in_fd, min(remaining, 1 << 20))
                    if not chunk:
                        self.exit("eof")
                    remaining -= len(chunk)
                self.send({"id": None, "event": "error", "message": f"frame of {n} bytes exceeds {MAX_FRAME}"})
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
            self.dispatch(req)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(int(sys.argv[2]), int(sys.argv[3]))
        return
    # The channel keeps private copies of fds 0/1; the originals point at /dev/null so nothing a child
    # inherits or a stray print can corrupt the framing.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.makedirs(WORKSPACE, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    Supervisor(out_fd).serve(in_fd)


if __name__ == "__main__":
    main()
