"""`str_replace_editor` semantics (OpenHands / SWE-agent), messages kept close to the original.

Bounded whatever the file: `view` streams (a 1 GB single line costs one capped line), edits take files up
to `MAX_EDIT_BYTES`, occurrence listing stops early, undo history is capped in bytes (oldest dropped, and
the output says so). Every output that shows lines (a file, an edit's snippet, the file an undo restored,
a listing) shows about `MAX_RESPONSE_LEN` characters of them at most, each line cut to `MAX_LINE_LEN`,
and says `<response clipped>` when it left something out. FIFOs, sockets and devices are refused without
being opened; writes are atomic.
"""

import json
import os
import re
import threading

from .files import iter_lines, make_parents, open_regular, resolve, write_atomic
from .framing import RequestError, cap_text, path_text
from .settings import MAX_UNDO_BYTES

MAX_EDIT_BYTES = 10 * 1024 * 1024
MAX_RESPONSE_LEN = 16000
# A line is cut short enough that the note saying so still fits in the response.
MAX_LINE_LEN = MAX_RESPONSE_LEN - 200
MAX_DIR_ENTRIES = 1000
MAX_LISTED_MATCHES = 20
SNIPPET_LINES = 4
ECHO_CHARS = 2000  # how much of old_str an error message repeats
TRUNCATED_NOTE = (
    "<response clipped><NOTE>To save on context only part of this file has been shown to you. You should "
    "retry this tool after you have searched inside the file with `grep -n` in order to find the line "
    "numbers of what you are looking for.</NOTE>"
)
TRUNCATED_DIR_NOTE = (
    "<response clipped><NOTE>To save on context only part of this directory has been shown to you. View "
    "a subdirectory, or list what you are looking for with `find` or `ls` in the shell.</NOTE>"
)


def fit(entries, budget=MAX_RESPONSE_LEN):
    """The entries (lines of output, in order) that fit `budget` characters in all, and whether any was
    left out; a first entry longer than the budget is cut to it. Reads `entries` no further than needed."""
    out: list[str] = []
    size = 0
    for entry in entries:
        size += len(entry) + 1
        if size > budget:
            if not out:
                out.append(entry[:budget])
            return out, True
        out.append(entry)
    return out, False


def cat_n(text, descriptor, init_line=1, budget=MAX_RESPONSE_LEN):
    """`text` as `cat -n` shows it from line `init_line`, within `budget` characters (`TRUNCATED_NOTE`
    after it when lines were cut or left out)."""
    header = f"Here's the result of running `cat -n` on {descriptor}:\n"
    room = budget - len(header)
    limit = min(MAX_LINE_LEN, room - (MAX_RESPONSE_LEN - MAX_LINE_LEN))
    cut = False

    def lines():
        nonlocal cut
        for i, line in enumerate(text.split("\n")):
            if len(line) > limit:
                line = f"{line[:limit]} [... {len(line) - limit} more characters on this line not shown ...]"
                cut = True
            yield f"{i + init_line:6}\t{line}"

    shown, left_out = fit(lines(), room)
    body = header + "\n".join(shown) + "\n"
    return body + TRUNCATED_NOTE + "\n" if cut or left_out else body


def count_lines(fd):
    """Lines as `str.split("\\n")` counts them (a trailing newline starts an empty last line)."""
    n = 1
    while chunk := os.read(fd, 1 << 20):
        n += chunk.count(b"\n")
    return n


def occurrences(content, old, limit):
    """Start offsets of `old` in `content`, overlapping ones included (`aa` is twice in `aaa`), at most `limit`."""
    hits: list[int] = []
    pos = content.find(old)
    while pos != -1 and len(hits) < limit:
        hits.append(pos)
        pos = content.find(old, pos + 1)
    return hits


