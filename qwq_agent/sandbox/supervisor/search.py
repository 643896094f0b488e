"""`search`: ripgrep over the workspace, run as the user, bounded in results and time."""

import base64
import json
import os
import re
import signal
import subprocess
import threading
import time

from .files import refuse_special, resolve
from .framing import RequestError
from .settings import USER_GID, USER_UID, WORKSPACE


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _rg_text(obj):
    if obj is None:
        return ""
    if "text" in obj:
        return obj["text"]
    return base64.b64decode(obj.get("bytes", "")).decode("utf-8", "backslashreplace")


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


# rg --json writes one record per matching line, holding the whole line and one entry per match in it:
# a 4 MB minified line matching `a` is a ~180 MB record (no --max-columns in JSON mode), whose parsing
# once took the supervisor past the container's memory. Records past this size are read in pieces and
# kept to what a result shows (`_oversized`).
MAX_RECORD = 256 * 1024
_LINE_NUMBER = re.compile(rb'"\},"line_number":(\d+),')


def _records(stdout):
    """rg's JSON records, one at a time, none held whole past `MAX_RECORD` bytes."""
    while raw := stdout.readline(MAX_RECORD):
        if raw.endswith(b"\n"):
            yield json.loads(raw)
            continue
        msg = _oversized(raw, stdout)
        if msg is not None:
            yield msg


def _oversized(head, stdout):
    """A match record too long to parse: its path, the start of its line and its line number, read from
    the head and the pieces that follow (discarded as they are read); None for anything else."""
    if not head.startswith(b'{"type":"match"'):
        _skip_line(stdout)
        return None
    decoder = json.JSONDecoder()
    text = head.decode("utf-8", "replace")
    try:
        at = text.index('"path":') + len('"path":')
        path, end = decoder.raw_decode(text, at)
        at = text.index('"lines":{', end) + len('"lines":{')
    except ValueError:
        _skip_line(stdout)
        return None
    key = "text" if text.startswith('"text":"', at) else "bytes"
    opening = at + len(key) + 3
    try:
        # A short line whose record is long only for its many submatches: the string ends in the head.
        preview = decoder.raw_decode(text, opening)[0][: 4 * 2000]
    except ValueError:
        preview = _unterminated(text[opening + 1 : opening + 1 + 4 * 2000])
    if key == "bytes":
        preview = base64.b64decode(preview[: len(preview) // 4 * 4] or b"").decode(
            "utf-8", "backslashreplace"
        )
    found = _LINE_NUMBER.search(head)
    number, carry = (int(found.group(1)) if found else None), head[-64:]
    while True:
        piece = stdout.readline(MAX_RECORD)
        if number is None:
            found = _LINE_NUMBER.search(carry + piece)
            number = int(found.group(1)) if found else None
            carry = piece[-64:]
        if not piece or piece.endswith(b"\n"):
            break
    return {"type": "match", "data": {"path": path, "lines": {"text": preview}, "line_number": number}}


def _unterminated(prefix):
    """The start of a JSON string cut off mid-way: cut back to where a closing quote parses."""
    for cut in range(len(prefix), max(-1, len(prefix) - 8), -1):
        try:
            return json.loads('"' + prefix[:cut] + '"')
        except ValueError:
            continue
    return ""


def _skip_line(stdout):
    while (piece := stdout.readline(MAX_RECORD)) and not piece.endswith(b"\n"):
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
    # ripgrep reads as the user (it only sees what user code could), never with the supervisor's capabilities.
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=real if os.path.isdir(real) else WORKSPACE,
        start_new_session=True,
        user=USER_UID,
        group=USER_GID,
        extra_groups=[],
    )
    assert proc.stdout is not None and proc.stderr is not None  # both are pipes
    deadline = time.monotonic() + float(args.get("timeout") or 30)
    matches: list[dict] = []
    pending: list[dict] = []
    total, last, complete = 0, None, True
    root = os.path.realpath(WORKSPACE)
    expired = threading.Event()

    def expire():
        expired.set()
        kill_group(proc.pid)

    killer = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
    killer.start()
    err = _Stderr()
    reader = threading.Thread(target=err.read, args=(proc.stderr,), daemon=True)
    reader.start()
    try:
        for msg in _records(proc.stdout):
            kind = msg.get("type")
            if kind not in ("match", "context"):
                continue
            data = msg["data"]
            path = _rg_text(data["path"])
            if path.startswith(root + "/"):
                path = WORKSPACE + path[len(root) :]
            entry = {
                "path": path,
                "line_number": data.get("line_number"),
                "line": _rg_text(data["lines"]).rstrip("\n")[:2000],
            }
            if kind == "context":
                if (
                    last is not None
                    and last["path"] == path
                    and len(last["after"]) < context
                    and entry["line_number"] > last["line_number"]
                ):
                    last["after"].append(entry["line"])
                else:
                    pending = ([*pending, entry])[-context:]
                continue
            total += 1
            if len(matches) < max_results:
                entry["before"] = (
                    [c["line"] for c in pending if c["path"] == path][-context:] if context else []
                )
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
        proc.wait()
        reader.join(max(0.0, deadline - time.monotonic()) + 1)
    finally:
        killer.cancel()
        proc.stdout.close()
        proc.stderr.close()
    stderr = err.tail.decode("utf-8", "replace")
    # Killed by the timeout: the files it had not reached yet were not searched, matches or none.
    timed_out = expired.is_set() or time.monotonic() >= deadline
    stopped = timed_out or not complete
    # Exit 2 is also files or folders rg could not read (their messages are off, see --no-messages): a
    # failure is one whose message still reaches stderr (a bad regex or glob); the rest is a result,
    # as it is when something matched.
    if proc.returncode == 2 and not matches and not stopped and stderr.strip():
        raise RequestError("InvalidRequest", f"ripgrep failed: {stderr.strip()[-2000:]}")
    unreadable = proc.returncode == 2 and not stopped
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
