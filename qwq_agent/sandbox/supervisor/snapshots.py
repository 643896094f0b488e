"""`snapshot` and `restore`: the workspace and home as one plain tar, taken and put back without trust.

Snapshot: an iterative walk (no recursion limit) with the user's file rights; each regular file is opened
O_NONBLOCK|O_NOFOLLOW and checked with fstat, so a file swapped for a FIFO or a link mid-walk can neither
block nor redirect the read; exactly the size fstat saw is archived (a file that shrinks is padded, one
that grows is cut), so a writer racing the walk cannot make the archive lie about itself. FIFOs, sockets,
devices and unreadable entries are skipped and named in the result. The cap counts archive bytes as they
are produced (a 1 TB sparse file fails at once on its size), and the archive is streamed to the host in
chunks as it grows (raw bytes after their frame, no base64), so it is never held whole in here.

Restore: the archive (raw bytes after the request's frame, or staged in chunks) is checked against its sha256, then `check_archive`
vets every header before anything is touched: names under `workspace/` or `home/` only, no `..`, no
duplicates, each entry's parent an earlier directory of the archive (so no entry can land under a link),
regular files, directories, symlinks and hard links to an earlier file only, nothing sparse. The roots are
then emptied and everything is created fresh (O_EXCL, O_NOFOLLOW, mkdir), with the user's rights, so
every file is the user's and nothing is ever written through a link. A restore that cannot begin
emptying within the host's limit (`start_within`), or that the host cancelled first, is refused with
nothing changed: the host has given up on it, and it must not land later over what was done since.
Meanwhile the server lets no other restore and nothing of the interpreter run; a writer that is still there anyway makes the emptying walk
again, and a restore that fails says what it left (partly cleared, empty, part of the archive). Symlink targets are kept as they
were: inside the container a link is only a name, user code could make the same one, and extraction
never follows it.
"""

import hashlib
import io
import os
import stat
import tarfile
import threading
import time

from .framing import RequestError, path_text
from .settings import HOME_DIR, WORKSPACE

ROOTS = {"workspace": WORKSPACE, "home": HOME_DIR}
CHUNK = 8 * 1024 * 1024  # raw bytes per streamed event frame (about 11 MB of base64)
MAX_SKIPPED_SHOWN = 50
_BLOCK = 512
MAX_PATH = 4096
_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
          stat.S_IFBLK: "block device"}  # fmt: skip


def too_large(max_bytes):
    return RequestError(
        "SnapshotTooLarge",
        f"the workspace and home archive to more than the snapshot limit of {max_bytes} bytes; "
        "no snapshot was taken (delete large files or raise max_bytes)",
    )


class _Skipped:
    """Entries left out: counted, the first few named (a million FIFOs must not cost a million strings)."""

    def __init__(self):
        self.shown, self.count = [], 0

    def append(self, why):
        self.count += 1
        if len(self.shown) < MAX_SKIPPED_SHOWN:
            self.shown.append(path_text(why))


class _Out:
    """The archive being produced: counted against the cap, hashed, and sent out in chunks."""

    def __init__(self, send, max_bytes):
        self.send, self.max_bytes = send, max_bytes
        self.buf = bytearray()
        self.total = 0
        self.sha = hashlib.sha256()

    def reserve(self, n):
        if self.total + len(self.buf) + n > self.max_bytes:
            raise too_large(self.max_bytes)

    def write(self, data):
        self.reserve(len(data))
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.flush()

    def flush(self):
        if self.buf:
            self.sha.update(self.buf)
            self.send({"event": "snapshot_chunk"}, self.buf)
            self.total += len(self.buf)
            self.buf = bytearray()


def _header(info):
    """The entry's tar header; ValueError for what tar cannot hold (checked before anything is written)."""
    try:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except (UnicodeError, tarfile.HeaderError) as exc:
        raise ValueError(str(exc)) from None


