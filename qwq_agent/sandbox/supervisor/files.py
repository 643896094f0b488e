"""Workspace paths and careful file I/O: no special files opened, bounded reads, atomic writes."""

import os
import re
import secrets
import stat

from .framing import RequestError
from .settings import WORKSPACE

MAX_PATH = 4096  # PATH_MAX: longer paths fail in the kernel anyway, refuse them with a clear message
_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device"}  # fmt: skip
_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def resolve(path, *, allow_missing=True):
    """Returns (display path, real path), refusing anything that resolves outside the workspace."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise RequestError("InvalidRequest", "`path` must be a non-empty string without NUL bytes")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise RequestError(
            "InvalidRequest",
            f"the path is {len(path)} characters long; paths are limited to {MAX_PATH} bytes",
        )
    joined = path if os.path.isabs(path) else os.path.join(WORKSPACE, path)
    # Resolved as the kernel does, `..` after whatever link comes before it: with link -> a/b,
    # `link/../x` is a/x for the shell and python, so it must be a/x for the editor too (a lexical
    # normpath first would make it x). The workspace check is on this resolved path.
    real = os.path.realpath(_unescaped(joined))
    root = os.path.realpath(WORKSPACE)
    if real != root and not real.startswith(root + "/"):
        raise RequestError(
            "PathOutsideWorkspace",
            f"The path {path} is outside the workspace {WORKSPACE}; only paths in it can be used.",
        )
    shown = os.path.normpath(joined)
    if shown != joined and os.path.realpath(_unescaped(shown)) != real:
        shown = WORKSPACE + real[len(root) :]  # the tidy spelling names another file: name the real one
    if not allow_missing and not os.path.lexists(real):
        raise RequestError("ToolError", f"The path {shown} does not exist. Please provide a valid path.")
    return shown, real


def _unescaped(shown):
    """`shown`, or the name it stands for when it does not exist but its `\\xNN` escapes do.

    Listings and search results show a name that is not UTF-8 as `r\\xe9sum\\xe9.txt` (path_text); the
    model passes that text back, and it must open the file it was shown. The literal name wins.
    """
    if "\\x" not in shown or os.path.lexists(shown):
        return shown
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), shown.encode("utf-8", "surrogatepass"))
    name = os.fsdecode(raw)
    return name if os.path.lexists(name) else shown


def refuse_special(shown, mode, done="opened"):
    """A FIFO, socket or device is refused: opening or reading one can block (a FIFO) or never end."""
    kind = _KINDS.get(stat.S_IFMT(mode))
    if kind:
        raise RequestError("ToolError", f"The path {shown} is {kind}, not a regular file; it was not {done}.")


def open_regular(shown, real, flags=os.O_RDONLY):
    """An fd of the regular file `real`; FIFOs, sockets and devices are refused before any open()."""
    try:
        st = os.stat(real)
    except OSError as exc:
        raise RequestError("ToolError", f"The path {shown} cannot be read: {exc.strerror}.") from None
    refuse_special(shown, st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        raise RequestError(
            "ToolError",
            f"The path {shown} is a directory and only the `view` command can be used on directories.",
        )
    # O_NONBLOCK|O_NOFOLLOW: should the path be swapped for a FIFO or link after the stat, open() neither
    # blocks nor follows, and the fstat below refuses what it got.
    fd = os.open(real, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        refuse_special(shown, st.st_mode)
        raise RequestError("ToolError", f"The path {shown} is not a regular file.")
    os.set_blocking(fd, True)
    return fd


def iter_lines(fd, keep):
    """Lines as `split(b"\\n")` yields them, as (first `keep` bytes, full length): memory stays bounded
    whatever the length of a line (a 1 GB file without a newline is one line)."""
    buf, total = bytearray(), 0
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            yield bytes(buf), total
            return
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            end = len(chunk) if nl == -1 else nl
            room = keep - len(buf)
            if room > 0:
                buf += chunk[start : min(end, start + room)]
            total += end - start
            if nl == -1:
                break
            yield bytes(buf), total
            buf, total, start = bytearray(), 0, nl + 1


def make_parents(shown, path):
    """`os.makedirs` without its recursion (a path may have thousands of components); the folders it
    made, parents first."""
    missing = []
    while path and not os.path.isdir(path):
        if os.path.lexists(path):
            raise RequestError("ToolError", f"Cannot create {shown}: {path} exists and is not a directory.")
        missing.append(path)
        path = os.path.dirname(path)
    made = []
    for directory in reversed(missing):
        os.mkdir(directory)
        made.append(directory)
    return made


def write_atomic(shown, real, data, *, replace=True):
    """Write `data` to a temporary file next to `real`, fsync it and rename it over `real`.

    A full disk or any failed write leaves the original untouched (and no temporary file behind). With
    `replace=False` the file must not exist (linked into place, so a racing creator is not clobbered).
    """
    directory, name = os.path.split(real)
    mode = 0o644
    if replace:
        st = os.stat(real)
        mode = stat.S_IMODE(st.st_mode)
        # Only what the user could write in place may be replaced (a rename alone would ignore its mode).
        os.close(open_regular(shown, real, os.O_WRONLY))
    tmp = os.path.join(directory, f".{_stem(name)}.{secrets.token_hex(6)}.qwq-tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RequestError(
            "ToolError", f"Writing {shown} failed: {exc.strerror or exc}. The file was not changed."
        ) from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(tmp)
        raise RequestError(
            "ToolError", f"Writing {shown} failed: {exc.strerror or exc}. The file was not changed."
        ) from None
    os.close(fd)
    try:
        if replace:
            os.rename(tmp, real)
        else:
            os.link(tmp, real)
    finally:
        if not replace or os.path.lexists(tmp):
            os.unlink(tmp)
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _stem(name, limit=100):
    """The start of `name` for a temporary file's name: at most `limit` bytes (NAME_MAX counts bytes, and
    100 characters can be 400), cut at a character boundary. A byte that is not UTF-8 is left out."""
    return os.fsencode(name)[:limit].decode("utf-8", "ignore")