class Editor:
    """The editor's state: one lock for edits and the undo history."""

    def __init__(self):
        self.undo = []  # (real path, bytes before the edit), oldest first
        self.undo_bytes = 0
        self.forgotten = set()  # paths whose oldest history was dropped
        self.lock = threading.Lock()

    def read_bytes(self, shown, real):
        fd = open_regular(shown, real)
        try:
            size = os.fstat(fd).st_size
            if size > MAX_EDIT_BYTES:
                raise RequestError(
                    "ToolError",
                    f"The file {shown} is too large to edit ({size} bytes; the limit is {MAX_EDIT_BYTES}). Use the shell instead.",
                )
            chunks: list[bytes] = []
            while (chunk := os.read(fd, 1 << 20)) and sum(map(len, chunks)) <= MAX_EDIT_BYTES:
                chunks.append(chunk)
            data = b"".join(chunks)
        finally:
            os.close(fd)
        if len(data) > MAX_EDIT_BYTES:
            raise RequestError(
                "ToolError",
                f"The file {shown} grew past the edit limit of {MAX_EDIT_BYTES} bytes while being read.",
            )
        return data

    def read_text(self, shown, real):
        data = self.read_bytes(shown, real)
        try:
            return data, data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(
                "ToolError", f"The file {shown} is not UTF-8 text ({exc.reason} at byte {exc.start})."
            ) from None

    def remember(self, real, before):
        """Keep `before` for undo; returns a note when older history had to be dropped."""
        self.undo.append((real, before))
        self.undo_bytes += len(before)
        dropped = 0
        while self.undo_bytes > MAX_UNDO_BYTES and len(self.undo) > 1:
            path, data = self.undo.pop(0)
            self.undo_bytes -= len(data)
            self.forgotten.add(path)
            dropped += 1
        if not dropped:
            return ""
        return (f" Note: the undo history is limited to {MAX_UNDO_BYTES} bytes, so the {dropped} oldest saved "
                "version(s) were dropped and cannot be restored with `undo_edit`.")  # fmt: skip

    def view(self, args):
        shown, real = resolve(args.get("path"), allow_missing=False)
        view_range = args.get("view_range")
        if os.path.isdir(real):
            if view_range:
                raise RequestError(
                    "ToolError",
                    "The `view_range` parameter is not allowed when `path` points to a directory.",
                )
            return {"output": self.list_dir(shown, real)}
        init, final = 1, -1
        if view_range is not None:
            if not (
                isinstance(view_range, list)
                and len(view_range) == 2
                and all(type(v) is int for v in view_range)
            ):
                raise RequestError("ToolError", "Invalid `view_range`. It should be a list of two integers.")
            fd = open_regular(shown, real)
            try:
                n_lines = count_lines(fd)
            finally:
                os.close(fd)
            init, final = view_range
            if init < 1 or init > n_lines:
                raise RequestError(
                    "ToolError",
                    f"Invalid `view_range`: {view_range}. Its first element `{init}` should be within the range of lines of the file: {[1, n_lines]}",
                )
            if final > n_lines:
                raise RequestError(
                    "ToolError",
                    f"Invalid `view_range`: {view_range}. Its second element `{final}` should be smaller than the number of lines in the file: `{n_lines}`",
                )
            if final != -1 and final < init:
                raise RequestError(
                    "ToolError",
                    f"Invalid `view_range`: {view_range}. Its second element `{final}` should be larger or equal than its first `{init}`",
                )
        cut = False

        def lines(fd):
            nonlocal cut
            for lineno, (head, length) in enumerate(iter_lines(fd, MAX_LINE_LEN), 1):
                if lineno < init:
                    continue
                if final != -1 and lineno > final:
                    return
                text = head.decode("utf-8", "replace")
                if length > len(head):
                    text += f" [... {length - len(head)} more bytes on this line not shown ...]"
                    cut = True
                yield f"{lineno:6}\t{text}"

        fd = open_regular(shown, real)
        try:
            out, left_out = fit(lines(fd))
        finally:
            os.close(fd)
        text = f"Here's the result of running `cat -n` on {shown}:\n" + "\n".join(out) + "\n"
        return {"output": text + TRUNCATED_NOTE if cut or left_out else text}

    def list_dir(self, shown, real):
        # One entry per line: a name holding a newline would otherwise add forged entries to the listing.
        entries, omitted = [path_text(shown)], 0

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
                entries.append(one_line(path_text(f"{shown_dir}/{item.name}")))
                if depth < 2 and item.is_dir(follow_symlinks=False):
                    visit(item.path, f"{shown_dir}/{item.name}", depth + 1)

        visit(real, shown.rstrip("/") or "/", 1)
        text = f"Here's the files and directories up to 2 levels deep in {path_text(shown)}, excluding hidden items:\n"
        listed, _ = fit(entries)
        omitted += len(entries) - len(listed)
        text += "\n".join(listed) + "\n"
        if omitted:
            text += f"[... {omitted} more entries not shown ...]\n{TRUNCATED_DIR_NOTE}"
        return text

    def create(self, args):
        shown, real = resolve(args.get("path"))
        if args["path"].endswith("/"):
            # The resolved path has no trailing slash: `newdir/` would become a FILE called newdir.
            raise RequestError(
                "ToolError",
                f"The path {args['path']} ends with '/', so it names a directory; `create` makes files. "
                "Give the file's name (a folder is made with the shell: mkdir -p).",
            )
        text = args.get("file_text")
        if not isinstance(text, str):
            raise RequestError("ToolError", "Parameter `file_text` is required for command: create")
        if os.path.lexists(real):
            raise RequestError(
                "ToolError",
                f"File already exists at: {shown}. Cannot overwrite files using command `create`.",
            )
        make_parents(shown, os.path.dirname(real))
        write_atomic(shown, real, text.encode("utf-8", "surrogatepass"), replace=False)
        return {"output": f"File created successfully at: {shown}"}

    def str_replace(self, args):
        shown, real = resolve(args.get("path"), allow_missing=False)
        old, new = args.get("old_str"), args.get("new_str") or ""
        if not isinstance(old, str):
            raise RequestError("ToolError", "Parameter `old_str` is required for command: str_replace")
        if not old:
            raise RequestError(
                "ToolError",
                "No replacement was performed: `old_str` is empty. Give the exact text to replace, "
                "or use the `insert` command to add text at a line.",
            )
        echo = cap_text(old, ECHO_CHARS // 2, ECHO_CHARS // 2)
        with self.lock:
            before, content = self.read_text(shown, real)
            # A Windows file is edited in its own line endings: `view` shows none, so the model writes
            # `\n`, and bare `\n` inside a CRLF file is a silently mixed file (and a multi-line old_str
            # would never match).
            crlf = _is_crlf(content)
            if crlf:
                content, old, new = content.replace("\r\n", "\n"), _lf(old), _lf(new)
            if old == new:
                raise RequestError(
                    "ToolError", "No replacement was performed. `new_str` and `old_str` must be different."
                )
            hits = occurrences(content, old, MAX_LISTED_MATCHES + 1) if old else []
            if not hits:
                raise RequestError(
                    "ToolError",
                    f"No replacement was performed, old_str `{echo}` did not appear verbatim in {shown}.",
                )
            if len(hits) > 1:
                lines, line, last = [], 1, 0
                for pos in hits[:MAX_LISTED_MATCHES]:
                    line += content.count("\n", last, pos)
                    lines.append(line)
                    last = pos
                more = " and more" if len(hits) > MAX_LISTED_MATCHES else ""
                raise RequestError(
                    "ToolError",
                    f"No replacement was performed. Multiple occurrences of old_str `{echo}` in lines {lines}{more}. Please ensure it is unique",
                )
            pos = hits[0]
            new_content = content[:pos] + new + content[pos + len(old) :]
            written = new_content.replace("\n", "\r\n") if crlf else new_content
            write_atomic(shown, real, written.encode("utf-8", "surrogatepass"))
            note = self.remember(real, before)
            line = content.count("\n", 0, pos)
            start = max(0, line - SNIPPET_LINES)
            end = line + SNIPPET_LINES + new.count("\n")
            snippet = "\n".join(new_content.split("\n")[start : end + 1])
        return _edited(
            f"The file {shown} has been edited. ",
            (snippet, f"a snippet of {shown}", start + 1),
            "Review the changes and make sure they are as expected. Edit the file again if necessary." + note,
        )

    def insert(self, args):
        shown, real = resolve(args.get("path"), allow_missing=False)
        line, new = args.get("insert_line"), args.get("new_str")
        if not isinstance(new, str):
            raise RequestError("ToolError", "Parameter `new_str` is required for command: insert")
        with self.lock:
            before, content = self.read_text(shown, real)
            crlf = _is_crlf(content)  # as in str_replace: the new lines take the file's endings
            if crlf:
                content, new = content.replace("\r\n", "\n"), _lf(new)
            lines = content.split("\n")
            if type(line) is not int or line < 0 or line > len(lines):
                raise RequestError(
                    "ToolError",
                    f"Invalid `insert_line` parameter: {line}. It should be within the range of lines of the file: {[0, len(lines)]}",
                )
            new_lines = new.split("\n")
            written = "\n".join(lines[:line] + new_lines + lines[line:])
            if crlf:
                written = written.replace("\n", "\r\n")
            write_atomic(shown, real, written.encode("utf-8", "surrogatepass"))
            note = self.remember(real, before)
            snippet = (
                lines[max(0, line - SNIPPET_LINES) : line] + new_lines + lines[line : line + SNIPPET_LINES]
            )
        return _edited(
            f"The file {shown} has been edited. ",
            ("\n".join(snippet), "a snippet of the edited file", max(1, line - SNIPPET_LINES + 1)),
            "Review the changes and make sure they are as expected (correct indentation, no duplicate lines, etc). Edit the file again if necessary."
            + note,
        )

    def undo_edit(self, args):
        shown, real = resolve(args.get("path"), allow_missing=False)
        with self.lock:
            index = next((i for i in range(len(self.undo) - 1, -1, -1) if self.undo[i][0] == real), None)
            if index is None:
                why = (
                    " (older history was dropped to keep undo memory bounded)"
                    if real in self.forgotten
                    else ""
                )
                raise RequestError("ToolError", f"No edit history found for {shown}.{why}")
            old = self.undo[index][1]
            write_atomic(shown, real, old)
            del self.undo[index]
            self.undo_bytes -= len(old)
        return _edited(
            f"Last edit to {shown} undone successfully. ", (old.decode("utf-8", "replace"), shown, 1), ""
        )


def _edited(before, lines, after):
    """An edit's output: `before`, the lines (`cat_n` arguments) and `after`, bounded as `view` is."""
    text, descriptor, init_line = lines
    budget = MAX_RESPONSE_LEN - len(before) - len(after)
    return {"output": before + cat_n(text, descriptor, init_line, budget) + after}


_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def one_line(path):
    """`path` as written, or JSON-quoted when it holds a line break or other control character."""
    return json.dumps(path, ensure_ascii=False) if _CONTROL.search(path) else path


def _is_crlf(content):
    """Whether every line of the file ends in CRLF (a mixed file is left as it is)."""
    return "\r\n" in content and content.count("\n") == content.count("\r\n")


def _lf(text):
    """A string the model wrote for a CRLF file, in `\\n` endings; a `\\r` it ends on is half of the file's
    own line ending after it (written back as `\\r\\n`, not `\\r\\r\\n`)."""
    text = text.replace("\r\n", "\n")
    return text[:-1] if text.endswith("\r") else text