def snapshot(args):
    send = args.get("_send")
    max_bytes = args.get("max_bytes")
    if send is None or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise RequestError("InvalidRequest", "`max_bytes` must be a positive integer")
    deadline = time.monotonic() + float(args.get("timeout") or 120)
    out = _Out(send, max_bytes)
    skipped = _Skipped()
    entries = 0
    links: dict[
        tuple[int, int], str
    ] = {}  # (dev, ino) -> archive name of the first path of a multiply linked file
    for prefix, root in ROOTS.items():
        stack = [(prefix, root)]
        while stack:
            if time.monotonic() > deadline:
                raise RequestError("ToolError", "the snapshot ran past its time limit; no snapshot was taken")
            name, path = stack.pop()
            try:
                st = os.lstat(path)
            except OSError as exc:
                skipped.append(f"{name}: {exc.strerror}")
                continue
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                try:
                    header = _header(info)
                except ValueError as exc:
                    skipped.append(f"{name}/: {exc}")
                    continue
                try:
                    with os.scandir(path) as it:
                        children = sorted(e.name for e in it)
                except OSError as exc:
                    skipped.append(f"{name}/: {exc.strerror}")
                    if name not in ROOTS:
                        continue
                    children = []  # a root is always in the archive, if empty
                out.write(header)
                stack.extend((f"{name}/{c}", os.path.join(path, c)) for c in reversed(children))
            elif stat.S_ISLNK(st.st_mode):
                try:
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                    header = _header(info)
                except (OSError, ValueError) as exc:  # swapped mid-walk, or a name tar cannot hold
                    skipped.append(f"{name}: {getattr(exc, 'strerror', None) or exc}")
                    continue
                out.write(header)
            elif stat.S_ISREG(st.st_mode):
                if not _add_file(out, info, path, links, skipped):
                    continue
            else:
                skipped.append(f"{name}: {_KINDS.get(stat.S_IFMT(st.st_mode), 'special file')}")
                continue
            entries += 1
    out.write(b"\0" * (2 * _BLOCK))
    out.flush()
    return {"bytes": out.total, "sha256": out.sha.hexdigest(), "entries": entries,
            "skipped": skipped.shown, "skipped_count": skipped.count}  # fmt: skip


def _add_file(out, info, path, links, skipped):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        skipped.append(f"{info.name}: {exc.strerror}")
        return False
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped after the lstat
            skipped.append(f"{info.name}: changed while the snapshot was taken")
            return False
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info.type, info.linkname = tarfile.LNKTYPE, links[key]
        else:
            info.size = st.st_size
        try:
            header = _header(info)
        except ValueError as exc:
            skipped.append(f"{info.name}: {exc}")
            return False
        if info.type == tarfile.LNKTYPE:
            out.write(header)
            return True
        size = st.st_size
        padded = -size % _BLOCK
        out.reserve(len(header) + _BLOCK * 2 + size + padded)  # fail on the claimed size before reading
        out.write(header)
        if st.st_nlink > 1:
            links[key] = info.name  # only once its header is in: later links may point at it
        left = size
        while left:
            data = f.read(min(left, 1 << 20))
            if not data:  # shrank under us: keep the header honest
                data = b"\0" * left
            out.write(data)
            left -= len(data)
        out.write(b"\0" * padded)
    return True


def check_archive(data):
    """Every member of the tar `data`, vetted; raises RequestError("UnsafeArchive") on the first problem.

    Shared with the host (which checks archives before keeping or sending them). Returns the members.
    """
    try:
        with tarfile.open(
            fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape"
        ) as tar:
            members = tar.getmembers()
    except tarfile.TarError as exc:
        raise RequestError("UnsafeArchive", f"not a valid snapshot archive: {exc}") from None
    dirs: set[str] = set(ROOTS)
    files: set[str] = set()
    seen: set[str] = set()
    total = 0
    for m in members:
        problem = _problem(m, dirs, files, seen)
        if problem:
            raise RequestError("UnsafeArchive", f"refusing the snapshot: entry {m.name!r}: {problem}")
        total += m.size if m.isreg() else 0
        seen.add(m.name)  # roots included: a snapshot must hold both
        if m.isdir():
            dirs.add(m.name)
        elif m.isreg() or m.islnk():
            files.add(m.name)
    missing = [r for r in ROOTS if r not in seen]
    if missing:
        raise RequestError("UnsafeArchive", f"not a snapshot: it has no {'/, '.join(missing)}/ directory")
    if total > len(data):
        raise RequestError(
            "UnsafeArchive", "refusing the snapshot: its members claim more data than it holds"
        )
    return members


