"""`search`: ripgrep over the workspace, run as the user, bounded in results and time."""

import os
import re
import select
import threading
import time
from collections.abc import Callable

from .files import refuse_special, resolve
from .framing import RequestError
from .procs import spawn_piped
from .rg_lines import records, text_of
from .settings import KILL_BUDGET, WORKSPACE, child_env

# Files over this size are not searched (a 2 GB log would take the whole timeout).
MAX_FILESIZE = "50M"
# At --debug ripgrep logs each file its walk skips for --max-filesize, and nothing else reports them:
# `DEBUG|ignore::walk|<source>:<line>: ignoring <path>: <size> bytes` (one line per file).
_TOO_LARGE = re.compile(rb"DEBUG\|ignore::walk\|\S+: ignoring .*: \d+ bytes")


class _Stderr:
    """ripgrep's stderr, read beside stdout so neither pipe can stall it: its debug log is dropped, the
    files it skipped for size counted; of the rest (a bad regex's message) the last `keep` bytes are kept."""

    def __init__(self, keep=4096):
        self.tail = bytearray()
        self.too_large = 0
        self.keep = keep

    def read(self, pipe):
        try:
            while line := pipe.readline(65536):
                if line.startswith(b"DEBUG|"):
                    self.too_large += bool(_TOO_LARGE.fullmatch(line.rstrip(b"\n")))
                    continue
                self.tail += line
                del self.tail[: -self.keep]
        except (OSError, ValueError):  # closed under us when the search is abandoned
            pass


def search(args):
    pattern = args.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise RequestError("InvalidRequest", "`pattern` must be a non-empty string")
    shown, real = resolve(args.get("path") or WORKSPACE, allow_missing=False)
    # ripgrep opens a path it is given whatever it is (it skips such files only while walking a folder):
    # on a FIFO it blocked for the whole timeout.
    try:
        st = os.stat(real)
    except OSError as exc:
        raise RequestError("ToolError", f"The path {shown} cannot be searched: {exc.strerror}.") from None
    refuse_special(shown, st.st_mode, "searched")
    max_results = int(args.get("max_results", 100))
    context = int(args.get("context_lines", 0))
    # --no-messages: ripgrep's per-file complaints (unreadable files and dirs) stay off stderr, which then
    # carries only real failures (a bad regex or glob: the exit-2 test below); an unreadable tree is told
    # by the exit status alone (`unreadable`).
    # --debug: the only way ripgrep tells which files it skipped for size (`_Stderr` counts them).
    cmd = ["/usr/bin/rg", "--json", "--no-config", "--no-messages", "--debug", "--max-filesize", MAX_FILESIZE]
    cmd += ["-F"] if args.get("literal") else []
    cmd += {"sensitive": ["-s"], "insensitive": ["-i"], "smart": ["-S"]}[args.get("case", "smart")]
    cmd += ["-C", str(context)] if context else []
    if args.get("include_hidden", True):
        # Dotfiles and dot-folders (.github/workflows, .env.example) are what a coding agent looks for; a
        # repository's own .git is not (compressed objects, a binary index). Before the caller's globs,
        # which take precedence over it. A search of a path inside .git still searches it.
        cmd += ["--hidden", "-g", "!.git"]
    for glob in args.get("globs") or []:
        cmd += ["-g", glob]
    cmd += ["-e", pattern, "--", real]
    # ripgrep is user code like any other: started under a keeper, as the user with an empty bounding set,
    # niced and first for the OOM killer (it only sees what user code could), and its whole tree is killed
    # when the search ends. A thread left in the interpreter can ptrace it (same uid) and make it start
    # something: that dies with the search too, as a shell call's background jobs die with the call.
    proc, out_r, err_r = spawn_piped(cmd, cwd=real if os.path.isdir(real) else WORKSPACE, env=child_env())
    stdout, stderr_pipe = os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb")
    deadline = time.monotonic() + float(args.get("timeout") or 30)
    matches: list[dict] = []
    pending: list[tuple[str, Callable[[], dict]]] = []  # context lines not placed yet: (path, line)
    total, last, complete = 0, None, True
    root = os.path.realpath(WORKSPACE)
    expired = threading.Event()

    def expire():
        expired.set()
        proc.kill_all(budget=KILL_BUDGET)  # every writer of the pipes gone: the reads below end in EOF

    killer = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
    killer.start()
    err = _Stderr()
    reader = threading.Thread(target=err.read, args=(stderr_pipe,), daemon=True)
    reader.start()
    try:
        for kind, rg_path, number, line in records(stdout, deadline):
            path = text_of(rg_path)
            if path.startswith(root + "/"):
                path = WORKSPACE + path[len(root) :]
            if kind == "context":
                if (
                    last is not None
                    and last["path"] == path
                    and len(last["after"]) < context
                    and (number or 0) > (last["line_number"] or 0)
                ):
                    last["after"].append(line())
                else:
                    pending = ([*pending, (path, line)])[-context:]
                continue
            total += 1
            if len(matches) < max_results:
                found = line()
                matches.append({
                    "path": path,
                    "line_number": number,
                    "line": found["text"],
                    "line_start": found["start"],
                    "line_length": found["length"],
                    "match_start": found.get("match_start"),
                    "match_end": found.get("match_end"),
                    "before": [c() for p, c in pending if p == path][-context:] if context else [],
                    "after": [],
                })  # fmt: skip
                last = matches[-1]
            else:
                last = None
            pending = []
            if total >= max_results * 100 + 10000:
                complete = False  # counting everything could take forever on a huge tree
                break
        if complete:
            # Its output ended: ripgrep exits now (or the timer kills it); its status says how it went.
            select.select([proc.status_fd], [], [], max(0.0, deadline - time.monotonic()))
    finally:
        killer.cancel()
        killer.join()  # a kill under way ends before the keeper is reaped (its pid could be reused)
        returncode = proc.close(budget=KILL_BUDGET)  # ripgrep and whatever it started, if still there
        reader.join(max(0.0, deadline - time.monotonic()) + 1)
        stdout.close()
        stderr_pipe.close()
    stderr = err.tail.decode("utf-8", "replace")
    # Killed by the timeout: the files it had not reached yet were not searched, matches or none.
    timed_out = expired.is_set() or time.monotonic() >= deadline
    stopped = timed_out or not complete
    # Exit 2 is also files or folders rg could not read (their messages are off, see --no-messages): a
    # failure is one whose message still reaches stderr (a bad regex or glob); the rest is a result,
    # as it is when something matched.
    if returncode == 2 and not matches and not stopped and stderr.strip():
        raise RequestError("InvalidRequest", f"ripgrep failed: {stderr.strip()[-2000:]}")
    unreadable = returncode == 2 and not stopped
    return {
        "matches": matches,
        "total_matches": total,
        "omitted": total - len(matches),
        "complete": not stopped and not err.too_large and not unreadable,
        "unreadable": unreadable,
        "stopped_early": stopped,
        "timed_out": timed_out,
        "skipped_large": err.too_large,
        "path": shown,
    }