def _problem(m, dirs, files, seen):
    name = m.name
    parts = name.split("/")
    if "\0" in name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return "not a plain relative path"
    # What the kernel would refuse mid-restore (after the roots were emptied) is refused up front.
    if len(_raw(name)) > MAX_PATH - 64 or any(len(_raw(p)) > 255 for p in parts):
        return "a name too long for the file system"
    if parts[0] not in ROOTS:
        return f"outside {' and '.join(ROOTS)}"
    if len(parts) == 1:
        return None if m.isdir() else "a root that is not a directory"
    if name in seen:
        return "appears twice"
    if "/".join(parts[:-1]) not in dirs:
        return "its parent is not a directory of the archive"
    if m.issparse():
        return "sparse file"
    if m.islnk():
        return None if m.linkname in files else "hard link to something that is not an earlier file"
    if m.issym():
        target = m.linkname
        bad = not target or "\0" in target or len(_raw(target)) >= MAX_PATH
        return "a link with an empty, NUL or overlong target" if bad else None
    if m.isreg() or m.isdir():
        return None
    return "not a regular file, directory or link"


def _raw(text):
    return text.encode("utf-8", "surrogateescape")


# ------------------------------------------------------------------------------------------------ restore


class Staging:
    """Chunks of one archive on its way in (one at a time; a new token drops an unfinished one)."""

    def __init__(self, limit):
        self.limit = limit
        self.lock = threading.Lock()
        self.token, self.next_seq, self.buf = None, 0, bytearray()

    def add(self, args):
        token, seq, raw = args.get("token"), args.get("seq"), args.get("_blob")
        if not isinstance(token, str) or not isinstance(seq, int) or raw is None:
            raise RequestError("InvalidRequest", "`token`, `seq` and the chunk's bytes are required")
        with self.lock:
            if seq == 0:
                self.token, self.next_seq, self.buf = token, 0, bytearray()
            if token != self.token or seq != self.next_seq:
                raise RequestError("InvalidRequest", f"chunk {seq} of {token!r} is out of order")
            if len(self.buf) + len(raw) > self.limit:
                self.token, self.buf = None, bytearray()
                raise RequestError("SnapshotTooLarge", f"the staged archive exceeds {self.limit} bytes")
            self.buf += raw
            self.next_seq += 1
        return {"staged": len(self.buf)}

    def take(self, token):
        with self.lock:
            if token is None or token != self.token:
                raise RequestError("InvalidRequest", f"no staged archive {token!r}")
            data, self.token, self.buf = self.buf, None, bytearray()
        return data


def restore(args, staging, files_replaced):
    """Replace the workspace and home with the archive's content; returns counts.

    `files_replaced(keep_python, start_by, cancel_fd)` is held while the roots are cleared and extracted
    (the server's: one restore at a time, nothing of the interpreter running); it refuses to begin past
    `start_by`, the host's limit (`start_within` seconds from when the request began to arrive), or
    once the host has cancelled the request. A failure says what it left behind.
    """
    t0 = time.monotonic()
    within = args.get("start_within")
    if within is not None and (
        not isinstance(within, int | float) or isinstance(within, bool) or not 0 <= within < float("inf")
    ):
        raise RequestError("InvalidRequest", "`start_within` must be a number of seconds")
    start_by = None if within is None else args.get("_began", t0) + within
    data = args.get("_blob")
    if data is None:
        data = staging.take(args.get("token"))
    want = args.get("sha256")
    got = hashlib.sha256(data).hexdigest()
    if not isinstance(want, str) or got != want:
        raise RequestError(
            "UnsafeArchive", f"the archive's sha256 is {got}, not {want!r}; nothing was changed"
        )
    t1 = time.monotonic()
    members = check_archive(data)
    t2 = time.monotonic()
    # `keep_python`: the files again after a replay, whose cells redid their file side effects on top of
    # them; the interpreter they rebuilt is kept (the host sends nothing else while it restores).
    with files_replaced(bool(args.get("keep_python")), start_by, args.get("_cancel")):
        t3 = time.monotonic()
        try:
            for root in ROOTS.values():
                clear(root)
        except RequestError as exc:
            raise RequestError(
                "ToolError", f"restore failed: {exc}; the workspace and home are partly cleared"
            ) from None
        t4 = time.monotonic()
        try:
            written = _extract(data, members)
        except OSError as exc:
            raise RequestError(
                "ToolError",
                f"restore failed at {path_text(exc.filename or '?')}: {exc.strerror}; {_emptied()}",
            ) from None
    t5 = time.monotonic()
    # Where the time went inside the sandbox (the benchmark reports it beside the host's total).
    seconds = {"sha256": t1 - t0, "check": t2 - t1, "wait": t3 - t2, "clear": t4 - t3, "extract": t5 - t4}
    return {"entries": len(members), "bytes": written, "seconds": seconds}


def _emptied():
    """After a failed extraction: the roots emptied again, and what the failure left said truthfully."""
    try:
        for root in ROOTS.values():
            clear(root)
    except RequestError as exc:
        return f"the workspace and home hold part of the archive ({exc})"
    return "the workspace and home were left empty"


CLEAR_ROUNDS = 5


def clear(root):
    """Delete everything under `root` (not `root` itself), making read-only directories writable first.

    Something still writing there (a process nobody stopped) can refill a directory between its scan
    and its removal: the walk is repeated; RequestError("ToolError") naming what could not be removed
    when `root` is still not empty after `CLEAR_ROUNDS` walks.
    """
    for _ in range(CLEAR_ROUNDS):
        problem = _clear_once(root)
        if problem is None:
            os.chmod(root, 0o755)
            return
    raise RequestError("ToolError", f"{path_text(root)} could not be emptied: {problem}")


def _clear_once(root):
    """One walk of `clear`; what could not be removed (the first of it), or None when all was."""
    problem = None
    stack = [root]
    dirs = []
    while stack:
        d = stack.pop()
        dirs.append(d)
        try:
            os.chmod(d, 0o700, follow_symlinks=False)
        except OSError:
            pass
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            else:
                try:
                    os.unlink(e.path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    problem = problem or path_text(f"{e.path}: {exc.strerror}")
    for d in reversed(dirs[1:]):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError as exc:  # ENOTEMPTY: refilled since its scan
            problem = problem or path_text(f"{d}: {exc.strerror}")
    return problem


def _path(name):
    prefix, _, rest = name.partition("/")
    return os.path.join(ROOTS[prefix], rest) if rest else ROOTS[prefix]


def _extract(data, members):
    view = memoryview(data)
    written = 0
    dir_modes = []
    for m in members:
        path = _path(m.name)
        if m.isdir():
            if "/" in m.name:
                os.mkdir(path, 0o700)
                dir_modes.append((path, m.mode & 0o777, m.mtime))
        elif m.issym():
            os.symlink(m.linkname, path)
        elif m.islnk():
            os.link(_path(m.linkname), path, follow_symlinks=False)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                chunk = view[m.offset_data : m.offset_data + m.size]
                while chunk:
                    chunk = chunk[os.write(fd, chunk) :]
                os.fchmod(fd, m.mode & 0o777)
                os.utime(fd, (m.mtime, m.mtime))
            finally:
                os.close(fd)
            written += m.size
    for path, mode, mtime in reversed(dir_modes):  # deepest first: a read-only parent is closed last
        os.utime(path, (mtime, mtime), follow_symlinks=False)
        os.chmod(path, mode, follow_symlinks=False)
    return written
